"""``python -m export.quantize``: calibrated INT8 (Q/DQ) and FP16-typed ONNX models.

The graph work is ONNX Runtime's (``onnxruntime.quantization``); this module picks what to
quantize and how:

- ``tensorrt`` target: symmetric INT8 activations and per-channel symmetric INT8 weights on
  Conv and on MatMul/Gemm with constant weights, explicit Q/DQ (TensorRT >= 8.5 reads it; 11
  reads nothing else). Weights stay float with a Q/DQ pair (the one form every release's
  developer guide documents; 8.x takes no pre-quantized weights) and biases stay float (an INT32
  bias DequantizeLinear does not parse: TensorRT dequantizes INT8 only). Attention's activation x
  activation MatMuls, Softmax, LayerNorm, GELU and residual adds are never quantized; the patch
  embedding and the last head convolutions stay in float by default (``--keep-fp`` adds more).
- ``cpu`` target: unsigned INT8 activations (the VNNI-friendly U8S8 form ONNX Runtime's CPU
  provider runs fastest), per-channel signed weights, same node choice.
- ``to_fp16``: the FP16-typed model a strongly typed TensorRT build (10.x, 11) needs, with
  float32 inputs/outputs, the build-time-constant subgraphs (shape arithmetic, the position
  embedding resize) and LayerNorm (whole or split) kept in float32. A Q/DQ model is moved to opset 19
  first so that its scales become FP16 too: one typed graph, no Cast pair around every Q/DQ.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import require
from runtime.fileio import atomic_write
from runtime.metadata import library_versions, read_sidecar, sha256_file, write_sidecar

from .calibration import CalibrationSet
from .common import ExportError, add_calibration_args, add_size_arg, run_cli, stage

METHODS = ("percentile", "entropy", "minmax")
# Percentile is the default: on ViT activations (long-tailed after LayerNorm and GELU) the
# KL/entropy rule clips too hard; measured on vits at 266x350 it gave 4x the error of 99.99 %.
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
TARGETS = ("tensorrt", "cpu")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Node names follow the PyTorch module path ("/pretrained/patch_embed/proj/Conv", ...).
DEFAULT_KEEP_FP = ("*/patch_embed/*", "*/output_conv1/*", "*/output_conv2/*")
# LayerNorm stays in float32 in FP16-typed graphs: its variance of large activations overflows
# FP16, and a strongly typed network computes a layer in its input's type (10.x NvInfer.h,
# INormalizationLayer::setComputePrecision: strongly typed networks take the precision from the
# input type), so the input itself must be float32. Likewise a LayerNorm split at opset < 17.
FP32_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt")
# QuantizeLinear-19/DequantizeLinear-19 are the first to take FP16 scales.
FP16_QDQ_OPSET = 19
PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class QuantizeResult:
    path: Path
    seconds: float
    calibration_seconds: float
    quantized: list[str] = field(default_factory=list)
    kept_fp: list[str] = field(default_factory=list)


def _load(path: Path):
    onnx = require("onnx", "onnx", "onnx")
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file (export one with python -m export.onnx)")
    return onnx.load(str(path))


def select_nodes(model, keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP) -> tuple[list[str], list[str]]:
    """Names of the Conv/MatMul/Gemm nodes to quantize, and of those kept in float by pattern.

    MatMuls whose second input is not a constant (attention's Q.K^T and A.V) are not candidates,
    nor are products that do not depend on the image (the position-embedding resize): they are
    folded at build time, and quantizing them would only add error.
    """
    from .fp16 import image_independent

    constants = {init.name for init in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    folded = image_independent(model)
    quantize, kept = [], []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.output[0] in folded:
            continue
        if node.op_type == "MatMul" and node.input[1] not in constants:
            continue
        if any(fnmatch.fnmatchcase(node.name, pattern) for pattern in keep_fp):
            kept.append(node.name)
        else:
            quantize.append(node.name)
    return quantize, kept


def calibration_tensors(model, nodes: list[str], with_outputs: bool) -> list[str]:
    """Activation tensors whose ranges the quantizer needs: inputs (and outputs) of ``nodes``."""
    constants = {init.name for init in model.graph.initializer}
    wanted = set(nodes)
    names: list[str] = []
    for node in model.graph.node:
        if node.name in wanted:
            for name in [node.input[0]] + ([node.output[0]] if with_outputs else []):
                if name not in constants and name not in names:
                    names.append(name)
    return names


def collect_ranges(
    model_path: Path,
    tensors: list[str],
    calibration: CalibrationSet,
    method: str,
    percentile: float,
    symmetric: bool,
    progress: bool = True,
) -> dict[str, tuple[float, float]]:
    """Run the calibration set once through ONNX Runtime, one sample at a time, and clip each
    tensor's histogram by ``method``; ``(lowest, highest)`` per tensor."""
    onnx = require("onnx", "onnx", "onnx")
    ort = require("onnxruntime", "onnx", "ONNX Runtime")
    from tqdm import tqdm

    from .histogram import AbsHistogram

    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    augmented = model_path.with_name("augmented.onnx")
    onnx.save_model(model, str(augmented), save_as_external_data=model.ByteSize() > PROTOBUF_LIMIT)
    session = ort.InferenceSession(str(augmented), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    histograms = {name: AbsHistogram() for name in tensors}
    for sample in tqdm(calibration, total=len(calibration), desc="calibrating", unit="img", disable=not progress):
        values = session.run(tensors, {input_name: sample})
        for name, value in zip(tensors, values):
            histograms[name].add(value)
    del session
    augmented.unlink()
    ranges = {}
    for name, histogram in histograms.items():
        t = histogram.threshold(method, percentile)
        ranges[name] = (-t, t) if symmetric else (max(histogram.lowest, -t), min(histogram.highest, t))
    return ranges


def _write_ort_ranges(ranges: dict[str, tuple[float, float]], path: Path) -> None:
    """Save ranges in ONNX Runtime's calibration-cache format, which ``quantize_static`` reads."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def quantize_int8(
    onnx_path: str | Path,
    calibration: CalibrationSet,
    output: str | Path,
    method: str = DEFAULT_METHOD,
    target: str = "tensorrt",
    keep_fp: tuple[str, ...] = (),
    percentile: float = DEFAULT_PERCENTILE,
    cache_dir: str | Path | None = None,
) -> QuantizeResult:
    """Calibrate ``onnx_path`` on ``calibration`` and write a Q/DQ INT8 model to ``output``, atomically.

    Activation ranges are cached in ``cache_dir`` under a key made of the model's hash, the
    calibration set's key and the method, so a rerun skips the slow part and a changed input
    never reuses stale ranges.
    """
    if method not in METHODS:
        raise ExportError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise ExportError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    q = require("onnxruntime.quantization", "onnx", "ONNX Runtime")
    onnx_path, output = Path(onnx_path), Path(output)
    model = _load(onnx_path)
    input_name = model.graph.input[0].name
    quantize, kept = select_nodes(model, DEFAULT_KEEP_FP + tuple(keep_fp))
    if not quantize:
        raise ExportError(f"{onnx_path}: no Conv/MatMul/Gemm node left to quantize after --keep-fp")
    source_hash = sha256_file(onnx_path)
    large = model.ByteSize() > PROTOBUF_LIMIT  # vitg: protobuf cannot hold it in one file
    symmetric = target == "tensorrt"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "MatMulConstBOnly": True,
        # TensorRT wants Q/DQ on the inputs of quantized ops only; ONNX Runtime's CPU kernels
        # need the output quantized too to fuse DQ -> Conv -> Q into QLinearConv.
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS) if symmetric else [],
    }
    if target == "tensorrt":
        # onnx-tensorrt's DequantizeLinear takes INT8 (8.x) or INT8/FP8/INT4 (10.x) inputs: an INT32
        # bias fails the parse. Float weights with a Q/DQ pair are what the 8.x guide documents.
        extra.update(QuantizeBias=False, AddQDQPairToWeight=True)
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        prepared = workdir / "prepared.onnx"
        # No symbolic shape inference: it stops on the dynamic decoder ("Incomplete symbolic shape
        # inference") and then drops sym_shape_infer_temp.onnx into the working directory; the
        # quantizer needs types, which ONNX's own inference gives.
        q.shape_inference.quant_pre_process(
            str(onnx_path),
            str(prepared),
            skip_optimization=True,
            skip_symbolic_shape=True,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
        )
        key = f"{source_hash[:16]}-{calibration.key}-{method}-{percentile}-{target}"
        ranges_path = (Path(cache_dir) if cache_dir is not None else workdir) / f"ranges-{key}.json"
        if not ranges_path.is_file():
            # Ranges of every candidate, whatever --keep-fp says: the cache (keyed by model and images)
            # then serves any later choice of layers, such as the accuracy budget's reverts.
            candidates, _ = select_nodes(model, ())
            tensors = calibration_tensors(_load(prepared), candidates, with_outputs=not symmetric)
            ranges = collect_ranges(prepared, tensors, calibration, method, percentile, symmetric)
            atomic_write(ranges_path, lambda tmp: _write_ort_ranges(ranges, tmp))
        calibration_seconds = time.perf_counter() - started
        staged = workdir / output.name
        q.quantize_static(
            str(prepared),
            str(staged),
            None,
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=quantize,
            op_types_to_quantize=list(QUANTIZED_OPS),
            use_external_data_format=large,
            calibrate_method=q.CalibrationMethod.MinMax,  # the label of our cached ranges
            extra_options=extra,
            calibration_cache_path=str(ranges_path),
        )
        # The external-data file (vitg) first, the model last: the name appears only when complete.
        for item in sorted(workdir.glob(output.name + "*"), key=lambda p: p.name == output.name):
            item.replace(output.parent / item.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - started
    source_meta = read_sidecar(onnx_path) or {}
    write_sidecar(
        output,
        {
            "format": "onnx",
            "precision": "int8",
            "target": target,
            "quantization": {
                "method": method,
                "percentile": percentile if method == "percentile" else None,
                "activations": "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
                "weights": "int8 symmetric per-channel",
                "quantized_nodes": len(quantize),
                "kept_fp": kept,
            },
            "calibration": calibration.describe(),
            "source_onnx": str(onnx_path),
            "source_sha256": source_hash,
            "input_name": input_name,
            "input_shape": source_meta.get("input_shape"),
            "encoder": source_meta.get("encoder"),
            "sha256": sha256_file(output),
            "seconds": round(seconds, 2),
            "calibration_seconds": round(calibration_seconds, 2),
            "versions": library_versions("onnx", "onnxruntime"),
        },
    )
    return QuantizeResult(output, seconds, calibration_seconds, quantize, kept)


def to_fp16(onnx_path: str | Path, output: str | Path, keep_fp32_ops: tuple[str, ...] = FP32_OPS) -> Path:
    """An FP16-typed copy of ``onnx_path`` with float32 I/O, for strongly typed TensorRT builds.

    A model with Q/DQ nodes is converted to opset 19 first, where their scales can be FP16: the
    whole quantized graph is then FP16, without a Cast pair around every Q/DQ (TensorRT >= 10).
    """
    from .fp16 import cast_counts, convert_opset, convert_to_fp16

    onnx = require("onnx", "onnx", "onnx")
    onnx_path, output = Path(onnx_path), Path(output)
    model = _load(onnx_path)
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if quantized and opset < FP16_QDQ_OPSET:
        model = convert_opset(model, FP16_QDQ_OPSET)
    converted = convert_to_fp16(model, keep_fp32_ops)
    large = converted.ByteSize() > PROTOBUF_LIMIT
    atomic_write(
        output,
        lambda tmp: onnx.save_model(converted, str(tmp), save_as_external_data=large, location=output.name + ".data"),
    )
    meta = dict(read_sidecar(onnx_path) or {})
    meta.update(
        precision="fp16" if meta.get("precision", "fp32") == "fp32" else f"{meta['precision']}+fp16",
        typed_fp16=True,
        opset=max(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")),
        fp32_ops=list(keep_fp32_ops),
        cast_nodes=dict(zip(("total", "per_frame"), cast_counts(converted))),
        source_onnx=str(onnx_path),
        source_sha256=sha256_file(onnx_path),
        sha256=sha256_file(output),
    )
    meta.pop("artefact", None)
    meta.pop("schema_version", None)
    write_sidecar(output, meta)
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description="Calibrate an ONNX model on SA-1B samples and write a Q/DQ INT8 ONNX (or an FP16-typed one).",
    )
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX from python -m export.onnx")
    parser.add_argument("--output", type=Path, help="output .onnx (default: beside the input, .int8.onnx)")
    parser.add_argument("--fp16", action="store_true", help="write the FP16-typed model instead (no calibration)")
    add_calibration_args(parser, METHODS, DEFAULT_METHOD, aliases=("--method",))
    add_size_arg(parser, "the model's, else 518x518", aliases=("--calib-shape",))
    parser.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help=f"for --calib-method percentile ({DEFAULT_PERCENTILE})",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="tensorrt",
        help="tensorrt: symmetric int8 activations; cpu: uint8 activations for ONNX Runtime's CPU provider",
    )
    parser.add_argument(
        "--keep-fp", action="append", default=[], metavar="PATTERN", help="node-name glob kept in float (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    return parser


def model_hw(onnx_path: Path) -> tuple[int, int] | None:
    """The fixed ``(H, W)`` of an ONNX model's input, ``None`` when dynamic."""
    model = _load(onnx_path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return (values[2], values[3]) if len(values) == 4 and values[2] and values[3] else None


def main(args: argparse.Namespace) -> int:
    if args.fp16:
        output = args.output or args.onnx.with_name(args.onnx.stem + ".fp16.onnx")
        with stage("converting to an FP16-typed graph"):
            to_fp16(args.onnx, output)
        print(f"wrote {output}")
        return 0
    if args.calib_dir is None:
        raise ExportError("INT8 needs calibration images: pass --calib-dir with SA-1B shards or an image folder")
    output = args.output or args.onnx.with_name(
        args.onnx.stem + f".int8{'' if args.target == 'tensorrt' else '-cpu'}.onnx"
    )
    from .accuracy import export_int8

    shape = args.size or model_hw(args.onnx) or (518, 518)
    output.parent.mkdir(parents=True, exist_ok=True)
    export_int8(
        args.onnx,
        output,
        args.calib_dir,
        args.calib_samples,
        shape,
        args.accuracy_budget,
        args.accuracy_images,
        args.smooth,
        args.calib_method,
        args.target,
        tuple(args.keep_fp),
        args.seed,
        args.allow_fewer,
        args.percentile,
    )
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, build_parser(), None))
