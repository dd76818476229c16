"""The pass before ``--align-to`` writes anything: what the sensor topic, the cameras and the tf
topics of a bag hold, and whether they can ever give metres.

One read of the sensor topic, its camera info, the cameras' camera infos and ``/tf_static`` and
``/tf``: every sensor stamp, the sensor's and each camera's frame (the frame of the *data*, the
images' and the sensor messages' headers, as the alignment uses them; a camera info naming
another frame is reported once), the tf structure (one parent per frame, the newest; invalid
transforms counted where found), the transform path from each camera to the sensor, and
whether any sensor message is of a kind that can give metres. A request that can never work
is an ``InputError`` (exit 2) before the model loads. ``/tf`` history is not kept here: the
main pass streams it into a bounded history (``runtime.ros.tf``) as tf2 would receive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from commands.errors import InputError

from .messages import IMAGE, POINT_CLOUD2
from .sparse import SPARSE_TYPES, sensor_problem
from .tf import TF_TYPES, TfTree, frame_name, stamp_ns
from .topics import find_camera_info

UNREADABLE = -(10**19)  # the stamp of a sensor message that cannot be read: never the nearest to a frame


@dataclass
class SensorIndex:
    """What the pass found (see the module doc)."""

    topic: str
    msgtype: str
    stamps: list[int]
    tree: TfTree
    sensor_info_topic: str | None
    tf_topics: list[str]  # the /tf topics the main pass streams (none when every path is static)
    camera_frames: dict[str, str] = field(default_factory=dict)  # image topic -> its images' frame
    sensor_frames: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)  # said once before the run
    times: list[int] = field(default_factory=list)  # the sensor messages' bag times (in bag order)


def _first_header(reader: Any, topic: str) -> Any:
    """The header of the first readable message of ``topic`` (None if none)."""
    connections = [c for c in reader.connections if c.topic == topic]
    for conn, _, raw in reader.messages(connections=connections):
        try:
            return reader.deserialize(raw, conn.msgtype).header
        except Exception:
            continue
    return None


def index_sensor(
    reader: Any, topic: str, infos: dict[str | None, str], images: list[str], check_paths: bool = True
) -> SensorIndex:
    """Read the bag once for ``--align-to topic`` with the cameras ``{image topic: camera info}``."""
    types = {c.topic: c.msgtype for c in reader.connections}
    msgtype = types.get(topic)
    if topic in images or (msgtype == IMAGE and topic in infos):
        raise InputError(
            f"--align-to {topic}: that is a camera's own image topic (colour, not depth): name the lidar "
            "(PointCloud2) or depth image (16UC1/32FC1) topic the frames are fitted to"
        )
    if msgtype not in SPARSE_TYPES:
        sources = sorted(t for t, kind in types.items() if kind == POINT_CLOUD2)
        raise InputError(
            f"--align-to {topic}: {'no such topic' if topic not in types else f'it holds {msgtype}'}; "
            f"it takes a PointCloud2 or a depth Image (PointCloud2 topics there: {', '.join(sources) or 'none'})"
        )
    sensor_info = find_camera_info(topic, IMAGE, types, guess=False) if msgtype == IMAGE else None
    if msgtype == IMAGE and sensor_info is None:
        raise InputError(
            f"--align-to {topic}: a depth image is projected with its own camera info, and the bag has none "
            f"beside it ({topic.rsplit('/', 1)[0]}/camera_info); record the depth camera's camera_info"
        )
    tf_topics = [t for t, kind in types.items() if kind in TF_TYPES]
    wanted = {topic, *infos.values(), *tf_topics}
    tree = TfTree()
    tree.keep_history(set())  # structure only: the main pass streams /tf
    index = SensorIndex(topic, msgtype, [], tree, sensor_info, [])
    info_frames: dict[str, str] = {}
    usable, problem = 0, ""
    for conn, timestamp, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
        if conn.topic in info_frames:
            continue  # that camera info's frame is known; the main pass reads them
        if conn.topic == topic:
            index.times.append(timestamp)
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception:
            if conn.topic == topic:
                index.stamps.append(UNREADABLE)
            continue
        if conn.topic == topic:
            index.stamps.append(stamp_ns(msg.header))
            index.sensor_frames.add(frame_name(msg.header.frame_id))
            if not usable:  # one usable message is enough: the others are judged frame by frame
                why = sensor_problem(msg, msgtype)
                usable += not why
                problem = problem or why
        elif conn.topic in tf_topics:
            tree.add_message(msg, static=conn.topic.endswith("tf_static"), where=conn.topic)
        else:
            info_frames[conn.topic] = frame_name(msg.header.frame_id)
    if not index.stamps:
        raise InputError(f"--align-to {topic}: the topic holds no messages")
    if not usable:
        raise InputError(f"--align-to {topic} can never give metres: no message of it is usable: {problem}")
    for image, info in infos.items():
        header = _first_header(reader, image) if image is not None else None
        own = frame_name(header.frame_id) if header is not None else info_frames.get(info)
        if own is None:
            continue
        index.camera_frames[image or ""] = own
        said = info_frames.get(info)
        if said is not None and said != own:
            index.notes.append(
                f"{image or 'the images'} are in frame '{own}' but {info} says '{said}': the images' frame is "
                "used for the transform (fix the driver's frame_id)"
            )
    index.notes += tree.notes
    if check_paths:
        needed: set[str] = set()
        for sensor in sorted(index.sensor_frames):
            for camera in sorted(set(index.camera_frames.values())):
                needed |= tree.dynamic_on_path(camera, sensor)  # NoTransformError: one line, nothing written
        tree.keep_history(needed)
        index.tf_topics = [t for t in tf_topics if not t.endswith("tf_static")] if needed else []
    bad = tree.invalid_lines()
    if bad:
        index.notes.append("invalid transforms left out: " + ", ".join(bad))
    return index
