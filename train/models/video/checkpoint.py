"""Loading the published Video Depth Anything ``.pth`` files strictly, with their licence.

The relative and the metric checkpoints hold the same network (the metric one outputs metres);
nothing inside the file tells them apart, so the published file name does
(``metric_video_depth_anything_<encoder>.pth``), or ``metric=`` when the file was renamed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..state import state_mismatch
from ..variants import ModelSpec
from .network import VideoDepthAnything

FAMILY = "video-depth-anything"
MARKER = "head.motion_modules."
NAMES = {"vits": "Small", "vitb": "Base", "vitl": "Large"}
# Video-Depth-Anything's README (DepthAnything/Video-Depth-Anything @ 4f5ae23, "LICENSE"):
# "Video-Depth-Anything-Small model is under the Apache-2.0 license. Video-Depth-Anything-Base/Large
# model is under the CC-BY-NC-4.0 license." The metric checkpoints are not named there.
LICENCES = {"vits": "Apache-2.0", "vitb": "CC-BY-NC-4.0", "vitl": "CC-BY-NC-4.0"}
NO_LICENCE = "none stated"
_METRIC_NAME = re.compile(r"^metric[_-]", re.IGNORECASE)


def is_video_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A state dict with the temporal head's motion modules."""
    return any(k.startswith(MARKER) for k in state)


def variant_name(encoder: str, metric: bool) -> str:
    return f"{'Metric-' if metric else ''}Video-Depth-Anything-{NAMES[encoder]}"


def licence(encoder: str, metric: bool) -> str:
    return NO_LICENCE if metric else LICENCES[encoder]


def describe_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Missing, unexpected and mis-shaped tensors; empty when the state fits."""
    return "; ".join(state_mismatch(model.state_dict(), state))


def load_video_model(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    spec: ModelSpec,
    metric: bool | None = None,
) -> VideoDepthAnything:
    """A ``VideoDepthAnything`` in eval mode, every tensor of the file used and none missing;
    ``ValueError`` (which ``load_model`` turns into its ``CheckpointError``) otherwise."""
    path = Path(path)
    if spec.name not in LICENCES:
        raise ValueError(f"{path}: Video Depth Anything comes with vits, vitb and vitl encoders, not {spec.name}")
    if metric is None:
        metric = metadata.get("metric") == "true" if "metric" in metadata else bool(_METRIC_NAME.match(path.name))
    model = VideoDepthAnything(spec, metric=metric)
    problems = describe_mismatch(model, state)
    if problems:
        raise ValueError(f"{path}: the checkpoint does not fit VideoDepthAnything({spec.name!r}): {problems}")
    model.load_state_dict(state, strict=True)
    model.variant = metadata.get("variant") or variant_name(spec.name, metric)
    model.licence = metadata.get("license") or metadata.get("licence") or licence(spec.name, metric)
    return model.eval()
