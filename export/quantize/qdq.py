"""Calibrated INT8 (Q/DQ) ONNX models: which nodes, which ranges, and the Q/DQ graph.

The graph work is ONNX Runtime's (``onnxruntime.quantization``); this module picks what to
quantize and how:

- ``tensorrt`` target: symmetric INT8 activations and per-channel symmetric INT8 weights on
  Conv and on MatMul/Gemm with constant weights, explicit Q/DQ (TensorRT >= 8.5 reads it; 11
  reads nothing else). Weights stay float with a Q/DQ pair (the one form every release's
  developer guide documents; 8.x takes no pre-quantized weights) and biases stay float (an INT32
  bias DequantizeLinear does not parse: TensorRT dequantizes INT8 only). Attention's activation x
  activation MatMuls, Softmax, LayerNorm, GELU and residual adds are never quantized; the patch
  embedding and the last head convolutions stay in float by default (``--keep-fp`` adds more).
- ``cpu`` target: unsigned INT8 activations, per-channel weights, same node choice, in the form
  of the CPUs it is for (``CPU_FORMS``, chosen by the INT8 arithmetic, ``runtime.int8_cpu``):
  full-range signed weights (U8S8, what VNNI, AMX and ARM dot-product CPUs run fastest) or, for
  x86 CPUs without VNNI, whose pairwise 16-bit sums saturate on full-range weights, 7-bit signed
  weights (``reduce_range``). ``docs/int8-cpus.md`` has the measured error and speed of each form.
"""

from __future__ import annotations

import fnmatch
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from commands.errors import require
from runtime.io.files import atomic_write, staging_dir
from runtime.metadata import artefact_digest, library_versions

from ..artefact import Artefact
from ..errors import ExportRequestError
from ..graph import PROTOBUF_LIMIT, Graph, load_onnx
from .arithmetic import CPU_FORMS, CpuPlan
from .calibration import CalibrationSet
from .histogram import AbsHistogram
from .options import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS

TARGETS = ("tensorrt", "cpu")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Node names follow the PyTorch module path ("/pretrained/patch_embed/proj/Conv", ...). The output
# convolutions stay in float: depth (and DA3-Small/Base's depth confidence, the same convolutions'
# second channel) comes out of them through exp. So does DA3Mono/Metric's sky head
# (``sky_output_conv2``, two small convolutions beside ``output_conv2``): its map is thresholded at
# 0.3, and every pixel that crosses it gets the invented far depth of the sky step.
DEFAULT_KEEP_FP = ("*/patch_embed/*", "*/output_conv1/*", "*/output_conv2/*", "*/sky_output_conv2/*")


@dataclass
class QuantizeResult:
    path: Path
    seconds: float
    calibration_seconds: float
    quantized: list[str] = field(default_factory=list)
    kept_fp: list[str] = field(default_factory=list)
    artefact: Artefact | None = None  # the record of what was written (its sidecar's facts)


