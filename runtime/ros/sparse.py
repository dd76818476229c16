"""Sparse metric sources from ROS messages: ``PointCloud2`` (lidar, radar, any cloud) and depth
images (``16UC1`` millimetres or ``32FC1`` metres: RealSense, ToF, stereo), as N x 3 points in
the sensor's own frame. Read by attribute, so ``rosbags`` and ``rclpy`` messages work alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from commands.errors import InputError

from ..pointcloud import Intrinsics, depth_to_points
from .messages import IMAGE, POINT_CLOUD2, _buffer
from .tf import frame_name, stamp_ns

SPARSE_TYPES = (POINT_CLOUD2, IMAGE)
# sensor_msgs/PointField datatypes a coordinate may have.
_COORDINATE_TYPES = {7: "f4", 8: "f8"}
_FIELD_TYPE_NAMES = {
    1: "INT8",
    2: "UINT8",
    3: "INT16",
    4: "UINT16",
    5: "INT32",
    6: "UINT32",
    7: "FLOAT32",
    8: "FLOAT64",
}
# Depth encodings (REP 118 and the 16-bit millimetre form of RealSense/OpenNI drivers) -> metres per unit.
DEPTH_ENCODINGS = {"16UC1": ("u2", 0.001), "mono16": ("u2", 0.001), "32FC1": ("f4", 1.0)}
MAX_DEPTH_POINTS = 50_000  # a depth image is thinned to about this many points per frame


@dataclass
class SensorFrame:
    """One decoded sensor message: its stamp, frame and N x 3 float points (NaN rows kept for counting)."""

    stamp: int
    frame_id: str
    points: np.ndarray


def pointcloud2_points(msg: Any) -> np.ndarray:
    """x, y, z of every point of a ``PointCloud2`` (N x 3 float64), by its fields' offsets and types."""
    fields = {str(f.name): f for f in msg.fields}
    missing = [a for a in "xyz" if a not in fields]
    if missing:
        raise InputError(f"PointCloud2 has no {', '.join(missing)} field (fields: {', '.join(fields) or 'none'})")
    for axis in "xyz":
        field = fields[axis]
        if int(field.datatype) not in _COORDINATE_TYPES or int(field.count) not in (0, 1):
            kind = _FIELD_TYPE_NAMES.get(int(field.datatype), f"datatype {field.datatype}")
            raise InputError(
                f"PointCloud2 field {axis} is {kind} x {field.count}; coordinates must be FLOAT32 or FLOAT64"
            )
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    order = ">" if msg.is_bigendian else "<"
    extents = [int(fields[a].offset) + int(_COORDINATE_TYPES[int(fields[a].datatype)][1]) for a in "xyz"]
    if height * width == 0:
        return np.zeros((0, 3))
    if point_step < max(extents) or row_step < width * point_step:
        raise InputError(
            f"PointCloud2 layout is inconsistent: point_step {point_step}, row_step {row_step}, width {width}, "
            f"fields up to byte {max(extents)}"
        )
    data = _buffer(msg.data)
    if data.size < row_step * (height - 1) + width * point_step:
        raise InputError(f"PointCloud2 data holds {data.size} bytes; {height}x{width} points need {row_step * height}")
    if data.size < row_step * height:
        data = np.concatenate([data, np.zeros(row_step * height - data.size, np.uint8)])
    rows = data[: row_step * height].reshape(height, row_step)[:, : width * point_step]
    record = np.dtype(
        {
            "names": list("xyz"),
            "formats": [order + _COORDINATE_TYPES[int(fields[a].datatype)] for a in "xyz"],
            "offsets": [int(fields[a].offset) for a in "xyz"],
            "itemsize": point_step,
        }
    )
    points = np.ascontiguousarray(rows).view(record).reshape(-1)
    return np.stack([points[a].astype(np.float64) for a in "xyz"], axis=1)


def depth_image_metres(msg: Any) -> np.ndarray:
    """A depth ``sensor_msgs/Image`` as HxW metres (NaN where the sensor gave nothing)."""
    encoding = str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise InputError(
            f"depth image encoding {encoding!r} is not handled; expected 16UC1 (millimetres) or 32FC1 (metres)"
        )
    kind, unit = DEPTH_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(kind).itemsize
    data = _buffer(msg.data)
    if height <= 0 or width <= 0 or step < width * itemsize or data.size < step * (height - 1) + width * itemsize:
        raise InputError(f"{encoding} depth image {width}x{height}: step {step} and {data.size} bytes do not fit")
    if data.size < step * height:
        data = np.concatenate([data, np.zeros(step * height - data.size, np.uint8)])
    rows = data[: step * height].reshape(height, step)[:, : width * itemsize]
    order = ">" if msg.is_bigendian else "<"
    values = np.ascontiguousarray(rows).view(order + kind).reshape(height, width).astype(np.float64) * unit
    values[~(np.isfinite(values) & (values > 0))] = np.nan
    return values


def depth_image_points(depth: np.ndarray, intrinsics: Intrinsics, max_points: int = MAX_DEPTH_POINTS) -> np.ndarray:
    """Points (the depth camera's optical frame) of a metric depth image, thinned to about ``max_points``."""
    valid = int(np.isfinite(depth).sum())
    stride = max(1, math.ceil(math.sqrt(valid / max_points))) if valid else 1
    return depth_to_points(depth, intrinsics, stride=stride).points.astype(np.float64)


def sensor_frame(msg: Any, msgtype: str, intrinsics: Intrinsics | None) -> SensorFrame:
    """Decode a sparse source's message. A depth image needs the intrinsics of the camera that
    took it: its own camera info (a registered depth image's own is the colour camera's K)."""
    if msgtype == POINT_CLOUD2:
        points = pointcloud2_points(msg)
    elif msgtype == IMAGE:
        if intrinsics is None:
            raise InputError("a depth image is projected with its own camera info, and none has arrived for it")
        points = depth_image_points(depth_image_metres(msg), intrinsics)
    else:
        raise InputError(f"{msgtype} is not a sparse depth source; use {' or '.join(SPARSE_TYPES)}")
    return SensorFrame(stamp_ns(msg.header), frame_name(msg.header.frame_id), points)


def sensor_problem(msg: Any, msgtype: str) -> str:
    """Why a sensor message can give no metres whatever the transforms and intrinsics ("" if it can):
    a depth encoding that is not metric, coordinates that are not floats, an inconsistent layout."""
    try:
        points = pointcloud2_points(msg) if msgtype == POINT_CLOUD2 else depth_image_metres(msg)
    except InputError as exc:
        return str(exc)
    if not np.isfinite(points).any():
        return "it holds no finite depth"
    return ""
