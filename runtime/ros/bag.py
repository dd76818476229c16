"""Depth and point clouds for the images in a ROS bag, written to a new bag (``python -m runtime.bag``).

Reads ROS 2 bags (a folder with ``metadata.yaml`` and ``.mcap`` or sqlite3 ``.db3`` files) and
ROS 1 ``.bag`` files with ``rosbags`` (pure Python, no ROS install), runs the frames of one or
more cameras' image topics through ``DepthPredictor.stream_batches`` (``runtime.ros.bag_pass``)
and writes a new bag of the same ROS version, with per camera (``<ns>``: its image topic's namespace):

- the chosen input topics, copied byte for byte (default: the image and camera info topics);
- ``<ns>/depth/relative_inverse``: the model's relative inverse depth, ``32FC1``, unitless;
- with ``--metric-scale``, ``--align-to`` or a metric model: ``<ns>/depth/image``, depth in
  metres (REP 118, NaN = invalid; +inf = sky, REP 117, from a model with a sky output) and, with
  camera info, ``<ns>/depth/points`` (``PointCloud2``, the camera's optical frame, no sky). A
  metric model's output is never published as relative depth;
- with ``--confidence`` (a model with a depth confidence output): ``<ns>/depth/confidence``.

The run is planned once (``runtime.ros.bag_plan``: the bag opened, the cameras' topics, the
output storage, the ``--align-to`` index) and the plan is handed to the pass and the writer:
``process_bag`` is ``open_plan`` then ``run_plan``; the command (``runtime.bag``) opens the plan
before the model loads and runs it after.

Every output message keeps its source image's header (stamp, frame_id) and bag time. The
input is only read; the output is written under a hidden temporary name beside it and renamed
at the end, so an interrupted run never leaves a bag under the name that looks complete.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, Union

from commands.errors import InputError, OutputError
from commands.runner import DISK_ERRNOS

from ..io.files import staging_dir
from ..metric import OutputKind
from .bag_pass import BagPass, Summary
from .bag_plan import (
    STORAGES,
    BagPlan,
    CameraRequest,
    check_output,
    open_bag,
    open_plan,
    output_storage,
    rosbags_modules,
)
from .bag_writer import BagWriter
from .messages import Conversion
from .settings import check_confidence, check_model_rules, published_outputs

__all__ = [
    "STORAGES",
    "BagPlan",
    "CameraRequest",
    "Summary",
    "check_output",
    "open_bag",
    "open_plan",
    "output_storage",
    "process_bag",
    "rosbags_modules",
    "run_plan",
]

TopicOrTopics = Union[str, Sequence[str]]  # typing's Union: the alias is evaluated at run time on Python 3.8


def _per_camera(value: TopicOrTopics | None) -> list[str] | None:
    return None if value is None else [value] if isinstance(value, str) else list(value)


def process_bag(
    predictor: Any,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    image_topic: TopicOrTopics,
    *,
    camera_info_topic: TopicOrTopics | None = None,
    depth_topic: TopicOrTopics | None = None,
    metric_depth_topic: TopicOrTopics | None = None,
    points_topic: TopicOrTopics | None = None,
    copy_topics: list[str] | None = None,
    copy_all: bool = False,
    conversion: Conversion | None = None,
    every: int = 1,
    max_frames: int | None = None,
    storage: str | None = None,
    max_pixels: int | None = None,
    progress: Callable[[int], Any] | None = None,
    warn: Callable[[str], None] = lambda text: print(f"warning: {text}", file=sys.stderr),
    align_to: str | None = None,
    align_options: dict[str, Any] | None = None,
    stabilize: bool = False,
) -> Summary:
    """Write ``output``: a new bag with the depth of ``image_topic`` in ``input_path`` (see the module doc).

    ``image_topic`` is one camera's topic or a list of several cameras' (one pass: each frame's
    depth goes under its own camera's ``<ns>/depth/...``, each camera takes its own camera info,
    and frames of equal size run as one batch); the camera info and output topics are then
    ``None`` (beside each camera) or lists in the same order. ``every`` and ``max_frames`` count
    each camera's frames.

    ``predictor`` is a :class:`runtime.DepthPredictor`. Frames that cannot be decoded are
    skipped and listed in the returned summary (per camera in ``summary.cameras``), and camera
    infos that cannot be used are counted; when no frame at all could be decoded, nothing is
    written (``summary.frames == 0``).
    ``progress(1)`` is called for every image message handled, written or skipped. Raises
    ``InputError`` for an unusable request (missing topic, output present) before anything is
    written. ``align_to``: a PointCloud2 or depth image topic each camera's frames are fitted to,
    frame by frame and camera by camera (``runtime.ros.bag_align``; ``align_options`` are
    ``BagAligner.prepare``'s), its per-frame record written beside the output; ``stabilize``:
    relative depth on the scale of the frames before it, per camera.
    """
    kind = getattr(predictor, "output", OutputKind())
    conversion = check_model_rules(kind, conversion or Conversion(), stabilize, align_to is not None)
    _check_counts(every, max_frames)
    per_camera = (camera_info_topic, depth_topic, metric_depth_topic, points_topic)
    request = CameraRequest(_per_camera(image_topic) or [], *map(_per_camera, per_camera), copy_topics, copy_all)
    writes = published_outputs(kind, conversion.metric is not None, align_to is not None, conversion.confidence)
    with open_plan(
        request, input_path, output, writes=writes, storage=storage, align_to=align_to, align_options=align_options
    ) as plan:
        return run_plan(plan, predictor, conversion, every, max_frames, max_pixels, progress, warn, stabilize)


def _check_counts(every: int, max_frames: int | None) -> None:
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"every and max_frames must be positive, got {every} and {max_frames}")


def run_plan(
    plan: BagPlan,
    predictor: Any,
    conversion: Conversion | None = None,
    every: int = 1,
    max_frames: int | None = None,
    max_pixels: int | None = None,
    progress: Callable[[int], Any] | None = None,
    warn: Callable[[str], None] = lambda text: print(f"warning: {text}", file=sys.stderr),
    stabilize: bool = False,
) -> Summary:
    """Run a plan (``open_plan``) with a loaded ``predictor``: the pass, then the output under its
    name (see :func:`process_bag`). What the model outputs is checked against the plan first."""
    from .bag_align import alignment_json_path

    aligned = plan.aligner is not None
    kind = getattr(predictor, "output", OutputKind())
    conversion = check_model_rules(kind, conversion or Conversion(), stabilize, aligned)
    _check_counts(every, max_frames)
    check_confidence(getattr(predictor, "extra_outputs", ()), conversion.confidence)
    plan.expect(published_outputs(kind, conversion.metric is not None, aligned, conversion.confidence))
    input_path, output = plan.input, plan.output
    check_output(input_path, output)
    staging = None
    try:
        staging = staging_dir(output)
        writer = BagWriter(plan, staging / output.name)
        if plan.aligner is not None:
            for note in plan.notes:  # re-parented frames, invalid transforms, frames that disagree
                warn(note)
            plan.aligner.start(conversion.output)
        run = BagPass(plan, writer, conversion, progress, warn, stabilize)
        summary = run.run(predictor, every, max_frames, max_pixels)
        writer.close()
        if summary.frames:  # a bag of copies alone is no result: nothing goes under the output name
            check_output(input_path, output)  # something else may have created it meanwhile
            if plan.aligner is not None:  # the record lands first: a bag under its name is always complete
                summary.alignment_json = alignment_json_path(output)
                os.replace(
                    plan.aligner.write_json(staging / summary.alignment_json.name, output.name),
                    summary.alignment_json,
                )
            os.replace(staging / output.name, output)
        return summary
    except OSError as exc:
        if exc.errno in DISK_ERRNOS and not exc.filename:  # the bag writers do not say which file
            raise OutputError(exc.errno, exc.strerror, str(output)) from exc
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
