"""INT8 exports as a user runs them: ``export.openvino --int8 --onnx`` takes a static ONNX's own
input size (as ``export.quantize`` does), and the working folders of an INT8 export killed
outright are removed by the next run, as every other staging folder is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.sa1b import make_shard


@pytest.fixture(scope="module")
def static(tmp_path_factory, tiny_spec):
    """A tiny model's static 56x84 ONNX (not 518x518) and a calibration shard."""
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    folder = tmp_path_factory.mktemp("int8_runs")
    torch.manual_seed(0)
    path = export_onnx(DepthAnythingV2(tiny_spec).eval(), folder / "m.onnx", 56, 84).path
    make_shard(folder / "sa1b" / "sa_0.tar", 8, faults=False)
    return path


def command(module, static, output, *extra):
    calib = ["--calib-dir", str(static.parent / "sa1b"), "--calib-samples", "4", "--accuracy-budget", "off"]
    int8 = ["--int8"] if module == "export.openvino" else []  # export.quantize makes INT8 unless --fp16
    return [sys.executable, "-m", module, *int8, "--onnx", str(static), *calib, "--output", str(output), *extra]


def test_openvino_int8_of_a_static_onnx_uses_its_own_size(tmp_path, static):
    from runtime import DepthPredictor

    output = tmp_path / "m.int8.xml"
    done = subprocess.run(command("export.openvino", static, output), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]  # failed after reading the images at 518x518 before
    assert tuple(DepthPredictor(output).input_shape[2:]) == (56, 84)
    wrong = subprocess.run(
        command("export.openvino", static, tmp_path / "w.xml", "--size", "518x518"),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "takes 56x84 images (a static ONNX), not --size 518x518" in wrong.stderr
    assert not (tmp_path / "w.xml").exists()


def test_the_next_run_removes_a_killed_int8_exports_working_folders(tmp_path, static):
    output = tmp_path / "out" / "m.int8.onnx"
    argv = command("export.quantize", static, output, "--accuracy-budget", "0.5", "--accuracy-images", "2")
    killed = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    hidden: list = []
    while time.monotonic() < deadline and killed.poll() is None:
        hidden = [p for p in output.parent.glob(f".{output.name}.*") if p.is_dir()] if output.parent.is_dir() else []
        if hidden:
            break
        time.sleep(0.02)
    assert hidden, "the export ended before its working folder could be seen"
    os.kill(killed.pid, signal.SIGKILL)  # killed outright: nothing of it can clean up
    killed.wait()
    assert any(p.is_dir() for p in output.parent.glob(f".{output.name}.*"))
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    left = [p.name for p in output.parent.iterdir() if p.name.startswith(".") and p.name != ".calib_cache"]
    assert left == [], left  # the killed run's .<out>.<random>/ stayed for good before
