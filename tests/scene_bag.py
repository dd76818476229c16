"""Bags of the test scenes (tests/scenes.py) written with rosbags: encoded images, camera info,
a tf chain in /tf_static, a lidar PointCloud2 in its own frame, and optionally a depth camera."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from tests import scenes

IMAGE, INFO, CLOUD, TF = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CameraInfo",
    "sensor_msgs/msg/PointCloud2",
    "tf2_msgs/msg/TFMessage",
)
CAMERA, CAMERA_INFO, LIDAR, DEPTH, DEPTH_INFO = (
    "/cam/image_raw",
    "/cam/camera_info",
    "/lidar/points",
    "/depth/image_rect_raw",
    "/depth/camera_info",
)
START = 1_700_000_000_000_000_000
PERIOD = 100_000_000  # 10 frames/s


@dataclass
class SceneBag:
    """What a test expects of the bag written: per frame the true depth, the model's output,
    and the (gain, offset) the header pixels carry."""

    depth: list[np.ndarray] = field(default_factory=list)
    relative: list[np.ndarray] = field(default_factory=list)
    affine: list[tuple[float, float]] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)


class Messages:
    """Real rosbags message objects of one ROS version (ROS 1 or 2 type store)."""

    def __init__(self, store, ros1: bool = False) -> None:
        self.store, self.types, self.ros1 = store, store.types, ros1

    def header(self, stamp: int, frame_id: str):
        time = self.types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9)
        fields = {"stamp": time, "frame_id": frame_id}
        return self.types["std_msgs/msg/Header"](**({"seq": 0} | fields if self.ros1 else fields))

    def info(self, stamp: int, frame_id: str, matrix: np.ndarray | None = None, size: tuple[int, int] | None = None):
        """A plumb_bob camera info: the scenes' camera, or the 3x3 ``matrix`` for images of ``size`` (h, w)."""
        roi = self.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        matrix = scenes.K if matrix is None else np.asarray(matrix, np.float64)
        matrices = {"D": np.zeros(5), "K": matrix.reshape(-1), "R": np.eye(3).ravel(), "P": np.zeros(12)}
        fields = {(k if self.ros1 else k.lower()): v for k, v in matrices.items()}
        height, width = size or (scenes.HEIGHT, scenes.WIDTH)
        return self.types[INFO](
            header=self.header(stamp, frame_id),
            height=height,
            width=width,
            distortion_model="plumb_bob",
            binning_x=0,
            binning_y=0,
            roi=roi,
            **fields,
        )

    def cloud(self, stamp: int, points: np.ndarray, frame_id: str = "velodyne"):
        # x, y, z float32 and an intensity, padded to 32 bytes a point as Velodyne drivers do.
        step = 32
        data = np.zeros((len(points), step), np.uint8)
        data[:, 0:12] = points.astype("<f4").view(np.uint8).reshape(len(points), 12)
        data[:, 16:20] = np.full(len(points), 7.0, "<f4").view(np.uint8).reshape(-1, 4)
        pf = self.types["sensor_msgs/msg/PointField"]
        fields = [
            pf(name=n, offset=o, datatype=7, count=1) for n, o in (("x", 0), ("y", 4), ("z", 8), ("intensity", 16))
        ]
        return self.types[CLOUD](
            header=self.header(stamp, frame_id),
            height=1,
            width=len(points),
            fields=fields,
            is_bigendian=False,
            point_step=step,
            row_step=step * len(points),
            data=data.reshape(-1),
            is_dense=False,
        )

    def image(self, stamp: int, pixels: np.ndarray, encoding: str = "bgr8", frame_id: str = "camera_optical"):
        pixels = np.ascontiguousarray(pixels)
        return self.types[IMAGE](
            header=self.header(stamp, frame_id),
            height=pixels.shape[0],
            width=pixels.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=pixels.strides[0],
            data=pixels.view(np.uint8).reshape(-1),
        )

    def tf(self, stamp: int, chain: list | None = None):
        """A TFMessage of ``chain`` (default: the test robot's, scenes.CHAIN)."""
        items = []
        for parent, child, translation, quaternion in chain or scenes.CHAIN:
            transform = self.types["geometry_msgs/msg/Transform"](
                translation=self.types["geometry_msgs/msg/Vector3"](
                    x=translation[0], y=translation[1], z=translation[2]
                ),
                rotation=self.types["geometry_msgs/msg/Quaternion"](
                    x=quaternion[0], y=quaternion[1], z=quaternion[2], w=quaternion[3]
                ),
            )
            items.append(
                self.types["geometry_msgs/msg/TransformStamped"](
                    header=self.header(stamp, parent), child_frame_id=child, transform=transform
                )
            )
        return self.types[TF](transforms=items)


