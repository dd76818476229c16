"""Build the artefacts, run every backend x precision x size in its own process, score them."""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import MissingDependencyError

from .artifacts import ModelSource, calibration_folder, fresh
from .stats import depth_metrics

STATUS_OK = "ok"
STATUS_INVALID = "exported but failed validation"
STATUS_EXPORT_FAILED = "export failed"
STATUS_UNAVAILABLE = "unavailable"
STATUS_RUN_FAILED = "run failed"
# PyTorch eager as the official repository runs on a CPU (no xformers there): the speed users
# of the official scripts see today, next to this toolkit's fused-attention PyTorch baseline.
EXPLICIT_ATTENTION = "explicit attention, as the official code"


@dataclass
class Config:
    backend: str
    precision: str  # as reported: weights/compute where they differ
    size: tuple[int, int]
    build: Callable[[], Path] | None = None  # returns the artefact path
    precision_arg: str | None = None
    device: str = "auto"
    variant: str | None = None  # a second row of the same backend and precision, e.g. a reference form
    options: dict = field(default_factory=dict)  # extra DepthPredictor arguments for that variant
    result: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = f"{self.backend} ({self.variant})" if self.variant else self.backend
        return f"{name} {self.precision} {self.size[0]}x{self.size[1]}"

    @property
    def options_tag(self) -> str:
        return "-".join(f"{k}-{v}" for k, v in sorted(self.options.items()))


@dataclass
class Settings:
    workdir: Path
    warmup: int
    runs: int
    calib_dir: Path | None
    calib_samples: int
    max_abs_rel: float


