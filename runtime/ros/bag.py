"""Depth and point clouds for the images in a ROS bag, written to a new bag (``python -m runtime.bag``).

Reads ROS 2 bags (a folder with ``metadata.yaml`` and ``.mcap`` or sqlite3 ``.db3`` files) and
ROS 1 ``.bag`` files with ``rosbags`` (pure Python, no ROS install), runs the frames of one
image topic through ``DepthPredictor.stream`` and writes a new bag of the same ROS version:

- the chosen input topics, copied byte for byte (default: the image and camera info topics);
- ``<ns>/depth/relative_inverse``: the model's relative inverse depth, ``32FC1``, unitless;
- with ``--metric-scale``: ``<ns>/depth/image``, depth in metres (REP 118, NaN = invalid) and,
  with camera info, ``<ns>/depth/points`` (``PointCloud2``, the camera's optical frame).

Every output message keeps its source image's header (stamp, frame_id) and bag time. The
input is only read; the output is written under a hidden temporary name beside it and renamed
at the end, so an interrupted run never leaves a bag under the name that looks complete.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..commands import DISK_ERRNOS
from ..errors import InputError, OutputError, require
from ..io.files import check_writable_folder, staging_dir
from ..pointcloud import Intrinsics, bounded_stride
from ..preprocessing import check_image
from .messages import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    POINT_CLOUD2,
    Conversion,
    camera_size_note,
    depth_messages,
    intrinsics_from_camera_info,
    message_to_image,
)

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STORAGES = ("mcap", "sqlite3")
_STORAGE_SUFFIX = {".mcap": "mcap", ".db3": "sqlite3"}
_ROSBAGS_NOTE = "rosbags needs Python >= 3.10"


def rosbags_modules() -> Any:
    """The ``rosbags`` modules this tool uses, or an error naming the extra."""
    require("rosbags", "ros", "rosbags (reading and writing ROS bags)", _ROSBAGS_NOTE)
    import rosbags.highlevel
    import rosbags.rosbag1
    import rosbags.rosbag2
    import rosbags.serde
    import rosbags.typesys

    return rosbags


@dataclass
class Topics:
    """Which topics go in and come out of one run."""

    image: str
    camera_info: str | None
    relative: str
    metric: str
    points: str
    copy: list[str]


@dataclass
class Summary:
    frames: int = 0
    points: int = 0
    point_bytes: int = 0
    copied: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (bag time ns, reason)
    frames_without_camera_info: int = 0
    camera_infos_skipped: int = 0  # camera info messages that could not be used
    thinned_clouds: int = 0  # clouds whose stride was raised to stay within Conversion.max_points
    largest_stride: int = 1
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def base_topic(topic: str, msgtype: str) -> str:
    """The image topic without image_transport's ``/compressed`` suffix."""
    if msgtype == COMPRESSED_IMAGE and topic.endswith("/compressed"):
        return topic[: -len("/compressed")]
    return topic


def default_topics(image_topic: str, image_type: str) -> tuple[str, str, str]:
    """``(relative, metric, points)`` topic names beside the camera's image topic."""
    namespace = base_topic(image_topic, image_type).rsplit("/", 1)[0]
    return f"{namespace}/depth/relative_inverse", f"{namespace}/depth/image", f"{namespace}/depth/points"


def find_camera_info(image_topic: str, image_type: str, types: dict[str, str]) -> str | None:
    """The camera info beside the image (``<ns>/camera_info``), else the bag's only one."""
    sibling = base_topic(image_topic, image_type).rsplit("/", 1)[0] + "/camera_info"
    if types.get(sibling) == CAMERA_INFO:
        return sibling
    infos = [topic for topic, kind in types.items() if kind == CAMERA_INFO]
    return infos[0] if len(infos) == 1 else None


def plan_topics(
    types: dict[str, str],
    image: str,
    camera_info: str | None = None,
    relative: str | None = None,
    metric: str | None = None,
    points: str | None = None,
    copy: list[str] | None = None,
    copy_all: bool = False,
) -> Topics:
    """Check the requested topics against the bag's ``{topic: msgtype}`` and fill in defaults.

    ``copy`` lists the topics copied unchanged (default: the image and camera info topics);
    ``copy_all`` copies every topic except the ones this run writes.
    """
    images = sorted(t for t, kind in types.items() if kind in IMAGE_TYPES)
    if image not in types:
        raise InputError(f"no topic {image!r} in the bag; image topics there: {', '.join(images) or 'none'}")
    if types[image] not in IMAGE_TYPES:
        raise InputError(f"{image} holds {types[image]}, not images; image topics there: {', '.join(images) or 'none'}")
    if camera_info is None:
        camera_info = find_camera_info(image, types[image], types)
    elif types.get(camera_info) != CAMERA_INFO:
        raise InputError(f"{camera_info} is not a {CAMERA_INFO} topic in the bag (it holds {types.get(camera_info)})")
    default_relative, default_metric, default_points = default_topics(image, types[image])
    relative, metric, points = relative or default_relative, metric or default_metric, points or default_points
    if copy_all:
        copy = sorted(t for t in types if t not in (relative, metric, points))
    elif copy is None:
        copy = [image] + ([camera_info] if camera_info else [])
    missing = [t for t in copy if t not in types]
    if missing:
        raise InputError(f"cannot copy {', '.join(missing)}: not in the bag")
    outputs = [relative, metric, points]
    clash = [t for t in outputs if t in copy]
    if len(set(outputs)) < 3 or clash:
        raise InputError(
            f"output topics must be distinct and not among the copied topics: {', '.join(clash or outputs)}"
        )
    return Topics(image, camera_info, relative, metric, points, list(copy))


