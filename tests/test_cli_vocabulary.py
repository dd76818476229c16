"""One command-line language: every CLI's --help uses the shared names and defaults, and the old
spellings still parse (hidden) to the same settings."""

from __future__ import annotations

import argparse

import pytest

import export.onnx
import export.openvino
import export.quantize.__main__
import export.trt.__main__
from runtime import bag
from runtime.__main__ import parse_args as runtime_parse_args


def help_of(parser: argparse.ArgumentParser) -> str:
    return parser.format_help()


EXPORTS = {
    "export.onnx": export.onnx.build_parser,
    "export.trt": export.trt.__main__.build_parser,
    "export.openvino": export.openvino.build_parser,
    "export.quantize": export.quantize.__main__.build_parser,
}
INT8 = ("export.trt", "export.openvino", "export.quantize")


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_export_help_uses_the_shared_names(name):
    text = help_of(EXPORTS[name]())
    assert "--size HxW" in text and "--output" in text
    for old in ("--shape", "--height", "--width", "--calib-shape", "--method "):
        assert old not in text, f"{name} still shows {old}"
    if name in INT8:
        for option in ("--calib-dir", "--calib-samples", "(default 500)", "--allow-fewer", "--accuracy-budget"):
            assert option in text, f"{name} lacks {option}"
        assert "--accuracy-images" in text and "--smooth" in text
    if name in ("export.trt", "export.quantize"):
        assert "--calib-method" in text
    if name != "export.quantize":
        assert "--checkpoint" in text and "--encoder" in text


@pytest.mark.parametrize(
    "name,old,new",
    [
        ("export.trt", ["--shape", "266x350"], ["--size", "266x350"]),
        ("export.openvino", ["--shape", "266"], ["--size", "266"]),
        (
            "export.quantize",
            ["--onnx", "m.onnx", "--calib-shape", "266", "--method", "minmax"],
            ["--onnx", "m.onnx", "--size", "266", "--calib-method", "minmax"],
        ),
    ],
)
def test_old_spellings_still_parse_to_the_same_settings(name, old, new):
    parser = EXPORTS[name]()
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))


def test_export_onnx_height_and_width_still_work():
    args = export.onnx.build_parser().parse_args(["--height", "266", "--width", "350"])
    assert (args.height, args.width, args.size) == (266, 350, None)


def test_runtime_commands_share_the_predictor_options(capsys):
    """python -m runtime, runtime.bag and runtime.ros2 take --model and --size (old: --checkpoint,
    --input-size, hidden), and list them in --help."""
    from runtime.ros import node as ros2

    args = runtime_parse_args(["a.jpg", "--input-size", "364", "--checkpoint", "m.onnx"])
    assert args.size == 364 and str(args.model) == "m.onnx"
    args = bag.parse_args(
        ["in.bag", "--image-topic", "/cam", "--output", "o.bag", "--model", "m.onnx", "--size", "364"]
    )
    assert args.size == 364
    settings, _ = ros2.parse_args(["--model", "m.onnx", "--input-size", "308"])
    assert settings.input_size == 308 and settings.model == "m.onnx"
    for parse in (lambda: runtime_parse_args(["--help"]), lambda: bag.parse_args(["--help"])):
        with pytest.raises(SystemExit):
            parse()
        text = capsys.readouterr().out
        assert "--model" in text and "--size" in text and "--input-size" not in text and "--checkpoint" not in text
