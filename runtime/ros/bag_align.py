"""``--align-to``: metric depth for each frame of a bag from the bag's own lidar or depth camera.

Before anything is written, one pass over the sensor topic and the tf topics records every
sensor stamp and the tf tree, and checks that the sensor's frame and the camera's are connected
(else one line naming both and the transforms found). During the main pass each frame is
matched to the sensor message nearest its stamp within ``max_time_offset``; frames wait (with
the messages to copy behind them) until that message has been read, so a lidar recorded after
its image is still used. Messages no frame can use any more are dropped as the pass goes.

With several cameras the sensor index and tf tree are shared, but each camera (its image topic)
has its own fit and temporal filter (the network's scale and shift differ between cameras), its
own intrinsics and optical frame (its frames' ``header.frame_id``), its own log, and its per-frame
records carry its topic. Frames of several cameras may wait for the same sensor message.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..align import AlignSettings, FrameAligner, FrameResult
from ..errors import InputError
from ..io.files import atomic_write_bytes
from ..metric import OutputKind
from .align import (
    DEFAULT_MAX_TIME_OFFSET,
    AlignmentLog,
    fixed_transform,
    frame_samples,
    nearest,
    tree_transforms,
)
from .messages import IMAGE, POINT_CLOUD2, intrinsics_from_camera_info
from .sparse import SPARSE_TYPES
from .tf import TF_TYPES, TfTree, frame_name, stamp_ns
from .topics import find_camera_info

# How far (seconds of image stamp) a camera's frames may trail the newest frame of any camera and
# still hold back sensor messages for its next frames; a camera further behind (stopped, done
# with --max-frames) holds nothing back, so the buffer stays bounded.
CAMERA_LAG = 1.0
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
    ) -> None:
        self.topic, self.msgtype = topic, msgtype
        self.order = sorted(range(len(stamps)), key=lambda k: stamps[k])  # sorted position -> bag index
        self.sorted_stamps = [stamps[k] for k in self.order]
        self.transforms, self.transform_note = transforms, transform_note
        self.sensor_info_topic = sensor_info_topic
        self.settings, self.max_offset = settings, int(max_time_offset * 1e9)
        self.sensor_intrinsics = None
        self.kind: OutputKind | None = None
        self.aligners: dict[str | None, FrameAligner] = {}  # per camera (image topic): fits never mix
        self.log = AlignmentLog()  # every camera's frames, in the order they were written
        self.logs: dict[str | None, AlignmentLog] = {camera: AlignmentLog() for camera in cameras or []}
        self.read = 0  # sensor messages read by the main pass
        self._last_time: tuple[int, int] = (-1, 0)  # bag time of the last one, and how many shared it
        self._buffer: dict[int, Any] = {}  # bag index -> message (or why it could not be read)
        self._needed: Counter = Counter()  # bag index -> frames matched to it and not yet aligned
        self._latest: dict[str | None, tuple[int, int]] = {}  # camera -> (stamp, index) of its last match
        self._matches: dict[int, tuple[int | None, int | None]] = {}

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
        """Index the sensor topic and read the tf tree; ``InputError`` for a request that cannot work.

        ``camera_info_topic``: one camera's, or ``{image topic: its camera info topic}`` of the
        cameras aligned (each checked for a transform path to the sensor)."""
        if isinstance(camera_info_topic, Mapping):
            infos, cameras = dict(camera_info_topic), list(camera_info_topic)
        else:
            infos, cameras = {None: camera_info_topic}, None
        types = {c.topic: c.msgtype for c in reader.connections}
        if types.get(topic) not in SPARSE_TYPES:
            sources = sorted(t for t, kind in types.items() if kind == POINT_CLOUD2)
            raise InputError(
                f"--align-to {topic}: {'no such topic' if topic not in types else f'it holds {types[topic]}'}; "
                f"it takes a PointCloud2 or a depth Image (PointCloud2 topics there: {', '.join(sources) or 'none'})"
            )
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
        tf_topics = [t for t, kind in types.items() if kind in TF_TYPES]
        wanted = {topic, *infos.values(), *tf_topics}
        tree, stamps, sensor_frames, camera_frames = TfTree(), [], set(), {}
        for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            if conn.topic in camera_frames:
                continue  # that camera's frame is known; its other infos are read by the main pass
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception:
                if conn.topic == topic:
                    stamps.append(-(10**19))  # unreadable: never the nearest to a frame
                continue
            if conn.topic == topic:
                stamps.append(stamp_ns(msg.header))
                sensor_frames.add(frame_name(msg.header.frame_id))
            elif conn.topic in infos.values():
                camera_frames[conn.topic] = frame_name(msg.header.frame_id)
            if conn.topic in tf_topics:
                tree.add_message(msg, static=conn.topic.endswith("tf_static"))
        if not stamps:
            raise InputError(f"--align-to {topic}: the topic holds no messages")
        if extrinsics is not None:
            transforms, note = fixed_transform(extrinsics), "--extrinsics"
        else:
            for sensor in sorted(sensor_frames):
                for camera_frame in sorted(set(camera_frames.values())):
                    tree.path(camera_frame, sensor)  # NoTransformError: one line, nothing written
            transforms, note = tree_transforms(tree), f"tf ({len(tree.edges)} transforms)"
        info = find_camera_info(topic, IMAGE, types, guess=False) if types[topic] == IMAGE else None  # its own
        settings = settings or AlignSettings()
        return cls(topic, types[topic], stamps, transforms, note, info, settings, max_time_offset, cameras)

    @property
    def topics(self) -> set[str]:
        """Topics the main pass must hand to :meth:`observe`."""
        return {self.topic} | ({self.sensor_info_topic} if self.sensor_info_topic else set())

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
        if topic == self.sensor_info_topic:
            try:
                self.sensor_intrinsics = intrinsics_from_camera_info(deserialize())
            except Exception:
                self.sensor_intrinsics = None
            return
        index, self.read = self.read, self.read + 1
        same = self._last_time[1] + 1 if timestamp == self._last_time[0] else 1
        self._last_time = (timestamp, same)
        if index < self._bound() and not self._needed[index]:
            return  # no frame can still use it
        try:
            self._buffer[index] = deserialize()
        except Exception as exc:
            self._buffer[index] = f"cannot deserialise: {exc}"

    def match(self, frame: Any) -> None:
        """Note the sensor message a frame (just read) will be fitted to."""
        stamp = stamp_ns(frame.header)
        position, offset = nearest(self.sorted_stamps, stamp, self.max_offset)
        index = None if position is None else self.order[position]
        self._matches[id(frame)] = (index, offset)
        if index is not None:
            self._needed[index] += 1
            last = self._latest.get(frame.topic, (stamp, index))
            self._latest[frame.topic] = (max(last[0], stamp), max(last[1], index))
            self._evict()

    def ready(self, frame: Any) -> bool:
        index = self._matches[id(frame)][0]
        return index is None or index < self.read

    def read_rest(self, reader: Any) -> None:
        """After the frames ran out: read on until every waiting frame's sensor message is in."""
        if not any(k >= self.read for k in self._needed if self._needed[k]):
            return
        connections = [c for c in reader.connections if c.topic in self.topics]
        skip = self._last_time[1] if self._last_time[0] >= 0 else 0
        start = max(self._last_time[0], 0)
        for conn, timestamp, raw in reader.messages(connections=connections, start=start):
            if skip and timestamp == start and conn.topic == self.topic:
                skip -= 1
                continue
            self.observe(conn.topic, timestamp, raw, lambda raw=raw, conn=conn: reader.deserialize(raw, conn.msgtype))
            if not any(k >= self.read for k in self._needed if self._needed[k]):
                return

    def align(self, frame: Any, prediction: np.ndarray) -> FrameResult:
        """Metric depth for a frame whose sensor message has been read (or that has none)."""
        aligner = self._camera(frame.topic)
        started = time.perf_counter()
        index, offset = self._matches.pop(id(frame))
        samples, missing = None, ""
        limit = self.max_offset / 1e6
        if frame.intrinsics is None:
            missing = "no camera info"
        elif index is None:
            missing = f"no sensor message within {limit:.0f} ms (nearest {offset / 1e6:.0f} ms)"
        else:
            msg = self._buffer.get(index, "released before its frame (image stamps out of order)")
            if isinstance(msg, str):
                missing = f"sensor message unusable: {msg}"
            else:
                samples, missing = frame_samples(
                    msg,
                    self.msgtype,
                    frame.header.frame_id,
                    frame.intrinsics,
                    prediction.shape,
                    self.transforms,
                    aligner,
                    self.sensor_intrinsics,
                )
        if index is not None:  # a frame without camera info was matched too: release its message all the same
            self._needed[index] -= 1
            self._evict()
        result = aligner.align(prediction, samples, stamp_ns(frame.header), missing)
        extra = {"camera": frame.topic, "bag_time_ns": int(frame.timestamp)}
        if offset is not None:
            extra["sensor_offset_ms"] = round(offset / 1e6, 3)
        seconds = time.perf_counter() - started
        self.log.add(result, seconds, **extra)
        self.logs[frame.topic].add(result, seconds, **extra)
        return result

    def _bound(self) -> int:
        """The lowest sensor index a frame still to be read may match: each camera's frames come in
        stamp order, so none matches below the index its last frame matched; a camera whose frames
        trail the newest by more than ``CAMERA_LAG`` (or that has matched none yet) holds none back."""
        if not self._latest:
            return -1
        newest = max(stamp for stamp, _ in self._latest.values())
        return min(index for stamp, index in self._latest.values() if stamp >= newest - CAMERA_LAG * 1e9)

    def _evict(self) -> None:
        bound = self._bound()
        for index in [k for k in self._buffer if k < bound and not self._needed[k]]:
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


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def check_conversion(conversion: Any, kind: OutputKind, stabilize: bool, aligned: bool = False) -> Any:
    """The run's conversion for a model of ``kind``: constants and stabilising are for relative
    models; a metric model's metres are published as they are (``--align-to`` corrects their scale)."""
    from dataclasses import replace

    if kind.kind == "depth_up_to_scale" and not aligned:
        raise InputError(
            f"the model outputs {kind.describe()} ({kind.source}): the bag tool publishes relative inverse depth "
            "or metres; give --align-to TOPIC (a scale per frame from the bag's lidar or depth camera), or use a "
            "metres-per-focal model (DA3Metric)"
        )
    if kind.needs_focal and aligned:
        raise InputError(
            f"the model outputs {kind.describe()}: its metres come from each frame's camera info; drop --align-to"
        )
    if kind.is_depth and conversion.metric is not None:
        raise InputError(
            f"the model outputs {kind.describe()} ({kind.source}): --metric-scale/--metric-shift convert relative "
            "inverse depth and do not apply; drop them (--align-to corrects a metric model's scale per frame)"
        )
    if kind.is_depth and stabilize:
        raise InputError(f"the model outputs {kind.describe()}: --stabilize is for relative models")
    return replace(conversion, output=kind)


