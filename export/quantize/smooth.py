"""Outlier migration before INT8 (SmoothQuant, Xiao et al. 2023), on the FP32 ONNX graph.

A LayerNorm-fed linear computes ``(g * n + b) @ W``. Dividing the LayerNorm's gain and bias by a
per-channel ``s`` and multiplying the matching rows of ``W`` by ``s`` gives the same product in
exact arithmetic, while the activation the quantizer sees, ``(g * n + b) / s``, loses its outlier
channels and the weight (quantized per output channel) absorbs them. With
``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)``, rounded to a power of two (so the rescaling is
exact in floating point), both sides end up with comparable ranges.

Works on LayerNormalization ops (opset >= 17) and on a LayerNorm split into ops whose affine is a
``Mul`` by a constant gain and an ``Add`` of a constant bias (opset 16, TensorRT 8.5), when every
consumer of the LayerNorm's output is a MatMul with a constant weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import require

from ..graph import Graph, load_onnx, save_onnx

DEFAULT_ALPHA = 0.5


@dataclass
class SmoothSite:
    """One LayerNorm whose output feeds only constant-weight MatMuls."""

    output: str  # the activation the MatMuls read
    gain: tuple[Any, int]  # (node, input index) of the affine gain and bias initializers
    bias: tuple[Any, int] | None
    matmuls: list[Any]


def _model(source: Any) -> Any:
    """A private copy of ``source``: an ``onnx.ModelProto`` or the path of one."""
    if isinstance(source, (str, Path)):
        return load_onnx(source)
    copy = type(source)()
    copy.CopyFrom(source)
    return copy


def find_sites(model: Any) -> list[SmoothSite]:
    graph = Graph(model)
    initializers = {init.name for init in model.graph.initializer}

    def is_weights(tensor: str) -> bool:  # an initializer, also behind Identity nodes: it can be rescaled
        return graph.weight_source(tensor) in initializers

    sites = []
    for tensor in graph.consumers:
        readers = graph.users(tensor)
        if not all(n.op_type == "MatMul" and n.input[0] == tensor and is_weights(n.input[1]) for n in readers):
            continue
        node = graph.producer.get(tensor)
        if node is None:
            continue
        if node.op_type == "LayerNormalization" and len(node.input) >= 2 and is_weights(node.input[1]):
            bias = (node, 2) if len(node.input) > 2 and is_weights(node.input[2]) else None
            sites.append(SmoothSite(tensor, (node, 1), bias, readers))
            continue
        # split LayerNorm: Div -> Mul(gain) -> Add(bias)
        if node.op_type == "Add" and is_weights(node.input[1]):
            mul = graph.producer.get(node.input[0])
            if (
                mul is not None
                and mul.op_type == "Mul"
                and is_weights(mul.input[1])
                and graph.producer.get(mul.input[0]) is not None
                and graph.producer[mul.input[0]].op_type == "Div"
                and len(graph.users(mul.output[0])) == 1
            ):
                sites.append(SmoothSite(tensor, (mul, 1), (node, 1), readers))
    return sites


def channel_maxima(source: Any, tensors: list[str], samples, limit: int = 64) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of ``tensors`` over up to ``limit`` samples, with ONNX Runtime.
    ``source``: an ``onnx.ModelProto`` or the path of one."""
    onnx = require("onnx", "onnx", "onnx")
    ort = require("onnxruntime", "onnx", "ONNX Runtime")
    model = _model(source)
    existing = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    maxima: dict[str, np.ndarray] = {}
    for index, sample in enumerate(samples):
        if index == limit:
            break
        for name, value in zip(tensors, session.run(tensors, {input_name: sample}), strict=True):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = peak if name not in maxima else np.maximum(maxima[name], peak)
    return maxima


def smooth(source: Any, output: Path, samples, alpha: float = DEFAULT_ALPHA) -> int:
    """Write the migrated model to ``output``; returns how many LayerNorm sites were smoothed.
    ``source``: an ``onnx.ModelProto`` (left unchanged) or the path of one."""
    from onnx import numpy_helper

    model = _model(source)
    sites = find_sites(model)
    graph = Graph(model)
    inits = {init.name: init for init in model.graph.initializer}
    maxima = channel_maxima(model, [s.output for s in sites], samples) if sites else {}
    for number, site in enumerate(sites):
        weights = [numpy_helper.to_array(inits[graph.weight_source(m.input[1])]) for m in site.matmuls]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # per input channel (row)
        scale = np.power(np.maximum(maxima[site.output], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        # Powers of two: dividing the gain and multiplying the weight rows by them is exact in floating
        # point, so the migrated model computes bit for bit what the original does.
        scale = np.exp2(np.round(np.log2(np.clip(scale, 2.0**-10, 2.0**10)))).astype(np.float32)
        for place in (site.gain, site.bias):
            if place is not None:
                # A copy per site: the exporter shares identical initializers (every fresh LayerNorm
                # gain is the same vector of ones), and only this LayerNorm may change.
                node, index = place
                name = f"{node.input[index]}__smooth_{number}"
                scaled = numpy_helper.to_array(inits[graph.weight_source(node.input[index])]) / scale
                model.graph.initializer.append(numpy_helper.from_array(scaled.astype(np.float32), name))
                node.input[index] = name
        for matmul, weight in zip(site.matmuls, weights, strict=True):
            name = f"{matmul.input[1]}__smooth_{number}"
            model.graph.initializer.append(numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), name))
            matmul.input[1] = name
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    save_onnx(model, output)
    return len(sites)
