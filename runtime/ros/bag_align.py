"""``--align-to``: metric depth for each frame of a bag from the bag's own lidar or depth camera.

Before anything is written, ``runtime.ros.bag_index`` reads the sensor topic, the camera infos
and the tf topics once: every sensor stamp, the frames of the data, the tf structure, and
whether the request can ever give metres (else one line, exit 2). During the main pass each
frame is matched to the sensor message nearest its stamp within ``max_time_offset``; ``/tf``
records are streamed into the tree's bounded history; a frame waits (with the messages to copy
behind it) until its sensor message and the ``/tf`` records past its stamp have been read, so a
lidar or a transform recorded after its image is still used. Messages no frame can use any more
(older than the newest frame's stamp less a 0.5 s reorder window) are dropped as the pass goes.

With several cameras the sensor index and tf tree are shared, but each camera (its image topic)
has its own fit and temporal filter (the network's scale and shift differ between cameras), its
own intrinsics and optical frame (its frames' ``header.frame_id``), its own log, and its per-frame
records carry its topic. Frames of several cameras may wait for the same sensor message. A depth
image is projected with its own camera info only (the one with its stamp, else the newest before it).
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from commands.errors import InputError

from ..align import AlignSettings, FrameAligner, FrameResult
from ..io.files import atomic_write_bytes
from ..metric import OutputKind
from ..pointcloud import Intrinsics
from .align import (
    DEFAULT_MAX_TIME_OFFSET,
    AlignmentLog,
    fixed_transform,
    frame_samples,
    tree_transforms,
)
from .bag_index import index_sensor
from .messages import intrinsics_from_camera_info
from .stamps import ByStamp, nearest
from .tf import TfTree, frame_name, stamp_ns

# How far (seconds of image stamp) a camera's frames may trail the newest frame of any camera and
# still hold back sensor messages for its next frames; a camera further behind (stopped, done
# with --max-frames) holds nothing back, so the buffer stays bounded.
CAMERA_LAG = 1.0
REORDER = 0.5  # seconds of bag time a frame's sensor message may be recorded before it (stamps in any order)
SEARCH = 10.0  # seconds of bag time after a frame its sensor message is looked for
TF_WAIT = 2.0  # seconds of bag time a frame waits for /tf records past its sensor stamp
SENSOR_INFOS = 32  # the sensor's own camera infos kept by stamp
SEVERAL_EXTRINSICS = (
    "--extrinsics gives the sensor's pose in one camera's optical frame: with several --image-topic, "
    "record the cameras and the sensor in the bag's tf (/tf_static) and leave --extrinsics out"
)


def alignment_json_path(output: Path) -> Path:
    """Where the per-frame alignment record goes: beside the output bag."""
    return output.with_name(output.name + ".alignment.json")


class BagAligner:
    """One bag's sensor index, tf tree and per-frame alignment (see the module doc)."""

    def __init__(
        self,
        topic: str,
        msgtype: str,
        stamps: list[int],
        transforms: Callable[[str, str, int], np.ndarray],
        transform_note: str,
        sensor_info_topic: str | None,
        settings: AlignSettings,
        max_time_offset: float,
        cameras: list[str] | None = None,
        tree: TfTree | None = None,
        tf_topics: Sequence[str] = (),
        notes: Sequence[str] = (),
        times: Sequence[int] | None = None,
    ) -> None:
        self.topic, self.msgtype = topic, msgtype
        self.stamps = list(stamps)  # bag index -> stamp
        self.times = list(stamps if times is None else times)  # bag index -> bag time (sorted: bag order)
        self.transforms, self.transform_note = transforms, transform_note
        self.sensor_info_topic = sensor_info_topic
        self.tree, self.tf_topics, self.notes = tree, list(tf_topics), list(notes)
        self.settings, self.max_offset = settings, int(max_time_offset * 1e9)
        self.sensor_infos: ByStamp[Intrinsics] = ByStamp(SENSOR_INFOS)  # the sensor's own camera infos
        self.kind: OutputKind | None = None
        self.aligners: dict[str | None, FrameAligner] = {}  # per camera (image topic): fits never mix
        self.log = AlignmentLog()  # every camera's frames, in the order they were written
        self.logs: dict[str | None, AlignmentLog] = {camera: AlignmentLog() for camera in cameras or []}
        self.read = 0  # sensor messages read by the main pass
        self.ended = False  # the bag has been read to its end
        self.bag_time = -1  # bag time of the last message observed
        self._at_time: Counter = Counter()  # topics observed at that bag time (read_rest skips them)
        self._buffer: dict[int, Any] = {}  # bag index -> (message, its camera info) or why it could not be read
        self._needed: Counter = Counter()  # bag index -> frames matched to it and not yet aligned
        self._latest: dict[str | None, int] = {}  # camera -> the newest bag time of its frames matched
        self._matches: dict[int, tuple[int | None, int | None, Any]] = {}  # frame id -> (index, offset, frame)
        self._dynamic: dict[tuple[str, str], set[str]] = {}  # (camera frame, sensor frame) -> /tf edges on the path

    @classmethod
    def prepare(
        cls,
        reader: Any,
        topic: str,
        camera_info_topic: str | Mapping[str, str | None] | None,
        extrinsics: np.ndarray | None = None,
        settings: AlignSettings | None = None,
        max_time_offset: float = DEFAULT_MAX_TIME_OFFSET,
    ) -> BagAligner:
        """Index the sensor topic and the tf structure (``runtime.ros.bag_index``); ``InputError``
        for a request that cannot work.

        ``camera_info_topic``: one camera's, or ``{image topic: its camera info topic}`` of the
        cameras aligned (each checked for a transform path to the sensor)."""
        if isinstance(camera_info_topic, Mapping):
            infos, cameras = dict(camera_info_topic), list(camera_info_topic)
        else:
            infos, cameras = {None: camera_info_topic}, None
        for image, info in infos.items():
            if info is None:
                beside = "the image topic" if image is None else image
                raise InputError(
                    f"--align-to needs the camera's intrinsics: the bag has no camera info beside {beside}; "
                    "name it with --camera-info-topic"
                )
        if len(infos) > 1 and extrinsics is not None:
            raise InputError(SEVERAL_EXTRINSICS)
        if not max_time_offset >= 0:
            raise InputError(f"--max-time-offset must be >= 0 seconds, got {max_time_offset}")
        images = [image for image in infos if image is not None]
        found = index_sensor(reader, topic, infos, images, check_paths=extrinsics is None)  # type: ignore[arg-type]
        if extrinsics is not None:
            transforms, note, tree, tf_topics = fixed_transform(extrinsics), "--extrinsics", None, []
        else:
            tree, tf_topics = found.tree, found.tf_topics
            transforms, note = tree_transforms(tree), f"tf ({len(tree.edges)} transforms)"
        return cls(
            topic,
            found.msgtype,
            found.stamps,
            transforms,
            note,
            found.sensor_info_topic,
            settings or AlignSettings(),
            max_time_offset,
            cameras,
            tree=tree,
            tf_topics=tf_topics,
            notes=found.notes,
            times=found.times,
        )

    @property
    def buffered(self) -> list[int]:
        """The sensor messages held for frames (their indexes in the bag, in bag order)."""
        return sorted(self._buffer)

    @property
    def topics(self) -> set[str]:
        """Topics the main pass must hand to :meth:`observe`."""
        return {self.topic, *self.tf_topics} | ({self.sensor_info_topic} if self.sensor_info_topic else set())

    def start(self, kind: OutputKind) -> None:
        self.kind = kind
        self.aligners = {camera: FrameAligner(kind, self.settings) for camera in self.logs}

    def _camera(self, camera: str | None) -> FrameAligner:
        """That camera's fit and filter (made at its first frame when the cameras were not named)."""
        assert self.kind is not None, "start() first"
        if camera not in self.aligners:
            self.aligners[camera] = FrameAligner(self.kind, self.settings)
            self.logs.setdefault(camera, AlignmentLog())
        return self.aligners[camera]

    def observe(self, topic: str, timestamp: int, raw: Any, deserialize: Callable[[], Any]) -> None:
        """A message of :attr:`topics` read by the main pass, in bag order."""
        if timestamp != self.bag_time:
            self.bag_time, self._at_time = timestamp, Counter()
        self._at_time[topic] += 1
        if topic in self.tf_topics and self.tree is not None:
            try:
                self.tree.feed(deserialize())
            except Exception:
                pass  # counted when the structure was read
            return
        if topic == self.sensor_info_topic:
            stamp = None
            try:
                msg = deserialize()
                stamp = stamp_ns(msg.header)
                self.sensor_infos.add(stamp, intrinsics_from_camera_info(msg))
            except Exception:
                self.sensor_infos.add(stamp, None)
            return
        index, self.read = self.read, self.read + 1
        if self.times[index] < self._bound() and not self._needed[index]:
            return  # no frame can still use it
        try:
            self._buffer[index] = (deserialize(), self.sensor_infos.newest)
        except Exception as exc:
            self._buffer[index] = f"cannot deserialise: {exc}"

    def match(self, frame: Any) -> None:
        """Note the sensor message a frame (just read) will be fitted to."""
        index, offset = self._nearest(int(frame.timestamp), stamp_ns(frame.header))
        self._matches[id(frame.header)] = (index, offset, frame)  # the header its fit is asked with
        if index is not None:
            self._needed[index] += 1
            self._latest[frame.topic] = max(self._latest.get(frame.topic, frame.timestamp), frame.timestamp)
            self._evict()

    def forget(self, frame: Any) -> None:
        """A frame :meth:`match` noted that will not be fitted (left out after it was read): its
        sensor message is released as a fitted frame's is."""
        index, _, _ = self._matches.pop(id(frame.header), (None, None, None))
        if index is not None:
            self._needed[index] -= 1
            self._evict()

    def _nearest(self, bag_time: int, stamp: int) -> tuple[int | None, int | None]:
        """The sensor message nearest the frame's stamp among those recorded near the frame (from
        ``REORDER`` seconds of bag time before it to ``SEARCH`` after), and its offset: a clock that
        jumps back or a far-future stamp never pairs a frame with a message from another part of
        the bag."""
        low = bisect.bisect_left(self.times, bag_time - REORDER * 1e9 - self.max_offset)
        high = bisect.bisect_right(self.times, bag_time + SEARCH * 1e9)
        # nearest in stamp; of equal stamps (a looping clock), nearest in the bag
        return nearest(self.stamps, stamp, self.max_offset, range(low, high), lambda k: abs(self.times[k] - bag_time))

    def _tf_edges(self, frame: Any, index: int) -> set[str]:
        """The ``/tf`` edges between the frame's camera and its sensor message's frame."""
        if self.tree is None or not self.tf_topics:
            return set()
        msg = self._buffer.get(index)
        if not isinstance(msg, tuple):
            return set()
        key = (frame_name(frame.header.frame_id), frame_name(msg[0].header.frame_id))
        if key not in self._dynamic:
            try:
                self._dynamic[key] = self.tree.dynamic_on_path(*key)
            except InputError:
                self._dynamic[key] = set()
        return self._dynamic[key]

    def ready(self, frame: Any) -> bool:
        """Whether the frame's sensor message and the ``/tf`` records around its stamp are in (a
        ``/tf`` edge that stopped is waited for ``TF_WAIT`` seconds of bag time at most)."""
        index = self._matches[id(frame.header)][0]
        if index is None or self.ended:
            return True
        if index >= self.read:
            return False
        edges = self._tf_edges(frame, index)
        if not edges:
            return True
        newest = self.tree.newest_on(edges)  # type: ignore[union-attr]
        stamp = self.stamps[index] + self.tree.tolerance  # type: ignore[union-attr]
        return (newest is not None and newest >= stamp) or self.bag_time > frame.timestamp + TF_WAIT * 1e9

    def waiting(self) -> bool:
        return any(not self.ready(frame) for _, _, frame in self._matches.values())

    def read_rest(self, reader: Any) -> None:
        """After the frames ran out: read on until every waiting frame's sensor message (and tf) is in."""
        if not self.waiting():
            return
        connections = [c for c in reader.connections if c.topic in self.topics]
        start, skip = max(self.bag_time, 0), Counter(self._at_time)
        for conn, timestamp, raw in reader.messages(connections=connections, start=start):
            if timestamp == start and skip[conn.topic]:
                skip[conn.topic] -= 1
                continue
            self.observe(conn.topic, timestamp, raw, lambda raw=raw, conn=conn: reader.deserialize(raw, conn.msgtype))
            if not self.waiting():
                return
        self.ended = True

    def camera(self, topic: str | None) -> CameraSensor:
        """That camera's sensor input: the frame pipeline's ``SensorAligner``, as the node's
        ``LiveAligner`` is (``runtime.ros.align``)."""
        self._camera(topic)
        return CameraSensor(self, topic)

    def align_camera(
        self, camera: str | None, header: Any, prediction: np.ndarray, intrinsics: Intrinsics | None
    ) -> FrameResult:
        """Metric depth for a frame of ``camera`` (its ``header`` as read: :meth:`match` noted it)
        whose sensor message has been read (or that has none)."""
        aligner = self._camera(camera)
        started = time.perf_counter()
        index, offset, frame = self._matches.pop(id(header))
        samples, missing = None, ""
        limit = self.max_offset / 1e6
        if intrinsics is None:
            missing = "no camera info"
        elif index is None and offset is None:
            missing = f"no sensor message within {limit:.0f} ms (none recorded within {SEARCH:.0f} s of the frame)"
        elif index is None:
            missing = f"no sensor message within {limit:.0f} ms (nearest {offset / 1e6:.0f} ms)"
        else:
            held = self._buffer.get(index, "released before its frame (recorded over 0.5 s before it)")
            if isinstance(held, str):
                missing = f"sensor message unusable: {held}"
            else:
                msg, info = held
                info = self.sensor_infos.at(self.stamps[index], info)  # one with its stamp serves it
                samples, missing = frame_samples(
                    msg, self.msgtype, header.frame_id, intrinsics, prediction.shape, self.transforms, aligner, info
                )
        if index is not None:  # a frame without camera info was matched too: release its message all the same
            self._needed[index] -= 1
            self._evict()
        result = aligner.align(prediction, samples, stamp_ns(header), missing)
        extra = {"camera": camera, "bag_time_ns": int(frame.timestamp)}
        if offset is not None:
            extra["sensor_offset_ms"] = round(offset / 1e6, 3)
        seconds = time.perf_counter() - started
        self.log.add(result, seconds, **extra)
        self.logs[camera].add(result, seconds, **extra)
        return result

    def _bound(self) -> float:
        """The earliest bag time a sensor message a frame still to be read may match was recorded
        at (see :meth:`_nearest`): no frame of a camera comes before its newest one in the bag; a
        camera whose frames trail the newest by more than ``CAMERA_LAG`` seconds of bag time (or
        that has matched none yet) holds none back."""
        if not self._latest:
            return -math.inf
        newest = max(self._latest.values())
        active = [time for time in self._latest.values() if time >= newest - CAMERA_LAG * 1e9]
        return min(active) - REORDER * 1e9 - self.max_offset

    def _evict(self) -> None:
        bound = self._bound()
        for index in [k for k in self._buffer if self.times[k] < bound and not self._needed[k]]:
            del self._buffer[index]

    def write_json(self, path: Path, output_name: str) -> Path:
        document = {
            "bag": output_name,
            "sensor_topic": self.topic,
            "transforms": self.transform_note,
            "max_time_offset_s": self.max_offset / 1e9,
            "held_out_share": self.settings.held_out,
            "summary": self.log.summary(),
            "cameras": {camera: log.summary() for camera, log in self.logs.items() if camera is not None},
            "frames": self.log.records,
        }
        return atomic_write_bytes(path, (json.dumps(document, indent=1, default=_plain) + "\n").encode())


class CameraSensor:
    """One camera's side of a :class:`BagAligner` (its own fit and log): ``align(header,
    prediction, intrinsics)``, the one sensor interface of the frame pipeline
    (``runtime.ros.align.SensorAligner``)."""

    def __init__(self, bag: BagAligner, camera: str | None) -> None:
        self.bag, self.camera = bag, camera

    @property
    def log(self) -> AlignmentLog:
        return self.bag.logs[self.camera]

    def align(self, header: Any, prediction: np.ndarray, intrinsics: Intrinsics | None) -> FrameResult:
        return self.bag.align_camera(self.camera, header, prediction, intrinsics)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
