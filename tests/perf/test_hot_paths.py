"""pytest-benchmark suite for the hot paths: ``pytest tests/perf -m perf --benchmark-only``.

Kept out of the default test run (marker ``perf``). Uses the vits architecture with random
weights at 518x518, which is what latency depends on.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime import preprocessing as pre

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.perf

SIZE = (518, 518)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def vits_onnx(tmp_path_factory):
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    return export_onnx(DepthAnythingV2("vits").eval(), tmp_path_factory.mktemp("b") / "vits.onnx", *SIZE).path


def test_preprocess_fixed(benchmark, frame):
    benchmark(pre.prepare_fixed, frame, SIZE)


def test_preprocess_dynamic(benchmark, frame):
    benchmark(pre.prepare_dynamic, frame, 518)


def test_postprocess_resize(benchmark, frame):
    depth = np.random.default_rng(0).random(SIZE, dtype=np.float32)
    benchmark(pre.resize_depth, depth, *frame.shape[:2])


@pytest.mark.parametrize(
    "backend,precision", [("torch", "fp32"), ("onnxruntime", None), ("openvino", "fp32"), ("openvino", "bf16")]
)
def test_model_call(benchmark, vits_onnx, backend, precision):
    from runtime import DepthPredictor

    if backend == "torch":
        import torch

        from train.models import DepthAnythingV2

        torch.manual_seed(0)
        predictor = DepthPredictor(DepthAnythingV2("vits"), device="cpu", precision=precision, fixed_size=SIZE)
    else:
        predictor = DepthPredictor(vits_onnx, backend=backend, precision=precision)
    batch = np.zeros((1, 3, *SIZE), np.float32)
    infer = predictor._backend.infer
    infer(batch)
    benchmark.pedantic(infer, args=(batch,), rounds=5, warmup_rounds=1)