def output_kind(input_path: Path, output: Path, storage: str | None, is_ros2: bool) -> str:
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


class _BagWriter:
    """A rosbags writer for one output bag: copied connections and the new depth topics."""

    def __init__(self, rb: Any, path: Path, kind: str, reader: Any) -> None:
        self._reader, self.kind = reader, kind
        if kind == "rosbag1":
            self._writer = rb.rosbag1.Writer(path)
            self.store = rb.typesys.get_typestore(rb.typesys.Stores.ROS1_NOETIC)
        else:
            plugin = rb.rosbag2.StoragePlugin.MCAP if kind == "mcap" else rb.rosbag2.StoragePlugin.SQLITE3
            self._writer = rb.rosbag2.Writer(path, version=8, storage_plugin=plugin)
            # Image and PointCloud2 are the same in every ROS 2 release.
            self.store = rb.typesys.get_typestore(rb.typesys.Stores.ROS2_HUMBLE)
        self._writer.open()
        self._copies: dict[int, Any] = {}
        self._new: dict[str, Any] = {}

    def copy_connection(self, conn: Any) -> Any:
        """The output connection for an input connection, with its definition and QoS."""
        key = id(conn)
        if key in self._copies:
            return self._copies[key]
        defined = conn.msgdef.data and conn.digest
        if self.kind == "rosbag1":
            extra = {"callerid": conn.ext.callerid, "latching": conn.ext.latching}
            extra.update({"msgdef": conn.msgdef.data, "md5sum": conn.digest} if defined else {})
        else:
            extra = {
                "serialization_format": conn.ext.serialization_format,
                "offered_qos_profiles": conn.ext.offered_qos_profiles,
            }
            extra.update({"msgdef": conn.msgdef.data, "rihs01": conn.digest} if defined else {})
        if not defined:
            extra["typestore"] = self._reader.typestore
        out = self._writer.add_connection(conn.topic, conn.msgtype, **extra)
        self._copies[key] = out
        return out

    def copy(self, conn: Any, timestamp: int, raw: bytes) -> None:
        self._writer.write(self.copy_connection(conn), timestamp, raw)

    def make(self, msgtype: str, **fields: Any) -> Any:
        return self.store.types[msgtype](**fields)

    def publish(self, topic: str, msgtype: str, timestamp: int, msg: Any) -> int:
        """Serialise and write ``msg``; returns its size in bytes."""
        if topic not in self._new:
            self._new[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        if self.kind == "rosbag1":
            raw = self.store.serialize_ros1(msg, msgtype)
        else:
            raw = self.store.serialize_cdr(msg, msgtype, little_endian=True)
        self._writer.write(self._new[topic], timestamp, raw)
        return len(raw)

    def close(self) -> None:
        self._writer.close()


_blob = np.ascontiguousarray  # rosbags' message classes hold uint8[] fields as numpy arrays


@dataclass
class _Frame:
    timestamp: int
    header: Any
    image: np.ndarray
    intrinsics: Intrinsics | None


class _Pass:
    """One pass over the bag: read, predict (pipelined), write, in bag-time order."""

    def __init__(
        self,
        reader: Any,
        writer: _BagWriter,
        topics: Topics,
        conversion: Conversion,
        errors: tuple[type[Exception], ...],
        progress: Callable[[int], Any] | None,
        warn: Callable[[str], None],
    ) -> None:
        self.reader, self.writer, self.topics, self.conversion = reader, writer, topics, conversion
        self.errors, self.progress, self.warn = errors, progress, warn
        self.summary = Summary()
        self.said: set = set()  # warnings given once per run, not once per message
        # Messages to copy and frames sent to the predictor, in bag order: the predictor reads
        # ahead, so copies read meanwhile wait here until the depth of the frames before them is written.
        self.events: deque = deque()

    def run(self, predictor: Any, every: int, max_frames: int | None, max_pixels: int | None) -> Summary:
        start = time.perf_counter()
        for relative in predictor.stream(self.frames(every, max_frames, max_pixels)):
            self.flush_copies()
            _, frame = self.events.popleft()
            self.publish(frame, relative)
            self.summary.frames += 1
            self.step()
        self.flush_copies()
        self.summary.seconds = time.perf_counter() - start
        return self.summary

    def step(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def flush_copies(self) -> None:
        while self.events and self.events[0][0] == "copy":
            _, conn, timestamp, raw = self.events.popleft()
            self.writer.copy(conn, timestamp, raw)
            self.summary.copied += 1

    def frames(self, every: int, max_frames: int | None, max_pixels: int | None) -> Iterator[np.ndarray]:
        """Yield the frames to process, queueing them and the messages to copy."""
        topics, reader = self.topics, self.reader
        wanted = {topics.image, *topics.copy} | ({topics.camera_info} if topics.camera_info else set())
        intrinsics: Intrinsics | None = None
        seen = taken = 0
        for conn, timestamp, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            if conn.topic in topics.copy:
                self.events.append(("copy", conn, timestamp, raw))
            if conn.topic == topics.camera_info:
                try:
                    intrinsics = intrinsics_from_camera_info(reader.deserialize(raw, conn.msgtype))
                except (InputError, *self.errors) as exc:
                    self.summary.camera_infos_skipped += 1
                    self.warn_once(
                        str(exc), f"camera info at {timestamp} ns skipped, no points until a good one: {exc}"
                    )
                    intrinsics = None
            if conn.topic != topics.image:
                continue
            seen += 1
            if (seen - 1) % every:
                continue
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                image = check_image(message_to_image(msg, conn.msgtype, max_pixels))
            except InputError as exc:
                self.skip(timestamp, str(exc))
                continue
            except self.errors as exc:
                self.skip(timestamp, f"cannot deserialise {conn.msgtype}: {exc}")
                continue
            self.events.append(("frame", _Frame(timestamp, msg.header, image, intrinsics)))
            yield image
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return

    def warn_once(self, key: object, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.warn(text)

    def skip(self, timestamp: int, reason: str) -> None:
        self.summary.skipped.append((timestamp, reason))
        self.step()

    def publish(self, frame: _Frame, relative: np.ndarray) -> None:
        topics, summary = self.topics, self.summary
        messages = depth_messages(
            self.writer.make, _blob, frame.header, relative, frame.image, frame.intrinsics, self.conversion
        )
        for key, topic, msgtype in [
            ("relative", topics.relative, IMAGE),
            ("metric", topics.metric, IMAGE),
            ("points", topics.points, POINT_CLOUD2),
        ]:
            if key in messages:
                size = self.writer.publish(topic, msgtype, frame.timestamp, messages[key])
                summary.point_bytes += size if key == "points" else 0
        if "points" in messages:
            summary.points += 1
            note = camera_size_note(frame.intrinsics, *relative.shape)
            if note:
                self.warn_once((frame.intrinsics.width, frame.intrinsics.height, relative.shape), note)
            stride = bounded_stride(*relative.shape, self.conversion.point_stride, self.conversion.max_points)
            if stride > self.conversion.point_stride:
                summary.thinned_clouds += 1
                summary.largest_stride = max(summary.largest_stride, stride)
        elif "metric" in messages:
            summary.frames_without_camera_info += 1


def process_bag(
    predictor: Any,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    image_topic: str,
    *,
    camera_info_topic: str | None = None,
    depth_topic: str | None = None,
    metric_depth_topic: str | None = None,
    points_topic: str | None = None,
    copy_topics: list[str] | None = None,
    copy_all: bool = False,
    conversion: Conversion | None = None,
    every: int = 1,
    max_frames: int | None = None,
    storage: str | None = None,
    max_pixels: int | None = None,
    progress: Callable[[int], Any] | None = None,
    warn: Callable[[str], None] = lambda text: print(f"warning: {text}", file=sys.stderr),
) -> Summary:
    """Write ``output``: a new bag with the depth of ``image_topic`` in ``input_path`` (see the module doc).

    ``predictor`` is a :class:`runtime.DepthPredictor`. Frames that cannot be decoded are
    skipped and listed in the returned summary, and camera infos that cannot be used are
    counted; when no frame at all could be decoded, nothing is written (``summary.frames == 0``).
    ``progress(1)`` is called for every image message handled, written or skipped. Raises
    ``InputError`` for an unusable request (missing topic, output present) before anything is written.
    """
    rb = rosbags_modules()
    input_path, output = Path(input_path), Path(output)
    conversion = conversion or Conversion()
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise InputError(f"every and max_frames must be positive, got {every} and {max_frames}")
    check_output(input_path, output)
    reader = open_bag(rb, input_path)
    staging = None
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        topics = plan_topics(
            types, image_topic, camera_info_topic, depth_topic, metric_depth_topic, points_topic, copy_topics, copy_all
        )
        kind = output_kind(input_path, output, storage, reader.is2)
        staging = staging_dir(output)
        writer = _BagWriter(rb, staging / output.name, kind, reader)
        errors = (rb.highlevel.AnyReaderError, rb.serde.SerdeError)
        run = _Pass(reader, writer, topics, conversion, errors, progress, warn)
        summary = run.run(predictor, every, max_frames, max_pixels)
        writer.close()
        if summary.frames:  # a bag of copies alone is no result: nothing goes under the output name
            check_output(input_path, output)  # something else may have created it meanwhile
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
