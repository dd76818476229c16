"""One pass of ``runtime.bag`` over a bag: read the frames of one or more cameras in bag order,
predict them in batches (one ``predict_batch`` per cycle of one frame per camera, several cycles
in flight), and write each frame's depth under its own camera's topics, in bag order, with the
copied messages in between."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import InputError

from ..align import FlickerMeter, Stabilizer
from ..pointcloud import Intrinsics, bounded_stride
from ..preprocessing import check_image
from ..video_state import StampRefused
from ..video_stream import close_quietly
from .align import FramePipeline
from .bag_writer import BagWriter
from .messages import (
    IMAGE,
    POINT_CLOUD2,
    Conversion,
    camera_size_note,
    intrinsics_from_camera_info,
    message_to_image,
)
from .stamps import ByStamp
from .tf import stamp_ns
from .topics import Topics

CAMERA_INFOS = 32  # a camera's camera infos kept by stamp
INFO_WAIT = 0.5  # seconds of bag time a frame waits for its camera's next message (a camera info of its stamp)


@dataclass
class Summary:
    """What a run did: totals over its cameras, and per image topic in ``cameras``."""

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
    confidence: int = 0  # frames with their depth confidence published
    sky_pixels: int = 0  # pixels published as +inf because the model saw sky there
    flicker: float | None = None  # of the published depth (runtime.align.stabilize); one camera's
    flicker_unstabilized: float | None = None  # of the model's output, when stabilised
    flicker_collapsed: int = 0  # published frames that were flat maps (no flicker figure then)
    alignment: Any = None  # the BagAligner of an --align-to run
    alignment_json: Path | None = None
    cameras: dict[str, Summary] = field(default_factory=dict)  # image topic -> that camera's summary

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def add(self, camera: Summary) -> None:
        """Count one camera's summary in the totals."""
        for counter in fields(self):
            value = getattr(camera, counter.name)
            if counter.name == "largest_stride":
                self.largest_stride = max(self.largest_stride, value)
            elif isinstance(value, int):
                setattr(self, counter.name, getattr(self, counter.name) + value)
        self.skipped = sorted(self.skipped + camera.skipped)


@dataclass
class _Frame:
    timestamp: int
    header: Any
    image: np.ndarray
    intrinsics: Intrinsics | None  # the camera's newest before it; one with its own stamp replaces it
    camera: _Camera
    seq: int = 0  # the camera's messages read when it was read
    refused: bool = False  # left out by its stream (StampRefused): not one of the camera's max_frames

    @property
    def stamp(self) -> int:
        return stamp_ns(self.header)

    @property
    def topic(self) -> str:
        """The frame's camera: its image topic."""
        return self.camera.topics.image


