"""``python -m benchmarks.family_cost``: per-frame cost and peak memory of each model family here
(Depth Anything V2 Small, Depth Anything 3 Small on one view, Video Depth Anything Small streaming)
on PyTorch FP32, ONNX Runtime FP32 and OpenVINO INT8, at square sizes.

Run from the repository (deterministic weights, ``benchmarks.weights``: the cost does not depend
on their values), in steps that each fit a few minutes, so a shared machine's lock is never held
long::

    python -m benchmarks.family_cost setup  --size 266   # weights, FP32 ONNX, INT8 IR (cached)
    python -m benchmarks.family_cost time   --size 266   # interleaved rounds, one process
    python -m benchmarks.family_cost memory --size 266   # a fresh process per family and backend
    python -m benchmarks.family_cost flicker --size 266  # Video Depth Anything: streamed against alone

Each frame is a square BGR frame of the size asked (a slow pan across the bundled photograph,
resized), so every backend's network input is that size square; a frame's cost is ``predict`` (Video Depth Anything:
``video_stream().push``, one stream step with its cache full) including pre- and post-processing.
Rounds are interleaved: each round runs one frame of every family and backend in turn, after
three warm-up frames each (a stream's cache is full-size from its second frame). The INT8 IRs are
calibrated on crops of the bundled photographs with ``--accuracy-budget off``: deterministic
weights do not meet an INT8 accuracy budget, and only the cost is measured here (the ViT-L
families' IRs also past the broken-artefact bound, by ``int8_unbounded``: their records say so). Peak memory is
``ru_maxrss`` of a fresh process (started by this light process, which imports neither PyTorch nor
a backend) that loads one model and runs six frames.

``flicker`` is what the temporal head is for: the flicker figure (``runtime.align.FlickerMeter``:
the median change of the output on pixels whose image did not change, as a share of the depth
range) of Video Depth Anything Small streamed and with each frame alone, per backend, on the six
panning frames and on the first of them held still with sensor noise (Gaussian, sigma 3 grey
levels, 8 frames). With deterministic weights it shows the cache at work, not what the published
checkpoints reach.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("dav2-s", "da3-small", "vda-small")  # the default: the small networks
# ViT-L, asked by ``--families``: DA3Mono-Large (DA3Metric-Large is the same network, its head's
# output read as metres per focal length: the same cost) and DA-V2-L, its same-size comparison.
VIT_L = ("dav2-l", "da3-mono-large")
KNOWN = FAMILIES + VIT_L
BACKENDS = ("torch-fp32", "ort-fp32", "ov-int8")
NAMES = {
    "dav2-s": "Depth Anything V2 Small",
    "da3-small": "DA3-Small (one view)",
    "vda-small": "Video Depth Anything Small (stream)",
    "dav2-l": "Depth Anything V2 Large",
    "da3-mono-large": "DA3Mono-Large (DA3Metric-Large: the same network)",
    "torch-fp32": "PyTorch FP32",
    "ort-fp32": "ONNX Runtime FP32",
    "ov-int8": "OpenVINO INT8",
}
CHECKPOINTS = {
    "dav2-s": "depth_anything_v2_vits.pth",
    "da3-small": "DA3-SMALL",
    "vda-small": "video_depth_anything_vits.pth",
    "dav2-l": "depth_anything_v2_vitl.pth",
    "da3-mono-large": "DA3MONO-LARGE",
}
THREADS = 2
# Twelve calibration images (two held out), no accuracy check: deterministic weights do not meet an
# INT8 budget, and only the cost is measured.
INT8_OPTIONS = ("--calib-samples", "12", "--accuracy-images", "2", "--allow-fewer", "--accuracy-budget", "off")


def baseline(family: str) -> str:
    """The family a family's time is given as a ratio to, on the same backend in the same rounds:
    DA-V2 of the same encoder size (ViT-L against ViT-L)."""
    return "dav2-l" if family in VIT_L else "dav2-s"


def family_list(text: str) -> list[str]:
    """``--families``: a comma list of ``KNOWN``; ``ValueError`` naming what is not one."""
    families = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in families if f not in KNOWN]
    if unknown or not families:
        raise ValueError(f"--families {text!r}: {', '.join(unknown) or 'none'} not of {', '.join(KNOWN)}")
    return families


def checkpoint(out: Path, family: str) -> Path:
    return out / CHECKPOINTS[family]


def artefact(out: Path, family: str, backend: str, size: int) -> Path:
    if backend == "torch-fp32":
        return checkpoint(out, family)
    return out / (f"{family}_{size}x{size}" + (".onnx" if backend == "ort-fp32" else ".int8.xml"))


def write_weights(out: Path, families: tuple[str, ...] | list[str] = FAMILIES) -> None:
    """Deterministic weights (``benchmarks.weights``), as the published files are laid out."""
    from .weights import write_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    for family in families:
        path = checkpoint(out, family)
        if not (path / "config.json" if path.suffix != ".pth" else path).is_file():
            write_checkpoint(family, path)


def setup(out: Path, size: int, families: list[str]) -> None:
    """Weights, then per family the FP32 ONNX and the INT8 IR at ``size`` (each by its command, in a
    process of its own; what exists is kept)."""
    from .artifacts import calibration_folder

    write_weights(out, families)
    calib, _ = calibration_folder(None, out, 12)
    for family in families:
        onnx = artefact(out, family, "ort-fp32", size)
        steps = [
            (onnx, ["export.onnx", "--checkpoint", str(checkpoint(out, family)), "--size", f"{size}x{size}"]),
            (
                artefact(out, family, "ov-int8", size),
                [*int8_command(family), "--onnx", str(onnx), "--int8", "--calib-dir", str(calib), *INT8_OPTIONS],
            ),
        ]
        for path, command in steps:
            if path.is_file():
                continue
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", *command, "--output", str(path)], check=True)
            print(f"{path.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def int8_command(family: str) -> list[str]:
    """The module (and step) that makes ``family``'s INT8 IR: ``export.openvino`` itself, or for a
    ViT-L family this benchmark's hidden ``int8-unbounded`` step (``int8_unbounded``)."""
    return ["benchmarks.family_cost", "int8-unbounded"] if family in VIT_L else ["export.openvino"]


