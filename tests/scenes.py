"""Scenes with exact depth, a lidar that sees them, and a tiny ONNX "model" whose output is known.

- ``render``: planar depth of a floor, a back wall and boxes through a pinhole camera.
- ``Lidar``: the scene's points in a lidar frame behind a tf chain (camera optical <- camera_link
  <- base_link -> velodyne), with range noise, outliers, NaN returns and points behind the camera.
- ``affine_onnx``: an ONNX file (built with onnx.helper) that decodes a value written into the
  image's red and green bytes and returns ``gain * value + offset``, with gain and offset read
  from two header pixels of the same image: a relative "network" whose scale and shift change
  every frame, run by ONNX Runtime through ``DepthPredictor`` like any model. With fixed gain
  and ``max_depth`` metadata it is a metric model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.preprocessing import MEAN, STD

HEIGHT, WIDTH = 112, 168  # multiples of 14: the ONNX model's fixed input is the image itself
K = np.array([[120.0, 0.0, 83.5], [0.0, 120.0, 55.5], [0.0, 0.0, 1.0]])
NEAREST = 0.5  # metres: the relative encoding holds NEAREST / depth in [0, 1]
GAIN, OFFSET = (0.2, 5.0), (-1.0, 2.0)  # ranges the header pixels' 16-bit codes map to


@dataclass
class Box:
    low: tuple[float, float, float]
    high: tuple[float, float, float]


@dataclass
class Scene:
    floor: float = 1.2  # metres below the camera (optical y is down)
    wall: float = 9.0  # metres ahead
    boxes: list[Box] = field(
        default_factory=lambda: [Box((-1.6, 0.2, 3.0), (-0.6, 1.2, 4.0)), Box((0.4, -0.4, 5.0), (1.8, 1.2, 6.5))]
    )


def render(scene: Scene, k: np.ndarray = K, height: int = HEIGHT, width: int = WIDTH, camera=(0.0, 0.0, 0.0)):
    """Planar depth (metres along z) of ``scene`` seen from ``camera`` (a translation; no rotation)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    c = np.asarray(camera, np.float64)
    depth = np.full((height, width), scene.wall - c[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = (scene.floor - c[1]) / rays[..., 1]
        depth = np.where((rays[..., 1] > 0) & (floor > 0) & (floor < depth), floor, depth)
        for box in scene.boxes:
            t1 = (np.asarray(box.low) - c) / rays
            t2 = (np.asarray(box.high) - c) / rays
            near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
            hit = (far >= near) & (near > 0) & (near < depth)
            depth = np.where(hit, near, depth)
    return depth


def encode(value: np.ndarray, gain: float | None = None, offset: float = 0.0, texture: int = 90) -> np.ndarray:
    """A BGR image holding ``value`` (in [0, 1], 16 bits in red and green) and, with ``gain``, the
    header codes of the relative model in pixels (0, 0) and (0, 1)."""
    code = np.clip(np.rint(np.asarray(value, np.float64) * 65535), 0, 65535).astype(np.uint32)
    image = np.empty((*code.shape, 3), np.uint8)
    image[..., 2], image[..., 1], image[..., 0] = code >> 8, code & 255, texture
    if gain is None:
        return image
    for column, (number, (low, high)) in enumerate([(gain, GAIN), (offset, OFFSET)]):
        header = round((number - low) / (high - low) * 65535)
        image[0, column, 2], image[0, column, 1] = header >> 8, header & 255
    return image


def decode(image: np.ndarray) -> np.ndarray:
    """What the model reads at each pixel, in [0, 1]."""
    return (image[..., 2].astype(np.float64) * 256 + image[..., 1]) / 65535


def relative_frame(depth: np.ndarray, gain: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(image, the relative output the ONNX model gives for it): ``gain * NEAREST / depth + offset``."""
    image = encode(NEAREST / depth, gain, offset)
    header = decode(image[:1, :2])[0]
    gain_q = GAIN[0] + (GAIN[1] - GAIN[0]) * header[0]
    offset_q = OFFSET[0] + (OFFSET[1] - OFFSET[0]) * header[1]
    return image, gain_q * decode(image) + offset_q


def affine_onnx(path: Path, height: int = HEIGHT, width: int = WIDTH, max_depth: float | None = None) -> Path:
    """The tiny ONNX model (see the module doc). ``max_depth``: a metric model returning
    ``max_depth * value`` metres, with ``output_kind``/``max_depth`` metadata as export.onnx writes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean, std = np.asarray(MEAN, np.float64).reshape(3), np.asarray(STD, np.float64).reshape(3)
    # The network input is (rgb / 255 - mean) / std; value = (255 * (256 * r + g)) / 65535.
    weights = np.array([256 * 255 * std[0], 255 * std[1], 0.0]) / 65535
    bias = (256 * 255 * mean[0] + 255 * mean[1]) / 65535
    inits = [
        numpy_helper.from_array(weights.reshape(1, 3, 1, 1).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([bias], np.float32), "b"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["value"])]
    if max_depth is None:
        for name, column, (low, high) in [("gain", 0, GAIN), ("offset", 1, OFFSET)]:
            inits += [
                numpy_helper.from_array(np.array([0, 0, 0, column], np.int64), f"{name}_start"),
                numpy_helper.from_array(np.array([1, 1, 1, column + 1], np.int64), f"{name}_end"),
                numpy_helper.from_array(np.array(high - low, np.float32), f"{name}_range"),
                numpy_helper.from_array(np.array(low, np.float32), f"{name}_low"),
            ]
            nodes += [
                helper.make_node("Slice", ["value", f"{name}_start", f"{name}_end"], [f"{name}_code"]),
                helper.make_node("Mul", [f"{name}_code", f"{name}_range"], [f"{name}_scaled"]),
                helper.make_node("Add", [f"{name}_scaled", f"{name}_low"], [name]),
            ]
        nodes += [
            helper.make_node("Mul", ["value", "gain"], ["gained"]),
            helper.make_node("Add", ["gained", "offset"], ["out4"]),
        ]
    else:
        inits.append(numpy_helper.from_array(np.array(max_depth, np.float32), "max_depth"))
        nodes.append(helper.make_node("Mul", ["value", "max_depth"], ["out4"]))
    nodes.append(helper.make_node("Squeeze", ["out4", "axis1"], ["depth"]))
    graph = helper.make_graph(
        nodes,
        "affine_depth",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, height, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if max_depth is not None:
        for key, value in {"output_kind": "metric", "max_depth": repr(float(max_depth))}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def quaternion_matrix(q) -> np.ndarray:
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw(angle: float):
    return (0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2))


# (parent, child, translation, quaternion xyzw): the tf chain of the test robot.
OPTICAL = (-0.5, 0.5, -0.5, 0.5)  # camera_link (x forward, z up) -> optical (z forward, y down)
CHAIN = [
    ("base_link", "camera_link", (0.25, -0.05, 0.6), yaw(0.05)),
    ("camera_link", "camera_optical", (0.0, 0.0, 0.0), OPTICAL),
    ("base_link", "velodyne", (0.0, 0.1, 0.9), yaw(0.3)),
]


def pose(translation, quaternion) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = quaternion_matrix(quaternion), translation
    return matrix


def camera_from_lidar() -> np.ndarray:
    """4x4 taking velodyne points into camera_optical (through base_link)."""
    base_camera_link = pose(*CHAIN[0][2:])
    link_optical = pose(*CHAIN[1][2:])
    base_velodyne = pose(*CHAIN[2][2:])
    return np.linalg.inv(base_camera_link @ link_optical) @ base_velodyne


@dataclass
class Lidar:
    """Points on the camera's visible surfaces, seen from the velodyne frame, with faults."""

    points: int = 3000
    noise: float = 0.01  # range noise, share of the range (1 sigma)
    outliers: float = 0.05  # share of returns at a random range along their ray
    behind: int = 200  # returns behind the camera (a 360-degree lidar)
    nan: int = 50  # invalid returns, as organised clouds carry them

    def scan(self, depth: np.ndarray, rng: np.random.Generator, k: np.ndarray = K) -> np.ndarray:
        height, width = depth.shape
        rows, cols = rng.integers(0, height, self.points), rng.integers(0, width, self.points)
        z = depth[rows, cols]
        camera = np.stack([(cols - k[0, 2]) / k[0, 0] * z, (rows - k[1, 2]) / k[1, 1] * z, z], axis=1)
        behind = rng.uniform(-5, 5, (self.behind, 3))
        behind[:, 2] = -rng.uniform(0.5, 8, self.behind)
        camera = np.concatenate([camera, behind])
        lidar_from_camera = np.linalg.inv(camera_from_lidar())
        points = camera @ lidar_from_camera[:3, :3].T + lidar_from_camera[:3, 3]
        points *= (1 + self.noise * rng.standard_normal(len(points)))[:, None]  # range noise
        wrong = rng.random(len(points)) < self.outliers
        points[wrong] *= rng.uniform(0.3, 2.5, (int(wrong.sum()), 1))
        return np.concatenate([points, np.full((self.nan, 3), np.nan)]).astype(np.float32)


def extrinsics_args(matrix: np.ndarray) -> list[str]:
    """``x y z qx qy qz qw`` of a 4x4 (as --extrinsics takes it)."""
    r = matrix[:3, :3]
    w = np.sqrt(max(0.0, 1 + np.trace(r))) / 2
    if w > 1e-6:
        q = [(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w), (r[1, 0] - r[0, 1]) / (4 * w), w]
    else:  # a half turn: no test transform is one
        raise ValueError("rotation by pi")
    return [repr(float(v)) for v in [*matrix[:3, 3], *q]]
