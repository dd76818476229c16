"""``python -m runtime.ros2``: a ROS 2 node that publishes depth (and points) for a camera's images.

    python -m runtime.ros2 --model model.onnx --ros-args -r image:=/camera/image_raw \\
        -r camera_info:=/camera/camera_info

Subscribes to ``image`` (``sensor_msgs/Image``) and ``camera_info``; publishes, with each
source image's header, ``depth/relative_inverse`` (32FC1, unitless) and, given a metric
conversion (``metric_scale``, ``metric_shift``), ``depth/image`` (32FC1 metres, REP 118) and
``depth/points`` (``PointCloud2`` in the camera's optical frame). When inference is slower
than the camera, only the newest frame waits: older ones are dropped, never queued.

The node is a thin shell: decoding, message building, point clouds and the frame-dropping
policy live in :mod:`runtime.ros.messages` and :mod:`runtime.pointcloud`, shared with the bag tool
and tested without ROS. ``rclpy`` comes with a ROS 2 install, not from pip.
"""

from __future__ import annotations

import argparse
import array
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cli import add_predictor_args, check_metric_options, network_size, size_options
from ..commands import command
from ..errors import InputError, MissingDependencyError
from ..metric import ScaleShift
from ..pointcloud import MAX_POINTS, Intrinsics
from .messages import (
    IMAGE,
    POINT_CLOUD2,
    POINT_FIELD,
    Conversion,
    LatestOnly,
    camera_size_note,
    depth_messages,
    intrinsics_from_camera_info,
    message_to_image,
)

TOPICS = {"relative": "depth/relative_inverse", "metric": "depth/image", "points": "depth/points"}
RCLPY_MISSING = (
    "rclpy is not importable: it comes with a ROS 2 install, not from pip. Run "
    "`source /opt/ros/<distro>/setup.bash` in this shell first, and use the Python that ROS 2 uses"
)


