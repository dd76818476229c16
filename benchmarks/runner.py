"""The rows of a benchmark: every backend x precision x size this machine can build, built once
(cached while their inputs are unchanged), then handed to ``benchmarks.rounds`` to time, and
scored against PyTorch FP32."""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commands.errors import MissingDependencyError

from .artifacts import ModelSource, calibration_folder, fresh
from .cpu import CpuFeatures
from .roofline import compute_format
from .stats import depth_metrics, kind_metrics, kind_wording

STATUS_OK = "ok"
STATUS_INVALID = "exported but failed validation"
STATUS_EXPORT_FAILED = "export failed"
STATUS_UNAVAILABLE = "unavailable"
STATUS_RUN_FAILED = "run failed"
STATUS_REFUSED = "refused"  # measured, but impossible: see benchmarks.checks
# PyTorch eager as the official repository runs on a CPU (no xformers there): the speed users
# of the official scripts see today, next to this toolkit's fused-attention PyTorch baseline.
EXPLICIT_ATTENTION = "explicit attention, as the official code"
GPU = "CUDA"


class Phases:
    """Wall time per phase of a run (export, calibration, rows, ...), for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.prefix = ""  # e.g. "size sweep: " while the size sweep builds and times its rows

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        name = self.prefix + name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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
    needs: str | None = None  # a number format this row is only worth timing with native units for
    reference: Path | None = None  # the artefact's reference: its worker checks it against it (--model)
    job: Path | None = None  # the worker's config file, once the artefact is built
    result: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = f"{self.backend} ({self.variant})" if self.variant else self.backend
        return f"{name} {self.precision} {self.size[0]}x{self.size[1]}"

    @property
    def kind(self) -> tuple[str, str, str | None]:
        """What the row is apart from its size (the size sweep times one kind at several sizes)."""
        return self.backend, self.precision, self.variant

    @property
    def stem(self) -> str:
        options = "-".join(f"{k}-{v}" for k, v in sorted(self.options.items())) or self.device
        # Variants of one backend and precision differ in their options, or only in their name.
        variant = "_" + re.sub(r"[^A-Za-z0-9.]+", "-", f"{options}-{self.variant}").strip("-") if self.variant else ""
        return f"{self.backend}{variant}_{self.precision.replace('/', '-')}_{self.size[0]}x{self.size[1]}"

    def row(self) -> dict:
        return {
            "backend": self.backend,
            "variant": self.variant,
            "precision": self.precision,
            "size": list(self.size),
            **self.result,
        }


@dataclass
class Settings:
    workdir: Path
    warmup: int
    runs: int
    rounds: int
    calib_dir: Path | None
    calib_samples: int
    max_abs_rel: float
    cpu: CpuFeatures
    emulated: bool = False  # time formats this CPU only emulates
    phases: Phases = field(default_factory=Phases)
    profile_calls: int = 3  # profiled model calls per row after the rounds (0: no profiles)
    throughput: str = "fastest"  # rows whose frames per second are measured: fastest per backend, all, none
    cameras: tuple[int, ...] = (1, 2, 4)
    throughput_frames: int = 12  # frames per throughput measurement

    @property
    def calls_per_round(self) -> int:
        return -(-self.runs // self.rounds)


def make_configs(source: ModelSource, sizes: list[tuple[int, int]], settings: Settings, gpu: bool) -> list[Config]:
    """Every configuration this machine can build, in a fixed order."""
    configs = []
    art = settings.workdir / "artifacts"
    int8_floats = "bf16" if settings.cpu.native("bf16") else None
    phases = settings.phases
    for size in sizes:
        tag = f"{source.tag}_{size[0]}x{size[1]}"

        def onnx_fp32(size=size, tag=tag) -> Path:
            from export.formats import export

            path = art / f"{tag}.onnx"
            if not path.is_file():
                with phases.timed("export"):
                    export("onnx", source.path, path, size=size)
            return path

        def calibration(size=size):
            """The INT8 calibration set; refuses (CalibrationError) when too few images are usable,
            so no INT8 artefact is ever built from nothing."""
            from export.quantize.calibration import CalibrationSet

            folder, _ = calibration_folder(settings.calib_dir, settings.workdir, settings.calib_samples)
            with phases.timed("calibration images"):
                return CalibrationSet(
                    folder,
                    settings.calib_samples,
                    size,
                    cache_dir=art / ".calib_cache",
                    allow_fewer=True,
                    progress=False,
                )

        def ort_int8(tag=tag, calibration=calibration, onnx_fp32=onnx_fp32) -> Path:
            from export.formats import export

            source_onnx, calib = onnx_fp32(), calibration()
            # Named by the calibration set's content key: other images never reuse this artefact.
            path = art / f"{tag}.int8-cpu.{calib.key[:12]}.onnx"
            if not fresh(path, source_onnx):
                with phases.timed("INT8 quantization"):
                    export(
                        "onnx-quantized",
                        source_onnx,
                        path,
                        "int8",
                        calibration=calib,
                        target="cpu",
                        cache_dir=art / ".calib_cache",
                    )
            return path

        def ov_ir(precision: str, tag=tag, calibration=calibration, onnx_fp32=onnx_fp32) -> Path:
            from export.formats import export

            source_onnx = onnx_fp32()
            calib = calibration() if precision == "int8" else None
            path = art / (f"{tag}.int8.{calib.key[:12]}.xml" if calib else f"{tag}.{precision}.xml")
            if not fresh(path, source_onnx):
                with phases.timed("INT8 quantization" if calib else "export"):
                    export("openvino", source_onnx, path, precision, calibration=calib)
            return path

        def trt_engine(precision: str, tag=tag, onnx_fp32=onnx_fp32) -> Path:
            from export.formats import export
            from export.quantize.options import Int8Options

            source_onnx, path = onnx_fp32(), art / f"{tag}.{precision}.engine"
            if not fresh(path, art / f"{tag}.{precision}.trt-{precision}.onnx"):
                folder, _ = calibration_folder(settings.calib_dir, settings.workdir, settings.calib_samples)
                int8 = Int8Options(folder, settings.calib_samples, allow_fewer=True)
                with phases.timed("export"):
                    export("tensorrt", source_onnx, path, precision, int8=int8)
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
            Config("torch", "bf16", size, lambda: source.path, "bf16", "cpu", needs="bf16"),
            Config("onnxruntime", "fp32", size, onnx_fp32, device="cpu"),
            Config("onnxruntime", "int8", size, ort_int8, device="cpu"),
            Config("openvino", "fp16/f32", size, lambda ov_ir=ov_ir: ov_ir("fp16"), "fp32", "cpu"),
            Config("openvino", "fp16/bf16", size, lambda ov_ir=ov_ir: ov_ir("fp16"), "bf16", "cpu", needs="bf16"),
            # The INT8 IR's float parts (softmax, norms) in bf16 where the CPU has the units: 1.19x
            # the f32 model call for vits 518 on AVX512-BF16 at the same AbsRel (benchmarks.levers).
            Config("openvino", "int8", size, lambda ov_ir=ov_ir: ov_ir("int8"), int8_floats, "cpu"),
        ]
        if gpu:
            configs += [
                # PyTorch on the GPU at both precisions: FP32 is the GPU's own baseline (vits at batch
                # 1 is launch-bound on a big GPU: FP16 gained only 1.2x on an H200).
                Config("torch", "fp32", size, lambda: source.path, "fp32", "cuda", variant=GPU),
                Config("torch", "fp16", size, lambda: source.path, "fp16", "cuda", variant=GPU),
                Config("tensorrt", "fp16", size, lambda t=trt_engine: t("fp16"), device="cuda"),
                Config("tensorrt", "int8", size, lambda t=trt_engine: t("int8"), device="cuda"),
            ]
    return configs


def reference_outputs(source: ModelSource, images: dict[str, np.ndarray], size: tuple[int, int]) -> dict:
    """PyTorch FP32 on exactly the fixed-size input every artefact of this size sees."""
    from runtime import DepthPredictor

    predictor = DepthPredictor(source.path, device="cpu", precision="fp32", fixed_size=size)
    if predictor.is_stream_model:  # the images as one stream, in order, as every row runs them
        return dict(zip(images, predictor.stream(list(images.values()))))
    return {name: predictor.predict(image) for name, image in images.items()}


def prepare(config: Config, settings: Settings, images_npz: Path, timing_image: str, group: str = "runs") -> bool:
    """Build the row's artefact and write its worker's config (under ``group`` in the work dir);
    on failure (or a format this CPU only emulates) fill ``config.result`` with the status and
    reason instead."""
    result = config.result
    if config.needs and not settings.cpu.native(config.needs) and not settings.emulated:
        result.update(
            status=STATUS_UNAVAILABLE,
            error=f"no native {config.needs} on this CPU; --emulated-formats times it anyway",
        )
        return False
    try:
        artefact = config.build()
    except MissingDependencyError as exc:
        result.update(status=STATUS_UNAVAILABLE, error=str(exc))
        return False
    except Exception as exc:  # a failed export is a row in the report, not the end of the run
        result.update(status=STATUS_EXPORT_FAILED, error=f"{exc.__class__.__name__}: {exc}")
        result["trace"] = traceback.format_exc(limit=3)
        return False
    size_bytes = artefact.stat().st_size
    if artefact.is_dir():  # a checkpoint snapshot folder: its files
        size_bytes = sum(p.stat().st_size for p in artefact.iterdir() if p.is_file())
    if artefact.suffix == ".xml":
        size_bytes += artefact.with_suffix(".bin").stat().st_size
    result.update(artefact=str(artefact), artefact_mib=size_bytes / 2**20)
    job = settings.workdir / group / f"{config.stem}.json"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(
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
                "reference": str(config.reference) if config.reference else None,
            }
        )
    )
    config.job = job
    return True


def computes_in(config: Config) -> str:
    """The format a row's matrix work runs in: OpenVINO's as compiled (read by the worker from
    the runtime model), otherwise the one its label names."""
    execution = config.result.get("execution") or {}
    return execution.get("format") or compute_format(config.precision)


def score(config: Config, references: dict, ground_truth: dict[str, np.ndarray], max_abs_rel: float) -> None:
    """Accuracy of a timed row against PyTorch FP32 at its size (and ground truth where known)."""
    result = config.result
    predicted = dict(np.load(result["outputs"]))
    # As the model's output kind means its numbers (depth up to scale: a scale alone, in depth).
    kind = ((result.get("info") or {}).get("output") or {}).get("kind") or "relative"
    per_image = [kind_metrics(predicted[name], ref, kind) for name, ref in references.items()]
    result["vs_fp32"] = {k: float(np.mean([m[k] for m in per_image])) for k in ("abs_rel", "delta1")}
    result["vs_fp32"]["metric"] = kind_wording(kind)
    # The ground truth is disparity (the bundled stereo pair): comparable with relative models only.
    result["vs_gt"] = (
        {name: depth_metrics(predicted[name], gt) for name, gt in ground_truth.items() if name in predicted}
        if kind == "relative"
        else {}
    )
    result["status"] = STATUS_INVALID if result["vs_fp32"]["abs_rel"] > max_abs_rel else STATUS_OK