def int8_unbounded(argv: list[str]) -> int:
    """``python -m export.openvino`` (``argv``) with the INT8 IR's broken-artefact bound (2 std of
    ONNX Runtime FP32's output) lifted, for the cost of the ViT-L families only: with deterministic
    weights their 24 blocks (LayerScale gains around one, not the published ones' small gains)
    amplify the INT8 rounding to about 10 std at the output. The IR's graph, its INT8 layers and so
    its cost are those of the command's IR; its numbers mean nothing. The bound is lifted by the
    command's keyword ``int8_tolerance``, which no flag reaches: this call only, nothing else in the
    process. The IR's record says the tolerance it was held to (infinite), the default it was not
    held to, and the error it had."""
    from export.openvino import main as export_openvino

    return export_openvino(argv, int8_tolerance=float("inf"))


def frames(size: int) -> list:
    import cv2

    from .weights import panning_frames

    return [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in panning_frames()]


def runner(model: Path, size: int):
    """A predictor of ``model`` and a call that runs its next frame (a stream model: the next step)."""
    from runtime import DepthPredictor

    predictor = DepthPredictor(str(model), input_size=size, device="cpu")
    video = predictor.video_stream(max_gap=None) if predictor.is_stream_model else None
    shown, count = frames(size), [0]

    def call():
        frame = shown[count[0] % len(shown)]
        count[0] += 1
        return video.push(frame) if video is not None else predictor.predict(frame)

    return predictor, call


def time_rows(out: Path, size: int, families: list[str], backends: list[str], rounds: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    rows = {(f, b): runner(artefact(out, f, b, size), size) for f in families for b in backends}
    for _, call in rows.values():
        for _ in range(3):
            call()
    times: dict = {key: [] for key in rows}
    for _ in range(rounds):
        for key, (_, call) in rows.items():
            started = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - started)
    result = {}
    for (family, backend), seconds in times.items():
        base = times.get((baseline(family), backend))
        ratio = np.median(np.asarray(seconds) / np.asarray(base)) if base else None
        result[f"{family} {backend}"] = {
            "ms": round(1e3 * float(np.median(seconds)), 1),
            "p90_ms": round(1e3 * float(np.percentile(seconds, 90)), 1),
            f"vs_{baseline(family).replace('-', '_')}_same_rounds": None if ratio is None else round(float(ratio), 3),
        }
    for predictor, _ in rows.values():
        predictor.close()
    return result


