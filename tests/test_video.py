"""Depth videos: same frame count and frame rate as the source; Ctrl-C leaves a finalised file."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import DepthPredictor, InputError
from runtime.io.video import write_depth_video
from tests.tinyfs import run_with_tmpfs, unavailable

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


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
def test_a_video_the_disk_could_not_hold_is_reported_and_not_left_behind(tmp_path, tiny_checkpoint):
    clip = write_video(tmp_path / "clip.mp4", frames=8, fps=10.0)  # its depth video takes about 5 KB
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "runtime", str(clip), "--model", str(tiny_checkpoint), "--size", "56"]
    run = run_with_tmpfs([*command, "--output-dir", str(disk)], disk, size="4k", cwd=REPO)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error")]
    assert run.returncode == 1 and "Traceback" not in run.stderr and "->" not in run.stdout, run.stdout
    assert errors == [
        f"error: cannot write {disk / 'clip_depth.mp4'}: the video writer wrote 8 frames but 0 can be read back "
        "(0.0 MiB free on that file system); nothing is left under the output name"
    ]
    assert run.left == []  # no broken file under the final name, no temporary


def test_unusable_videos_and_cameras_are_refused_before_the_model_loads(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = write_video(tmp_path / "cut.mp4", frames=30, fps=10.0)
    cut = good.read_bytes()
    good.write_bytes(cut[: len(cut) // 2])  # a recording killed before it was finalised: no index
    junk = tmp_path / "junk.mkv"
    junk.write_bytes(os.urandom(3000))
    never = ["--model", str(tmp_path / "never_loaded.pth")]  # loading it would fail: it is never tried
    for args, message in [
        ([str(empty)], f"error: {empty} is empty (0 bytes): no video in it"),
        ([str(good)], f"error: cannot open {good}: an MP4/MOV file without its index ('moov' box)"),
        ([str(junk)], f"error: cannot open {junk} as a video: not a container and codec this OpenCV build reads"),
        (["--camera", "99"], "error: cannot open camera 99: no such device, or it is in use"),
    ]:
        run = run_cli(*args, *never, "--output-dir", str(tmp_path / "out"))
        assert run.returncode == 2 and run.stderr.startswith(message) and run.stderr.count("\n") == 1, run.stderr
        assert "moov atom" not in run.stderr and "[mov" not in run.stderr  # FFmpeg's own lines stay out
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", frames=2, fps=10.0)
    (tmp_path / "a_file").write_text("in the way")
    never = ["--model", str(tmp_path / "never_loaded.pth")]
    run = run_cli(str(clip), *never, "--output-dir", str(tmp_path / "a_file"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith(f"error: --output-dir {tmp_path / 'a_file'}: {tmp_path / 'a_file'} is a file")
    if unavailable():
        pytest.skip(unavailable())
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    command = [sys.executable, "-m", "runtime", str(clip), *never, "--output-dir", str(read_only / "depth")]
    run = run_with_tmpfs(command, read_only, read_only=True, cwd=REPO)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Read-only file system" in run.stderr


@pytest.mark.parametrize(
    "sig, code, word", [(signal.SIGINT, 130, "interrupted: "), (signal.SIGTERM, 143, "terminated (SIGTERM): ")]
)
def test_ctrl_c_or_sigterm_with_inputs_left_exits_130_or_143_and_names_them(
    tmp_path, tiny_checkpoint, photo, sig, code, word
):
    clip = write_video(tmp_path / "long.mp4", frames=3000, fps=30.0)
    cv2.imwrite(str(tmp_path / "after.png"), cv2.resize(photo, (64, 48)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runtime", str(clip), str(tmp_path / "after.png"), "--output-dir", str(out)]
    proc = subprocess.Popen(
        [*command, "--model", str(tiny_checkpoint), "--size", "56"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not any(out.glob(".long_depth.mp4.*")):
        time.sleep(0.01)
    time.sleep(0.5)
    assert proc.poll() is None, "the video finished before it could be interrupted"
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr  # SIGTERM was 130, "stopped by Ctrl-C"
    assert stderr.rstrip().splitlines()[-1] == f"{word}1 input not processed ({tmp_path / 'after.png'})"
    assert not (out / "after_depth.png").exists()
