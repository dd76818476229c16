"""Pieces every export command shares: the source model, shapes, errors, CLI plumbing."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtime.preprocessing import PATCH_SIZE


class ExportError(RuntimeError):
    """An export that cannot be done or failed its verification; the message says why."""


def check_hw(height: int, width: int, what: str = "input") -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if value < PATCH_SIZE or value % PATCH_SIZE:
            near = max(PATCH_SIZE, round(value / PATCH_SIZE) * PATCH_SIZE)
            raise ExportError(f"{what} {name} {value} must be a positive multiple of {PATCH_SIZE} (try {near})")
    return height, width


def patch_multiple(text: str) -> int:
    """argparse type: a positive multiple of 14 (bad values exit with usage code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    try:
        check_hw(value, value, "size")
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("size height", "size")) from None
    return value


def parse_hw(text: str) -> tuple[int, int]:
    """argparse type: ``518x686`` or ``518`` -> (518, 686) / (518, 518), multiples of 14."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW (for example 518x518)")
    values = [patch_multiple(p) for p in parts]
    return (values[0], values[-1])


def load_source_model(checkpoint: str | Path | None, encoder: str | None) -> Any:
    """The PyTorch model to export: a checkpoint, or random weights of ``encoder`` (with a warning)."""
    from train.models import CheckpointError, DepthAnythingV2, load_model

    if checkpoint is not None:
        try:
            return load_model(checkpoint, encoder=encoder)
        except CheckpointError as exc:
            raise ExportError(str(exc)) from exc
    if encoder is None:
        raise ExportError("give --checkpoint (a .pth/.safetensors file) or --encoder for random weights")
    print(
        f"WARNING: exporting RANDOM {encoder} weights (no --checkpoint): for testing the pipeline only", file=sys.stderr
    )
    return DepthAnythingV2(encoder).eval()


def add_source_args(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    parser.add_argument("--checkpoint", type=Path, help="model checkpoint: official .pth, HF or own .safetensors")
    parser.add_argument(
        "--encoder", choices=("vits", "vitb", "vitl", "vitg"), help="encoder (read from the checkpoint if omitted)"
    )
    if onnx:
        parser.add_argument("--onnx", type=Path, help="FP32 ONNX from python -m export.onnx (instead of --checkpoint)")


PRECISIONS = ("fp16", "int8", "fp32")  # what export.openvino and export.trt build


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def add_precision_args(parser: argparse.ArgumentParser, helps: dict[str, str], default: str) -> None:
    """Mutually exclusive ``--fp16``/``--int8``/... flags that set ``args.precision``."""
    group = parser.add_mutually_exclusive_group()
    for name, text in helps.items():
        group.add_argument(f"--{name}", dest="precision", action="store_const", const=name, help=text)
    parser.set_defaults(precision=default)


DEFAULT_CALIB_SAMPLES = 500  # TensorRT's and OpenVINO's guidance: a few hundred images at deployment size


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
        type=int,
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
    parser.add_argument("--allow-fewer", action="store_true", help="calibrate on fewer images than asked if short")
    add_accuracy_args(parser)


DEFAULT_ACCURACY_BUDGET = 0.01
DEFAULT_ACCURACY_IMAGES = 8
SMOOTH_MODES = ("auto", "on", "off")


def accuracy_budget(text: str) -> float | None:
    """argparse type: an AbsRel bound, or ``off``."""
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (an AbsRel such as 0.01) or 'off'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the accuracy budget must be positive (or 'off')")
    return value


def add_accuracy_args(parser: argparse.ArgumentParser) -> None:
    """The INT8 accuracy budget every INT8 export takes (see ``export.accuracy``)."""
    parser.add_argument(
        "--accuracy-budget",
        type=accuracy_budget,
        default=DEFAULT_ACCURACY_BUDGET,
        metavar="ABSREL",
        help=f"largest AbsRel vs FP32 on held-out images (default {DEFAULT_ACCURACY_BUDGET}); layers that break "
        "it go back to float; 'off' skips the check",
    )
    parser.add_argument(
        "--accuracy-images",
        type=int,
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


def check_request(args: argparse.Namespace) -> None:
    """What every export from ``--onnx``/``--checkpoint``/``--encoder`` with a precision needs."""
    if args.precision == "int8" and args.calib_dir is None:
        raise ExportError("--int8 needs calibration images: pass --calib-dir with SA-1B shards or an image folder")
    if args.onnx is None and args.checkpoint is None and args.encoder is None:
        raise ExportError("give --onnx, --checkpoint or --encoder")


def source_stem(args: argparse.Namespace) -> str:
    given = args.onnx or args.checkpoint
    return given.stem if given else f"random_{args.encoder}"


def source_onnx(
    args: argparse.Namespace, folder: Path, height: int, width: int, dynamic: bool, opset: int = 17
) -> Path:
    """``--onnx`` as given, or a verified FP32 export of the checkpoint written into ``folder``."""
    if args.onnx is not None:
        return args.onnx
    from .onnx import export_onnx

    suffix = "" if opset == 17 else f".opset{opset}"  # an 8.5 target's split-LayerNorm export
    path = folder / f"{source_stem(args)}.{'dynamic' if dynamic else f'{height}x{width}'}{suffix}.onnx"
    print(f"exporting ONNX (opset {opset}) -> {path}")
    model = load_source_model(args.checkpoint, args.encoder)
    export_onnx(model, path, height, width, dynamic=dynamic, opset=opset, source=str(args.checkpoint))
    return path


_STAGE = ["starting"]


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the step in progress, so an unexpected failure can say where it happened."""
    previous, _STAGE[0] = _STAGE[0], name
    yield  # on an exception the name stays for run_cli to report
    _STAGE[0] = previous


def error_log_path(prog: str) -> Path:
    folder = Path(os.environ.get("DAV2_LOG_DIR") or Path.home() / ".cache" / "dav2-edge" / "logs")
    return folder / f"{prog.split()[-1]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run, and turn every failure into one line and exit code 1.

    Errors users can fix print their message. Anything else (a library's own exception) prints
    the stage it happened in and the log file that holds the traceback, never the traceback.
    """
    from runtime.errors import MissingDependencyError

    args = parser.parse_args(argv)
    _STAGE[0] = "starting"
    try:
        return main(args)
    except (ExportError, MissingDependencyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written under the output name", file=sys.stderr)
        return 130
    except Exception as exc:
        where = _STAGE[0]
        log = error_log_path(parser.prog)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{parser.prog} {' '.join(sys.argv[1:])}\nstage: {where}\n\n{traceback.format_exc()}")
            details = f"details in {log}"
        except OSError:
            details = "no log could be written"
        summary = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"error: {where} failed: {type(exc).__name__}: {summary} ({details})", file=sys.stderr)
        return 1
