"""The options every export command shares, under one set of names and defaults."""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path
from typing import Any

from runtime.cli import positive_int

from .errors import ExportRequestError
from .quantize.options import DEFAULT_ACCURACY_BUDGET, DEFAULT_ACCURACY_IMAGES, DEFAULT_CALIB_SAMPLES, SMOOTH_MODES
from .source import check_hw, source_stem


def patch_multiple(text: str) -> int:
    """argparse type: a positive multiple of 14 (bad values exit with usage code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        check_hw(value, value, "size")
    except ExportRequestError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("size height", "size")) from None
    return value


def parse_hw(text: str) -> tuple[int, int]:
    """argparse type: ``518x686`` or ``518`` -> (518, 686) / (518, 518), multiples of 14."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (for example 518x518)")
    values = [patch_multiple(p) for p in parts]
    return (values[0], values[-1])


def add_source_args(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="model checkpoint: official .pth, HF or own .safetensors, or a Depth Anything 3 snapshot folder",
    )
    parser.add_argument(
        "--encoder",
        choices=("vitt", "vits", "vitb", "vitl", "vitg"),
        help="encoder (read from the checkpoint if omitted)",
    )
    parser.add_argument(
        "--variant",
        help="the Depth Anything 3 model (da3-small, da3-base, da3mono-large, da3metric-large) of a "
        "model.safetensors without its config.json",
    )
    if onnx:
        parser.add_argument("--onnx", type=Path, help="FP32 ONNX from python -m export.onnx (instead of --checkpoint)")


def add_precision_args(parser: argparse.ArgumentParser, helps: dict[str, str], default: str) -> None:
    """Mutually exclusive ``--fp16``/``--int8``/... flags that set ``args.precision``."""
    group = parser.add_mutually_exclusive_group()
    for name, text in helps.items():
        group.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=text)
    parser.set_defaults(precision=default)


def add_hidden_aliases(parser: argparse.ArgumentParser, dest: str, aliases: tuple[str, ...], **kwargs: Any) -> None:
    """Old spellings that keep working for one release without showing in --help."""
    for alias in aliases:
        parser.add_argument(alias, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_size_arg(parser: argparse.ArgumentParser, default_text: str, aliases: tuple[str, ...] = ()) -> None:
    """``--size HxW`` (or ``N`` for NxN): the network input size, in every export command."""
    parser.add_argument("--size", type=parse_hw, metavar="HxW", help=f"network input size (default {default_text})")
    add_hidden_aliases(parser, "size", aliases, type=parse_hw)


def add_calibration_args(
    parser: argparse.ArgumentParser, methods: tuple[str, ...] = (), default_method: str = "", aliases: tuple = ()
) -> None:
    """The calibration options of every INT8 export, under one set of names and defaults."""
    parser.add_argument("--calib-dir", type=Path, help="SA-1B tar shards or a folder of images (INT8)")
    parser.add_argument(
        "--calib-samples",
        type=positive_int,
        default=DEFAULT_CALIB_SAMPLES,
        help=f"calibration images (default {DEFAULT_CALIB_SAMPLES})",
    )
    if methods:
        parser.add_argument(
            "--calib-method",
            choices=methods,
            default=default_method,
            help=f"activation ranges (default {default_method})",
        )
        add_hidden_aliases(parser, "calib_method", aliases, choices=methods)
    parser.add_argument(
        "--allow-fewer",
        action="store_true",
        help="if short of images, hold out fewer accuracy images (down to 2), then calibrate on fewer (down to 10)",
    )
    add_accuracy_args(parser)


def accuracy_budget(text: str) -> float | None:
    """argparse type: an AbsRel bound, or ``off``."""
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (an AbsRel such as 0.01) or 'off'") from None
    if not 0 < value < float("inf"):  # NaN too: inf would be written into JSON no reader takes
        raise argparse.ArgumentTypeError("the accuracy budget must be a positive finite number (or 'off')")
    return value


def add_accuracy_args(parser: argparse.ArgumentParser) -> None:
    """The INT8 accuracy budget every INT8 export takes (see ``export.quantize.budget``)."""
    parser.add_argument(
        "--accuracy-budget",
        type=accuracy_budget,
        default=DEFAULT_ACCURACY_BUDGET,
        metavar="ABSREL",
        help=f"largest AbsRel vs FP32 on held-out images (default {DEFAULT_ACCURACY_BUDGET}); layers that break "
        "it go back to float (a Video Depth Anything stream is measured whole and refused instead); 'off' "
        "skips the check",
    )
    parser.add_argument(
        "--accuracy-images",
        type=positive_int,
        default=DEFAULT_ACCURACY_IMAGES,
        metavar="N",
        help=f"images from --calib-dir held out of calibration to measure on (default {DEFAULT_ACCURACY_IMAGES})",
    )
    parser.add_argument(
        "--smooth",
        choices=SMOOTH_MODES,
        default="auto",
        help="migrate activation outliers into the weights first: auto (when LayerNorm-fed layers cause the "
        "error, default), on, off",
    )
    parser.add_argument(
        "--float-layers",
        action="append",
        metavar="NAMES",
        help="layers to keep in float, comma-separated or repeated: ONNX node names as the .quant.json report "
        "names them (a refused export names a set that met the budget; a stream graph writes no report: "
        "its ONNX's node names)",
    )


def check_request(args: argparse.Namespace) -> None:
    """What every export from ``--onnx``/``--checkpoint``/``--encoder`` with a precision needs."""
    if args.precision == "int8" and args.calib_dir is None:
        raise ExportRequestError(
            "--int8 needs calibration images: pass --calib-dir with SA-1B shards or an image folder"
        )
    if args.onnx is None and args.checkpoint is None and args.encoder is None:
        raise ExportRequestError("give --onnx, --checkpoint or --encoder")


def args_stem(args: argparse.Namespace) -> str:
    """``source_stem`` of the ``--onnx``/``--checkpoint``/``--encoder`` options."""
    return source_stem(getattr(args, "onnx", None), args.checkpoint, args.encoder)


# Library errors name parameters in backticks (`int8.calib_dir`); the commands say the same in
# their flags. One table, read by ``speaks_flags``.
PARAMETER_FLAGS = {
    "precision='int8'": "--int8",
    "int8.calib_dir": "--calib-dir",
    "calibration": "--calib-dir",
    "int8.samples": "--calib-samples",
    "num_samples": "--calib-samples",
    "int8.held_out": "--accuracy-images",
    "int8.allow_fewer": "--allow-fewer",
    "allow_fewer": "--allow-fewer",
    "int8.float_layers": "--float-layers",
    "int8.smooth": "--smooth",
    "accuracy_method='nncf'": "--accuracy-method nncf",
    "keep_fp": "--keep-fp",
    "onnx": "--onnx",
    "checkpoint": "--checkpoint",
    "encoder": "--encoder",
    "size": "--size",
    "dynamic": "--dynamic",
    "opset": "--opset",
    "profile": "--min, --opt and --max",
    "trt_version": "--trt-version",
    "fp32_layers": "--fp32-layers",
}


def in_flags(message: str) -> str:
    """A library message with its parameters named as the commands' flags."""
    return re.sub(r"`([^`]+)`", lambda m: PARAMETER_FLAGS.get(m.group(1), m.group(0)), message)


def speaks_flags(main):
    """Wrap an export command's ``main``: the errors it ends with name flags, not parameters."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            if exc.args and isinstance(exc.args[0], str) and "`" in exc.args[0]:
                exc.args = (in_flags(exc.args[0]), *exc.args[1:])
            raise

    return wrapped
