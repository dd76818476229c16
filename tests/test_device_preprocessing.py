"""Pre- and post-processing as PyTorch ops on the model's device (``preprocess="device"``, the
default on CUDA): the same numbers as the OpenCV path. The torch ops run on the CPU here, so every
decision (sizes, channel order, normalisation, grouping, the resize back) is checked on any
machine; the tests marked ``gpu`` run the CUDA and TensorRT paths where a GPU is lent."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from export.metrics import compare
from runtime import DepthPredictor, MissingDependencyError
from runtime import preprocessing as pre
from runtime.backends.tensorrt import device_pipeline_torch
from runtime.backends.torch_pre import TorchImagePipeline
from tests.conftest import REPO
from tests.recording import overlap_predictor

# PyTorch's bicubic against OpenCV's INTER_CUBIC: the same kernel and grid, measured at most 4e-5
# apart on [0, 1] images, so at most 2e-4 in normalised units; depth moves less than that.
INPUT_ATOL = 5e-4
DEPTH_MAX_REL = 1e-3


def frames(photo: np.ndarray) -> list[np.ndarray]:
    return [photo, cv2.resize(photo, (640, 480)), photo[::-1].copy(), cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)]


@pytest.mark.parametrize("size", [(518, 784), (56, 84), (518, 518)])
def test_the_torch_pipeline_makes_the_opencv_network_input(photo, size):
    pipeline = TorchImagePipeline(torch, "cpu")
    for image in frames(photo):
        for rgb in (False, True):
            want = pre.prepare_fixed(image, size, rgb)
            got = pipeline.prepare([image], size, rgb).numpy()
            assert got.shape == want.shape == (1, 3, *size) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=INPUT_ATOL)


def test_the_torch_pipeline_resizes_depth_back_as_the_numpy_path(photo):
    depth = np.random.default_rng(0).random((37, 55)).astype(np.float32)
    pipeline = TorchImagePipeline(torch, "cpu")
    for height, width in ((300, 451), (37, 55), (1080, 1920)):
        got = pipeline.finish(torch.from_numpy(depth), height, width)
        np.testing.assert_allclose(got, pre.resize_depth(depth, height, width), atol=1e-5)


def test_device_preprocessing_gives_the_numbers_of_the_opencv_path(tiny_model, photo):
    numpy_path = DepthPredictor(tiny_model, device="cpu", input_size=56)
    # the device path's model calls counted by a real torch backend (tests/recording.py)
    device_path, calls = overlap_predictor(tiny_model, device="cpu", input_size=56, preprocess="device")
    assert (numpy_path.info()["preprocess"], device_path.info()["preprocess"]) == ("numpy", "device")
    images = frames(photo)
    want = [numpy_path.predict(image) for image in images]
    for image, expected in zip(images, want, strict=True):
        got = device_path.predict(image)
        assert got.shape == image.shape[:2] and got.dtype == np.float32
        assert compare(got, expected).max_rel_std <= DEPTH_MAX_REL
    calls.shapes.clear()
    batched = device_path.predict_batch(images)
    assert sorted(shape[0] for shape in calls.shapes) == [1, 1, 2]  # the photo and its flip share a size: one call
    for got, expected in zip(batched, want, strict=True):
        assert compare(got, expected).max_rel_std <= DEPTH_MAX_REL
    assert [d.shape for d in device_path.stream(images)] == [i.shape[:2] for i in images]


def test_preprocess_choices():
    from train.models import DepthAnythingV2

    with pytest.raises(ValueError, match="preprocess is one of auto, numpy, device"):
        DepthPredictor(DepthAnythingV2("vits"), device="cpu", preprocess="gpu")
    # TensorRT: PyTorch on the GPU where it is there, the CPU path otherwise, and a clear error
    # when the device path is asked for without it (no GPU is visible to this test).
    assert device_pipeline_torch("numpy") is None and device_pipeline_torch("auto") is None
    with pytest.raises(MissingDependencyError, match="CUDA build of torch"):
        device_pipeline_torch("device")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_cuda_preprocesses_on_the_gpu_with_the_numbers_of_the_cpu_path(tiny_model, photo):
    device_path = DepthPredictor(tiny_model, device="cuda", precision="fp32", input_size=56)
    numpy_path = DepthPredictor(tiny_model, device="cuda", precision="fp32", input_size=56, preprocess="numpy")
    assert device_path.info()["preprocess"] == "device"
    for image in frames(photo):
        assert compare(device_path.predict(image), numpy_path.predict(image)).max_rel_std <= DEPTH_MAX_REL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_tensorrt_reads_the_frame_the_gpu_prepared(tmp_path, vits_checkpoint, photo):
    pytest.importorskip("tensorrt", reason="needs TensorRT")
    engine = tmp_path / "vits.fp16.engine"
    argv = ["--fp16", "--checkpoint", str(vits_checkpoint), "--output", str(engine)]
    run = subprocess.run([sys.executable, "-m", "export.trt", *argv], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    device_path = DepthPredictor(engine, streams=2)
    numpy_path = DepthPredictor(engine, preprocess="numpy")
    assert device_path.info()["preprocess"] == "device"
    for image in frames(photo):
        assert compare(device_path.predict(image), numpy_path.predict(image)).max_rel_std <= 0.01
    streamed = list(device_path.stream(frames(photo) * 3))
    assert [d.shape for d in streamed] == [f.shape[:2] for f in frames(photo) * 3]
