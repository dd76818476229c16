"""How close a row runs to this machine's arithmetic ceiling.

Two numbers make a latency table readable on any machine: the model's work per frame (the
multiply-accumulates of every MatMul, Gemm, Conv and ConvTranspose in the FP32 ONNX graph, from
its inferred shapes) and the machine's measured dense matrix-multiply throughput per number
format. Their ratio bounds the model call from below: no backend runs the model's matrix work
faster than the machine multiplies matrices, whatever else it fuses or skips.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np

from .cpu import CpuFeatures

MATRIX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def _static_shapes(model) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_macs(model: str | Path | object) -> dict[str, int]:
    """Multiply-accumulates per inference by op type, for a model with static shapes.

    ``model`` is a path or an ``onnx.ModelProto``. Weights need not be loaded (only their dims
    are read), so external-data models work.
    """
    return matrix_work(model)[0]


# Between an attention product and its softmax: the scale, a mask, a cast.
_ATTENTION_STEPS = ("Mul", "Div", "Add", "Cast")


def _attention_products(model) -> set[int]:
    """The MatMuls on either side of a Softmax: a transformer's QK^T (whose output reaches the
    softmax, through a scale or mask at most) and the product of the softmax with V."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_softmax(name: str, steps: int = 2) -> bool:
        for node in consumers.get(name, []):
            if node.op_type == "Softmax" or (
                steps and node.op_type in _ATTENTION_STEPS and reaches_softmax(node.output[0], steps - 1)
            ):
                return True
        return False

    found = set()
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        fed = producer.get(node.input[0])
        if reaches_softmax(node.output[0]) or (fed is not None and fed.op_type == "Softmax"):
            found.add(id(node))
    return found


