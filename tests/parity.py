"""Deterministic weights and inputs for the official-parity tests (``tests/data/official_parity``).

The reference outputs there were computed by the official Depth-Anything-V2 code for weights
that anyone can rebuild from the key list alone: every tensor comes from numpy's PCG64 seeded
with the CRC-32 of its key, scaled by the kind of tensor it is. This is the project's own
implementation of that recipe (``benchmarks.weights``, where cost measurements use it without
the test tree).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.weights import deterministic_tensor

DATA = Path(__file__).resolve().parent / "data" / "official_parity"
ENCODERS = ("vits", "vitb", "vitl", "vitg")
REFERENCE_SIZES = ((518, 518), (364, 644))


def official_keys(encoder: str) -> list[tuple[str, list[int]]]:
    """The official state dict's ``[key, shape]`` pairs, in order."""
    return json.loads((DATA / f"keys_{encoder}.json").read_text())


def reference_output(height: int, width: int) -> np.ndarray:
    """The official vits's ``(1, H, W)`` output for ``deterministic_input(H, W)``."""
    return np.load(DATA / f"out_vits_{height}x{width}.npy")


def deterministic_state_dict(keys: list[tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    return {key: deterministic_tensor(key, shape) for key, shape in keys}


def deterministic_input(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype(np.float32)


def missing_files() -> list[str]:
    """Vendored parity files that are absent (an incomplete checkout)."""
    names = [f"keys_{e}.json" for e in ENCODERS] + [f"out_vits_{h}x{w}.npy" for h, w in REFERENCE_SIZES]
    return [name for name in names if not (DATA / name).is_file()]
