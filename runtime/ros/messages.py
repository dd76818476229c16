"""ROS messages <-> numpy, with no ROS library imported: shared by the bag tool and the ROS 2 node.

Messages are read by attribute (``msg.height``, ``msg.data``, ...), so the message objects of
``rosbags`` (ROS 1 and ROS 2) and of ``rclpy`` work alike. Outgoing messages are built by the
transport's :class:`MessageFactory`, one object handed from the bag writer or the node through
the frame pipeline to the functions here: its ``make(type_name, **fields)`` builds a message and
its ``blob(uint8 array)`` a byte payload, because each library wants its own container (a numpy
array for ``rosbags``, ``array.array('B')`` for ``rclpy``).

Published depth follows REP 118 and the toolkit's conventions: ``32FC1``, the source image's
header, relative inverse depth (unitless) under its own topic and metric depth in metres only
from a metric model or after an explicit conversion, NaN where invalid.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import cv2
import numpy as np

from commands.errors import InputError

from ..io.images import decode_image_bytes
from ..metric import OutputKind, ScaleShift
from ..pointcloud import MAX_POINTS, Intrinsics, PointCloud, bounded_stride, depth_to_points, pointcloud2_layout

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"
POINT_FIELD = "sensor_msgs/msg/PointField"

# Camera encodings -> (channels, numpy dtype, OpenCV conversion to BGR or None). 16UC1 and 32FC1
# are depth images (REP 118), not pictures a depth model should be given.
_ENCODINGS = {
    "bgr8": (3, np.uint8, None),
    "rgb8": (3, np.uint8, cv2.COLOR_RGB2BGR),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2BGR),
    "mono8": (1, np.uint8, None),
    "mono16": (1, np.uint16, None),
}
ENCODINGS = tuple(_ENCODINGS)


def _buffer(data: Any) -> np.ndarray:
    """A uint8 view of a message's ``data`` (numpy array, bytes, ``array.array``, list)."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(memoryview(data), np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


