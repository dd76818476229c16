"""The tf tree (static and timed edges, paths through parents, one-line errors), extrinsics by hand,
and sparse sources decoded from ROS messages (PointCloud2 layouts, depth image encodings)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from runtime import InputError
from runtime.pointcloud import Intrinsics
from runtime.ros.sparse import depth_image_metres, depth_image_points, pointcloud2_points, sensor_frame
from runtime.ros.tf import NoTransformError, TfTree, TransformTimeError, parse_extrinsics, transform_matrix
from tests import scenes


def rotation(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def test_a_chain_through_base_link_is_composed_both_ways():
    tree = TfTree()
    for parent, child, translation, quaternion in scenes.CHAIN:
        tree.add("/" + parent, child, translation, quaternion)  # ROS 1's leading slash is dropped
    camera_from_lidar = tree.lookup("camera_optical", "/velodyne")
    np.testing.assert_allclose(camera_from_lidar, scenes.camera_from_lidar(), atol=1e-12)
    np.testing.assert_allclose(tree.lookup("velodyne", "camera_optical"), np.linalg.inv(camera_from_lidar), atol=1e-12)
    assert tree.path("camera_optical", "velodyne") == ["velodyne", "base_link", "camera_link", "camera_optical"]
    assert tree.is_static("camera_optical", "velodyne")
    # The optical frame's axes (REP 103): its z is camera_link's x (forward), its x is -y (right).
    optical = tree.lookup("camera_link", "camera_optical")[:3, :3]
    np.testing.assert_allclose(optical @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(optical @ [1, 0, 0], [0, -1, 0], atol=1e-12)


def test_no_path_is_one_line_naming_both_frames_and_the_transforms_found():
    tree = TfTree()
    tree.add("base_link", "camera_link", (0, 0, 0), (0, 0, 0, 1))
    tree.add("camera_link", "camera_optical", (0, 0, 0), scenes.OPTICAL)
    with pytest.raises(NoTransformError) as info:
        tree.lookup("camera_optical", "velodyne")
    message = str(info.value)
    assert "\n" not in message and "'velodyne'" in message and "'camera_optical'" in message
    assert "base_link->camera_link, camera_link->camera_optical" in message and "'velodyne' in none of them" in message
    assert isinstance(info.value, InputError)  # the commands exit 2 with it
    with pytest.raises(NoTransformError, match="the transforms found are none"):
        TfTree().lookup("a", "b")


def test_timed_edges_are_interpolated_and_refused_beyond_their_records():
    tree = TfTree(tolerance=0.1)
    second = 1_000_000_000
    tree.add("odom", "base_link", (0, 0, 0), (0, 0, 0, 1), stamp=0, static=False)
    tree.add("odom", "base_link", (2.0, 0, 0), (0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)), second, False)
    halfway = tree.lookup("odom", "base_link", second // 2)
    np.testing.assert_allclose(halfway[:3, 3], [1.0, 0, 0])
    np.testing.assert_allclose(halfway[:3, :3], rotation("z", math.pi / 4), atol=1e-12)
    assert not tree.is_static("odom", "base_link")
    tree.lookup("odom", "base_link", second + second // 20)  # within the tolerance
    with pytest.raises(TransformTimeError, match=r"no odom->base_link at 2\.000 s"):
        tree.lookup("odom", "base_link", 2 * second)


def test_tf_messages_skip_unusable_transforms():
    def item(parent, child, q):
        t = SimpleNamespace(x=1.0, y=0.0, z=0.0)
        r = SimpleNamespace(x=q[0], y=q[1], z=q[2], w=q[3])
        stamp = SimpleNamespace(sec=1, nanosec=0)
        return SimpleNamespace(
            header=SimpleNamespace(frame_id=parent, stamp=stamp),
            child_frame_id=child,
            transform=SimpleNamespace(translation=t, rotation=r),
        )

    tree = TfTree()
    message = SimpleNamespace(transforms=[item("a", "b", (0, 0, 0, 1)), item("b", "c", (0, 0, 0, 0))])
    assert tree.add_message(message, static=True) == 1
    assert tree.edges == ["a->b"]


def test_extrinsics_by_hand_read_as_static_transform_publisher_does():
    yaw, pitch, roll = 0.3, -0.2, 0.1
    matrix = parse_extrinsics([0.1, -0.2, 0.3, yaw, pitch, roll])
    np.testing.assert_allclose(
        matrix[:3, :3], rotation("z", yaw) @ rotation("y", pitch) @ rotation("x", roll), atol=1e-12
    )
    np.testing.assert_allclose(matrix[:3, 3], [0.1, -0.2, 0.3])
    q = (0.0, 0.0, math.sin(0.15), math.cos(0.15))
    np.testing.assert_allclose(parse_extrinsics("0 0 0 " + " ".join(map(str, q))), transform_matrix((0, 0, 0), q))
    for bad, match in [([1, 2, 3], "6 numbers"), ("1 2 x", "must be numbers"), ([0, 0, 0, 0, 0, 0, 0], "not all zero")]:
        with pytest.raises(InputError, match=match):
            parse_extrinsics(bad)


def cloud(points: np.ndarray, dtype: str = "<f4", step: int = 16, row_pad: int = 0, rows: int = 1, **fields):
    """A PointCloud2 with x, y, z of ``dtype`` at offsets 0, size, 2*size and ``step`` bytes a point."""
    size = np.dtype(dtype).itemsize
    per_row = len(points) // rows
    data = np.zeros((rows, per_row * step + row_pad), np.uint8)
    for r in range(rows):
        block = np.zeros((per_row, step), np.uint8)
        block[:, : 3 * size] = (
            points[r * per_row : (r + 1) * per_row].astype(dtype).view(np.uint8).reshape(-1, 3 * size)
        )
        data[r, : per_row * step] = block.reshape(-1)
    datatype = {"f4": 7, "f8": 8}[dtype[1:]]
    field_list = [SimpleNamespace(name=n, offset=i * size, datatype=datatype, count=1) for i, n in enumerate("xyz")]
    defaults = dict(
        height=rows,
        width=per_row,
        fields=field_list,
        is_bigendian=dtype[0] == ">",
        point_step=step,
        row_step=per_row * step + row_pad,
        data=data.reshape(-1),
    )
    return SimpleNamespace(**{**defaults, **fields})


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8"])
def test_pointcloud2_is_read_by_its_fields_offsets_types_and_rows(dtype):
    points = np.random.default_rng(0).normal(size=(12, 3))
    got = pointcloud2_points(cloud(points, dtype, step=32, row_pad=8, rows=3))
    np.testing.assert_allclose(got, points, rtol=1e-6 if dtype.endswith("4") else 0)
    assert pointcloud2_points(cloud(points[:0])).shape == (0, 3)


def test_pointcloud2_that_cannot_be_read_is_refused_in_one_line():
    points = np.zeros((4, 3))
    no_z = cloud(points)
    no_z.fields = no_z.fields[:2]
    integer = cloud(points)
    integer.fields[0] = SimpleNamespace(name="x", offset=0, datatype=3, count=1)
    short = cloud(points)
    short.data = short.data[:20]
    for msg, match in [
        (no_z, "no z field"),
        (integer, "x is INT16"),
        (short, "holds 20 bytes"),
        (cloud(points, point_step=8), "layout is inconsistent"),
    ]:
        with pytest.raises(InputError, match=match):
            pointcloud2_points(msg)


def depth_msg(values: np.ndarray, encoding: str, big_endian: bool = False, pad: int = 0):
    rows = (
        values.astype((">" if big_endian else "<") + values.dtype.str[1:]).view(np.uint8).reshape(values.shape[0], -1)
    )
    data = np.zeros((values.shape[0], rows.shape[1] + pad), np.uint8)
    data[:, : rows.shape[1]] = rows
    return SimpleNamespace(
        height=values.shape[0],
        width=values.shape[1],
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=data.shape[1],
        data=data.reshape(-1),
        header=SimpleNamespace(frame_id="/depth_optical", stamp=SimpleNamespace(sec=3, nanosec=5)),
    )


def test_depth_images_in_millimetres_and_metres():
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    got = depth_image_metres(depth_msg(mm, "16UC1", big_endian=True, pad=2))
    np.testing.assert_allclose(got, [[np.nan, 1.5], [65.535, 0.25]])
    metres = np.array([[np.nan, 2.0], [np.inf, -1.0]], np.float32)
    np.testing.assert_allclose(depth_image_metres(depth_msg(metres, "32FC1")), [[np.nan, 2.0], [np.nan, np.nan]])
    with pytest.raises(InputError, match="'rgb8' is not handled; expected 16UC1"):
        depth_image_metres(depth_msg(mm, "rgb8"))
    frame = sensor_frame(depth_msg(mm, "16UC1"), "sensor_msgs/msg/Image", Intrinsics(2.0, 2.0, 0.5, 0.5))
    assert frame.frame_id == "depth_optical" and frame.stamp == 3_000_000_005 and len(frame.points) == 3
    with pytest.raises(InputError, match="its own camera info, and none has arrived"):
        sensor_frame(depth_msg(mm, "16UC1"), "sensor_msgs/msg/Image", None)


def test_a_large_depth_image_is_thinned():
    depth = np.full((480, 640), 2.0)
    points = depth_image_points(depth, Intrinsics(500.0, 500.0, 319.5, 239.5), max_points=20_000)
    assert 10_000 < len(points) <= 20_000
