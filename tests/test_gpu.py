"""What only a CUDA GPU can show: the PyTorch paths on CUDA (inference and training) and the
CUDA layer under the TensorRT backend, driven by cuda-python for real.

Marked ``gpu`` and skipped with the reason where PyTorch sees no CUDA GPU. TensorRT's own build
and parse is the gpu test in test_trt_logic.py, which also needs TensorRT installed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from export.metrics import compare
from tests.conftest import REPO, official_state_dict
from tests.parity import REFERENCE_SIZES, deterministic_input, reference_output

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)"),
]


@pytest.fixture(scope="module")
def vits_weights() -> dict:
    return official_state_dict("vits")


def fresh_vits(state_dict: dict):
    from train.models import DepthAnythingV2

    model = DepthAnythingV2("vits")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.mark.parametrize("height,width", REFERENCE_SIZES)
def test_official_parity_holds_on_cuda_in_fp32(vits_weights, height, width):
    from runtime.backends.pytorch import TorchBackend

    backend = TorchBackend(fresh_vits(vits_weights), device="cuda", precision="fp32")
    switches = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    ours = backend.infer(deterministic_input(height, width))
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == switches  # restored
    error = compare(ours, reference_output(height, width)).max_rel_std
    print(f"{torch.cuda.get_device_name(0)} fp32 {height}x{width}: max|ours - official| / std = {error:.2e}")
    assert error <= 1e-4


@pytest.mark.parametrize("precision,bound", [("fp16", 0.02), ("bf16", 0.1)])
def test_half_precisions_on_cuda_stay_near_fp32(vits_weights, photo, precision, bound):
    from runtime import DepthPredictor

    model = fresh_vits(vits_weights)
    reference = DepthPredictor(model, device="cuda", precision="fp32").predict(photo)
    predictor = DepthPredictor(model, device="cuda", precision=precision)
    assert predictor.info()["precision"] == precision and predictor.info()["device"].startswith("cuda")
    depth = predictor.predict(photo)
    assert np.isfinite(depth).all()
    assert next(model.parameters()).dtype == torch.float32  # the half copy is the predictor's own
    assert compare(DepthPredictor(model, device="cuda", precision="fp32").predict(photo), reference).max_rel_std <= 1e-6
    error = compare(depth, reference)
    mean_error = error.mean_abs / float(reference.std())
    print(f"{precision} vs fp32 on CUDA: mean {mean_error:.2e}, max {error.max_rel_std:.2e} of std")
    assert mean_error <= bound


def test_cuda_is_the_default_and_batches_match_single_frames(tiny_model, photo):
    from runtime import DepthPredictor

    predictor = DepthPredictor(tiny_model, input_size=56)  # device="auto"
    assert predictor.info()["device"].startswith("cuda") and predictor.info()["precision"] == "fp16"
    exact = DepthPredictor(tiny_model, device="cuda:0", precision="fp32", input_size=56)
    single = exact.predict(photo)
    batch = exact.predict_batch([photo, photo])
    assert len(batch) == 2 and batch[0].shape == photo.shape[:2]
    for depth in batch:
        assert compare(depth, single).max_rel_std <= 1e-4


class _DeviceArray:
    """Raw device memory as a CUDA array (``__cuda_array_interface__``), for PyTorch to work on."""

    def __init__(self, pointer: int, count: int) -> None:
        self.__cuda_array_interface__ = {"shape": (count,), "typestr": "<f4", "data": (pointer, False), "version": 2}


def test_cuda_python_layer_orders_copies_and_work_on_its_stream():
    """The TensorRT backend's sequence: pinned host -> device, work enqueued on the layer's
    stream (the engine's place), device -> pinned host, one synchronize."""
    try:
        from runtime.backends.cuda import CudaPython

        cuda = CudaPython(0)
    except ImportError:
        pytest.skip("cuda-python is not installed (pip install 'dav2-edge[tensorrt]')")
    try:
        name, capability = cuda.device_info()
        assert name == torch.cuda.get_device_name(0)
        assert capability == torch.cuda.get_device_capability(0)
        count = 1 << 22  # 16 MiB: long enough that a missing stream order would show
        nbytes = count * 4
        device = cuda.alloc(nbytes)
        in_ptr, host_in = cuda.pinned(nbytes)
        out_ptr, host_out = cuda.pinned(nbytes)
        values = np.random.default_rng(0).standard_normal(count).astype(np.float32)
        host_in[:] = values.view(np.uint8)
        host_out[:] = 0
        cuda.to_device(device, in_ptr, nbytes)
        view = torch.as_tensor(_DeviceArray(device, count), device="cuda")
        with torch.cuda.stream(torch.cuda.ExternalStream(cuda.stream_handle)):
            view.mul_(2.0).add_(1.0)
        cuda.to_host(out_ptr, device, nbytes)
        cuda.synchronize()
        np.testing.assert_array_equal(host_out.view(np.float32), values * 2 + 1)
        cuda.free(device)
        cuda.free_pinned(in_ptr)
        cuda.free_pinned(out_ptr)
    finally:
        cuda.close()


def train_stage(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, *(launcher or ("-m",)), "train.teacher", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_on_cuda_with_mixed_precision_saves_and_resumes(tmp_path, amp):
    from tests.test_training import COMMON
    from train.models import load_model

    args = ["--data", "synthetic:16", "--save-every", "3", "--amp", amp, "--output", str(tmp_path), *COMMON]
    first = train_stage(*args, "--steps", "6")
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["amp"] == amp
    assert np.isfinite(summary["loss_first"][0]) and np.isfinite(summary["loss_last"][0])
    model = load_model(tmp_path / "model.safetensors")  # written from CUDA, read on the CPU
    assert all(torch.isfinite(p).all() for p in model.parameters())
    again = train_stage(*args, "--steps", "9")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from"] == 6


def test_torchrun_with_more_ranks_than_gpus_is_a_clear_error(tmp_path):
    ranks = torch.cuda.device_count() + 1
    from tests.test_training import COMMON

    run = train_stage(
        "--data",
        "synthetic:16",
        "--steps",
        "2",
        "--output",
        str(tmp_path),
        *COMMON,
        launcher=("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m"),
    )
    assert run.returncode != 0
    assert f"use --nproc_per_node {torch.cuda.device_count()}" in run.stderr