def add_align_args(parser: Any, metres: Callable[[str], float], max_time_offset: float) -> None:
    """The bag command's options for per-frame alignment and stabilising."""
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
        type=float,
        metavar="N",
        help="the sensor's pose in the camera's optical frame, instead of tf: x y z yaw pitch roll, "
        "or x y z qx qy qz qw (one camera only: several cameras take their transforms from tf)",
    )
    group.add_argument(
        "--max-time-offset",
        type=float,
        default=max_time_offset,
        metavar="S",
        help=f"longest time between an image and its sensor message, seconds (default {max_time_offset})",
    )
    group.add_argument(
        "--held-out",
        type=float,
        default=0.2,
        help="share of each frame's sensor points kept out of the fit to score it",
    )
    group.add_argument(
        "--hold",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds a good fit is held for frames without one (default 0.5)",
    )
    group.add_argument(
        "--depth-range",
        nargs=2,
        type=metres,
        default=(0.1, 100.0),
        metavar=("MIN", "MAX"),
        help="sensor depths used, metres (default 0.1 100)",
    )
    group.add_argument(
        "--min-inliers", type=int, default=20, metavar="N", help="fewest inliers a frame's fit may have (default 20)"
    )
    parser.add_argument(
        "--stabilize",
        action="store_true",
        help="relative depth on the scale of the frames before it (no flicker); for relative models",
    )


def align_request(args: Any) -> dict[str, Any]:
    """``BagAligner.prepare`` keyword arguments from the command's options; ``InputError`` for bad ones."""
    from ..align import FilterSettings, FitSettings
    from .tf import parse_extrinsics

    if args.align_to is None:
        given = [flag for flag in ("extrinsics",) if getattr(args, flag) is not None]
        if given:
            raise InputError(f"--{given[0]} describes the sensor of --align-to; give --align-to TOPIC too")
        return {}
    try:
        settings = AlignSettings(
            FitSettings(min_inliers=args.min_inliers, min_depth=args.depth_range[0], max_depth=args.depth_range[1]),
            FilterSettings(hold=args.hold),
            held_out=args.held_out,
        )
    except ValueError as exc:
        raise InputError(f"alignment options: {exc}") from None
    if not 0 <= args.max_time_offset < float("inf"):
        raise InputError(f"--max-time-offset must be a number of seconds >= 0, got {args.max_time_offset}")
    extrinsics = None if args.extrinsics is None else parse_extrinsics(args.extrinsics)
    return {"extrinsics": extrinsics, "settings": settings, "max_time_offset": args.max_time_offset}
