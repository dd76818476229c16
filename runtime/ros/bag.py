"""Depth and point clouds for the images in a ROS bag, written to a new bag (``python -m runtime.bag``).

Reads ROS 2 bags (a folder with ``metadata.yaml`` and ``.mcap`` or sqlite3 ``.db3`` files) and
ROS 1 ``.bag`` files with ``rosbags`` (pure Python, no ROS install), runs the frames of one
image topic through ``DepthPredictor.stream`` and writes a new bag of the same ROS version:

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
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..align import FlickerMeter, Stabilizer
from ..align.frame import disparity_of
from ..commands import DISK_ERRNOS
from ..errors import InputError, OutputError, require
from ..io.files import check_writable_folder, staging_dir
from ..metric import OutputKind
from ..pointcloud import Intrinsics, bounded_stride
from ..preprocessing import check_image
from .bag_writer import BagWriter
from .messages import (
    IMAGE,
    POINT_CLOUD2,
    Conversion,
    camera_size_note,
    depth_messages,
    intrinsics_from_camera_info,
    message_to_image,
    output_messages,
)
from .topics import Topics, plan_topics

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
    metric: int = 0  # frames with metric depth published
    flicker: float | None = None  # of the published depth (runtime.align.stabilize)
    flicker_unstabilized: float | None = None  # of the model's output, when stabilised
    alignment: Any = None  # the BagAligner of an --align-to run
    alignment_json: Path | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


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
        writer: BagWriter,
        topics: Topics,
        conversion: Conversion,
        errors: tuple[type[Exception], ...],
        progress: Callable[[int], Any] | None,
        warn: Callable[[str], None],
        aligner: Any = None,
        stabilizer: Stabilizer | None = None,
    ) -> None:
        self.reader, self.writer, self.topics, self.conversion = reader, writer, topics, conversion
        self.errors, self.progress, self.warn = errors, progress, warn
        self.aligner, self.stabilizer = aligner, stabilizer
        self.summary = Summary(alignment=aligner)
        self.said: set = set()  # warnings given once per run, not once per message
        self.results: deque = deque()  # predictions of frames not yet written
        self.meter = FlickerMeter()
        # Messages to copy and frames sent to the predictor, in bag order: the predictor reads
        # ahead, so copies read meanwhile wait here until the depth of the frames before them is written.
        self.events: deque = deque()

    def run(self, predictor: Any, every: int, max_frames: int | None, max_pixels: int | None) -> Summary:
        start = time.perf_counter()
        frames = self.frames(every, max_frames, max_pixels)
        stream = predictor.stream(frames, stabilize=self.stabilizer) if self.stabilizer else predictor.stream(frames)
        for prediction in stream:
            self.results.append(prediction)
            self.flush()
        if self.aligner is not None:
            self.aligner.read_rest(self.reader)
        self.flush()
        self.summary.seconds = time.perf_counter() - start
        self.summary.flicker = self.meter.figure
        if self.stabilizer is not None:
            self.summary.flicker_unstabilized = self.stabilizer.flicker_in.figure
            self.summary.flicker = self.stabilizer.flicker_out.figure
        return self.summary

    def step(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def flush(self) -> None:
        """Write, in bag order, the copies and the frames whose depth (and sensor message) is in."""
        while self.events:
            if self.events[0][0] == "copy":
                _, conn, timestamp, raw = self.events.popleft()
                self.writer.copy(conn, timestamp, raw)
                self.summary.copied += 1
                continue
            frame = self.events[0][1]
            if not self.results or (self.aligner is not None and not self.aligner.ready(frame)):
                return
            self.events.popleft()
            self.publish(frame, self.results.popleft())
            self.summary.frames += 1
            self.step()

    def frames(self, every: int, max_frames: int | None, max_pixels: int | None) -> Iterator[np.ndarray]:
        """Yield the frames to process, queueing them and the messages to copy."""
        topics, reader = self.topics, self.reader
        wanted = {topics.image, *topics.copy} | ({topics.camera_info} if topics.camera_info else set())
        sensor = self.aligner.topics if self.aligner is not None else set()
        intrinsics: Intrinsics | None = None
        seen = taken = 0
        for conn, timestamp, raw in reader.messages(
            connections=[c for c in reader.connections if c.topic in wanted | sensor]
        ):
            if conn.topic in sensor:
                self.aligner.observe(conn.topic, timestamp, raw, lambda: reader.deserialize(raw, conn.msgtype))  # noqa: B023
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
            if self.aligner is not None:
                self.aligner.match(self.events[-1][1])
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

    def publish(self, frame: _Frame, prediction: np.ndarray) -> None:
        topics, summary, args = self.topics, self.summary, (self.writer.make, _blob, frame.header)
        if self.aligner is None:
            messages = depth_messages(*args, prediction, frame.image, frame.intrinsics, self.conversion)
        else:  # metres from this frame's fit, or none; a metric model's output is never relative
            relative = None if self.conversion.output.is_metric else prediction
            metres = self.aligner.align(frame, prediction).depth
            messages = output_messages(*args, frame.image, frame.intrinsics, self.conversion, relative, metres)
        summary.metric += "metric" in messages
        if self.stabilizer is None:
            self.meter.update(frame.image, disparity_of(prediction, self.conversion.output))
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
            note = camera_size_note(frame.intrinsics, *prediction.shape)
            if note:
                self.warn_once((frame.intrinsics.width, frame.intrinsics.height, prediction.shape), note)
            stride = bounded_stride(*prediction.shape, self.conversion.point_stride, self.conversion.max_points)
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
    align_to: str | None = None,
    align_options: dict[str, Any] | None = None,
    stabilize: bool = False,
) -> Summary:
    """Write ``output``: a new bag with the depth of ``image_topic`` in ``input_path`` (see the module doc).

    ``predictor`` is a :class:`runtime.DepthPredictor`. Frames that cannot be decoded are
    skipped and listed in the returned summary, and camera infos that cannot be used are
    counted; when no frame at all could be decoded, nothing is written (``summary.frames == 0``).
    ``progress(1)`` is called for every image message handled, written or skipped. Raises
    ``InputError`` for an unusable request (missing topic, output present) before anything is
    written. ``align_to``: a PointCloud2 or depth image topic fitted per frame
    (``runtime.ros.bag_align``; ``align_options`` are ``BagAligner.prepare``'s, or
    ``{"aligner": prepared}``), its per-frame record written beside the output; ``stabilize``:
    relative depth on the scale of the frames before it.
    """
    from .bag_align import BagAligner, alignment_json_path, check_conversion

    rb = rosbags_modules()
    input_path, output = Path(input_path), Path(output)
    conversion = check_conversion(conversion or Conversion(), getattr(predictor, "output", OutputKind()), stabilize)
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
        writer = BagWriter(rb, staging / output.name, kind, reader)
        errors = (rb.highlevel.AnyReaderError, rb.serde.SerdeError)
        options = dict(align_options or {})
        aligner = options.pop("aligner", None)
        if align_to is not None and aligner is None:
            aligner = BagAligner.prepare(reader, align_to, topics.camera_info, **options)
        if aligner is not None:
            aligner.start(conversion.output)
        stabilizer = Stabilizer() if stabilize else None
        run = _Pass(reader, writer, topics, conversion, errors, progress, warn, aligner, stabilizer)
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