class _Camera:
    """One camera's topics and what the pass keeps for it: its latest intrinsics, its frame
    pipeline (its own stabiliser and its side of the plan's aligner: the node's ``FramePipeline``
    with ``BagAligner.camera(topic)`` as its sensor input), its flicker meter, its counts."""

    def __init__(self, topics: Topics, stabilize: bool, conversion: Conversion, aligner: Any) -> None:
        self.topics = topics
        self.infos: ByStamp[Intrinsics] = ByStamp(CAMERA_INFOS)  # its camera infos (None: unusable)
        self.seq = 0  # its image and camera info messages read
        sensor = None if aligner is None else aligner.camera(topics.image)
        self.pipeline = FramePipeline(conversion.output, conversion, Stabilizer() if stabilize else None, sensor)
        self.stabilizer = self.pipeline.stabilizer
        self.meter = FlickerMeter()
        self.summary = Summary()
        self.seen = self.taken = 0  # image messages read; frames sent to the model
        self.video: Any = None  # a Video Depth Anything model's stream state (VideoStream)

    def finish(self) -> Summary:
        self.summary.flicker = self.meter.figure  # of what was published (metres when there are any)
        self.summary.flicker_collapsed = self.meter.collapsed
        if self.stabilizer is not None:
            self.summary.flicker_unstabilized = self.stabilizer.flicker_in.figure
        return self.summary


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive items (the last one shorter), read lazily."""
    iterator = iter(items)
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield batch


class BagPass:
    """One pass over the bag: read, predict (batched and pipelined), write, in bag-time order."""

    def __init__(
        self,
        plan: Any,
        writer: BagWriter,
        conversion: Conversion,
        progress: Callable[[int], Any] | None,
        warn: Callable[[str], None],
        stabilize: bool = False,
    ) -> None:
        """The pass of ``plan`` (a ``runtime.ros.bag_plan.BagPlan``: its open bag, cameras, copied
        topics and aligner) into ``writer``."""
        self.reader, self.writer, self.conversion = plan.reader, writer, conversion
        self.cameras = {topics.image: _Camera(topics, stabilize, conversion, plan.aligner) for topics in plan.cameras}
        self.copy_topics = set(plan.copy)
        self.errors = (plan.rb.highlevel.AnyReaderError, plan.rb.serde.SerdeError)
        self.progress, self.warn = progress, warn
        self.aligner = plan.aligner  # a BagAligner: one sensor for every camera, a fit per camera
        self.copied = 0
        self.ended = False  # every message the pass reads has been read
        self.read_time = -1  # bag time of the last message read
        self.said: set = set()  # warnings given once per run, not once per message
        self.results: deque = deque()  # predictions of frames not yet written
        # Messages to copy and frames sent to the predictor, in bag order: the predictor reads
        # ahead, so copies read meanwhile wait here until the depth of the frames before them is written.
        self.events: deque = deque()

    def run(self, predictor: Any, every: int, max_frames: int | None, max_pixels: int | None) -> Summary:
        start = time.perf_counter()
        # A cycle holds as many frames as there are cameras, in bag order: with cameras that fire
        # together, one frame of each, their equal sizes one model call (predict_batch).
        for camera in self.cameras.values():  # a metres-per-focal model: the focal length of the image the network saw
            camera.pipeline.network_size = predictor.network_size
        if getattr(predictor, "is_stream_model", False):  # Video Depth Anything: a stream per camera
            try:
                for image in self.frames(every, max_frames, max_pixels):
                    frame = self.events[-1][1]  # the frame just queued
                    if frame.camera.video is None:
                        frame.camera.video = predictor.video_stream(name=frame.topic)
                    try:
                        result = frame.camera.video.push(image, stamp_ns=frame.timestamp)  # exact ns
                    except StampRefused as exc:  # a repeated time stamp: that frame left out, the bag goes on
                        self.events.pop()  # the frame frames() just queued
                        frame.refused = True
                        if self.aligner is not None:
                            self.aligner.forget(frame)
                        self.skip(frame.camera, frame.timestamp, str(exc))
                        continue
                    self.results.append(result)
                    self.flush()
            finally:  # the bag's streams end with it (their GPU buffers with TensorRT), each one
                for camera in self.cameras.values():
                    if camera.video is not None:
                        close_quietly(camera.video)
        else:
            cycles = batched(self.frames(every, max_frames, max_pixels), len(self.cameras))
            # A model of depth per focal length: its raw output, made metres per frame from that
            # frame's camera info (publish).
            raw = self.conversion.output.needs_focal
            for predictions in predictor.stream_batches(cycles, raw=raw) if raw else predictor.stream_batches(cycles):
                self.results.extend(predictions)
                self.flush()
        self.ended = True
        if self.aligner is not None:
            self.aligner.read_rest(self.reader)
        self.flush()
        summary = Summary(alignment=self.aligner, copied=self.copied)
        for image, camera in self.cameras.items():
            summary.cameras[image] = camera.finish()
            summary.add(summary.cameras[image])
        if len(self.cameras) == 1:
            summary.flicker = camera.summary.flicker
            summary.flicker_unstabilized = camera.summary.flicker_unstabilized
        summary.seconds = time.perf_counter() - start
        return summary

    def step(self) -> None:
        if self.progress is not None:
            self.progress(1)

    def flush(self) -> None:
        """Write, in bag order, the copies and the frames whose depth (and sensor message) is in."""
        while self.events:
            if self.events[0][0] == "copy":
                _, conn, timestamp, raw = self.events.popleft()
                self.writer.copy(conn, timestamp, raw)
                self.copied += 1
                continue
            frame = self.events[0][1]
            if not self.results or not self.ready(frame):
                return
            self.events.popleft()
            self.publish(frame, self.results.popleft())
            frame.camera.summary.frames += 1
            self.step()

    def ready(self, frame: _Frame) -> bool:
        """A frame is written once its camera's next message is read (a camera info recorded just
        after its image, with its stamp, serves it, as message_filters pairs them) and its sensor
        message and transforms are in."""
        waited = self.read_time > frame.timestamp + INFO_WAIT * 1e9  # a camera that stopped holds nothing back
        if not self.ended and frame.camera.seq <= frame.seq and not waited:
            return False
        return self.aligner is None or self.aligner.ready(frame)

    def frames(self, every: int, max_frames: int | None, max_pixels: int | None) -> Iterator[np.ndarray]:
        """Yield the frames to process, queueing them and the messages to copy. ``every`` and
        ``max_frames`` count each camera's own frames (``max_frames`` those it keeps: not one its
        stream refused); the pass ends when every camera has its ``max_frames``."""
        reader, cameras = self.reader, self.cameras
        infos = {camera.topics.camera_info: camera for camera in cameras.values() if camera.topics.camera_info}
        wanted = set(cameras) | self.copy_topics | set(infos)
        sensor = self.aligner.topics if self.aligner is not None else set()
        done = 0
        for conn, timestamp, raw in reader.messages(
            connections=[c for c in reader.connections if c.topic in wanted | sensor]
        ):
            self.read_time = timestamp
            if conn.topic in sensor:
                self.aligner.observe(conn.topic, timestamp, raw, lambda: reader.deserialize(raw, conn.msgtype))  # noqa: B023
            if conn.topic in self.copy_topics:
                self.events.append(("copy", conn, timestamp, raw))
            if conn.topic in infos:
                self.camera_info(infos[conn.topic], conn, timestamp, raw)
            camera = cameras.get(conn.topic)
            if camera is None:
                continue
            camera.seq += 1  # its frame before this message may be written now (see ready)
            if max_frames is not None and camera.taken >= max_frames:
                continue
            camera.seen += 1
            if (camera.seen - 1) % every:
                continue
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                image = check_image(message_to_image(msg, conn.msgtype, max_pixels))
            except InputError as exc:
                self.skip(camera, timestamp, str(exc))
                continue
            except self.errors as exc:
                self.skip(camera, timestamp, f"cannot deserialise {conn.msgtype}: {exc}")
                continue
            frame = _Frame(timestamp, msg.header, image, camera.infos.newest, camera, camera.seq)
            self.events.append(("frame", frame))
            if self.aligner is not None:
                self.aligner.match(frame)
            yield image
            if frame.refused:  # left out (a repeated stamp): max_frames counts the frames written
                continue
            camera.taken += 1
            done += max_frames is not None and camera.taken == max_frames
            if done == len(cameras):
                return

    def camera_info(self, camera: _Camera, conn: Any, timestamp: int, raw: Any) -> None:
        camera.seq += 1
        stamp = None
        try:
            msg = self.reader.deserialize(raw, conn.msgtype)
            stamp = stamp_ns(msg.header)
            camera.infos.add(stamp, intrinsics_from_camera_info(msg))
        except (InputError, *self.errors) as exc:
            camera.infos.add(stamp, None)
            camera.summary.camera_infos_skipped += 1
            self.warn_once(
                (conn.topic, str(exc)),
                f"camera info on {conn.topic} at {timestamp} ns skipped, no points until a good one: {exc}",
            )

    def warn_once(self, key: object, text: str) -> None:
        if key not in self.said:
            self.said.add(key)
            self.warn(text)

    def skip(self, camera: _Camera, timestamp: int, reason: str) -> None:
        camera.summary.skipped.append((timestamp, reason))
        self.step()

    def publish(self, frame: _Frame, prediction: np.ndarray) -> None:
        frame.intrinsics = frame.camera.infos.at(frame.stamp, frame.intrinsics)  # its own stamp's, if any
        camera, topics, summary = frame.camera, frame.camera.topics, frame.camera.summary
        if camera.pipeline.kind.needs_focal and frame.intrinsics is None:
            summary.frames_without_camera_info += 1  # metres only with this frame's focal length
        messages, published = camera.pipeline.process(
            self.writer.factory, frame.header, frame.image, prediction, frame.intrinsics
        )
        summary.metric += "metric" in messages
        summary.confidence += "confidence" in messages
        sky = getattr(prediction, "sky", None)
        summary.sky_pixels += int(sky.sum()) if sky is not None and "metric" in messages else 0
        if published is not None:  # the flicker of what is published: metres when there are any
            camera.meter.update(frame.image, published)
        for key, topic, msgtype in [
            ("relative", topics.relative, IMAGE),
            ("metric", topics.metric, IMAGE),
            ("points", topics.points, POINT_CLOUD2),
            ("confidence", topics.confidence, IMAGE),
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
