"""``python -m benchmarks --target-fps N``: measure on this machine the configurations the walk
of ``benchmarks.target`` asks for, and pick the one that meets N frames/s per camera end to end.

Searched: the student (the benchmark's model, and a vitt: ``--student`` or, without one, a vitt
selected from the model's weights by ``train.models.selection``, not distilled), the input size
(multiples of 14, the model's aspect), the backend and precision (PyTorch and the benchmark's own
artefacts, built and cached by ``benchmarks.runner``; formats this CPU does not compute natively
are left out), the levers of ``benchmarks.levers`` a deployment can take (on the configuration the
walk would recommend), and the frames in flight (one call after another, or one per core through
``stream`` on a predictor with streams, as ``benchmarks.throughput``). Each configuration runs
the cameras' frames end to end (``predict`` with pre- and post-processing, plus the per-frame
metric alignment and point cloud with ``--target-points``); its accuracy is AbsRel against the
largest model timed (the benchmark's model, PyTorch FP32, at the benchmark's first size).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .artifacts import ModelSource
from .machine import usable_cores
from .runner import Config, Settings, make_configs, reference_outputs
from .stats import depth_metrics
from .target import choose, kinds_to_follow, kinds_worth_timing, levers_for, next_side, side_grid, why_not_met
from .throughput import stream_options

SEARCH_BACKENDS = ("torch", "onnxruntime", "openvino")


def selected_student(source: ModelSource, workdir: Path) -> ModelSource:
    """A vitt whose weights are selected from the benchmark's model (not distilled)."""
    from train.models import DepthAnythingV2, load_model, save_model
    from train.models.selection import select_weights

    path = workdir / f"vitt_selected_from_{source.tag}.safetensors"
    if not path.is_file():
        large = load_model(source.path)
        small = select_weights(DepthAnythingV2("vitt", max_depth=large.max_depth), large)
        save_model(small, path, metadata={"weights": f"vitt selected from {source.description}, not distilled"})
    return ModelSource(path, f"vitt selected from {source.description} (weight selection, not distilled)")


class PostProcess:
    """What a robot does with each depth map after ``predict`` when asked: metres from a per-frame
    fit to sparse metric points (``runtime.align``), then a point cloud (``runtime.pointcloud``)."""

    def __init__(self, points: int = 2000) -> None:
        from runtime.align.frame import FrameAligner
        from runtime.metric import OutputKind

        self.aligner = FrameAligner(OutputKind())
        self.points = points
        self.by_shape: dict[tuple[int, int], tuple] = {}
        self.frame = 0

    def _for(self, height: int, width: int) -> tuple:
        """Sparse points, intrinsics and stride for images of one size (made once per size)."""
        from runtime.align.frame import SparseSamples
        from runtime.pointcloud import Intrinsics, bounded_stride

        if (height, width) not in self.by_shape:
            rng = np.random.default_rng(0)
            rows, cols = rng.integers(0, height, self.points), rng.integers(0, width, self.points)
            # A plane tilted away from the camera stands in for the lidar: the fit's cost does not
            # depend on the scene, only on the number of points.
            metres = 2.0 + 6.0 * (1.0 - rows / height)
            samples = SparseSamples(rows, cols, metres, self.points, {})
            intrinsics = Intrinsics(fx=width, fy=width, cx=width / 2, cy=height / 2, width=width, height=height)
            self.by_shape[(height, width)] = (samples, intrinsics, bounded_stride(height, width))
        return self.by_shape[(height, width)]

    def __call__(self, depth: np.ndarray, image: np.ndarray) -> None:
        from runtime.pointcloud import depth_to_points

        samples, intrinsics, stride = self._for(*depth.shape)
        self.frame += 1
        result = self.aligner.align(depth, samples, self.frame * 100_000_000)
        if result.depth is not None:
            depth_to_points(result.depth, intrinsics, image, stride=stride)


