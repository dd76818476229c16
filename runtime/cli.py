"""The predictor options every ``runtime`` command shares, under one set of names."""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_SIZE = 518


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
    parser.add_argument("--precision", default=None, help="fp32, fp16 or bf16 (default: the backend's)")
    parser.add_argument(
        "--size",
        type=network_size,
        default=DEFAULT_SIZE,
        metavar="N|HxW",
        help=f"network input: N = short side, aspect kept (default {DEFAULT_SIZE}); HxW = resized straight to HxW "
        "(as a static export of that size); a fixed-shape model always takes its own",
    )
    parser.add_argument("--input-size", dest="size", type=network_size, help=argparse.SUPPRESS)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


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
    return DepthPredictor(
        model,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        **size_options(args.size),
        **({"streams": streams} if streams != 1 else {}),
    )