def matrix_work(model: str | Path | object) -> tuple[dict[str, int], int]:
    """``count_macs`` and, of those, the multiply-accumulates of the attention's products (QK^T and
    the softmax times V): work the attention kernels do around the softmax."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    shapes = _static_shapes(model)
    attention_products = _attention_products(model)
    macs: Counter[str] = Counter()
    attention = 0
    for node in model.graph.node:
        if node.op_type not in MATRIX_OPS:
            continue
        try:
            a, b, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as exc:
            raise ValueError(
                f"{node.op_type} node {node.name or node.output[0]!r}: shape of {exc.args[0]!r} is not static; "
                "count MACs on a fixed-size export (export.onnx without --dynamic)"
            ) from None
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "MatMul":
            count = math.prod(out) * a[-1]
        elif node.op_type == "Gemm":
            count = math.prod(out) * (a[0] if attrs.get("transA", 0) else a[1])
        elif node.op_type == "Conv":  # weight [C_out, C_in / groups, *kernel]
            count = math.prod(out) * math.prod(b[1:])
        else:  # ConvTranspose, weight [C_in, C_out / groups, *kernel]: each input value feeds C_out/g x kernel
            count = math.prod(a) * math.prod(b[1:])
        macs[node.op_type] += int(count)
        if id(node) in attention_products:
            attention += int(count)
    return dict(macs), attention


def _best_seconds(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _torch_gemm(dtype_name: str, m: int, k: int, layers: int):
    """A chain of ``layers`` [m, k] x [k, k] products in PyTorch; returns (call, operations per call)."""
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    weights = [(torch.randn(k, k, generator=gen) / math.sqrt(k)).to(dtype) for _ in range(layers)]

    def chain():
        with torch.inference_mode():
            y = x
            for w in weights:
                y = y @ w
        return y

    return chain, 2 * m * k * k * layers


def _openvino_int8_gemm(m: int, k: int, layers: int):
    """The same chain in INT8 as OpenVINO's CPU plugin runs it (FakeQuantize on both inputs
    becomes an int8 x int8 kernel), so activations stay quantized between layers."""
    from runtime.backends.openvino import import_openvino, openvino_core, telemetry_off

    ov = import_openvino()  # telemetry off, or an error naming the extra
    with telemetry_off():
        import openvino.opset13 as ops

    def fq(node, limit: float, levels: int):
        lo, hi = ops.constant(np.float32(-limit)), ops.constant(np.float32(limit))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    rng = np.random.default_rng(0)
    param = ops.parameter([m, k], np.float32)
    y = param
    for _ in range(layers):
        w = ops.constant((rng.standard_normal((k, k)) / math.sqrt(k)).astype(np.float32))
        y = ops.matmul(fq(y, 4.0, 256), fq(w, 0.1, 255), False, False)
    compiled = openvino_core().compile_model(ov.Model([y], [param]), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = rng.standard_normal((m, k)).astype(np.float32)
    return (lambda: request.infer({0: x})), 2 * m * k * k * layers


def ceiling_formats(cpu: CpuFeatures, emulated: bool) -> tuple[str, ...]:
    """The formats worth a ceiling on ``cpu``: BF16 only with BF16 units or when asked, since an
    emulated BF16 probe takes minutes."""
    return ("fp32", "bf16", "int8") if cpu.native("bf16") or emulated else ("fp32", "int8")


class CeilingProbes:
    """Dense matrix-multiply chains per number format, built once and timed once per round of the
    benchmark, so the ceilings see the same moments of the machine as the rows. The default
    shape is a ViT-S MLP layer at 518x518. Formats whose library is missing, or whose probe
    fails, are left out (with a note)."""

    LIBRARIES: ClassVar[dict[str, str]] = {"fp32": "PyTorch", "bf16": "PyTorch", "int8": "OpenVINO"}

    def __init__(
        self, formats: tuple[str, ...] = ("fp32", "bf16", "int8"), m: int = 1370, k: int = 1536, layers: int = 4
    ) -> None:
        builders = {
            "fp32": lambda: _torch_gemm("float32", m, k, layers),
            "bf16": lambda: _torch_gemm("bfloat16", m, k, layers),
            "int8": lambda: _openvino_int8_gemm(m, k, layers),
        }
        self.shape = [m, k, k]
        self.probes: dict[str, tuple] = {}
        for name in formats:
            try:
                call, ops = builders[name]()
                call()  # warm-up: first-call allocation and kernel selection
            except ImportError:
                continue
            except Exception as exc:  # a probe that fails costs the report one line, not the run
                print(f"note: no {name} ceiling ({exc.__class__.__name__}: {exc})", file=sys.stderr)
                continue
            self.probes[name] = (call, ops)

    def measure(self, repeats: int = 5) -> dict[str, float]:
        """One round: each format's best of ``repeats`` calls, in operations/s (a multiply-
        accumulate counts two)."""
        return {name: ops / _best_seconds(call, repeats) for name, (call, ops) in self.probes.items()}

    def summarize(self, rounds: list[dict[str, float]]) -> dict[str, dict]:
        """The ceiling per format (its best round) and how well the rounds agree: the best round
        over the median one, so a single slow round does not count but a lasting change does."""
        summary = {}
        for name in self.probes:
            values = [r[name] for r in rounds if name in r]
            if values:
                summary[name] = {
                    "ops_per_s": max(values),
                    "rounds": values,
                    "spread": max(values) / float(np.median(values)),
                    "library": self.LIBRARIES[name],
                    "shape": self.shape,
                }
        return summary


def lower_bounds(ops: float, ceilings: dict[str, dict]) -> dict[str, float]:
    """Seconds the model's matrix work takes at each format's ceiling."""
    return {name: ops / c["ops_per_s"] for name, c in ceilings.items()}


def compute_format(precision: str) -> str:
    """The number format a row computes in: the part after '/' where weights and compute differ."""
    name = precision.split("/")[-1]
    return {"f32": "fp32", "f16": "fp16"}.get(name, name)


def on_cpu(row: dict) -> bool:
    """Whether a row ran on the CPU (a GPU row is not held to the CPU's ceilings)."""
    return str((row.get("info") or {}).get("device", "cpu")).lower().startswith("cpu")


def add_throughput(rows: list[dict], roofline: dict) -> None:
    """Achieved operations/s of each row's model call and its share of the ceiling of the format it
    computes in (as measured for OpenVINO, else as its label names)."""
    for row in rows:
        work = roofline["work"].get(f"{row['size'][0]}x{row['size'][1]}")
        if not work or not row.get("model_call"):
            continue
        row["ops_per_s"] = work["ops"] / row["model_call"]["median"]
        ceiling = roofline["ceilings"].get(row.get("computes_in") or compute_format(row["precision"]))
        if ceiling and on_cpu(row):
            row["share_of_ceiling"] = row["ops_per_s"] / ceiling["ops_per_s"]
