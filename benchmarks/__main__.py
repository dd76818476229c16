"""``python -m benchmarks``: build every artefact this machine can, time them all in interleaved
rounds, check that the results can be true, write a report."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from commands.runner import EXIT_UNRELIABLE, command
from export.cli import parse_hw

from .artifacts import ModelSource, calibration_folder, load_images, resolve_model
from .checks import assess
from .cpu import detect
from .machine import machine_facts
from .profile import add_efficiency
from .ranking import fastest_cpu_path, rank, relative_to_first
from .report import publish
from .roofline import CeilingProbes, add_throughput, ceiling_formats, lower_bounds, matrix_work
from .rounds import time_rows
from .runner import Config, Settings, make_configs, prepare, reference_outputs, score
from .throughput import section as throughput_section

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
SWEEP = (518, 434, 364, 308)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Latency and accuracy of a Depth Anything model (V2, 3, Video Depth Anything) per backend, "
        "precision and input size. "
        "Rows are timed in interleaved rounds, each in a worker process of its own; the report checks "
        "that the machine was quiet and the numbers possible, and says so at the top when not.",
        epilog=f"Exit codes: 0 report written; 1 failed; 2 bad usage, no model or no images; {EXIT_UNRELIABLE} "
        "report written but its self-checks failed (with --strict only).",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="model: a checkpoint file or a Depth Anything 3 snapshot folder (default: "
        "checkpoints/depth_anything_v2_vits.pth, "
        "else the Hugging Face hub or its local cache, else random weights with a notice)",
    )
    parser.add_argument(
        "--model",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="benchmark this artefact as it is (engine, OpenVINO IR or ONNX file; repeatable) instead of building "
        "artefacts from a checkpoint: timed (a Video Depth Anything graph as a stream step), and scored against the "
        "reference beside it; needs no PyTorch. A checkpoint (.pth, .safetensors, a Depth Anything 3 snapshot "
        "folder) is a PyTorch FP32 row at the size the other models share",
    )
    parser.add_argument("--no-hub", action="store_true", help="never try the Hugging Face hub")
    parser.add_argument("--images", type=Path, help="folder of evaluation images (default: bundled photographs)")
    parser.add_argument("--calib-dir", type=Path, help="SA-1B shards or images for INT8 calibration")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list (default: all available)")
    parser.add_argument("--precisions", default="", help="comma list to keep, e.g. fp32,int8 (default: all)")
    parser.add_argument("--sizes", default=None, help="comma list of HxW (default 518x518)")
    parser.add_argument(
        "--size-sweep",
        default=None,
        help="short sides (multiples of 14) at which the fastest CPU row is timed again "
        f"(default {','.join(map(str, SWEEP))}; --quick: none; 'none' to skip)",
    )
    parser.add_argument(
        "--runs", type=int, help="timed runs per row, rounded up to a multiple of --rounds (default 20; --quick: 5)"
    )
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds the runs are split over (default 5, or --runs if fewer)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per row first (default 5; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="short run: fewer runs, images and calibration samples")
    parser.add_argument(
        "--emulated-formats",
        action="store_true",
        help="also time formats this CPU has no units for (BF16 without AVX512-BF16/AMX: minutes per row)",
    )
    parser.add_argument(
        "--strict", action="store_true", help=f"exit {EXIT_UNRELIABLE} when the report's self-checks fail"
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the profiled pass that splits each row's model call by kind of work (saves a second "
        "model load and a few calls per row)",
    )
    parser.add_argument(
        "--throughput",
        choices=("fastest", "all", "none"),
        default="fastest",
        help="rows whose frames per second for several cameras are measured after the rounds: each "
        "backend's fastest (default), all, or none",
    )
    parser.add_argument(
        "--cameras",
        help="camera counts for the frames-per-second table (default 1,2,4); with --target-fps, the largest "
        "is the number of cameras the target is for (default 1)",
    )
    parser.add_argument(
        "--target-fps",
        type=float,
        help="find the configuration (student, input size, backend, precision, frames in flight) that runs "
        "this many frames/s per camera end to end here within --target-budget (report.json's 'target')",
    )
    parser.add_argument(
        "--target-budget",
        type=float,
        default=0.1,
        help="AbsRel against the largest model timed that a --target-fps configuration may reach (default 0.1)",
    )
    parser.add_argument(
        "--target-points",
        action="store_true",
        help="with --target-fps: each frame also gets metres from a fit to sparse points and a point cloud",
    )
    parser.add_argument(
        "--student",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="with --target-fps: a distilled student checkpoint (e.g. vitt) to search too (repeatable; "
        "default: a vitt selected from the model's weights, not distilled)",
    )
    parser.add_argument("--accuracy-budget", type=float, default=0.02, help="AbsRel vs FP32 budget (default 0.02)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports/latest"), help="where the report goes")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/bench"), help="artefact cache")
    return parser


def parse_sweep(text: str | None, quick: bool) -> list[int]:
    if text is None:
        return [] if quick else list(SWEEP)
    if text.strip().lower() in ("", "none"):
        return []
    try:
        sides = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(s < 14 or s % 14 for s in sides):
        raise argparse.ArgumentTypeError(f"each short side must be a positive multiple of 14, got {text!r}")
    return sides


def sweep_sizes(base: tuple[int, int], short_sides: list[int]) -> list[tuple[int, int]]:
    """``base`` first, then a size per short side with base's aspect, each side a multiple of 14."""
    height, width = base
    sizes = [base]
    for side in short_sides:
        long = max(14, round(max(base) * side / min(base) / 14) * 14)
        size = (side, long) if height <= width else (long, side)
        if size not in sizes:
            sizes.append(size)
    return sizes


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def operation_counts(configs: list[Config], sizes: list[tuple[int, int]]) -> dict:
    """The model's work per frame at each size, counted on its FP32 ONNX (exported if no row built it)."""
    work = {}
    for size in sizes:
        onnx_config = next(c for c in configs if (c.backend, c.precision, c.size) == ("onnxruntime", "fp32", size))
        try:
            macs, attention_macs = matrix_work(onnx_config.build())
        except Exception as exc:  # no onnx installed, or an export that failed: the report says so
            print(
                f"note: no operation count for {size[0]}x{size[1]} ({exc.__class__.__name__}: {exc})", file=sys.stderr
            )
            continue
        work[f"{size[0]}x{size[1]}"] = {"macs": macs, "ops": 2 * sum(macs.values()), "attention_macs": attention_macs}
    return work


