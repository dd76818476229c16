"""Depth and point clouds for the images in a ROS bag, written to a new bag (``python -m runtime.bag``).

Reads ROS 2 bags (a folder with ``metadata.yaml`` and ``.mcap`` or sqlite3 ``.db3`` files) and
ROS 1 ``.bag`` files with ``rosbags`` (pure Python, no ROS install), runs the frames of one or
more cameras' image topics through ``DepthPredictor.stream_batches`` (``runtime.ros.bag_pass``)
and writes a new bag of the same ROS version, with per camera (``<ns>``: its image topic's namespace):

- the chosen input topics, copied byte for byte (default: the image and camera info topics);
- ``<ns>/depth/relative_inverse``: the model's relative inverse depth, ``32FC1``, unitless;
- with ``--metric-scale``, ``--align-to`` or a metric model: ``<ns>/depth/image``, depth in
  metres (REP 118, NaN = invalid) and, with camera info, ``<ns>/depth/points`` (``PointCloud2``,
  the camera's optical frame). A metric model's output is never published as relative depth.

Every output message keeps its source image's header (stamp, frame_id) and bag time. The
input is only read; the output is written under a hidden temporary name beside it and renamed
at the end, so an interrupted run never leaves a bag under the name that looks complete.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from commands.errors import InputError, OutputError, require
from commands.runner import DISK_ERRNOS

from ..io.files import check_writable_folder, staging_dir
from ..metric import OutputKind
from .bag_pass import BagPass, Summary
from .bag_writer import BagWriter
from .messages import Conversion
from .topics import plan_cameras

__all__ = [
    "STORAGES",
    "Summary",
    "camera_infos",
    "check_output",
    "open_bag",
    "output_storage",
    "process_bag",
    "rosbags_modules",
]

STORAGES = ("mcap", "sqlite3")
_STORAGE_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}
_ROSBAGS_NOTE = "rosbags needs Python >= 3.10"


def camera_infos(cameras: Sequence[Any]) -> dict[str, str | None]:
    """``{image topic: camera info topic}`` of the planned cameras, as ``BagAligner.prepare`` takes them."""
    return {topics.image: topics.camera_info for topics in cameras}


def rosbags_modules() -> Any:
    """The ``rosbags`` modules this tool uses, or an error naming the extra."""
    require("rosbags", "ros", "rosbags (reading and writing ROS bags)", _ROSBAGS_NOTE)
    import rosbags.highlevel
    import rosbags.rosbag1
    import rosbags.rosbag2
    import rosbags.serde
    import rosbags.typesys

    return rosbags


def output_storage(input_path: Path, output: Path, storage: str | None, is_ros2: bool) -> str:
    """``"rosbag1"``, ``"mcap"`` or ``"sqlite3"`` for the output, checked against the input."""
    if not is_ros2:
        if output.suffix != ".bag":
            raise InputError(f"the input is a ROS 1 bag, so the output must be a .bag file too, got {output}")
        if storage is not None:
            raise InputError("--storage chooses a ROS 2 storage; a ROS 1 input gives a ROS 1 .bag")
        return "rosbag1"
    if output.suffix == ".bag":
        raise InputError(
            f"the input is a ROS 2 bag, so the output is a ROS 2 bag folder, not a .bag file: {output} "
            "(copied messages stay in their CDR bytes)"
        )
    if storage is not None:
        return storage
    if input_path.is_dir():
        found = {_STORAGE_SUFFIX[p.suffix] for p in input_path.iterdir() if p.suffix in _STORAGE_SUFFIX}
        return found.pop() if len(found) == 1 else "mcap"
    return _STORAGE_SUFFIX.get(input_path.suffix, "mcap")


def open_bag(rb: Any, path: Path) -> Any:
    """An open ``AnyReader`` for a ROS 1 or ROS 2 bag, or an ``InputError`` saying why not."""
    if not path.exists():
        raise InputError(f"no such bag: {path}")
    # Used only for bags that carry no message definitions (old ROS 2 recordings).
    store = rb.typesys.get_typestore(rb.typesys.Stores.ROS2_HUMBLE)
    try:
        reader = rb.highlevel.AnyReader([path], default_typestore=store)
        reader.open()
    except (rb.highlevel.AnyReaderError, rb.rosbag1.ReaderError, rb.rosbag2.ReaderError, OSError) as exc:
        raise InputError(f"cannot read {path} as a ROS bag: {exc}") from exc
    return reader


def check_output(input_path: Path, output: Path) -> None:
    if output.exists() or output.is_symlink():
        raise InputError(f"{output} exists; choose another --output or remove it (bags are never overwritten)")
    if output.resolve() == input_path.resolve():
        raise InputError("the output must differ from the input bag")
    check_writable_folder(output.parent, "--output")


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
    ``BagAligner.prepare``'s, or ``{"aligner": prepared}``), its per-frame record written beside
    the output; ``stabilize``:
    relative depth on the scale of the frames before it, per camera.
    """
    from .align import FramePipeline
    from .bag_align import BagAligner, alignment_json_path, check_conversion

    rb = rosbags_modules()
    input_path, output = Path(input_path), Path(output)
    images = _per_camera(image_topic) or []
    aligned = align_to is not None or (align_options or {}).get("aligner") is not None
    conversion = check_conversion(
        conversion or Conversion(), getattr(predictor, "output", OutputKind()), stabilize, aligned
    )
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"every and max_frames must be positive, got {every} and {max_frames}")
    check_output(input_path, output)
    reader = open_bag(rb, input_path)
    staging = None
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        per_camera = (camera_info_topic, depth_topic, metric_depth_topic, points_topic)
        writes = FramePipeline(conversion.output, conversion, aligned=aligned).outputs  # what the run publishes
        cameras = plan_cameras(
            types, images, *map(_per_camera, per_camera), copy=copy_topics, copy_all=copy_all, writes=writes
        )
        kind = output_storage(input_path, output, storage, reader.is2)
        staging = staging_dir(output)
        writer = BagWriter(rb, staging / output.name, kind, reader)
        errors = (rb.highlevel.AnyReaderError, rb.serde.SerdeError)
        options = dict(align_options or {})
        aligner = options.pop("aligner", None)
        if align_to is not None and aligner is None:
            aligner = BagAligner.prepare(reader, align_to, camera_infos(cameras), **options)
        if aligner is not None:
            for note in aligner.notes:  # re-parented frames, invalid transforms, frames that disagree
                warn(note)
            aligner.start(conversion.output)
        run = BagPass(reader, writer, cameras, conversion, errors, progress, warn, aligner, stabilize)
        summary = run.run(predictor, every, max_frames, max_pixels)
        writer.close()
        if summary.frames:  # a bag of copies alone is no result: nothing goes under the output name
            check_output(input_path, output)  # something else may have created it meanwhile
            if aligner is not None:  # the record lands first: a bag under its name is always complete
                summary.alignment_json = alignment_json_path(output)
                os.replace(
                    aligner.write_json(staging / summary.alignment_json.name, output.name), summary.alignment_json
                )
            os.replace(staging / output.name, output)
        return summary
    except OSError as exc:
        if exc.errno in DISK_ERRNOS and not exc.filename:  # the bag writers do not say which file
            raise OutputError(exc.errno, exc.strerror, str(output)) from exc
        raise
    finally:
        reader.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
