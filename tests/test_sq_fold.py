"""SmoothQuant's multiplies before float layers are folded into those layers' weights
(``export.quantize.sq_fold``): same outputs, no multiply left there, and nothing else touched."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")

from openvino import opset13 as ops  # noqa: E402

from export.quantize.sq_fold import fold_smooth_quant_into_float  # noqa: E402
from runtime.backends.openvino import openvino_core  # noqa: E402

K, N = 8, 5


def graph() -> tuple:
    """x (1, 3, K) times per-channel scales, each feeding MatMuls. Foldable: ``s`` (two float
    layers, one with transposed weights), ``r`` (the weights on the left, the activation
    transposed), ``a`` (the same with the left weights transposed too), ``h`` (per-head weights,
    one batch of them), ``first`` (the scale the multiply's first input), ``flat`` (a scale of
    shape (K,)). Not: ``t`` (the other side is an input), ``u`` (one consumer is no MatMul), ``q``
    (the scale runs along the output's axis), ``twice`` (both sides of one product), ``mixed`` (one
    consumer foldable, the other not: all or nothing), ``wide`` (the scale broadcasts x to rank 4)."""
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, K], np.float32, name="x")
    y = ops.parameter([1, K, N], np.float32, name="y")

    def scale(*shape):
        return ops.constant(rng.uniform(0.5, 2.0, shape or (1, 1, K)).astype(np.float32))

    def weights(*shape):
        return ops.constant(rng.standard_normal(shape).astype(np.float32))

    smoothed, scaled, twice, mixed = (ops.multiply(x, scale()) for _ in range(4))
    outputs = [
        ops.matmul(smoothed, weights(N, K), False, True),
        ops.matmul(smoothed, weights(K, N), False, False),
        ops.matmul(weights(4, K), ops.multiply(x, scale()), False, True),
        ops.matmul(weights(K, 4), ops.multiply(x, scale()), True, True),
        ops.matmul(ops.multiply(x, scale()), weights(2, K, N), False, False),
        ops.matmul(ops.multiply(scale(), x), weights(K, N), False, False),
        ops.matmul(ops.multiply(x, scale(K)), weights(K, N), False, False),
        ops.matmul(ops.multiply(x, scale()), y, False, False),
        ops.add(ops.matmul(scaled, weights(K, N), False, False), ops.reduce_sum(scaled, [2], True)),
        ops.matmul(weights(4, 3), ops.multiply(x, scale()), False, False),
        ops.matmul(twice, twice, False, True),
        ops.matmul(mixed, weights(K, N), False, False),
        ops.matmul(mixed, y, False, False),
        ops.matmul(ops.multiply(x, scale(1, 1, 1, K)), weights(K, N), False, False),
    ]
    return ov.Model(outputs, [x, y], "sq"), rng


def run(model, feeds) -> list:
    compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [np.asarray(v) for v in compiled(feeds).values()]


def multiplies(model) -> int:
    return sum(op.get_type_name() == "Multiply" for op in model.get_ops())


def test_only_the_multiply_before_float_weights_is_folded_and_outputs_stay():
    model, rng = graph()
    shapes = {"x": (1, 3, K), "y": (1, K, N)}
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    before = run(model, feeds)
    assert multiplies(model) == 12
    assert fold_smooth_quant_into_float(model) == 6
    assert multiplies(model) == 6  # t, u, q, twice, mixed and wide stay
    after = run(model, feeds)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)
    assert fold_smooth_quant_into_float(model) == 0  # nothing left to fold
