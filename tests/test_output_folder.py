"""An export whose output folder cannot be written is refused up front, in one line, exit 2 (a file
where the folder should be, a folder that takes no file), before any work; a refused export leaves
no folder it made behind."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

import export.onnx
import export.openvino
import export.quantize.__main__
import export.trt.__main__
from tests import scenes


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory):
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "affine.onnx")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_an_output_under_a_file_is_one_line_and_exit_2_for_every_export(tmp_path, static_onnx, capsys):
    picture = tmp_path / "frame1.png"
    picture.write_bytes(b"not a folder")
    commands = [
        (export.onnx.main, ["--encoder", "vits", "--size", "28x28", "--output", str(picture / "x.onnx")]),
        (export.openvino.main, ["--onnx", str(static_onnx), "--output", str(picture / "x.xml")]),
        (export.quantize.__main__.main, ["--onnx", str(static_onnx), "--fp16", "--output", str(picture / "x.onnx")]),
        (
            export.quantize.__main__.main,
            ["--onnx", str(static_onnx), "--calib-dir", str(tmp_path), "--output", str(picture / "x.onnx")],
        ),
        (export.trt.__main__.main, ["--onnx", str(static_onnx), "--onnx-only", "--output", str(picture / "x.engine")]),
    ]
    for main, argv in commands:
        assert main(argv) == 2, argv
        line = _one_line(capsys)
        assert f"{picture} is a file, not a folder; choose another --output" in line, line
        assert "Errno" not in line and "log" not in line


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_folder_that_takes_no_file_is_named_without_a_temporary_name(capsys):
    assert export.onnx.main(["--encoder", "vits", "--size", "28x28", "--output", "/proc/x.onnx"]) == 2
    line = _one_line(capsys)
    assert line.startswith("error: /proc/x.onnx: cannot write in /proc") and ".x.onnx." not in line


def test_refused_openvino_and_quantize_runs_leave_no_folder(tmp_path, static_onnx, capsys):
    # a static ONNX asked at another size: refused after the output is known
    out = tmp_path / "new" / "deeper" / "x.xml"
    assert export.openvino.main(["--onnx", str(static_onnx), "--size", "28x28", "--output", str(out)]) == 2
    assert "takes 112x168 images" in _one_line(capsys) and not (tmp_path / "new").exists()
    empty = tmp_path / "no_images"
    empty.mkdir()
    out = tmp_path / "q" / "x.int8-cpu.onnx"
    assert export.quantize.__main__.main(["--onnx", str(static_onnx), "--calib-dir", str(empty), "--output", str(out)])
    capsys.readouterr()
    assert not (tmp_path / "q").exists()


def test_a_failed_run_removes_only_the_empty_folders_it_made(tmp_path):
    """A folder the run made is removed when the run fails, but never with a file in it: another
    export started beside it may have landed its model there meanwhile (found in review)."""
    from export.source import output_folder

    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "a" / "b" / "m.onnx") as folder:
            (folder / "other.onnx").write_text("another export's model")
            raise RuntimeError("refused")
    assert (tmp_path / "a" / "b" / "other.onnx").read_text() == "another export's model"
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "c" / "d" / "m.onnx"):
            raise RuntimeError("refused")
    assert not (tmp_path / "c").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_failed_openvino_run_from_a_checkpoint_removes_its_fp32_onnx_and_the_folder_it_made(tmp_path, capsys):
    """The calibration folder is read after the ONNX step: its refusal leaves neither the
    intermediate FP32 ONNX (and its record) nor the new folder (nor the calibration cache made in
    it); in a folder that was there, the run's ONNX goes and everything else stays."""
    empty = tmp_path / "no_images"
    empty.mkdir()
    out = tmp_path / "new" / "x.int8.xml"
    argv = ["--encoder", "vits", "--size", "28x28", "--int8", "--calib-dir", str(empty), "--output"]
    assert export.openvino.main([*argv, str(out)]) == 2
    assert "no_images: no images found" in capsys.readouterr().err and not (tmp_path / "new").exists()
    one = tmp_path / "one_image"  # refused after the images were read (and cached)
    one.mkdir()
    cv2.imwrite(str(one / "a.png"), np.full((48, 64, 3), 100, np.uint8))
    argv[argv.index(str(empty))] = str(one)
    assert export.openvino.main([*argv, str(out)]) == 2
    assert "one_image: asked for" in capsys.readouterr().err and not (tmp_path / "new").exists()
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("the user's")
    assert export.openvino.main([*argv, str(there / "x.int8.xml")]) == 2
    # no ONNX left; the calibration cache (by content hash, for the next run) stays in a shared folder
    assert sorted(p.name for p in there.iterdir()) == [".calib_cache", "notes.txt"]


def test_a_refused_trt_run_leaves_no_new_folder(tmp_path, static_onnx, capsys):
    """export.trt checks its output's folder up front and makes it only for the work: a refusal
    after plan_job's checks (a profile for a static ONNX; a checkpoint's INT8 with no images, after
    its FP32 ONNX was exported) leaves no folder, no ONNX."""
    out = tmp_path / "new" / "x.engine"
    profile = ["--min", "112x168", "--opt", "112x168", "--max", "112x168"]
    assert export.trt.__main__.main(["--onnx", str(static_onnx), "--onnx-only", *profile, "--output", str(out)]) == 2
    assert "has a fixed input shape" in _one_line(capsys) and not (tmp_path / "new").exists()
    empty = tmp_path / "no_images"
    empty.mkdir()
    argv = ["--encoder", "vits", "--size", "28x28", "--int8", "--calib-dir", str(empty), "--onnx-only"]
    assert export.trt.__main__.main([*argv, "--output", str(out)]) == 2
    assert "no_images: no images found" in capsys.readouterr().err and not (tmp_path / "new").exists()