def measure(
    configs: list[Config],
    settings: Settings,
    source: ModelSource,
    images: dict[str, np.ndarray],
    ground_truth: dict[str, np.ndarray],
    ceiling_formats: tuple[str, ...] = (),
    group: str = "runs",
) -> dict:
    """Build ``configs`` (their workers' files under ``group``), time them in interleaved rounds
    (with the matrix-multiply ceilings of ``ceiling_formats`` measured once per round), score them."""
    from tqdm import tqdm

    timing_image = next(iter(images))
    images_npz = settings.workdir / "eval_images.npz"  # written by main
    for config in tqdm(configs, desc="building artefacts", unit="row"):
        prepare(config, settings, images_npz, timing_image, group)
    with settings.phases.timed("references"):
        references = {size: reference_outputs(source, images, size) for size in {c.size for c in configs}}
    ready = [c for c in configs if c.job is not None]
    probes = None
    if ceiling_formats and ready:
        with settings.phases.timed("ceilings"):
            probes = CeilingProbes(ceiling_formats)
    print(f"timing {len(ready)} rows in {settings.rounds} interleaved rounds", file=sys.stderr)
    timed = time_rows(ready, settings, probes)
    timed["ceilings"] = probes.summarize(timed["ceiling_rounds"]) if probes else {}
    for config in ready:
        if config.result.get("outputs"):
            score(config, references[config.size], ground_truth, settings.max_abs_rel)
        tqdm.write(
            f"{config.label}: {config.result.get('status')}"
            + (f" ({config.result['error']})" if config.result.get("error") else "")
        )
    return timed