@dataclass
class NodeSettings:
    """The node's parameters, from the command line or ``--ros-args -p name:=value``."""

    model: str = ""
    backend: str = "auto"
    device: str = "auto"
    precision: str = ""
    input_size: int = 518
    fixed_size: str = ""  # "HxW": every frame resized straight to it (--size HxW); "": keep the aspect
    metric_scale: float = 0.0  # 0: no metric depth and no points
    metric_shift: float = 0.0
    point_stride: int = 1
    max_range: float = 0.0  # 0: no cut
    point_colors: bool = True
    max_points: int = MAX_POINTS  # a larger stride beyond this many points per cloud

    def check(self) -> NodeSettings:
        if not self.model:
            raise InputError("no model: give --model PATH or --ros-args -p model:=PATH")
        if self.input_size < 14 or self.point_stride < 1 or self.max_points < 1:
            raise InputError(
                f"input_size must be >= 14, point_stride and max_points >= 1, got {self.input_size}, "
                f"{self.point_stride}, {self.max_points}"
            )
        # The bag tool's rules; 0 turns the scale and the range cut off (NaN is not 0: refused).
        check_metric_options(self.metric_scale or None, self.metric_shift, self.max_range or None, str)
        self.size_options()
        return self

    def size_options(self) -> dict[str, Any]:
        """``DepthPredictor`` keyword arguments for ``input_size`` and ``fixed_size``."""
        if not self.fixed_size:
            return size_options(self.input_size)
        try:
            fixed = network_size(self.fixed_size)
        except argparse.ArgumentTypeError as exc:
            raise InputError(f"fixed_size: {exc}") from None
        if not isinstance(fixed, tuple):
            raise InputError(f"fixed_size must be HxW (for example 518x686), got {self.fixed_size!r}")
        return size_options(fixed)

    def conversion(self) -> Conversion:
        metric = ScaleShift(self.metric_scale, self.metric_shift, float("nan"), 0) if self.metric_scale else None
        return Conversion(metric, self.point_stride, self.max_range or None, self.point_colors, self.max_points)


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate this program's options from ROS's (``--ros-args ... [--]``, possibly several times)."""
    ours: list[str] = []
    ros: list[str] = []
    inside = False
    for arg in argv:
        if arg == "--ros-args":
            inside = True
            ros.append(arg)
        elif inside and arg == "--":
            inside = False
        elif inside:
            ros.append(arg)
        else:
            ours.append(arg)
    return ours, ros


def parse_args(argv: list[str]) -> tuple[NodeSettings, list[str]]:
    ours, ros = split_ros_args(argv)
    defaults = NodeSettings()
    parser = argparse.ArgumentParser(
        prog="python -m runtime.ros2",
        description="ROS 2 node: depth (and points) for the images on 'image'. Remap topics with "
        "--ros-args -r image:=/camera/image_raw -r camera_info:=/camera/camera_info; every option is "
        "also a parameter (-p model:=...). Needs a sourced ROS 2 install (rclpy).",
    )
    add_predictor_args(parser, "model file (.onnx, .xml, .engine, .pth, ...)", default=defaults.model)
    parser.set_defaults(backend=defaults.backend, device=defaults.device, precision=defaults.precision)
    parser.set_defaults(size=defaults.input_size)
    parser.add_argument(
        "--metric-scale",
        type=float,
        default=defaults.metric_scale,
        help="metric disparity (1/m) = scale * relative + shift; > 0 publishes depth/image and depth/points",
    )
    parser.add_argument("--metric-shift", type=float, default=defaults.metric_shift, help="see --metric-scale")
    parser.add_argument("--point-stride", type=int, default=defaults.point_stride, help="every Nth pixel for points")
    parser.add_argument("--max-range", type=float, default=defaults.max_range, help="drop points beyond (m); 0: none")
    parser.add_argument("--no-point-colors", action="store_true", help="points without the rgb field")
    parser.add_argument(
        "--max-points", type=int, default=defaults.max_points, help="most points per cloud; larger frames thinned"
    )
    args = parser.parse_args(ours)
    try:  # ROS parameters given with -p are checked by NodeSettings.check once declared
        check_metric_options(args.metric_scale or None, args.metric_shift, args.max_range or None)
    except InputError as exc:
        parser.error(str(exc))
    fixed = isinstance(args.size, tuple)
    settings = NodeSettings(
        args.model,
        args.backend,
        args.device,
        args.precision,
        min(args.size) if fixed else args.size,
        f"{args.size[0]}x{args.size[1]}" if fixed else "",
        args.metric_scale,
        args.metric_shift,
        args.point_stride,
        args.max_range,
        not args.no_point_colors,
        args.max_points,
    )
    return settings, ros


def _blob(data: np.ndarray) -> array.array:
    # rclpy stores uint8[] fields as array.array('B'); handing one over skips a per-element check.
    return array.array("B", data.tobytes())


def serve(latest: LatestOnly, handle: Callable[[Any], None], log: Any, running: Callable[[], bool]) -> None:
    """The depth worker: ``handle`` the newest frame until ``running()`` turns false. A frame that
    fails (undecodable, a camera info the lens model refuses, a backend error) is logged with the
    ROS logger's ``warning``/``error`` and skipped: one bad message never stops the node."""
    while running():
        msg = latest.take(timeout=0.5)
        if msg is None:
            continue
        try:
            handle(msg)
        except InputError as exc:
            log.warning(f"frame skipped: {exc}", throttle_duration_sec=5.0)
        except Exception as exc:  # anything else: the thread must outlive it, or the node serves nothing
            log.error(f"frame skipped: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)


def camera_info_receiver(slot: list[Intrinsics | None], log: Any) -> Callable[[Any], None]:
    """The ``camera_info`` callback: the newest usable intrinsics in ``slot[0]``, ``None`` (no points,
    with a warning) after one that cannot be used."""

    def receive(msg: Any) -> None:
        try:
            slot[0] = intrinsics_from_camera_info(msg)
        except ValueError as exc:  # InputError, or numbers that are not numbers
            log.warning(f"camera info unusable, no points: {exc}", throttle_duration_sec=10.0)
            slot[0] = None

    return receive


def run_node(settings: NodeSettings, ros_args: list[str]) -> int:
    """Run the node until Ctrl-C or ROS shutdown."""
    try:
        import rclpy
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
    except ImportError as exc:
        raise MissingDependencyError(RCLPY_MISSING) from exc
    from ..predictor import DepthPredictor

    rclpy.init(args=["runtime.ros2", *ros_args])
    node = rclpy.create_node("depth_anything_v2")
    latest: LatestOnly = LatestOnly()
    worker = predictor = None
    try:
        for name, default in vars(settings).items():
            setattr(settings, name, node.declare_parameter(name, default).value)
        settings.check()
        log = node.get_logger()
        predictor = DepthPredictor(
            settings.model,
            backend=settings.backend,
            device=settings.device,
            precision=settings.precision or None,
            **settings.size_options(),
        )
        log.info(f"{predictor!r}")
        types = {IMAGE: Image, POINT_CLOUD2: PointCloud2, POINT_FIELD: PointField}
        conversion = settings.conversion()
        intrinsics: list[Intrinsics | None] = [None]

        def make(msgtype: str, **fields: Any) -> Any:
            return types[msgtype](**fields)

        # Depth 1: a queue of camera frames behind a slow model is latency, not data.
        newest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        node.create_subscription(Image, "image", latest.put, newest)
        node.create_subscription(CameraInfo, "camera_info", camera_info_receiver(intrinsics, log), 1)
        wanted = ["relative"] + (["metric", "points"] if conversion.metric is not None else [])
        kinds = {"relative": Image, "metric": Image, "points": PointCloud2}
        publishers = {key: node.create_publisher(kinds[key], TOPICS[key], 1) for key in wanted}

        done, since = 0, time.monotonic()

        def handle(msg: Any) -> None:
            nonlocal done, since
            image = message_to_image(msg, IMAGE)
            relative = predictor.predict(image)
            camera = intrinsics[0]
            note = camera_size_note(camera, *relative.shape) if camera is not None else None
            if note and conversion.metric is not None:
                log.warning(note, throttle_duration_sec=60.0)
            for key, message in depth_messages(make, _blob, msg.header, relative, image, camera, conversion).items():
                publishers[key].publish(message)
            done += 1
            if time.monotonic() - since >= 10.0:
                rate = done / (time.monotonic() - since)
                log.info(f"{rate:.1f} frames/s; {latest.dropped} of {latest.received} frames dropped as stale")
                done, since = 0, time.monotonic()

        worker = threading.Thread(target=serve, args=(latest, handle, log, rclpy.ok), name="depth-worker", daemon=True)
        worker.start()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        latest.close()
        node.destroy_node()
        if rclpy.ok():  # Ctrl-C may have shut the context down already
            rclpy.shutdown()
        if worker is not None:
            worker.join(timeout=5.0)
        if predictor is not None:
            predictor.close()
    return 0


@command("python -m runtime.ros2")
def main(argv: list[str] | None = None) -> int:
    settings, ros_args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_node(settings, ros_args)
