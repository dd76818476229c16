"""The makers ``export.formats.export()`` calls, one per row of its table: each turns the
parameters into the format's library call and returns the record of what was written."""

from __future__ import annotations

from pathlib import Path

from .errors import ExportRequestError


def make_onnx(source, output: Path, precision: str, options: dict):
    from train.models import load_model

    from .onnx import export_onnx

    model = load_model(source) if isinstance(source, (str, Path)) else source
    size = options.get("size") or (518, 518)
    return export_onnx(
        model,
        output,
        *size,
        dynamic=options.get("dynamic", False),
        **{k: options[k] for k in ("opset", "slim", "verify") if k in options},
        source=str(source) if isinstance(source, (str, Path)) else "",
    ).artefact


def make_quantized(source, output: Path, precision: str, options: dict):
    from .artefact import Artefact

    record = Artefact.of(source)
    if precision == "fp16":
        from .quantize.fp16 import fp16_artefact

        return fp16_artefact(record, output)
    target = options.get("target", "tensorrt")
    if options.get("int8") is not None:  # calibration images read from int8.calib_dir, the budget held
        from .graph import input_hw, load_onnx
        from .quantize.budget import export_int8

        size = options.get("size") or input_hw(load_onnx(record.path, load_external_data=False)) or (518, 518)
        return export_int8(record, output, options["int8"], size, target)
    if options.get("calibration") is None:
        raise ExportRequestError("precision 'int8' needs int8 (Int8Options with calib_dir) or calibration images")
    from .quantize.qdq import quantize_int8

    return quantize_int8(
        record, options["calibration"], output, target=target, cache_dir=options.get("cache_dir")
    ).artefact


def make_openvino(source, output: Path, precision: str, options: dict):
    from .openvino import export_openvino

    return export_openvino(
        source, output, precision, options.get("calibration"), options.get("size"), options.get("int8")
    )


def make_tensorrt(source, output: Path, precision: str, options: dict):
    """A record is handed down as it is (its sidecar is not read again); a path names an ONNX, or
    a checkpoint to export first."""
    from .artefact import Artefact
    from .trt.build import TrtRequest, build_trt

    if isinstance(source, Artefact):
        return build_trt(TrtRequest(precision, onnx=source, output=output, **options))
    if Path(source).suffix != ".onnx":
        return build_trt(TrtRequest(precision, checkpoint=Path(source), output=output, **options))
    return build_trt(TrtRequest(precision, onnx=Path(source), output=output, **options))