def peak(model: Path, size: int) -> dict:
    """This process: load ``model``, run six frames; its peak resident memory. PyTorch is imported
    for a checkpoint only (a robot running an ONNX or IR has no PyTorch in its process)."""
    if model.is_dir() or model.suffix == ".pth":
        import torch

        torch.set_num_threads(THREADS)
    _, call = runner(model, size)
    for _ in range(6):
        call()
    return {
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_imported": "torch" in sys.modules,
    }


def memory(out: Path, size: int, families: list[str], backends: list[str]) -> dict:
    result = {}
    for family in families:
        for backend in backends:
            model = artefact(out, family, backend, size)
            command = [sys.executable, "-m", "benchmarks.family_cost", "peak", "--model", str(model)]
            done = subprocess.run([*command, "--size", str(size)], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{family} {backend}: {done.stderr.strip().splitlines()[-1:]}")
            result[f"{family} {backend}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(family, backend, result[f"{family} {backend}"], file=sys.stderr, flush=True)
    return result


def flicker(out: Path, size: int, backends: list[str]) -> dict:
    """The flicker figure of Video Depth Anything Small streamed and each frame alone (see the
    module doc), per backend and scene."""
    import numpy as np

    from runtime import DepthPredictor
    from runtime.align.stabilize import FlickerMeter

    if "torch-fp32" in backends:
        import torch

        torch.set_num_threads(THREADS)
    panning = frames(size)
    rng = np.random.default_rng(0)
    still = [np.clip(panning[0] + rng.normal(0, 3, panning[0].shape), 0, 255).astype(np.uint8) for _ in range(8)]
    scenes = {"panning (6 frames)": panning, "still with sensor noise (8 frames)": still}
    result = {}
    for backend in backends:
        model = artefact(out, "vda-small", backend, size)
        with DepthPredictor(str(model), input_size=size, device="cpu") as predictor:
            for scene, shown in scenes.items():
                streamed, alone = FlickerMeter(), FlickerMeter()
                for frame, depth in zip(shown, predictor.stream(shown)):
                    streamed.update(frame, depth)
                for frame, depth in zip(shown, predictor.predict_batch(shown)):
                    alone.update(frame, depth)
                figures = {"stream (temporal head)": streamed.figure, "each frame alone": alone.figure}
                result.setdefault(f"vda-small {backend}", {})[scene] = figures
                print(backend, scene, figures, file=sys.stderr, flush=True)
    return result


def missing_setup(out: Path, size: int, families: list[str], backends: list[str]) -> str | None:
    """One line naming what ``setup`` has not made yet for a timing step, or ``None`` when all is there."""
    missing = [
        artefact(out, family, backend, size)
        for family in families
        for backend in backends
        if not artefact(out, family, backend, size).exists()
    ]
    if not missing:
        return None
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return (
        f"error: {missing[0]}{more} not found: run `python -m benchmarks.family_cost setup --size {size} "
        f"--out {out}` first (with the same --families; flicker needs vda-small among them)"
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["int8-unbounded"]:
        return int8_unbounded(sys.argv[2:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.family_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("setup", "time", "memory", "flicker", "peak"))
    parser.add_argument("--size", type=int, default=266, help="square network input (a multiple of 14; default 266)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/family_cost"), help="models and artefacts")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(KNOWN)}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma list of {', '.join(BACKENDS)}")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)  # peak: the model of this fresh process
    args = parser.parse_args(argv)
    try:
        families = family_list(args.families)
    except ValueError as exc:
        parser.error(str(exc))
    backends = [b for b in args.backends.split(",") if b]
    if args.size % 14 or set(backends) - set(BACKENDS):
        parser.error("--size must be a multiple of 14, --families and --backends from the lists in --help")
    if args.step == "setup":
        setup(args.out, args.size, families)
        return 0
    if args.step == "peak":
        print(json.dumps(peak(args.model, args.size)))
        return 0
    missing = missing_setup(args.out, args.size, ["vda-small"] if args.step == "flicker" else families, backends)
    if missing:
        print(missing, file=sys.stderr)
        return 2  # a missing input file (docs/exit-codes.md)
    if args.step == "flicker":
        rows = flicker(args.out, args.size, backends)
    elif args.step == "time":
        rows = time_rows(args.out, args.size, families, backends, args.rounds)
    else:
        rows = memory(args.out, args.size, families, backends)
    result = {
        "step": args.step,
        "size": f"{args.size}x{args.size}",
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
