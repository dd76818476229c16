"""What the commands say when a user gets something wrong: the output they asked for, not a hidden
temporary; the option and the values it takes; what an interrupted stage 2 run kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import DepthPredictor
from tests import scenes
from tests.conftest import REPO


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "m.onnx")


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root writes anywhere a mode allows: /sys refuses it)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_an_output_folder_that_cannot_be_written_is_named_not_its_temporary(tmp_path, model):
    output = read_only_folder(tmp_path) / "m.fp16.onnx"
    done = run("export.quantize", "--fp16", "--onnx", str(model), "--output", str(output))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {output}: cannot write in {output.parent} (Permission denied)")
    assert f".{output.name}." not in done.stderr  # the hidden temporary's name, before


def test_an_unknown_precision_names_the_values_it_takes(tmp_path, model):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.full((48, 64, 3), 100, np.uint8))
    done = run("runtime", str(image), "--model", str(model), "--precision", "banana")
    assert done.returncode == 2 and "argument --precision: invalid choice: 'banana'" in done.stderr
    assert "export a banana model" not in done.stderr
    done = run("runtime.verify", str(model), "--precision", "banana")
    assert done.returncode == 2 and "invalid choice: 'banana'" in done.stderr
    with pytest.raises(ValueError, match=r"precision must be one of fp32, fp16, bf16 \(or None"):
        DepthPredictor(model, precision="banana")


def test_ctrl_c_in_pseudo_label_says_what_was_kept(tmp_path, tiny_spec):
    from tests.sa1b import shard_photos
    from train.models import DepthAnythingV2, save_model

    checkpoint = save_model(DepthAnythingV2(tiny_spec), tmp_path / "teacher.safetensors")
    photos = shard_photos()
    source = tmp_path / "images"
    for folder, count in (("a", 1), ("b", 400)):  # a finished shard, then one still in progress
        (source / folder).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(source / folder / f"{i}.jpg"), photos[i % len(photos)][:120, :160])
    output = tmp_path / "labels"
    argv = ["-m", "train.pseudo_label", "--teacher", str(checkpoint), "--source", str(source)]
    argv += ["--output", str(output), "--size", "56", "--workers", "0"]
    child = subprocess.Popen(
        [sys.executable, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (output / "a" / "_images.json").is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be interrupted"
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert f"interrupted: finished shards are kept in {output} (each with its index)" in err
    assert "nothing was written" not in err
    # The progress bar ends first: the one line is the last thing on stderr, on a line of its own
    # (the bar was redrawn after it, and the line began mid-bar).
    assert err.rstrip().splitlines()[-1].startswith("interrupted: finished shards are kept"), err[-400:]
    assert (output / "a" / "_images.json").is_file() and not (output / "b" / "_images.json").exists()