def image_to_numpy(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """A ``sensor_msgs/Image`` as HxWx3 BGR uint8 (colour encodings) or HxW uint8 (mono).

    ``mono16`` is scaled to 8 bits over the full 16-bit range. Other encodings (depth
    ``32FC1``, Bayer, YUV) and payloads shorter than ``step * height`` raise ``InputError``.
    """
    encoding = str(msg.encoding)
    if encoding not in _ENCODINGS:
        raise InputError(f"image encoding {msg.encoding!r} is not supported; use one of {', '.join(ENCODINGS)}")
    channels, dtype, conversion = _ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    limit = max_pixels
    if height <= 0 or width <= 0:
        raise InputError(f"image is {width}x{height}: empty")
    if limit is not None and height * width > limit:
        raise InputError(f"image is {width}x{height}, over the limit of {limit / 1e6:.1f} megapixels")
    row = width * channels * np.dtype(dtype).itemsize
    data = _buffer(msg.data)
    if step < row or data.size < step * (height - 1) + row:
        raise InputError(
            f"{encoding} image {width}x{height} needs rows of {row} bytes; got step {step} and {data.size} bytes"
        )
    if data.size < step * height:  # the last row's padding may be left out
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    rows = data[: step * height].reshape(height, step)[:, :row]
    big_endian = bool(msg.is_bigendian)
    pixels = rows.copy().view(np.dtype(dtype).newbyteorder(">" if big_endian else "<"))
    pixels = pixels.reshape((height, width, channels) if channels > 1 else (height, width))
    if dtype == np.uint16:
        # Full-range scaling keeps frames comparable over a video (no per-frame stretch).
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return cv2.cvtColor(pixels, conversion) if conversion is not None else pixels


def compressed_to_numpy(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG or PNG) as HxWx3 BGR uint8."""
    if "compresseddepth" in str(msg.format).lower():
        raise InputError(f"compressed depth images ({msg.format!r}) are not camera images")
    name = f"compressed image ({msg.format or 'no format'})"
    # Camera frames stay as the sensor stored them: an EXIF rotation would no longer match the camera info.
    return decode_image_bytes(_buffer(msg.data), max_pixels, name=name, exif_orientation=False)


def message_to_image(msg: Any, msgtype: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an ``Image`` or ``CompressedImage`` by its message type name."""
    if msgtype == IMAGE:
        return image_to_numpy(msg, max_pixels)
    if msgtype == COMPRESSED_IMAGE:
        return compressed_to_numpy(msg, max_pixels)
    raise InputError(f"{msgtype} is not an image message; expected {IMAGE} or {COMPRESSED_IMAGE}")


def intrinsics_from_camera_info(msg: Any) -> Intrinsics:
    """Intrinsics from a ``sensor_msgs/CameraInfo`` (ROS 2 ``k``/``d`` or ROS 1 ``K``/``D``) for the
    images the camera publishes, as image_geometry's ``PinholeCameraModel`` reads them: ``K`` is for
    the full sensor, so a region of interest moves the principal point by its offset and binning
    divides focal lengths and principal point (0 and 1 mean none); the size is the ROI's (else the
    full width and height) over the binning."""
    k = getattr(msg, "k", None)
    if k is None:
        k = msg.K
    d = getattr(msg, "d", None)
    if d is None:
        d = msg.D
    k = np.array(k, dtype=np.float64).reshape(-1)
    width, height = int(msg.width), int(msg.height)
    bx, by = (max(1, int(getattr(msg, name, 0) or 0)) for name in ("binning_x", "binning_y"))
    roi = getattr(msg, "roi", None)
    x0, y0, roi_w, roi_h = (int(getattr(roi, name, 0) or 0) for name in ("x_offset", "y_offset", "width", "height"))
    if roi_w and roi_h:
        if width and height and (x0 + roi_w > width or y0 + roi_h > height):
            raise InputError(
                f"camera info ROI {roi_w}x{roi_h} at ({x0}, {y0}) lies outside the {width}x{height} sensor"
            )
        width, height = roi_w, roi_h
    else:
        x0 = y0 = 0
    if k.size == 9:
        k[2], k[5] = k[2] - x0, k[5] - y0
        k[0], k[2], k[4], k[5] = k[0] / bx, k[2] / bx, k[4] / by, k[5] / by
    return Intrinsics.from_matrix(
        k, tuple(float(x) for x in d), str(msg.distortion_model) or "plumb_bob", width // bx, height // by
    )


def camera_size_note(intrinsics: Intrinsics, height: int, width: int) -> str | None:
    """What to tell the user when a camera info describes another image size than the frame's."""
    if not intrinsics.width or not intrinsics.height or (intrinsics.width, intrinsics.height) == (width, height):
        return None
    sizes = f"the camera info is for {intrinsics.width}x{intrinsics.height} images, the frames are {width}x{height}"
    if abs(intrinsics.width * height / (intrinsics.height * width) - 1) > 0.01:
        return f"{sizes}: another aspect ratio, so the points use intrinsics stretched to fit; check the topics"
    return f"{sizes}: the intrinsics are scaled to the frames"


def metric_depth(relative: np.ndarray, conversion: ScaleShift) -> np.ndarray:
    """Depth in metres from relative inverse depth, NaN where the conversion gives none (REP 118)."""
    depth = conversion.to_metric(relative)
    depth[~np.isfinite(depth)] = np.nan
    return depth


@dataclass(frozen=True)
class MessageFactory:
    """How one transport builds outgoing messages (see the module doc): ``make(type name,
    **fields)``, and ``blob(uint8 array)`` for byte payloads (default: a contiguous numpy array,
    as ``rosbags`` holds ``uint8[]`` fields)."""

    make: Callable[..., Any]
    blob: Callable[[np.ndarray], Any] = np.ascontiguousarray


def depth_message(factory: MessageFactory, header: Any, depth: np.ndarray) -> Any:
    """A ``32FC1`` little-endian ``sensor_msgs/Image`` of ``depth`` with the source's ``header``."""
    depth = np.ascontiguousarray(depth, dtype="<f4")
    height, width = depth.shape
    return factory.make(
        IMAGE,
        header=header,
        height=height,
        width=width,
        encoding="32FC1",
        is_bigendian=0,
        step=4 * width,
        data=factory.blob(depth.reshape(-1).view(np.uint8)),
    )


def pointcloud2_message(factory: MessageFactory, header: Any, cloud: PointCloud) -> Any:
    """A dense, unorganised ``sensor_msgs/PointCloud2`` (x, y, z[, rgb] float32) with ``header``.

    ``is_dense`` is "True if there are no invalid points" (PointCloud2.msg): ``depth_to_points``
    keeps finite points only, so it holds."""
    layout = pointcloud2_layout(cloud)
    fields = [
        factory.make(POINT_FIELD, name=name, offset=offset, datatype=datatype, count=count)
        for name, offset, datatype, count in layout.fields
    ]
    return factory.make(
        POINT_CLOUD2,
        header=header,
        height=1,
        width=layout.width,
        fields=fields,
        is_bigendian=False,
        point_step=layout.point_step,
        row_step=layout.row_step,
        data=factory.blob(layout.data),
        is_dense=True,
    )


@dataclass
class Conversion:
    """What to publish besides the model's relative inverse depth, and how."""

    metric: ScaleShift | None = None  # None: relative inverse depth only, no metres, no points
    point_stride: int = 1
    max_range: float | None = None  # metres along z
    colour_points: bool = True
    max_points: int | None = MAX_POINTS  # a larger stride beyond this many points per cloud; None: no bound
    output: OutputKind = field(default_factory=OutputKind)  # what the model's output is
    confidence: bool = False  # publish the model's depth confidence (DA3 any-view networks)


def depth_messages(
    factory: MessageFactory,
    header: Any,
    relative: np.ndarray,
    image: np.ndarray,
    intrinsics: Intrinsics | None,
    conversion: Conversion,
) -> dict[str, Any]:
    """The messages for one frame of the model's output, keyed ``relative`` (a relative model's
    output), ``metric`` (a metric model's output, or a relative one's through the conversion's
    scale and shift) and ``points`` (with metric depth and intrinsics)."""
    if conversion.output.is_metric:
        return output_messages(factory, header, image, intrinsics, conversion, None, model_metres(relative))
    metres = None if conversion.metric is None else metric_depth(relative, conversion.metric)
    return output_messages(factory, header, image, intrinsics, conversion, relative, metres)


def model_metres(depth: np.ndarray) -> np.ndarray:
    """A metric model's output as published: metres, NaN where not positive and finite (REP 118)."""
    depth = np.asarray(depth, np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan)).astype(np.float32)