def roofline_section(ceilings: dict, work: dict) -> dict:
    bounds = {key: lower_bounds(w["ops"], ceilings) for key, w in work.items()}
    return {"ceilings": ceilings, "work": work, "lower_bounds_s": bounds}


def size_sweep(
    fastest: dict,
    sizes: list[tuple[int, int]],
    settings: Settings,
    source: ModelSource,
    images: dict[str, np.ndarray],
    ground_truth: dict[str, np.ndarray],
    roofline: dict,
) -> tuple[list[dict], dict, dict]:
    """The fastest CPU row's kind timed at each of ``sizes`` in rounds of its own; returns its rows,
    the roofline with the work at the new sizes, and the checks on the sweep."""
    every_config = make_configs(source, sizes, settings, False)
    kind = (fastest["backend"], fastest["precision"], fastest.get("variant"))
    configs = [c for c in every_config if c.kind == kind]
    settings.phases.prefix = "size sweep: "
    throughput, settings.throughput = settings.throughput, "none"  # frames per second at the main size only
    try:
        timed = measure(configs, settings, source, images, ground_truth, group="size-sweep")
        with settings.phases.timed("export"):
            work = {**roofline["work"], **operation_counts(every_config, sizes[1:])}
    finally:
        settings.phases.prefix, settings.throughput = "", throughput
    roofline = roofline_section(roofline["ceilings"], work)
    rows = [c.row() for c in configs]
    add_throughput(rows, roofline)
    checks = assess(rows, {}, {"size sweep rounds": timed["machine_state"]}, settings.cpu.native("bf16"))
    return relative_to_first(rows), roofline, checks


