"""Which topics a bag run reads and writes: the camera's image and camera info, and the depth
topics beside it (``<ns>/depth/...``), checked against the bag's ``{topic: msgtype}``."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .messages import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)


@dataclass
class Topics:
    """Which topics go in and come out of one run."""

    image: str
    camera_info: str | None
    relative: str
    metric: str
    points: str
    copy: list[str]


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