def frames_per_second(predictor, frames: list[np.ndarray], post: PostProcess | None, streamed: bool) -> float:
    """All frames through ``predictor`` end to end (and ``post``), one call after another or in
    flight through ``stream``; frames per second."""
    start = time.perf_counter()
    outputs = predictor.stream(frames) if streamed else (predictor.predict(f) for f in frames)
    for depth, image in zip(outputs, frames):
        if post is not None:
            post(depth, image)
    return len(frames) / (time.perf_counter() - start)


def measure_artefact(job: dict) -> dict:
    """In a process of its own (a backend that crashes takes only it along): the artefact's rate
    with 1 frame in flight and with one per core, the faster counting (frames per second per
    camera), and its AbsRel against the reference."""
    from runtime import DepthPredictor

    images, opts, cameras = job["images"], job["options"], job["cameras"]
    post = PostProcess() if job["points"] else None
    sequence = [list(images.values())[i % len(images)] for i in range(max(job["frames"], 2))]
    predictor = DepthPredictor(job["artefact"], **opts)
    predicted = {name: predictor.predict(image) for name, image in images.items()}
    rates = {1: frames_per_second(predictor, sequence, post, False)}
    extra = stream_options(opts["backend"], usable_cores())
    if extra:
        flying = DepthPredictor(job["artefact"], **opts, **extra)
        list(flying.stream(sequence[:2]))  # the streams' first calls
        rates[extra["streams"]] = frames_per_second(flying, sequence, post, True)
        flying.close()
    predictor.close()
    in_flight = max(rates, key=rates.get)
    scores = [depth_metrics(predicted[name], ref)["abs_rel"] for name, ref in job["reference"].items()]
    return {
        "frames_in_flight": in_flight,
        "fps": rates[in_flight] / cameras,
        "fps_by_in_flight": {str(k): v / cameras for k, v in rates.items()},
        "abs_rel": float(np.mean(scores)),
    }


