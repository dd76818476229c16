"""``python -m runtime``: inputs checked before the model loads, no silent overwrite, depth-only by default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.tinyfs import run_with_tmpfs, unavailable

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO, capture_output=True, text=True)


def test_bad_inputs_are_refused_before_the_model_is_loaded(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    missing_model = str(tmp_path / "no_such_model.pth")  # loading it would fail: it is never tried
    for inputs, message in [
        ([tmp_path / "empty"], "no images or videos in this folder"),
        ([tmp_path / "notes"], "no images or videos in this folder"),
        ([tmp_path / "missing.jpg"], "missing.jpg: no such file or folder"),
    ]:
        run = run_cli(*map(str, inputs), "--model", missing_model)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: ") and message in run.stderr and run.stderr.count("\n") == 1
        assert "WARN" not in run.stderr and "imread" not in run.stderr  # no OpenCV chatter before ours
    nothing = run_cli()
    assert nothing.returncode == 2 and "--camera INDEX" in nothing.stderr


def test_two_inputs_never_write_one_output(tmp_path, photo):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "same.png"), photo)
    run = run_cli(str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png"), "--model", "unused.pth")
    assert run.returncode == 2 and "would write the same output file" in run.stderr
    assert "a/same.png and " in run.stderr


def test_images_give_depth_only_by_default_and_keep_distinct_names(tmp_path, tiny_checkpoint, photo):
    small = cv2.resize(photo, (90, 60))
    cv2.imwrite(str(tmp_path / "astronaut.jpg"), small)
    cv2.imwrite(str(tmp_path / "astronaut.png"), small)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut_png_depth.png").write_bytes(b"from an earlier run")
    common = ["--model", str(tiny_checkpoint), "--size", "56", "--output-dir", str(out)]
    run = run_cli(str(tmp_path), *common, "--save-npy")
    assert run.returncode == 1, run.stderr  # an input was skipped: said, and not a success
    assert "astronaut.jpg -> astronaut_jpg_depth.png (2 inputs share the name)" in run.stderr
    assert "skipped" in run.stderr and "broken.jpg" in run.stderr and "WARN" not in run.stderr
    assert run.stderr.splitlines()[-1] == f"error: 1 of 3 inputs skipped ({tmp_path / 'broken.jpg'}): see above"
    assert "astronaut_png_depth.png (replaced an earlier file)" in run.stdout  # said, not silent
    for stem in ("astronaut_jpg", "astronaut_png"):
        assert cv2.imread(str(out / f"{stem}_depth.png")).shape == (60, 90, 3)  # the depth alone
        assert np.load(out / f"{stem}_depth.npy").shape == (60, 90)
    beside = run_cli(str(tmp_path / "astronaut.png"), *common, "--side-by-side")
    assert beside.returncode == 0, beside.stderr
    panel = cv2.imread(str(out / "astronaut_depth.png"))
    assert panel.shape == (60, 180, 3)
    np.testing.assert_array_equal(panel[:, :90], cv2.imread(str(tmp_path / "astronaut.png")))


def test_help_says_what_is_written_and_the_default():
    run = run_cli("--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "the colourised depth alone by default, next to the input with --side-by-side" in text
    assert "--camera INDEX" in text and "<name>_depth.mp4 at the source's frame rate" in text


@pytest.mark.skipif(bool(unavailable()), reason=str(unavailable()))
def test_a_full_disk_stops_the_run_in_one_line_naming_the_output(tmp_path, tiny_checkpoint, photo):
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), photo[:120, :180])  # each depth PNG is bigger than the disk
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "runtime", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    command += ["--model", str(tiny_checkpoint), "--size", "56", "--output-dir", str(disk)]
    run = run_with_tmpfs(command, disk, size="4k", cwd=REPO)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"error: cannot write {disk / 'a_depth.png'}: No space left on device; nothing is left under the output name"
    )
    assert run.left == []  # no temporary left behind either


def test_depth_anything_3_kinds_run_and_metres_per_focal_needs_focal(tmp_path, photo, capsys):
    """DA3-Small (depth up to scale) colours after it runs (a ValueError from colorize before); a
    depth-per-focal-length model is refused in one line before any input runs without --focal, and
    --focal has DepthPredictor's rules."""
    from runtime.__main__ import main
    from tests.da3_fixtures import da3_state_dict, write_snapshot

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.resize(photo, (64, 48)))
    small = write_snapshot(tmp_path / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))
    out = tmp_path / "out"
    assert main([str(image), "--model", str(small), "--size", "56", "--output-dir", str(out)]) == 0
    assert cv2.imread(str(out / "scene_depth.png")).shape == (48, 64, 3)
    assert "(depth up to scale)" in capsys.readouterr().out
    for bad in ("0", "nan", "wide"):
        run = run_cli(str(image), "--model", str(small), "--focal", bad)
        assert run.returncode == 2 and "error: argument --focal: " in run.stderr.splitlines()[-1], run.stderr
    state = da3_state_dict("da3mono-large")  # DA3Metric-Large's keys
    metric = write_snapshot(tmp_path / "DA3METRIC-LARGE", "da3metric-large", state)
    del state
    args = [str(image), "--model", str(metric), "--size", "56", "--output-dir", str(tmp_path / "m"), "--save-npy"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --focal PIXELS" in err and not (tmp_path / "m" / "scene_depth.png").exists()
    assert main([*args, "--focal", "80"]) == 0
    metres = np.load(tmp_path / "m" / "scene_depth.npy")
    assert main([*args, "--focal", "160"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "m" / "scene_depth.npy"), 2 * metres, rtol=1e-5)