def sky_as_far(metres: np.ndarray | None, sky: np.ndarray | None) -> np.ndarray | None:
    """Metres with the model's sky pixels at ``+inf`` (REP 117: too far to measure), so no point
    comes from them; ``metres`` as it is without a sky mask."""
    if metres is None or sky is None:
        return metres
    return np.where(sky, np.float32(np.inf), metres).astype(np.float32)


def output_messages(
    factory: MessageFactory,
    header: Any,
    image: np.ndarray,
    intrinsics: Intrinsics | None,
    conversion: Conversion,
    relative: np.ndarray | None,
    metres: np.ndarray | None,
) -> dict[str, Any]:
    """The messages for relative inverse depth and/or metres (``None``: not published)."""
    messages = {} if relative is None else {"relative": depth_message(factory, header, relative)}
    if metres is None:
        return messages
    messages["metric"] = depth_message(factory, header, metres)
    if intrinsics is not None:
        colours = image if conversion.colour_points else None
        stride = bounded_stride(*metres.shape, conversion.point_stride, conversion.max_points)
        cloud = depth_to_points(metres, intrinsics, colours, stride, conversion.max_range)
        messages["points"] = pointcloud2_message(factory, header, cloud)
    return messages


T = TypeVar("T")


class LatestOnly(Generic[T]):
    """A one-slot mailbox: a new item replaces one not yet taken, which is counted as dropped.

    A robot wants depth for the newest frame: when inference is slower than the camera, frames
    that arrived while the model was busy are stale by the time it is free, and queueing them
    only adds latency. The transport's callback calls :meth:`put`; one worker calls :meth:`take`.
    """

    def __init__(self, condition: threading.Condition | None = None) -> None:
        self._item: T | None = None
        self._full = False
        self._closed = False
        # Shared by the cameras of runtime.ros.cameras.CameraSlots: one wait serves them all.
        self._cond = condition or threading.Condition()
        self.received = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; ``True`` if it replaced an older item that was never taken."""
        with self._cond:
            replaced = self._full
            self._item, self._full = item, True
            self.received += 1
            self.dropped += replaced
            self._cond.notify()
            return replaced

    @property
    def pending(self) -> bool:
        """An item waits to be taken."""
        return self._full

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, waiting up to ``timeout`` seconds; ``None`` on timeout or after :meth:`close`."""
        with self._cond:
            self._cond.wait_for(lambda: self._full or self._closed, timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
