"""The predictor options every ``runtime`` command shares, under one set of names."""

from __future__ import annotations

import argparse
from typing import Any

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
