"""Depth videos: same frame count and frame rate as the source; Ctrl-C leaves a finalised file."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import DepthPredictor, InputError
from runtime.io.video import write_depth_video

REPO = Path(__file__).resolve().parents[1]


def write_video(path: Path, frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> Path:
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for i in range(frames):
        y, x = np.mgrid[0:height, 0:width]
        writer.write(np.stack([(x * 4 + i * 9) % 256, (y * 5) % 256, (x + y + i) % 256], -1).astype(np.uint8))
    writer.release()
    return path


def read_back(path: Path) -> tuple[int, float, tuple[int, int]]:
    """Frames actually decoded, the declared frame rate, and (width, height)."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames, fps, size


def test_the_cli_writes_a_depth_video_with_the_source_frames_and_rate(tmp_path, tiny_model):
    from train.models import save_model

    model = save_model(tiny_model, tmp_path / "tiny.safetensors")
    clip = write_video(tmp_path / "clip.mp4", frames=9, fps=12.0)
    options = ["--model", str(model), "--input-size", "56", "--output-dir", str(tmp_path / "out")]
    run = subprocess.run(
        [sys.executable, "-m", "runtime", str(clip), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "9 frames at 12 fps" in run.stdout and "frames/s" in run.stdout
    frames, fps, size = read_back(tmp_path / "out" / "clip_depth.mp4")
    assert (frames, size) == (9, (64, 48)) and fps == pytest.approx(12.0)


def test_side_by_side_and_max_frames(tmp_path, tiny_model):
    predictor = DepthPredictor(tiny_model, input_size=56)
    clip = write_video(tmp_path / "clip.mp4", frames=6, fps=25.0)
    summary = write_depth_video(predictor, clip, tmp_path / "both.mp4", side_by_side=True, max_frames=4)
    assert (summary.frames, summary.fps, summary.interrupted) == (4, 25.0, False)
    assert read_back(tmp_path / "both.mp4") == (4, 25.0, (128, 48))
    with pytest.raises(InputError, match="no such video"):
        write_depth_video(predictor, tmp_path / "missing.mp4", tmp_path / "x.mp4")
    with pytest.raises(InputError, match="cannot open camera 99"):
        write_depth_video(predictor, 99, tmp_path / "camera.mp4")
    with pytest.raises(InputError, match=r"written as \.mp4"):
        write_depth_video(predictor, clip, tmp_path / "x.avi")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.mp4", "clip.mp4"]  # no temporary files left


def test_ctrl_c_finalises_a_shorter_playable_video(tmp_path, tiny_model):
    predictor = DepthPredictor(tiny_model, input_size=56)
    clip = write_video(tmp_path / "long.mp4", frames=3000, fps=30.0)
    timer = threading.Timer(1.0, _thread.interrupt_main)  # what Ctrl-C does to the main thread
    timer.start()
    try:
        summary = write_depth_video(predictor, clip, tmp_path / "depth.mp4")
    finally:
        timer.cancel()
    assert summary.interrupted and 0 < summary.frames < 3000
    assert read_back(tmp_path / "depth.mp4") == (summary.frames, 30.0, (64, 48))