def _affines(frames: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A scale and shift that change every frame, as a relative network's do."""
    return [(float(rng.uniform(0.6, 4.0)), float(rng.uniform(-0.8, 1.5))) for _ in range(frames)]


def write_scene_bag(
    path: Path,
    kind: str = "mcap",
    frames: int = 6,
    seed: int = 0,
    lidar: scenes.Lidar | None = None,
    lidar_delay: list[int] | None = None,
    depth_camera: bool = False,
    tf: bool = True,
    metric_max_depth: float | None = None,
    scene: scenes.Scene | None = None,
    scans: dict[int, np.ndarray] | None = None,
    depth_encoding: str = "16UC1",
    speed: float = 0.05,
    image_encoding: str = "bgr8",
) -> SceneBag:
    """Write the bag; ``lidar_delay[i]`` (ns) moves frame i's lidar stamp and bag time (None: no lidar
    message for it); ``scans[i]`` replaces frame i's scan. ``metric_max_depth``: images encode metres
    for the metric test model. The camera moves ``speed`` metres forward a frame. ``image_encoding``
    labels the images (another than bgr8: frames no decoder takes)."""
    rng = np.random.default_rng(seed)
    lidar = lidar or scenes.Lidar()
    lidar_delay = lidar_delay or [3_000_000] * frames
    ros1 = kind == "rosbag1"
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    if ros1 and TF not in store.types:  # ROS 1's tf2_msgs/TFMessage: the same definition, not in the Noetic store
        store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", TF))
    if ros1:
        writer = Writer1(path)
    else:
        writer = Writer2(
            path, version=8, storage_plugin=StoragePlugin.MCAP if kind == "mcap" else StoragePlugin.SQLITE3
        )
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr

    messages = Messages(store, ros1)
    info, cloud, tf_message = messages.info, messages.cloud, messages.tf

    expected = SceneBag()
    scene = scene or scenes.Scene()
    with writer:
        topics = [(CAMERA, IMAGE), (CAMERA_INFO, INFO), (LIDAR, CLOUD)] + ([("/tf_static", TF)] if tf else [])
        topics += [(DEPTH, IMAGE), (DEPTH_INFO, INFO)] if depth_camera else []
        conns = {topic: writer.add_connection(topic, kind_, typestore=store) for topic, kind_ in topics}
        if tf:
            writer.write(conns["/tf_static"], START - 1, serialize(tf_message(START), TF))
        writer.write(conns[CAMERA_INFO], START, serialize(info(START, "camera_optical"), INFO))
        if depth_camera:
            writer.write(conns[DEPTH_INFO], START, serialize(info(START, "camera_optical"), INFO))
        for i, (gain, offset) in enumerate(_affines(frames, rng)):
            stamp = START + (i + 1) * PERIOD
            depth = scenes.render(scene, camera=(0.0, 0.0, speed * i))
            if metric_max_depth is None:
                image, relative = scenes.relative_frame(depth, gain, offset)
            else:
                image, relative = scenes.encode(depth / metric_max_depth), None
            writer.write(conns[CAMERA], stamp, serialize(messages.image(stamp, image, image_encoding), IMAGE))
            expected.depth.append(depth)
            expected.relative.append(relative)
            expected.affine.append((gain, offset))
            expected.stamps.append(stamp)
            if lidar_delay[i] is not None:
                scan = lidar.scan(depth, rng) if i not in (scans or {}) else scans[i]
                when = stamp + lidar_delay[i]
                writer.write(conns[LIDAR], when, serialize(cloud(when, scan), CLOUD))
            if depth_camera:
                if depth_encoding == "32FC1":
                    values = depth.astype("<f4")
                    values[:8] = np.nan  # no return: unknown
                else:
                    values = np.clip(np.rint(depth * 1000), 0, 65535).astype("<u2")
                    values[:8] = 0
                dmsg = messages.image(stamp + 2_000_000, values, depth_encoding)
                writer.write(conns[DEPTH], stamp + 2_000_000, serialize(dmsg, IMAGE))
    return expected
