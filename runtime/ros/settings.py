"""Depth on a robot: the alignment settings the bag tool and the ROS 2 node share, with one set
of defaults and each rule in one place, filled from argparse options or ROS parameters.

``RobotAlign`` holds what both take (the time between an image and its sensor message, the
held-out share, the hold time, the sensor depth range, the fewest inliers); ``align_settings``
turns them into :class:`runtime.align.AlignSettings`, refusing bad ones in one line named as
the caller's options are (``--min-inliers`` or ``min_inliers``). ``SHARED_OPTIONS`` is the one
table of the rules of the options both commands take: each is the argparse type of the bag tool's
option and of the node's, and checks the node's ROS parameter of that name (``check_shared``), so
a bad value is refused with the same line and exit code 2 by either. ``check_model_rules`` is the
one place for what a model refuses (constants and stabilising for a metric model, no metres without
a fit for a model of depth up to scale) and what cannot go together. ``add_align_args`` and
``align_request``: the bag command's options for them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, Callable

from commands.errors import InputError

from ..align import AlignSettings, FilterSettings, FitSettings
from ..cli import number, positive_int, positive_metres
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


MAX_TIME_OFFSET = 60.0  # seconds: a sensor message farther from its image is no match for it
MAX_HELD_OUT = 0.9  # share of a frame's sensor points kept out of its fit

# The options the bag tool and the node share, one rule each: the argparse type of both commands'
# option (``--depth-range`` takes two values, each checked) and the check of the node's ROS parameter.
SHARED_OPTIONS: dict[str, Callable[[str], Any]] = {
    "point_stride": positive_int,
    "max_points": positive_int,
    "max_time_offset": number(0, MAX_TIME_OFFSET),
    "held_out": number(0, MAX_HELD_OUT),
    "hold": number(0),
    "depth_range": positive_metres,
    "min_inliers": number(2, integer=True),
}


def check_shared(name: str, value: Any, spell: Callable[[str], str] = flag) -> Any:
    """A shared option's value given as a number (a ROS parameter, a keyword argument), checked by the
    rule its command-line option is parsed with: ``InputError`` naming it as ``spell`` does."""
    try:
        return SHARED_OPTIONS[name](str(value))
    except argparse.ArgumentTypeError as exc:
        raise InputError(f"{spell(name)}: {exc}") from None


def check_depth_range(low: float, high: float, spell: Callable[[str], str] = flag) -> None:
    """The sensor depth range's own rule: its minimum below its maximum."""
    if not low < high:
        raise InputError(f"{spell('depth_range')}: the sensor depth range must be min < max, got {low}..{high}")


def check_parsed(args: Any, error: Callable[[str], Any]) -> None:
    """The rules between shared options once both commands' parsers have read them (``error``: the
    parser's, one line and exit code 2)."""
    try:
        check_depth_range(*args.depth_range)
    except InputError as exc:
        error(str(exc))


def align_settings(values: RobotAlign, name: Callable[[str], str] = flag) -> AlignSettings:
    """The alignment settings, or an ``InputError`` naming the option (``name`` spells it)."""
    for setting in ("max_time_offset", "held_out", "hold", "min_inliers"):
        check_shared(setting, getattr(values, setting), name)
    for depth in (values.min_depth, values.max_depth):
        check_shared("depth_range", depth, name)
    check_depth_range(values.min_depth, values.max_depth, name)
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
            f"give a sparse metric source to fit a scale per frame ({name('align_to')}), or use a "
            "metres-per-focal model (DA3Metric)"
        )
    if kind.needs_focal and aligned:
        raise InputError(
            f"the model outputs {kind.describe()}: its metres come from each frame's camera info; drop the "
            f"per-frame alignment ({name('align_to')})"
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


def add_align_args(parser: Any, max_time_offset: float) -> None:
    """The bag command's options for per-frame alignment and stabilising (the shared ones by ``SHARED_OPTIONS``)."""
    group = parser.add_argument_group("metric depth per frame from the bag's own sensor")
    group.add_argument(
        "--align-to",
        metavar="TOPIC",
        help="a PointCloud2 (lidar) or depth Image (16UC1 mm, 32FC1 m) topic: metric depth and points per frame "
        "from that frame's fit (with several --image-topic: a fit per camera, each with its own camera info and "
        "optical frame), transforms from the bag's /tf_static and /tf",
    )
    group.add_argument(
        "--extrinsics",
        nargs="+",
        type=number(-1e6, 1e6),
        metavar="N",
        help="the sensor's pose in the camera's optical frame, instead of tf: x y z yaw pitch roll, "
        "or x y z qx qy qz qw (one camera only: several cameras take their transforms from tf)",
    )
    group.add_argument(
        "--max-time-offset",
        type=SHARED_OPTIONS["max_time_offset"],
        default=max_time_offset,
        metavar="S",
        help=f"longest time between an image and its sensor message, 0 to {MAX_TIME_OFFSET:g} seconds "
        f"(default {max_time_offset})",
    )
    group.add_argument(
        "--held-out",
        type=SHARED_OPTIONS["held_out"],
        default=DEFAULTS.held_out,
        help=f"share of each frame's sensor points kept out of the fit to score it, 0 to {MAX_HELD_OUT:g} "
        f"(default {DEFAULTS.held_out})",
    )
    group.add_argument(
        "--hold",
        type=SHARED_OPTIONS["hold"],
        default=DEFAULTS.hold,
        metavar="S",
        help=f"seconds a good fit is held for frames without one (default {DEFAULTS.hold})",
    )
    group.add_argument(
        "--depth-range",
        nargs=2,
        type=SHARED_OPTIONS["depth_range"],
        default=(DEFAULTS.min_depth, DEFAULTS.max_depth),
        metavar=("MIN", "MAX"),
        help=f"sensor depths used, metres (default {DEFAULTS.min_depth} {DEFAULTS.max_depth:g})",
    )
    group.add_argument(
        "--min-inliers",
        type=SHARED_OPTIONS["min_inliers"],
        default=DEFAULTS.min_inliers,
        metavar="N",
        help=f"fewest inliers a frame's fit may have (default {DEFAULTS.min_inliers})",
    )
    parser.add_argument(
        "--stabilize",
        action="store_true",
        help="relative depth on the scale of the frames before it (no flicker); for relative models",
    )


def align_request(args: Any) -> dict[str, Any]:
    """``BagAligner.prepare`` keyword arguments from the command's options; ``InputError`` for bad ones."""
    from .tf import parse_extrinsics

    if args.align_to is None:
        given = [flag for flag in ("extrinsics",) if getattr(args, flag) is not None]
        if given:
            raise InputError(f"--{given[0]} describes the sensor of --align-to; give --align-to TOPIC too")
        return {}
    low, high = args.depth_range
    values = RobotAlign(args.max_time_offset, args.held_out, args.hold, low, high, args.min_inliers)
    settings = align_settings(values)
    extrinsics = None if args.extrinsics is None else parse_extrinsics(args.extrinsics)
    return {"extrinsics": extrinsics, "settings": settings, "max_time_offset": args.max_time_offset}
