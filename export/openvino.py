"""``python -m export.openvino``: OpenVINO IR in FP16 (compressed weights) or INT8 (NNCF).

INT8 is NNCF post-training quantization with its transformer preset on the same SA-1B
``CalibrationSet`` the TensorRT path uses. The IR is verified against the FP32 model (forced
to f32 inference, since OpenVINO otherwise runs bf16 on CPUs that have it) before it lands.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.errors import require
from runtime.metadata import library_versions, read_sidecar, sha256_file, write_sidecar

from .common import (
    PRECISIONS,
    ExportError,
    add_precision_args,
    add_source_args,
    check_precision,
    check_request,
    parse_hw,
    run_cli,
    source_onnx,
    source_stem,
)
from .onnx import compare, verification_input


def _compile_f32(ov, model):
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def export_openvino(
    onnx_path: str | Path,
    output: str | Path,
    precision: str = "fp16",
    calibration=None,
    verify_shape: tuple[int, int] | None = None,
) -> dict:
    """Convert an ONNX model to IR at ``output`` (``.xml`` + ``.bin``); returns the sidecar data."""
    ov = require("openvino", "openvino", "OpenVINO")
    onnx_path, output = Path(onnx_path), Path(output)
    check_precision(precision)
    if output.suffix != ".xml":
        raise ExportError(f"{output}: OpenVINO IR files end in .xml")
    if precision == "int8" and calibration is None:
        raise ExportError("INT8 needs calibration images: pass --calib-dir with SA-1B shards or an image folder")
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: no such ONNX file")
    started = time.perf_counter()
    model = ov.convert_model(str(onnx_path))
    reference = _compile_f32(ov, model)
    quantization = None
    if precision == "int8":
        nncf = require("nncf", "openvino", "NNCF")
        dataset = nncf.Dataset(list(calibration), lambda sample: sample)
        model = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
        quantization = {"tool": "nncf", "preset": "mixed", "model_type": "transformer"}
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staged = workdir / output.name
        ov.save_model(model, str(staged), compress_to_fp16=precision != "fp32")
        shape = verify_shape or _static_hw(model) or (518, 518)
        batch = verification_input(*shape)
        expected = reference({0: batch})[0]
        got = _compile_f32(ov, ov.Core().read_model(str(staged)))({0: batch})[0]
        check = compare(np.asarray(got), np.asarray(expected))
        staged.with_suffix(".bin").replace(output.with_suffix(".bin"))
        staged.replace(output)  # the .xml last: a complete pair appears at once
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    source_meta = read_sidecar(onnx_path) or {}
    data = {
        "format": "openvino",
        "precision": precision,
        "input_name": model.input(0).any_name,
        "input_shape": [d.get_length() if d.is_static else None for d in model.input(0).get_partial_shape()],
        "encoder": source_meta.get("encoder"),
        "source_onnx": str(onnx_path),
        "source_sha256": sha256_file(onnx_path),
        "quantization": quantization,
        "calibration": calibration.describe() if calibration is not None else None,
        "verification": {f"{shape[0]}x{shape[1]}": vars(check), "against": "fp32 model, f32 inference"},
        "seconds": round(time.perf_counter() - started, 2),
        "sha256": sha256_file(output.with_suffix(".bin")),
        "versions": library_versions("openvino", "nncf"),
    }
    write_sidecar(output, data)
    return data


def _static_hw(model) -> tuple[int, int] | None:
    shape = model.input(0).get_partial_shape()
    if shape.is_static:
        return int(shape[2].get_length()), int(shape[3].get_length())
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.openvino",
        description="Convert to OpenVINO IR: FP16 (default) or INT8 calibrated with NNCF on SA-1B samples.",
    )
    add_source_args(parser, onnx=True)
    add_precision_args(parser, {name: f"{name.upper()} IR" for name in PRECISIONS}, "fp16")
    parser.add_argument("--shape", type=parse_hw, default=(518, 518), help="static input HxW (default 518x518)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--calib-dir", type=Path, help="SA-1B tar shards or an image folder (INT8)")
    parser.add_argument("--calib-samples", type=int, default=300, help="calibration images (default 300)")
    parser.add_argument("--allow-fewer", action="store_true", help="calibrate on fewer images than asked if short")
    parser.add_argument("--output", type=Path, help="IR path (default artifacts/<model>.<precision>.xml)")
    return parser


def main(args: argparse.Namespace) -> int:
    check_request(args)
    output = args.output or Path("artifacts") / f"{source_stem(args)}.{args.precision}.xml"
    height, width = args.shape
    output.parent.mkdir(parents=True, exist_ok=True)
    source = source_onnx(args, output.parent, height, width, args.dynamic)
    calibration = None
    if args.precision == "int8":
        from .calibration import CalibrationSet

        calibration = CalibrationSet(
            args.calib_dir,
            args.calib_samples,
            (height, width),
            cache_dir=output.parent / ".calib_cache",
            allow_fewer=args.allow_fewer,
        )
        print(calibration.report.summary())
    data = export_openvino(source, output, args.precision, calibration, (height, width))
    size = output.with_suffix(".bin").stat().st_size / 2**20
    ((shape, check),) = ((k, v) for k, v in data["verification"].items() if k != "against")
    print(f"wrote {output} (+ .bin, {size:.1f} MiB) in {data['seconds']:.1f} s")
    print(f"  vs FP32 at {shape}: max rel {check['max_rel']:.2e} (of peak), mean abs {check['mean_abs']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, build_parser(), None))