@command("python -m benchmarks")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (2 if quick else 5)
    runs = args.runs if args.runs is not None else (5 if quick else 20)
    rounds = args.rounds if args.rounds is not None else min(runs, 5)
    if runs < 1 or warmup < 0 or not 1 <= rounds <= runs:
        parser.error("--runs must be at least 1, --warmup at least 0, and --rounds between 1 and --runs")
    if args.model:
        clashing = [
            f"--{n.replace('_', '-')}" for n in ("checkpoint", "images", "calib_dir", "sizes") if getattr(args, n)
        ]
        if clashing:
            parser.error(f"{', '.join(clashing)} build artefacts from a checkpoint; --model benchmarks given ones")
        from .given import run_artefacts

        return run_artefacts(args.model, args, warmup, runs, rounds)
    try:
        sizes = [parse_hw(s) for s in (args.sizes or "518x518").split(",")]
        short_sides = parse_sweep(args.size_sweep, quick)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--sizes / --size-sweep: {exc}")
    try:
        cameras = tuple(int(v) for v in (args.cameras or "1,2,4").split(",") if v.strip())
    except ValueError:
        cameras = ()
    if not cameras or min(cameras) < 1:
        parser.error(f"--cameras takes positive integers separated by commas, e.g. 1,2,4; got {args.cameras!r}")
    if args.target_fps is not None and not (args.target_fps > 0 and args.target_budget > 0):
        parser.error("--target-fps and --target-budget must be positive")
    if args.target_fps is None and (args.target_points or args.student):
        parser.error("--target-points and --student belong to a --target-fps search; add --target-fps N")
    if missing := [str(p) for p in args.student if not p.is_file()]:
        parser.error(f"--student: no such checkpoint file: {', '.join(missing)}")
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    if unknown := backends - set(BACKENDS):
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    started = time.perf_counter()
    cpu = detect()
    workdir = args.work_dir
    workdir.mkdir(parents=True, exist_ok=True)
    calib_samples = 16 if quick else 64
    settings = Settings(workdir, warmup, runs, rounds, args.calib_dir, calib_samples, 0.1, cpu, args.emulated_formats)
    settings.profile_calls = 0 if args.no_profile else settings.profile_calls
    settings.throughput, settings.cameras = args.throughput, cameras
    settings.throughput_frames = 8 if quick else settings.throughput_frames
    phases = settings.phases
    with phases.timed("model and images"):
        source = resolve_model(args.checkpoint, workdir, use_hub=not args.no_hub)
        images, ground_truth, images_text = load_images(args.images, 3 if quick else 6)
    if source.notice:
        print(f"\n*** {source.notice} ***\n", file=sys.stderr)
    print(f"CPU: {cpu.model}: {cpu.summary()}", file=sys.stderr)
    _, calibration_text = calibration_folder(args.calib_dir, workdir, calib_samples)
    np.savez(workdir / "eval_images.npz", **images)

    every_config = make_configs(source, sizes, settings, has_gpu())
    configs = [
        c
        for c in every_config
        if c.backend in backends and (not precisions or any(p in c.precision.split("/") for p in precisions))
    ]
    timed = measure(configs, settings, source, images, ground_truth, ceiling_formats(cpu, args.emulated_formats))
    ceilings = timed["ceilings"]
    rows = [c.row() for c in configs]
    with phases.timed("export"):
        roofline = roofline_section(ceilings, operation_counts(every_config, sizes))
    add_throughput(rows, roofline)
    add_efficiency(rows, roofline)
    reliability = assess(rows, ceilings, {"main rounds": timed["machine_state"]}, cpu.native("bf16"))

    sweep_rows: list[dict] = []
    fastest = fastest_cpu_path(rows, args.accuracy_budget, sizes[0]) if short_sides else None
    if fastest is not None:
        sweep_rows, roofline, swept = size_sweep(
            fastest, sweep_sizes(sizes[0], short_sides), settings, source, images, ground_truth, roofline
        )
        reliability["problems"] += swept["problems"]
        reliability["reliable"] = reliability["reliable"] and swept["reliable"]
        reliability["machine_state"].update(swept["machine_state"])
    rows, best = rank(rows, args.accuracy_budget, reliability["reliable"])
    from .given import checkpoint_facts

    data = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(cpu),
        "model": source.description,
        "model_facts": checkpoint_facts(rows),
        "notice": source.notice,
        "images": images_text,
        "calibration": calibration_text,
        "timing_image": next(iter(images)),
        "settings": {
            "warmup": warmup,
            "runs": runs,
            "rounds": rounds,
            "calls_per_round": settings.calls_per_round,
            "sizes": [list(s) for s in sizes],
            "quick": quick,
            "emulated_formats": args.emulated_formats,
            "profile_calls": settings.profile_calls,
            "throughput": settings.throughput,
        },
        "accuracy_budget": args.accuracy_budget,
        "roofline": roofline,
        "reliability": reliability,
        "rows": rows,
        "fastest_within_budget": best,
        "size_sweep": sweep_rows,
        "throughput": throughput_section(rows, settings.cameras, settings.throughput_frames),
        "target": None,
        "phases": {k: round(v, 1) for k, v in phases.seconds.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if args.target_fps is not None:
        from .target_run import SEARCH_BACKENDS, search, selected_student

        students = [ModelSource(p, str(p)) for p in args.student] or [selected_student(source, workdir)]
        with phases.timed("target search"):
            data["target"] = search(
                source,
                students,
                sizes[0],
                settings,
                images,
                args.target_fps,
                max(cameras) if args.cameras else 1,
                args.target_budget,
                args.target_points,
                ceilings,
                steps=2 if quick else 4,
                walked=1 if quick else 2,
                backends=tuple(b for b in SEARCH_BACKENDS if b in backends),
            )
        data["phases"] = {k: round(v, 1) for k, v in phases.seconds.items()}
        data["wall_seconds"] = round(time.perf_counter() - started, 1)
    return publish(data, images, args.report_dir, reliability, args.strict)


if __name__ == "__main__":
    sys.exit(main())