def select_nodes(model, keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP) -> tuple[list[str], list[str]]:
    """Names of the Conv/MatMul/Gemm nodes to quantize, and of those kept in float by pattern.

    MatMuls whose second input is not a constant (attention's Q.K^T and A.V) are not candidates,
    nor are products that do not depend on the image (the position-embedding resize): they are
    folded at build time, and quantizing them would only add error.
    """
    graph = Graph(model)
    folded = graph.image_independent()
    quantize, kept = [], []
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.output[0] in folded:
            continue
        if node.op_type == "MatMul" and not graph.is_constant(node.input[1]):
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

    model = load_onnx(model_path)
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
        # a sample is an image batch, or every input's feed (a stream's: export.quantize.stream_qdq)
        values = session.run(tensors, sample if isinstance(sample, dict) else {input_name: sample})
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
    onnx_path: str | Path | Artefact,
    calibration: CalibrationSet,
    output: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    target: str = "tensorrt",
    keep_fp: tuple[str, ...] = (),
    percentile: float = DEFAULT_PERCENTILE,
    cache_dir: str | Path | None = None,
    form: str | None = None,
    arithmetic: str = "auto",
    write: bool = True,
    model_key: str | None = None,
) -> QuantizeResult:
    """Calibrate ``onnx_path`` (a path, or the record of the source) on ``calibration`` and write a
    Q/DQ INT8 model to ``output``, atomically; the result carries the new file's record, which is
    also written to its sidecar unless ``write`` is off (a step whose caller finishes the record).

    Activation ranges are cached in ``cache_dir`` under a key made of the model's hash, the
    calibration set's key and the method, so a rerun skips the slow part and a changed input
    never reuses stale ranges. The cpu target's weights take the form of the CPUs of ``arithmetic``
    (``auto``: this CPU's class; ``export.quantize.arithmetic``) unless ``form`` (a key of
    ``CPU_FORMS``) names one. ``model_key`` stands for the source's hash in that key where the
    source is derived in a working folder and its record carries none (a smoothed copy).
    """
    if method not in METHODS:
        raise ExportRequestError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise ExportRequestError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if target == "tensorrt" and (form is not None or arithmetic != "auto"):
        raise ExportRequestError("the INT8 arithmetic (weight form) is the cpu target's; TensorRT has its own kernels")
    plan = None
    if target == "cpu":
        plan = CpuPlan.of(arithmetic)
        form = form or plan.form
        if form not in CPU_FORMS:
            raise ExportRequestError(f"the cpu target's form must be one of {', '.join(CPU_FORMS)}, got {form!r}")
    q = require("onnxruntime.quantization", "onnx", "ONNX Runtime")
    source = Artefact.of(onnx_path)
    onnx_path, output = source.path, Path(output)
    model = load_onnx(onnx_path)
    input_name = model.graph.input[0].name
    quantize, kept = select_nodes(model, DEFAULT_KEEP_FP + tuple(keep_fp))
    if not quantize:
        raise ExportRequestError(f"{onnx_path}: no Conv/MatMul/Gemm node left to quantize after `keep_fp`")
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
    workdir = staging_dir(output)  # .<name>.<pid>-<host>.<random>: the next run removes it if this one is killed
    # The model's hash, with the calibration set's key, keys the cached ranges: the record's own
    # (or ``model_key``, a hash of what a model derived in a working folder is made of, such as a
    # smoothed one: its first 16 characters differ from the source's).
    source_hash = model_key or source.sha256
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
            tensors = calibration_tensors(load_onnx(prepared), candidates, with_outputs=not symmetric)
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
            weight_type=getattr(q.QuantType, CPU_FORMS[form][0] if form else "QInt8"),
            per_channel=True,
            reduce_range=bool(form and CPU_FORMS[form][1]),
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
    record = source.made(
        output,
        {
            "format": "onnx",
            "precision": "int8",
            "target": target,
            "quantization": {
                "method": method,
                "percentile": percentile if method == "percentile" else None,
                "activations": "int8 symmetric" if target == "tensorrt" else "uint8 asymmetric",
                "weights": {None: "int8", "u8s8": "int8", "u8s7": "int7 (reduce_range)", "u8u8": "uint8"}[form]
                + " symmetric per-channel",
                "form": form,
                "quantized_nodes": len(quantize),
                "kept_fp": kept,
            },
            **({"int8_cpu": {**plan.record(), "form": form}} if plan is not None else {}),
            "calibration": calibration.describe(),
            "source_onnx": str(onnx_path),
            "source_sha256": source_hash,
            "input_name": input_name,
            "input_shape": source.get("input_shape"),
            "encoder": source.encoder,
            "licence": source.licence,
            **source.identity(),
            "sha256": artefact_digest(output),
            "seconds": round(seconds, 2),
            "calibration_seconds": round(calibration_seconds, 2),
            "versions": library_versions("onnx", "onnxruntime"),
        },
    )
    if write:
        record.write()
    return QuantizeResult(output, seconds, calibration_seconds, quantize, kept, record)
