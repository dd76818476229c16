"""The predictor options every ``runtime`` command shares, under one set of names."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable

from .errors import InputError, MissingDependencyError, ModelFileError

DEFAULT_SIZE = 518


def add_predictor_args(parser: argparse.ArgumentParser, model_help: str, **model_kwargs: Any) -> None:
    """``--model`` (any file a DepthPredictor loads), ``--backend``, ``--device``, ``--precision``,
    ``--size``. ``--checkpoint`` and ``--input-size`` stay accepted as hidden aliases."""
    parser.add_argument("--model", help=model_help, **model_kwargs)
    parser.add_argument("--checkpoint", dest="model", type=model_kwargs.get("type"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help="auto (from the model file suffix), torch, onnxruntime, ...")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--precision", default=None, help="fp32, fp16 or bf16 (default: the backend's)")
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help=f"short side fed to the model (default {DEFAULT_SIZE})"
    )
    parser.add_argument("--input-size", dest="size", type=int, help=argparse.SUPPRESS)


def one_line_errors(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A command's errors as one line: bad input exits 2 (usage), a model or library problem 1."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (ModelFileError, MissingDependencyError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def build_predictor(args: argparse.Namespace, model: Any):
    """The DepthPredictor the shared options describe."""
    from .predictor import DepthPredictor

    return DepthPredictor(
        model, backend=args.backend, device=args.device, input_size=args.size, precision=args.precision
    )
