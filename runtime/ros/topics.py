"""Which topics a bag run reads and writes: the camera's image and camera info, and the depth
topics beside it (``<ns>/depth/...``), checked against the bag's ``{topic: msgtype}``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from commands.errors import InputError

from .messages import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE

IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
WRITES = ("relative", "metric", "points", "confidence")  # every output a run may write
DEPTH_WRITES = WRITES[:3]  # what a run writes unless told (the depth confidence is asked for)


@dataclass
class Topics:
    """Which topics go in and come out of one run."""

    image: str
    camera_info: str | None
    relative: str
    metric: str
    points: str
    copy: list[str]
    confidence: str = ""  # the depth confidence (32FC1, unitless), written when asked for


def base_topic(topic: str, msgtype: str) -> str:
    """The image topic without image_transport's ``/compressed`` suffix."""
    if msgtype == COMPRESSED_IMAGE and topic.endswith("/compressed"):
        return topic[: -len("/compressed")]
    return topic


def camera_namespace(image_topic: str, image_type: str = IMAGE) -> str:
    """The namespace a camera's topics share: its image topic's parent ("" for a top-level name)."""
    return base_topic(image_topic, image_type).rsplit("/", 1)[0]


def repeated(topics: Iterable[str]) -> list[str]:
    """The names given more than once, sorted."""
    return sorted(topic for topic, count in Counter(topics).items() if count > 1)


def default_topics(image_topic: str, image_type: str) -> tuple[str, str, str]:
    """``(relative, metric, points)`` topic names beside the camera's image topic."""
    namespace = camera_namespace(image_topic, image_type)
    return f"{namespace}/depth/relative_inverse", f"{namespace}/depth/image", f"{namespace}/depth/points"


def confidence_topic(image_topic: str, image_type: str) -> str:
    """The depth confidence's topic beside the camera's depth: ``<ns>/depth/confidence``."""
    return f"{camera_namespace(image_topic, image_type)}/depth/confidence"


def find_camera_info(image_topic: str, image_type: str, types: dict[str, str], guess: bool = True) -> str | None:
    """The camera info beside the image (``<ns>/camera_info``), else (``guess``) the bag's only one."""
    sibling = camera_namespace(image_topic, image_type) + "/camera_info"
    if types.get(sibling) == CAMERA_INFO:
        return sibling
    infos = [topic for topic, kind in types.items() if kind == CAMERA_INFO]
    return infos[0] if guess and len(infos) == 1 else None


# Options given once per camera (per --image-topic, in the same order), in plan_cameras' order.
PER_CAMERA = ("--camera-info-topic", "--depth-topic", "--metric-depth-topic", "--points-topic")


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
    """One camera's :func:`plan_cameras`."""
    lists = [None if topic is None else [topic] for topic in (camera_info, relative, metric, points)]
    return plan_cameras(types, [image], *lists, copy=copy, copy_all=copy_all)[0]


def plan_cameras(
    types: dict[str, str],
    images: Sequence[str],
    camera_infos: Sequence[str] | None = None,
    relatives: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    points: Sequence[str] | None = None,
    copy: list[str] | None = None,
    copy_all: bool = False,
    writes: Collection[str] = DEPTH_WRITES,
) -> list[Topics]:
    """Check the requested topics of each camera against the bag's ``{topic: msgtype}`` and fill in
    defaults; one :class:`Topics` per image topic, in order, sharing one list of copied topics.

    The per-camera lists (camera info, output topics) are ``None`` (defaults beside each image
    topic) or hold one topic per image topic, in the same order. A camera's info defaults to
    ``<ns>/camera_info``, and with one camera to the bag's only camera info. ``copy`` lists the
    topics copied unchanged (default: the image and camera info topics); ``copy_all`` copies
    every topic except the ones this run writes. ``writes``: which outputs the run publishes
    (``relative``, ``metric``, ``points``; points only for a camera with camera info): a recorded
    topic under an output's name the run does not write is copied like any other, and only a
    topic the run does write and also copies is refused.
    """
    images = list(images)
    if not images:
        raise InputError("no image topic given")
    twice = repeated(images)
    if twice:
        raise InputError(f"image topic {twice[0]} given twice: give each camera once")
    given = dict(zip(PER_CAMERA, (camera_infos, relatives, metrics, points)))
    for flag, topics in given.items():
        if topics is not None and len(topics) != len(images):
            raise InputError(
                f"{flag} given {len(topics)} times for {len(images)} image topics: give it once per "
                "--image-topic, in the same order, or leave it out (defaults beside each camera)"
            )
    listed = sorted(t for t, kind in types.items() if kind in IMAGE_TYPES)
    cameras = []
    for k, image in enumerate(images):
        if image not in types:
            raise InputError(f"no topic {image!r} in the bag; image topics there: {', '.join(listed) or 'none'}")
        if types[image] not in IMAGE_TYPES:
            raise InputError(
                f"{image} holds {types[image]}, not images; image topics there: {', '.join(listed) or 'none'}"
            )
        mine = {flag: None if topics is None else topics[k] for flag, topics in given.items()}
        camera_info = mine["--camera-info-topic"]
        if camera_info is None:
            camera_info = find_camera_info(image, types[image], types, guess=len(images) == 1)
        elif types.get(camera_info) != CAMERA_INFO:
            raise InputError(
                f"{camera_info} is not a {CAMERA_INFO} topic in the bag (it holds {types.get(camera_info)})"
            )
        defaults = default_topics(image, types[image])
        outputs = [mine[flag] or default for flag, default in zip(PER_CAMERA[1:], defaults)]
        cameras.append(Topics(image, camera_info, *outputs, [], confidence_topic(image, types[image])))
    outputs = [
        topic
        for camera in cameras
        for key, topic in (
            ("relative", camera.relative),
            ("metric", camera.metric),
            ("points", camera.points),
            ("confidence", camera.confidence),
        )
        if key in writes and (key != "points" or camera.camera_info is not None)
    ]
    if copy_all:
        recorded = [t for t in outputs if t in types]
        if recorded:  # copying it would mix two streams under one name, leaving it out would lose it
            raise InputError(
                f"--copy-all: {', '.join(recorded)} is recorded in the bag and this run writes it too: give its "
                "output another name (--depth-topic, --metric-depth-topic, --points-topic), or list the topics "
                "to copy with --copy-topics"
            )
        copy = sorted(types)
    elif copy is None:
        inputs = [topic for camera in cameras for topic in (camera.image, camera.camera_info) if topic]
        copy = list(dict.fromkeys(inputs))
    missing = [t for t in copy if t not in types]
    if missing:
        raise InputError(f"cannot copy {', '.join(missing)}: not in the bag")
    clash = [t for t in outputs if t in copy]
    twice = repeated(outputs)
    if twice or clash:
        hint = " (cameras in one namespace: give --depth-topic etc. once per camera)" if twice and cameras[1:] else ""
        raise InputError(
            f"output topics must be distinct and not among the copied topics: {', '.join(clash or twice)}{hint}"
        )
    for camera in cameras:
        camera.copy = list(copy)
    return cameras
