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

from runtime.errors import require

DEFAULT_ALPHA = 0.5


@dataclass
class SmoothSite:
    """One LayerNorm whose output feeds only constant-weight MatMuls."""

    output: str  # the activation the MatMuls read
    gain: tuple[Any, int]  # (node, input index) of the affine gain and bias initializers
    bias: tuple[Any, int] | None
    matmuls: list[Any]


def constant_source(model: Any, name: str) -> str | None:
    """The initializer behind ``name``, through the Identity nodes the exporter writes for shared weights."""
    inits = {init.name for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    while name not in inits:
        node = producer.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return name


def find_sites(model: Any) -> list[SmoothSite]:
    producer = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    constants |= {
        out
        for node in model.graph.node
        if node.op_type == "Identity"
        for out in node.output
        if constant_source(model, out)
    }
    users: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    sites = []
    for tensor, readers in users.items():
        if not all(n.op_type == "MatMul" and n.input[0] == tensor and n.input[1] in constants for n in readers):
            continue
        node = producer.get(tensor)
        if node is None:
            continue
        if node.op_type == "LayerNormalization" and len(node.input) >= 2 and node.input[1] in constants:
            bias = (node, 2) if len(node.input) > 2 and node.input[2] in constants else None
            sites.append(SmoothSite(tensor, (node, 1), bias, readers))
            continue
        # split LayerNorm: Div -> Mul(gain) -> Add(bias)
        if node.op_type == "Add" and node.input[1] in constants:
            mul = producer.get(node.input[0])
            if (
                mul is not None
                and mul.op_type == "Mul"
                and mul.input[1] in constants
                and producer.get(mul.input[0]) is not None
                and producer[mul.input[0]].op_type == "Div"
                and len(users.get(mul.output[0], [])) == 1
            ):
                sites.append(SmoothSite(tensor, (mul, 1), (node, 1), readers))
    return sites


def channel_maxima(model_path: Path, tensors: list[str], samples, limit: int = 64) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of ``tensors`` over up to ``limit`` samples, with ONNX Runtime."""
    onnx = require("onnx", "onnx", "onnx")
    ort = require("onnxruntime", "onnx", "ONNX Runtime")
    model = onnx.load(str(model_path))
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


def smooth(model_path: Path, output: Path, samples, alpha: float = DEFAULT_ALPHA) -> int:
    """Write the migrated model to ``output``; returns how many LayerNorm sites were smoothed."""
    onnx = require("onnx", "onnx", "onnx")
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    sites = find_sites(model)
    inits = {init.name: init for init in model.graph.initializer}
    maxima = channel_maxima(model_path, [s.output for s in sites], samples) if sites else {}
    for number, site in enumerate(sites):
        weights = [numpy_helper.to_array(inits[constant_source(model, m.input[1])]) for m in site.matmuls]
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
                scaled = numpy_helper.to_array(inits[constant_source(model, node.input[index])]) / scale
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
    onnx.save_model(model, str(output))
    return len(sites)
