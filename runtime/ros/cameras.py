"""The ROS 2 node's cameras: one or several, each with its image, camera info and depth topics;
the newest frame of each waits in its own slot, and a cycle takes the newest frame of every camera
that has one and runs them as one ``predict_batch`` (frames of equal size in one model call).

Plain logic, tested without rclpy; the node (``runtime.ros.node``) subscribes and publishes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from commands.errors import InputError

from ..pointcloud import Intrinsics
from ..preprocessing import check_image
from .align import FramePipeline
from .messages import IMAGE, LatestOnly, MessageFactory, camera_size_note, message_to_image
from .stamps import ByStamp
from .tf import stamp_ns
from .topics import camera_namespace, confidence_topic, default_topics, repeated

CAMERA_INFOS = 16  # a camera's camera infos kept by stamp
# One camera without image_topics: relative names, set with --ros-args -r image:=... as before.
RELATIVE = {
    "relative": "depth/relative_inverse",
    "metric": "depth/image",
    "points": "depth/points",
    "confidence": "depth/confidence",
}


@dataclass
class Camera:
    """One camera of the node: what it subscribes to and publishes, its pipeline and intrinsics."""

    image: str
    camera_info: str
    outputs: dict[str, str]  # "relative", "metric", "points", "confidence" -> topic
    pipeline: Any = None  # its FramePipeline (its own stabiliser and fit state)
    # Its camera infos' intrinsics (node_core.camera_info_receiver fills them): the newest, and the
    # last few by stamp (a frame takes the one with its own stamp, as message_filters pairs them).
    infos: ByStamp = field(default_factory=lambda: ByStamp(CAMERA_INFOS))
    publishers: dict[str, Any] = field(default_factory=dict)
    said: set = field(default_factory=set)  # warnings given once
    video: Any = None  # a Video Depth Anything model's stream state for this camera (VideoStream)

    @property
    def intrinsics(self) -> Intrinsics | None:
        """The newest camera info's (``None``: none yet, or it could not be used)."""
        return self.infos.newest

    def intrinsics_at(self, stamp: int) -> Intrinsics | None:
        """The camera info with the frame's stamp, else the newest."""
        return self.infos.at(stamp)


def split_topics(text: str) -> list[str]:
    """``image_topics`` as given in a ROS parameter: names separated by spaces or commas."""
    return [topic for topic in text.replace(",", " ").split() if topic]


def node_cameras(image_topics: Sequence[str]) -> list[Camera]:
    """The node's cameras: none named, the remappable ``image``/``camera_info``; else per image topic
    ``<ns>/camera_info`` and ``<ns>/depth/...`` beside it, as the bag tool names them."""
    topics = list(image_topics)
    if not topics:
        return [Camera("image", "camera_info", dict(RELATIVE))]
    twice = repeated(topics)
    if twice:
        raise InputError(f"image_topics: {twice[0]} given twice; give each camera once")
    cameras = []
    for topic in topics:
        namespace = camera_namespace(topic) if "/" in topic.strip("/") else ""
        if not namespace:
            raise InputError(
                f"image_topics: {topic!r} has no namespace to put its depth topics in; name it as the "
                "camera driver does, /<camera>/image_raw"
            )
        outputs = dict(zip(("relative", "metric", "points"), default_topics(topic, IMAGE)))
        outputs["confidence"] = confidence_topic(topic, IMAGE)
        cameras.append(Camera(topic, f"{namespace}/camera_info", outputs))
    return cameras


class CameraSlots:
    """The newest frame of each camera (a ``LatestOnly`` each, one condition for all): ``take``
    waits for any camera's frame and returns ``[(camera index, message), ...]`` for every camera
    with one, oldest frames replaced and counted as dropped, never queued."""

    def __init__(self, count: int) -> None:
        self._cond = threading.Condition()
        self.slots: list[LatestOnly] = [LatestOnly(self._cond) for _ in range(count)]
        self._closed = False

    def put(self, index: int, message: Any) -> bool:
        return self.slots[index].put(message)

    def take(self, timeout: float | None = None) -> list[tuple[int, Any]] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._closed or any(slot.pending for slot in self.slots), timeout)
            cycle = [(index, slot.take(0)) for index, slot in enumerate(self.slots) if slot.pending]
        return cycle or None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for slot in self.slots:
                slot.close()

    @property
    def received(self) -> int:
        return sum(slot.received for slot in self.slots)

    @property
    def dropped(self) -> int:
        return sum(slot.dropped for slot in self.slots)


def predict(predictor: Any, taken: list, images: list, warn: Callable[[str], None]) -> list:
    """``predict_batch``; a Video Depth Anything model runs each camera's frame through that
    camera's own stream instead (its cache, resets on a pause; a frame older than the last is
    warned about and left out: ``None``)."""
    if not getattr(predictor, "is_stream_model", False):
        # A metres-per-focal model: its own output, made metres per camera from that camera's
        # camera info (FramePipeline), as the bag tool does.
        return predictor.predict_batch(images, raw=predictor.output.needs_focal)
    depths = []
    for (camera, message), image in zip(taken, images):
        if camera.video is None:
            camera.video = predictor.video_stream(name=camera.image)
        try:
            depths.append(camera.video.push(image, stamp_ns=stamp_ns(message.header)))
        except InputError as exc:
            warn(f"frame skipped: {exc}")
            depths.append(None)
    return depths


def run_cycle(
    predictor: Any,
    cameras: list[Camera],
    cycle: list[tuple[int, Any]],
    factory: MessageFactory,
    warn: Callable[[str], None],
) -> int:
    """Depth for one cycle: decode each camera's frame (one that cannot be decoded is warned about
    and left out, the others go on), one ``predict_batch`` for all, then each camera's messages
    through its own pipeline to its own publishers. Returns the frames published."""
    taken, images = [], []
    for index, message in cycle:
        try:  # decoded and checked here, so a bad frame leaves out its own camera, named, not the cycle
            images.append(check_image(message_to_image(message, IMAGE)))
        except InputError as exc:
            warn(f"{cameras[index].image}: frame skipped: {exc}")
            continue
        taken.append((cameras[index], message))
    if not images:
        return 0
    published = 0
    for (camera, message), image, depth in zip(taken, images, predict(predictor, taken, images, warn)):
        if depth is None:
            continue
        pipeline: FramePipeline = camera.pipeline
        intrinsics = camera.intrinsics_at(stamp_ns(message.header))
        if intrinsics is None and pipeline.kind.needs_focal:
            warn(
                f"{camera.image}: no usable camera info on {camera.camera_info}: no metres (they need its focal length)"
            )
        if intrinsics is not None and "points" in pipeline.outputs:
            note = camera_size_note(intrinsics, *depth.shape)
            if note:
                warn(f"{camera.camera_info}: {note}")
        try:
            messages = pipeline.messages(factory, message.header, image, depth, intrinsics)
        except InputError as exc:
            warn(f"{camera.image}: frame skipped: {exc}")
            continue
        for key, out in messages.items():
            camera.publishers[key].publish(out)
        published += 1
    return published