def make_configs(source: ModelSource, sizes: list[tuple[int, int]], settings: Settings, gpu: bool) -> list[Config]:
    """Every configuration this machine can build, in a fixed order."""
    configs = []
    art = settings.workdir / "artifacts"
    for size in sizes:
        tag = f"{source.tag}_{size[0]}x{size[1]}"

        def onnx_fp32(size=size, tag=tag) -> Path:
            from export.onnx import export_onnx
            from train.models import load_model

            path = art / f"{tag}.onnx"
            if not path.is_file():
                export_onnx(load_model(source.path), path, *size, source=str(source.path))
            return path

        def calibration(size=size):
            from export.calibration import CalibrationSet

            folder, _ = calibration_folder(settings.calib_dir, settings.workdir, settings.calib_samples)
            return CalibrationSet(
                folder, settings.calib_samples, size, cache_dir=art / ".calib_cache", allow_fewer=True, progress=False
            )

        def ort_int8(tag=tag, calibration=calibration, onnx_fp32=onnx_fp32) -> Path:
            from export.quantize import quantize_int8

            source_onnx, path = onnx_fp32(), art / f"{tag}.int8-cpu.onnx"
            if not fresh(path, source_onnx):
                quantize_int8(source_onnx, calibration(), path, target="cpu", cache_dir=art / ".calib_cache")
            return path

        def ov_ir(precision: str, tag=tag, calibration=calibration, onnx_fp32=onnx_fp32) -> Path:
            from export.openvino import export_openvino

            source_onnx, path = onnx_fp32(), art / f"{tag}.{precision}.xml"
            if not fresh(path, source_onnx):
                export_openvino(source_onnx, path, precision, calibration() if precision == "int8" else None)
            return path

        def trt_engine(precision: str, tag=tag, size=size, onnx_fp32=onnx_fp32) -> Path:
            source_onnx, path = onnx_fp32(), art / f"{tag}.{precision}.engine"
            if not fresh(path, art / f"{tag}.{precision}.trt-{precision}.onnx"):
                folder, _ = calibration_folder(settings.calib_dir, settings.workdir, settings.calib_samples)
                argv = [
                    sys.executable,
                    "-m",
                    "export.trt",
                    f"--{precision}",
                    "--onnx",
                    str(source_onnx),
                    "--output",
                    str(path),
                    "--calib-dir",
                    str(folder),
                    "--calib-samples",
                    str(settings.calib_samples),
                    "--allow-fewer",
                ]
                run = subprocess.run(argv, capture_output=True, text=True)
                if run.returncode:
                    raise RuntimeError(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed")
            return path

        configs += [
            Config("torch", "fp32", size, lambda: source.path, "fp32", "cpu"),
            Config(
                "torch",
                "fp32",
                size,
                lambda: source.path,
                "fp32",
                "cpu",
                variant=EXPLICIT_ATTENTION,
                options={"attention": "explicit"},
            ),
            Config("torch", "bf16", size, lambda: source.path, "bf16", "cpu"),
            Config("onnxruntime", "fp32", size, onnx_fp32, device="cpu"),
            Config("onnxruntime", "int8", size, ort_int8, device="cpu"),
            Config("openvino", "fp16/f32", size, lambda ov_ir=ov_ir: ov_ir("fp16"), "fp32", "cpu"),
            Config("openvino", "fp16/bf16", size, lambda ov_ir=ov_ir: ov_ir("fp16"), "bf16", "cpu"),
            Config("openvino", "int8", size, lambda ov_ir=ov_ir: ov_ir("int8"), None, "cpu"),
        ]
        if gpu:
            configs += [
                Config("torch", "fp16", size, lambda: source.path, "fp16", "cuda"),
                Config("tensorrt", "fp16", size, lambda t=trt_engine: t("fp16"), device="cuda"),
                Config("tensorrt", "int8", size, lambda t=trt_engine: t("int8"), device="cuda"),
            ]
    return configs


def reference_outputs(source: ModelSource, images: dict[str, np.ndarray], size: tuple[int, int]) -> dict:
    """PyTorch FP32 on exactly the fixed-size input every artefact of this size sees."""
    from runtime import DepthPredictor

    predictor = DepthPredictor(source.path, device="cpu", precision="fp32", fixed_size=size)
    return {name: predictor.predict(image) for name, image in images.items()}


def run_config(
    config: Config,
    images_npz: Path,
    timing_image: str,
    settings: Settings,
    references: dict,
    ground_truth: dict[str, np.ndarray],
) -> None:
    """Fill ``config.result``: status, artefact size, latencies, memory and accuracy."""
    result = config.result
    try:
        artefact = config.build()
    except MissingDependencyError as exc:
        result.update(status=STATUS_UNAVAILABLE, error=str(exc))
        return
    except Exception as exc:  # a failed export is a row in the report, not the end of the run
        result.update(status=STATUS_EXPORT_FAILED, error=f"{exc.__class__.__name__}: {exc}")
        result["trace"] = traceback.format_exc(limit=3)
        return
    size_bytes = artefact.stat().st_size
    if artefact.suffix == ".xml":
        size_bytes += artefact.with_suffix(".bin").stat().st_size
    result.update(artefact=str(artefact), artefact_mib=size_bytes / 2**20)
    variant = "_" + config.options_tag if config.variant else ""
    stem = f"{config.backend}{variant}_{config.precision.replace('/', '-')}_{config.size[0]}x{config.size[1]}"
    config_path = settings.workdir / "runs" / f"{stem}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    outputs = config_path.with_suffix(".npz")
    config_path.write_text(
        json.dumps(
            {
                "model": str(artefact),
                "backend": config.backend,
                "device": config.device,
                "precision_arg": config.precision_arg,
                "backend_options": config.options,
                "size": list(config.size),
                "images": str(images_npz),
                "timing_image": timing_image,
                "warmup": settings.warmup,
                "runs": settings.runs,
                "outputs": str(outputs),
            }
        )
    )
    run = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(config_path)], capture_output=True, text=True)
    if run.returncode:
        lines = run.stderr.strip().splitlines()
        result.update(status=STATUS_RUN_FAILED, error=lines[-1] if lines else f"exit code {run.returncode}")
        return
    result.update(json.loads(config_path.with_suffix(".result.json").read_text()))
    predicted = dict(np.load(outputs))
    per_image = [depth_metrics(predicted[name], ref) for name, ref in references.items()]
    result["vs_fp32"] = {k: float(np.mean([m[k] for m in per_image])) for k in ("abs_rel", "delta1")}
    result["vs_gt"] = {
        name: depth_metrics(predicted[name], gt) for name, gt in ground_truth.items() if name in predicted
    }
    result["outputs"] = str(outputs)
    invalid = result["vs_fp32"]["abs_rel"] > settings.max_abs_rel
    result["status"] = STATUS_INVALID if invalid else STATUS_OK
