"""``python -m benchmarks.students``: how much a ViT-T student gives up against a ViT-S student
distilled from the same teacher with the same steps, and how much faster it runs here.

Accuracy: on the procedural scenes of ``train.data.synthetic`` (exact depth), a teacher learns
from the true depth (stage 1), labels a shard of other scenes (stage 2), and each student learns
from those labels with the same steps, crop and seed (stage 3): vits from scratch, vitt from
scratch, and vitt started by weight selection from that vits (``train.distill --init-from``).
Each is scored by AbsRel against the true inverse depth of held-out scenes. These are synthetic
scenes: the numbers compare the students with each other, they are not depth quality on photographs.

Speed: vitt and vits (the same weights for every size) exported at each size, timed end to end
(``DepthPredictor.predict``) on ONNX Runtime FP32 and OpenVINO FP32 in interleaved rounds; the
ratio vits/vitt is the median over rounds of the ratio of the round medians.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from commands.runner import command
from runtime.io.files import atomic_write_bytes

from .cpu import detect

STUDENTS = (("vits", "vits", None), ("vitt", "vitt", None), ("vitt selected from vits", "vitt", "vits"))
BACKENDS = (("onnxruntime FP32", ".onnx", "onnxruntime"), ("OpenVINO FP32", ".fp32.xml", "openvino"))
HELD_OUT_SEED = 99


def run_stage(module: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{module} failed:\n{done.stderr[-2000:]}")


def scenes_shard(path: Path, count: int, size: tuple[int, int], seed: int) -> Path:
    """An SA-1B-format shard of synthetic scenes (images only: stage 2 labels them)."""
    import cv2

    from train.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(count, size=size, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            for name, data in (
                (f"sa_{i}.jpg", cv2.imencode(".jpg", scenes[i].image)[1].tobytes()),
                (f"sa_{i}.json", b"{}"),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path.parent


def held_out_abs_rel(model: Path | Any, crop: int, count: int, size: tuple[int, int]) -> float:
    """Mean AbsRel of ``model`` (a checkpoint's path or the network) against the true inverse depth
    of held-out scenes (after the scale-and-shift fit relative depth is compared under, as
    ``train.eval``), on the CPU in FP32."""
    from runtime import DepthPredictor
    from train.data.synthetic import SyntheticScenes
    from train.eval import depth_metrics

    held = SyntheticScenes(count, size=size, seed=HELD_OUT_SEED)
    predictor = DepthPredictor(model, device="cpu", precision="fp32", input_size=crop)
    scores = []
    for i in range(len(held)):
        scene = held[i]
        truth = np.where(scene.mask, 1.0 / np.maximum(scene.depth, 1e-6), np.nan)
        scores.append(depth_metrics(predictor.predict(scene.image), truth)["abs_rel"])
    return float(np.mean(scores))


def accuracy(args: argparse.Namespace, work: Path) -> dict:
    common = ["--batch-size", str(args.batch_size), "--crop", str(args.crop), "--lr", str(args.lr), "--workers", "0"]
    common += ["--save-every", str(max(args.steps, args.teacher_steps))]
    teacher = args.teacher
    if teacher is None:
        out = work / "teacher"
        teacher_args = ["--data", f"synthetic:{args.scenes}", "--steps", str(args.teacher_steps), "--output", str(out)]
        run_stage("train.teacher", *teacher_args, "--encoder", args.teacher_encoder, *common)
        teacher = out / "model.safetensors"
    size = (args.crop + args.crop // 4, args.crop + args.crop // 2)
    source = scenes_shard(work / "sa1b" / "sa_000000.tar", args.scenes, size, seed=7)
    labels = work / "labels"
    run_stage(
        "train.pseudo_label",
        "--teacher",
        str(teacher),
        "--source",
        str(source),
        "--output",
        str(labels),
        "--size",
        str(args.crop),
    )
    results = {
        "teacher": {"checkpoint": str(teacher), "abs_rel": held_out_abs_rel(teacher, args.crop, args.held_out, size)}
    }
    for name, encoder, init in STUDENTS:
        out = work / name.replace(" ", "_")
        extra = ["--init-from", str(work / init.replace(" ", "_") / "model.safetensors")] if init else []
        started = time.perf_counter()
        run_stage(
            "train.distill",
            "--labels",
            str(labels),
            "--student",
            encoder,
            "--steps",
            str(args.steps),
            "--output",
            str(out),
            *extra,
            *common,
        )
        summary = json.loads((out / "summary.json").read_text())
        results[name] = {
            "abs_rel": held_out_abs_rel(out / "model.safetensors", args.crop, args.held_out, size),
            "loss_first": summary["loss_first"][0],
            "loss_last": summary["loss_last"][0],
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{name}: held-out AbsRel {results[name]['abs_rel']:.4f}", file=sys.stderr)
    return results


def speed(sizes: list[int], rounds: int, calls: int, work: Path) -> dict:
    """End-to-end medians per round for vitt and vits on each backend and size, and their ratio."""
    import torch

    from export.onnx import export_onnx
    from export.openvino import export_openvino
    from runtime import DepthPredictor
    from runtime.io.samples import sample_images
    from train.models import DepthAnythingV2

    image = next(iter(sample_images().values()))
    models = {}
    for encoder in ("vitt", "vits"):
        torch.manual_seed(0)
        models[encoder] = DepthAnythingV2(encoder).eval()
    predictors = {}
    for side in sizes:
        for encoder, model in models.items():
            onnx = work / f"{encoder}_{side}.onnx"
            if not onnx.is_file():
                export_onnx(model, onnx, side, side)
            xml = onnx.with_suffix(".fp32.xml")
            if not xml.is_file():
                export_openvino(onnx, xml, "fp32")
            for label, suffix, backend in BACKENDS:
                artefact = onnx if suffix == ".onnx" else xml
                predictor = DepthPredictor(artefact, backend=backend, device="cpu", precision="fp32")
                for _ in range(2):
                    predictor.predict(image)
                predictors[(side, label, encoder)] = predictor
    medians: dict[tuple, list[float]] = {key: [] for key in predictors}
    for _ in range(rounds):
        for key, predictor in predictors.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                predictor.predict(image)
                times.append(time.perf_counter() - start)
            medians[key].append(float(np.median(times)))
    table = []
    for side in sizes:
        for label, _, _ in BACKENDS:
            tiny, small = medians[(side, label, "vitt")], medians[(side, label, "vits")]
            table.append(
                {
                    "size": side,
                    "backend": label,
                    "vitt_ms": 1e3 * float(np.median(tiny)),
                    "vits_ms": 1e3 * float(np.median(small)),
                    "speedup": float(np.median([s / t for s, t in zip(small, tiny)])),
                }
            )
    return {"rounds": rounds, "calls_per_round": calls, "rows": table}


def markdown(data: dict) -> str:
    lines = [f"Measured {data['created']} on {data['cpu']}; `{data['command']}`.", ""]
    if data.get("accuracy"):
        lines += ["Synthetic scenes (train.data.synthetic), not depth quality on photographs.", ""]
        lines += ["| model | held-out AbsRel vs true depth |", "|---|---|"]
        lines += [f"| {name} | {entry['abs_rel']:.4f} |" for name, entry in data["accuracy"].items()]
        lines.append("")
    if data.get("speed"):
        lines += ["| size | backend | vitt ms | vits ms | vits/vitt |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['size']}x{r['size']} | {r['backend']} | {r['vitt_ms']:.1f} | {r['vits_ms']:.1f} "
            f"| {r['speedup']:.2f}x |"
            for r in data["speed"]["rows"]
        ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.students", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (default: one trained here on the scenes)")
    parser.add_argument("--teacher-encoder", default="vits", help="encoder of the teacher trained here (default vits)")
    parser.add_argument("--teacher-steps", type=int, default=300, help="stage-1 steps of that teacher (default 300)")
    parser.add_argument("--steps", type=int, default=200, help="stage-3 steps of each student (default 200)")
    parser.add_argument("--scenes", type=int, default=96, help="synthetic scenes for stages 1 and 2 (default 96)")
    parser.add_argument("--held-out", type=int, default=12, help="held-out scenes scored (default 12)")
    parser.add_argument("--crop", type=int, default=112, help="training and scoring size (default 112)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--sizes", default="266,364,518", help="timed sizes (default 266,364,518; 'none' to skip)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per row and round (default 3)")
    parser.add_argument("--no-accuracy", action="store_true", help="time only")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/students"))
    parser.add_argument("--output", type=Path, default=Path("reports/students"), help="students.json and .md here")
    return parser


@command("python -m benchmarks.students")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu = detect()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sizes = [] if args.sizes.strip().lower() == "none" else [int(v) for v in args.sizes.split(",") if v.strip()]
    if any(s % 14 for s in sizes) or args.crop % 14:
        raise SystemExit("error: --sizes and --crop must be multiples of 14")
    data = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{cpu.model} ({cpu.summary()})",
        "command": "python -m benchmarks.students " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "accuracy": None if args.no_accuracy else accuracy(args, args.work_dir),
        "speed": speed(sizes, args.rounds, args.calls, args.work_dir) if sizes else None,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "students.json", (json.dumps(data, indent=2) + "\n").encode())
    atomic_write_bytes(args.output / "students.md", markdown(data).encode())
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
