"""``python -m benchmarks``: build every artefact this machine can, measure each, write a report."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export.common import parse_hw

from .artifacts import calibration_folder, load_images, resolve_model
from .machine import machine_facts
from .report import rank, write_report
from .roofline import add_throughput, count_macs, gemm_ceilings, lower_bounds, merge_ceilings
from .runner import Settings, make_configs, reference_outputs, run_config

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Latency and accuracy of Depth Anything V2 per backend, precision and input size.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="model (default: checkpoints/depth_anything_v2_vits.pth, "
        "else the Hugging Face hub if reachable, else random weights with a notice)",
    )
    parser.add_argument("--no-hub", action="store_true", help="never try the Hugging Face hub")
    parser.add_argument("--images", type=Path, help="folder of evaluation images (default: bundled photographs)")
    parser.add_argument("--calib-dir", type=Path, help="SA-1B shards or images for INT8 calibration")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list (default: all available)")
    parser.add_argument("--precisions", default="", help="comma list to keep, e.g. fp32,int8 (default: all)")
    parser.add_argument("--sizes", default=None, help="comma list of HxW (default 518x518; --quick: 518x518)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 20; --quick: 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs (default 5; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="short run: fewer runs, images and calibration samples")
    parser.add_argument("--accuracy-budget", type=float, default=0.02, help="AbsRel vs FP32 budget (default 0.02)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports/latest"), help="where the report goes")
    parser.add_argument("--work-dir", type=Path, default=Path("artifacts/bench"), help="artefact cache")
    return parser


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def measure_roofline(configs: list, sizes: list[tuple[int, int]], ceilings_before: dict) -> dict:
    """The model's work per frame at each size (counted on its FP32 ONNX, exported if no row
    built it) and the CPU's matrix-multiply ceilings per number format: the best of a measurement
    before the rows and one after, so a slow moment of a shared machine does not lower them."""
    work = {}
    for size in sizes:
        onnx_config = next(c for c in configs if (c.backend, c.precision, c.size) == ("onnxruntime", "fp32", size))
        try:
            macs = count_macs(onnx_config.build())
        except Exception as exc:  # no onnx installed, or an export that failed: the report says so
            print(
                f"note: no operation count for {size[0]}x{size[1]} ({exc.__class__.__name__}: {exc})", file=sys.stderr
            )
            continue
        work[f"{size[0]}x{size[1]}"] = {"macs": macs, "ops": 2 * sum(macs.values())}
    ceilings = merge_ceilings(ceilings_before, gemm_ceilings())
    bounds = {key: lower_bounds(w["ops"], ceilings) for key, w in work.items()}
    return {"ceilings": ceilings, "work": work, "lower_bounds_s": bounds}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (2 if quick else 5)
    runs = args.runs if args.runs is not None else (5 if quick else 20)
    if runs < 1 or warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    try:
        sizes = [parse_hw(s) for s in (args.sizes or "518x518").split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--sizes: {exc}")
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}
    if unknown := backends - set(BACKENDS):
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    precisions = {p.strip() for p in args.precisions.split(",") if p.strip()}
    started = time.perf_counter()
    workdir = args.work_dir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = resolve_model(args.checkpoint, workdir, use_hub=not args.no_hub)
        images, ground_truth, images_text = load_images(args.images, 3 if quick else 6)
    except (FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if source.notice:
        print(f"\n*** {source.notice} ***\n", file=sys.stderr)
    settings = Settings(workdir, warmup, runs, args.calib_dir, 16 if quick else 64, max_abs_rel=0.1)
    _, calibration_text = calibration_folder(args.calib_dir, workdir, settings.calib_samples)
    timing_image = next(iter(images))
    images_npz = workdir / "eval_images.npz"
    np.savez(images_npz, **images)
    every_config = make_configs(source, sizes, settings, has_gpu())
    configs = [
        c
        for c in every_config
        if c.backend in backends and (not precisions or any(p in c.precision.split("/") for p in precisions))
    ]
    from tqdm import tqdm

    references = {size: reference_outputs(source, images, size) for size in sizes}
    print("measuring this machine's matrix-multiply ceilings", file=sys.stderr)
    ceilings_before = gemm_ceilings()
    bar = tqdm(configs, desc="benchmark", unit="row")
    for config in bar:
        bar.set_postfix_str(config.label)
        run_config(config, images_npz, timing_image, settings, references[config.size], ground_truth)
        tqdm.write(
            f"{config.label}: {config.result['status']}"
            + (f" ({config.result['error']})" if config.result.get("error") else "")
        )
    rows = [
        {"backend": c.backend, "variant": c.variant, "precision": c.precision, "size": list(c.size), **c.result}
        for c in configs
    ]
    tqdm.write("measuring this machine's matrix-multiply ceilings")
    roofline = measure_roofline(every_config, sizes, ceilings_before)
    add_throughput(rows, roofline)
    rows, best = rank(rows, args.accuracy_budget)
    data = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "model": source.description,
        "notice": source.notice,
        "images": images_text,
        "calibration": calibration_text,
        "timing_image": timing_image,
        "settings": {"warmup": warmup, "runs": runs, "sizes": [list(s) for s in sizes], "quick": quick},
        "accuracy_budget": args.accuracy_budget,
        "roofline": roofline,
        "rows": rows,
        "fastest_within_budget": best,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    paths = write_report(data, images, args.report_dir)
    print((args.report_dir / "report.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" in {data['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