def measure_point(config: Config, images: dict, reference: dict, frames: int, cameras: int, points: bool) -> dict:
    """One configuration: its artefact built (and cached) here, measured in a fresh process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    artefact = config.build()
    options = {"backend": config.backend, "device": config.device, "precision": config.precision_arg}
    options.update(fixed_size=config.size, **config.options)
    job = {"artefact": str(artefact), "options": options, "images": images, "reference": reference}
    job.update(frames=frames, cameras=cameras, points=points)
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            measured = pool.submit(measure_artefact, job).result()
    except BrokenProcessPool:
        raise RuntimeError("the measuring process crashed inside the backend (see its output above)") from None
    return {
        "backend": config.backend,
        "precision": config.precision,
        "size": list(config.size),
        "side": min(config.size),
        **measured,
        "artefact": str(artefact),
    }


def _size_for(base: tuple[int, int], side: int) -> tuple[int, int]:
    long = max(14, round(max(base) * side / min(base) / 14) * 14)
    return (side, long) if base[0] <= base[1] else (long, side)


def search(
    source: ModelSource,
    students: list[ModelSource],
    base: tuple[int, int],
    settings: Settings,
    images: dict,
    need: float,
    cameras: int,
    budget: float,
    points: bool,
    ceilings: dict,
    steps: int = 3,
    walked: int = 1,
    backends: tuple[str, ...] = SEARCH_BACKENDS,
) -> dict:
    """The ``target`` section: every student's worthwhile kinds (of ``backends``) at the largest
    size, then the fastest ``walked`` kinds of each walked over sizes (``steps`` more measurements
    each), then the levers on the configuration that would be recommended (one measurement each)."""
    from train.models import load_model

    reference = reference_outputs(source, images, base)
    frames = max(4 * cameras, settings.throughput_frames)
    grid = side_grid(min(base))
    all_points, skipped = [], {}

    def configs_at(student: ModelSource, side: int) -> list[Config]:
        every = [c for c in make_configs(student, [_size_for(base, side)], settings, False) if c.variant is None]
        usable = [c for c in every if c.backend in backends]
        skipped.update({f"{c.backend} {c.precision}": "not among --backends" for c in every if c not in usable})
        kept, why = kinds_worth_timing([(c.backend, c.precision) for c in usable], settings.cpu)
        skipped.update(why)
        return [c for c in usable if (c.backend, c.precision) in kept]

    def run(student_name: str, config: Config) -> dict | None:
        print(f"target: {student_name} {config.label}", file=sys.stderr)
        try:
            point = measure_point(config, images, reference, frames, cameras, points)
        except Exception as exc:  # a kind that fails to build or run is left out, and said so
            skipped[f"{student_name} {config.label}"] = f"{exc.__class__.__name__}: {exc}"
            return None
        point.update(student=student_name, lever=config.variant, ops=work_of(student_name, config.size))
        all_points.append(point)
        return point

    work: dict[tuple, float | None] = {}

    def work_of(student_name: str, size: tuple[int, int]) -> float | None:
        """Operations per frame, counted on the student's FP32 ONNX at ``size`` (built for its rows)."""
        from .roofline import matrix_work

        if (student_name, size) not in work:
            fp32 = [c for c in make_configs(students_by_name[student_name], [size], settings, False)]
            onnx = next(c for c in fp32 if (c.backend, c.precision) == ("onnxruntime", "fp32"))
            try:
                work[(student_name, size)] = 2.0 * sum(matrix_work(onnx.build())[0].values())
            except Exception:  # no onnx package: the report goes without the work per frame
                work[(student_name, size)] = None
        return work[(student_name, size)]

    students_by_name = {
        load_model(s.path).encoder + ("" if s is source else " student"): s for s in [source, *students]
    }

    follow = None  # the kinds later students time at the largest size (None: all)
    for name, student in students_by_name.items():
        at_top = configs_at(student, grid[-1])
        if follow is not None:
            at_top = [c for c in at_top if (c.backend, c.precision) in follow]
        first = [p for p in (run(name, c) for c in at_top) if p]
        if student is source:
            follow, why = kinds_to_follow(first)
            skipped.update(why)
        for top in sorted(first, key=lambda p: -p["fps"])[:walked]:
            kind = (top["backend"], top["precision"])
            measured = {top["side"]: top["fps"]}
            for _ in range(steps):
                side = next_side(measured, need, grid)
                if side is None:
                    break
                config = next(c for c in configs_at(student, side) if (c.backend, c.precision) == kind)
                point = run(name, config)
                if point is None:
                    break
                measured[side] = point["fps"]
    # The levers on the configuration the walk would recommend: faster at the same arithmetic
    # (within the budget), it is chosen; the other configurations keep their rows as measured.
    provisional, _ = choose(all_points, need, budget)
    levers: dict[str, str] = {}
    if provisional is not None:
        student = students_by_name[provisional["student"]]
        kind = (provisional["backend"], provisional["precision"])
        config = next(c for c in configs_at(student, provisional["side"]) if (c.backend, c.precision) == kind)
        todo, levers = levers_for(config.backend, config.precision, config.precision_arg)
        for lever, compiled, options in todo:
            options = {**config.options, **options}
            precision_arg = compiled or config.precision_arg
            twin = Config(config.backend, config.precision, config.size, config.build, precision_arg, config.device)
            twin.variant, twin.options = lever, options
            point = run(provisional["student"], twin)
            levers[lever] = (
                f"measured on {provisional['student']} {twin.label}"
                if point
                else f"failed on {twin.label} (under not timed)"
            )
    chosen, status = choose(all_points, need, budget)
    return {
        "fps": need,
        "cameras": cameras,
        "with_points": points,
        "budget": budget,
        "reference": f"{source.description}, PyTorch FP32 at {base[0]}x{base[1]}",
        "students": {s.description: str(s.path) for s in students},
        "status": status,
        "chosen": chosen,
        "why": None if status == "met" or chosen is None else why_not_met(chosen, need, ceilings, cameras),
        "skipped": skipped,
        "levers": levers,
        "points": all_points,
    }
