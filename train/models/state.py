"""How a state dict differs from a model's, said one way for every family's strict loading."""

from __future__ import annotations

from collections.abc import Mapping

import torch

LIST_LIMIT = 8  # keys named per kind of difference; the rest are counted


def listed(keys: list[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def state_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], limit: int = LIST_LIMIT
) -> list[str]:
    """``missing keys: ...``, ``unexpected keys: ...`` and ``wrong shapes: ...`` for what differs
    between a model's own state dict (``expected``) and ``state``; empty when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    named = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
    return [f"{what}: {listed(keys, limit)}" for what, keys in named if keys]
