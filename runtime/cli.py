"""The predictor options every ``runtime`` command shares, under one set of names, and the checks of
the options that commands share with each other (counts, metric conversions, topic names)."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Callable

from commands.errors import InputError

DEFAULT_SIZE = 518


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (counts and strides)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def number(low: float | None = None, high: float | None = None, integer: bool = False, above: bool = False):
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``above``), whole with
    ``integer``; argparse names the option in its one-line error (exit code 2)."""
    kind = "a whole number" if integer else "a number"

    def show(v: float) -> str:
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"

    if low is not None and high is not None:
        bounds = f"{'above' if above else 'from'} {show(low)} {'and up to' if above else 'to'} {show(high)}"
    elif low is not None:
        bounds = f"{'above' if above else 'at least'} {show(low)}"
    else:
        bounds = f"at most {show(high)}" if high is not None else "finite"
    rule = f"{kind} {bounds}"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}: give {rule}") from None
        inside = math.isfinite(value) and (low is None or (value > low if above else value >= low))
        if not inside or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {rule}")
        return value

    parse.__name__ = "whole number" if integer else "number"
    return parse


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_metric_options(
    scale: float | None, shift: float, max_range: float | None, name: Callable[[str], str] = _option
) -> None:
    """The rules of a metric conversion, the same for the bag tool's options and the node's parameters
    (``name`` spells them): ``InputError`` for a scale that is not positive and finite (``None``: no
    conversion), a shift that is not finite, a range that is not a positive number of metres."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise InputError(f"{name('metric_scale')} must be a positive finite number, got {scale}")
    if not math.isfinite(shift):
        raise InputError(f"{name('metric_shift')} must be a finite number, got {shift}")
    if max_range is not None and not (math.isfinite(max_range) and max_range > 0):
        raise InputError(f"{name('max_range')} must be a positive number of metres, got {max_range}")


# ROS 2's rules for a fully qualified topic name (design.ros2.org "Topic and Service name mapping to
# DDS", checked by rmw_validate_full_topic_name): starts with '/', only [A-Za-z0-9_/], no '//', no
# trailing '/', no token starting with a digit, at most 247 characters. ROS 1 names (wiki.ros.org/Names)
# accept all of these.
_TOPIC_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_TOPIC_LENGTH = 247


def topic_name(text: str) -> str:
    """argparse type: a fully qualified ROS topic name, refused with the rule it breaks."""
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r}: a topic in a bag is fully qualified, starting with '/'")
    tokens = text[1:].split("/")
    bad = [t for t in tokens if not _TOPIC_TOKEN.fullmatch(t)]
    if bad or len(text) > MAX_TOPIC_LENGTH:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid ROS topic name: names between '/' are letters, digits and '_', "
            f"not starting with a digit, with no empty name ('//' or a trailing '/'), {MAX_TOPIC_LENGTH} "
            "characters at most"
        )
    return text


def network_size(text: str) -> int | tuple[int, int]:
    """argparse type for ``--size``: ``N`` (the short side, aspect kept: dynamic models) or ``HxW``
    (every frame resized straight to HxW, as a static export of that size sees it)."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or HxW (for example 518 or 518x686)") from None
    if len(values) not in (1, 2) or any(v < 14 or v % 14 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are positive multiples of 14 (for example 518 or 518x686)")
    return values[0] if len(values) == 1 else (values[0], values[1])


def size_options(size: int | tuple[int, int]) -> dict[str, Any]:
    """``DepthPredictor`` keyword arguments for a ``--size`` value."""
    if isinstance(size, tuple):
        return {"input_size": min(size), "fixed_size": size}
    return {"input_size": size}


def add_predictor_args(parser: argparse.ArgumentParser, model_help: str, **model_kwargs: Any) -> None:
    """``--model`` (any file a DepthPredictor loads), ``--backend``, ``--device``, ``--precision``,
    ``--size``. ``--checkpoint`` and ``--input-size`` stay accepted as hidden aliases."""
    parser.add_argument("--model", help=model_help, **model_kwargs)
    parser.add_argument("--checkpoint", dest="model", type=model_kwargs.get("type"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help="auto (from the model file suffix), torch, onnxruntime, ...")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="fp32, fp16 or bf16 (default: the artefact's)",
    )
    parser.add_argument(
        "--size",
        type=network_size,
        default=DEFAULT_SIZE,
        metavar="N|HxW",
        help=f"network input: N = short side, aspect kept (default {DEFAULT_SIZE}); HxW = resized straight to HxW "
        "(as a static export of that size); a fixed-shape model always takes its own",
    )
    parser.add_argument("--input-size", dest="size", type=network_size, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output-kind",
        choices=("relative", "metric"),
        help="what a model file without metadata outputs (default: what the file says, else relative); "
        "metric needs --max-depth",
    )
    parser.add_argument(
        "--max-depth",
        type=positive_metres,
        metavar="M",
        help="a metric model's depth bound in metres (20 indoor, 80 outdoor)",
    )


MIN_METRES, MAX_METRES = 0.001, 100000.0  # a millimetre to 100 km: depth ranges and bounds


def positive_metres(text: str) -> float:
    """argparse type for a distance in metres: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of metres") from None
    if not (MIN_METRES <= value <= MAX_METRES):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of metres from {MIN_METRES:g} to {MAX_METRES:g}")
    return value


def focal_pixels(text: str) -> float:
    """argparse type for ``--focal``: the rules of ``DepthPredictor(focal=)`` (``check_focal``)."""
    from .metric import check_focal

    try:
        return check_focal(float(text))
    except InputError as exc:  # an InputError is a ValueError: first
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels") from None


def add_streams_arg(parser: argparse.ArgumentParser) -> None:
    """``--streams`` for commands that run frames through ``DepthPredictor.stream``."""
    parser.add_argument(
        "--streams",
        type=positive_int,
        default=1,
        metavar="N",
        help="model calls at once (OpenVINO, ONNX Runtime, TensorRT), each on its share of the device: more "
        "frames per second, each a little later (default 1: the lowest latency)",
    )


def build_predictor(args: argparse.Namespace, model: Any):
    """The DepthPredictor the shared options describe (and ``--streams`` where the command has it)."""
    from .predictor import DepthPredictor

    streams = getattr(args, "streams", 1)
    focal = getattr(args, "focal", None)  # python -m runtime's --focal
    return DepthPredictor(
        model,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        output_kind=args.output_kind,
        max_depth=args.max_depth,
        **size_options(args.size),
        **({"streams": streams} if streams != 1 else {}),
        **({"focal": focal} if focal is not None else {}),
    )
