"""Depth on a robot: the alignment settings the bag tool and the ROS 2 node share, with one set
of defaults and each rule in one place, filled from argparse options or ROS parameters.

``RobotAlign`` holds what both take (the time between an image and its sensor message, the
held-out share, the hold time, the sensor depth range, the fewest inliers); ``align_settings``
turns them into :class:`runtime.align.AlignSettings`, refusing bad ones in one line named as
the caller's options are (``--min-inliers`` or ``min_inliers``). ``check_model_rules`` is the one
place for what a metric model refuses (constants and stabilising) and what cannot go together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

from commands.errors import InputError

from ..align import AlignSettings, FilterSettings, FitSettings
from ..metric import DEPTH_UP_TO_SCALE, OutputKind


@dataclass(frozen=True)
class RobotAlign:
    """The defaults of per-frame alignment on a robot, for the bag tool and the node alike."""

    max_time_offset: float = 0.05  # seconds between an image and the sensor message it is fitted to
    held_out: float = 0.2  # share of each frame's sensor points kept out of the fit to score it
    hold: float = 0.5  # seconds a good fit is held for frames without one
    min_depth: float = 0.1  # sensor depths used, metres
    max_depth: float = 100.0
    min_inliers: int = 20  # fewest inliers a frame's fit may have


DEFAULTS = RobotAlign()


def flag(name: str) -> str:
    """A setting's name as the command line spells it."""
    return "--" + name.replace("_", "-")


def align_settings(values: RobotAlign, name: Callable[[str], str] = flag) -> AlignSettings:
    """The alignment settings, or an ``InputError`` naming the option (``name`` spells it)."""
    if not (math.isfinite(values.max_time_offset) and values.max_time_offset >= 0):
        raise InputError(f"{name('max_time_offset')} must be a number of seconds >= 0, got {values.max_time_offset}")
    if not (math.isfinite(values.hold) and values.hold >= 0):
        raise InputError(f"{name('hold')} must be a number of seconds >= 0, got {values.hold}")
    if not 0 <= values.held_out < 0.9:
        raise InputError(f"{name('held_out')} must be in [0, 0.9), got {values.held_out}")
    if not 0 < values.min_depth < values.max_depth < math.inf:
        raise InputError(
            f"{name('depth_range')}: the sensor depth range must be 0 < min < max, got "
            f"{values.min_depth}..{values.max_depth}"
        )
    if values.min_inliers < 2:
        raise InputError(f"{name('min_inliers')} must be >= 2, got {values.min_inliers}")
    fit = FitSettings(min_inliers=values.min_inliers, min_depth=values.min_depth, max_depth=values.max_depth)
    return AlignSettings(fit, FilterSettings(hold=values.hold), held_out=values.held_out)


def published_outputs(kind: OutputKind, constants: bool, aligned: bool, confidence: bool = False) -> list[str]:
    """What a run publishes per camera (``relative``, ``metric``, ``points``, ``confidence``) for a
    model of ``kind``: relative inverse depth unless the model outputs depth, metres from the model,
    from constants (``constants``) or from a fit per frame (``aligned``), and the model's depth
    confidence when asked for (``confidence``). Points also need a camera's camera info."""
    metres = kind.is_depth or constants or aligned
    outputs = ([] if kind.is_depth else ["relative"]) + (["metric", "points"] if metres else [])
    return outputs + (["confidence"] if confidence else [])


def check_confidence(extra_outputs: Any, asked: bool, name: str = "--confidence") -> None:
    """``InputError`` when the depth confidence is asked for from a model without one."""
    if asked and "depth_conf" not in tuple(extra_outputs):
        raise InputError(
            f"{name}: the model has no depth confidence output (the Depth Anything 3 any-view networks, "
            "DA3-Small/Base, have one; an exported one carries it as the ONNX output depth_conf); drop it"
        )


def check_model_rules(
    kind: OutputKind, conversion: Any, stabilize: bool, aligned: bool, name: Callable[[str], str] = flag
) -> Any:
    """The conversion for a model of ``kind`` (``conversion.output`` set to it), or ``InputError``:
    constants and stabilising are for relative models (a metric model's metres are published as
    they are; an alignment corrects their scale per frame), and constants and a fit per frame
    do not go together."""
    scale = f"{name('metric_scale')}/{name('metric_shift')}"
    if kind.kind == DEPTH_UP_TO_SCALE and not aligned:
        raise InputError(
            f"the model outputs {kind.describe()} ({kind.source}): robots get relative inverse depth or metres; "
            "give a sparse metric source to fit a scale per frame (the bag tool's --align-to), or use a "
            "metres-per-focal model (DA3Metric)"
        )
    if kind.needs_focal and aligned:
        raise InputError(
            f"the model outputs {kind.describe()}: its metres come from each frame's camera info; drop the "
            "per-frame alignment (--align-to)"
        )
    if kind.is_depth and conversion.metric is not None:
        raise InputError(
            f"the model outputs {kind.describe()} ({kind.source}): {scale} are for relative models "
            "(they convert relative inverse depth) and do not apply; drop them (an alignment corrects a metric "
            "model's scale per frame)"
        )
    if kind.is_depth and stabilize:
        raise InputError(f"the model outputs {kind.describe()}: {name('stabilize')} is for relative models")
    if aligned and conversion.metric is not None:
        raise InputError(f"give a fit per frame or {name('metric_scale')} (constants), not both")
    return replace(conversion, output=kind)
