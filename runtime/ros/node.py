"""``python -m runtime.ros2``: a ROS 2 node that publishes depth (and points) for a camera's images.

    python -m runtime.ros2 --model model.onnx --ros-args -r image:=/camera/image_raw \\
        -r camera_info:=/camera/camera_info

Subscribes to ``image`` (``sensor_msgs/Image``) and ``camera_info``; publishes, with each
source image's header, ``depth/relative_inverse`` (32FC1, unitless; not for a model of depth)
and, from a metric model, a metric conversion (``metric_scale``, ``metric_shift``) or a fit per
frame to ``sparse_depth`` (``sparse_depth_type:=points`` for a PointCloud2, ``image`` for a
depth image; transforms from tf or ``extrinsics``), ``depth/image`` (32FC1 metres, REP 118)
and ``depth/points`` (``PointCloud2`` in the camera's optical frame). A model of depth up to
scale (DA3-Small/Base, DA3Mono) needs ``sparse_depth``: its metres are a scale-only fit in depth
per frame, as the bag tool's ``--align-to`` gives them, and it has no relative topic. When
inference is slower than the camera, only the newest frame waits: older ones are dropped, never
queued. The options the bag tool also has are checked by its rules (``runtime.ros.settings``).

The node is a thin shell: decoding, message building, point clouds and the frame-dropping
policy live in :mod:`runtime.ros.messages` and :mod:`runtime.pointcloud`, shared with the bag tool
and tested without ROS. ``rclpy`` comes with a ROS 2 install, not from pip.

Several cameras: ``--image-topic`` repeated (parameter ``image_topics``, separated by spaces);
each camera's camera info at ``<ns>/camera_info`` and its depth at ``<ns>/depth/...``, and each
cycle runs the newest frame of every camera as one batched call (:mod:`runtime.ros.cameras`).
"""

from __future__ import annotations

import argparse
import array
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from commands.errors import InputError, MissingDependencyError
from commands.runner import command

from ..align import AlignSettings
from ..cli import add_predictor_args, build_predictor, check_metric_options, network_size, size_options
from ..metric import ScaleShift
from ..pointcloud import MAX_POINTS
from .align import FramePipeline, LiveAligner, buffer_transforms, fixed_transform
from .cameras import CameraSlots, node_cameras, split_topics
from .messages import (
    IMAGE,
    POINT_CLOUD2,
    POINT_FIELD,
    Conversion,
    LatestOnly,
    MessageFactory,
)
from .node_core import CAMERA_INFOS, NodeCore, camera_info_receiver  # noqa: F401 - the callback lives with the core
from .settings import (
    DEFAULTS,
    SHARED_OPTIONS,
    RobotAlign,
    align_settings,
    check_model_rules,
    check_parsed,
    check_shared,
)
from .tf import parse_extrinsics

RCLPY_MISSING = (
    "rclpy is not importable: it comes with a ROS 2 install, not from pip. Run "
    "`source /opt/ros/<distro>/setup.bash` in this shell first, and use the Python that ROS 2 uses"
)


def parameter_name(name: str) -> str:
    """A shared setting's name as the node's parameters spell it (``runtime.ros.settings``)."""
    return {"depth_range": "min_sensor_depth/max_sensor_depth", "align_to": "sparse_depth_type"}.get(name, name)


def check_node_output(kind: Any, settings: NodeSettings) -> None:
    """What a model of ``kind`` may publish with these parameters, by the bag tool's rules
    (``runtime.ros.settings.check_model_rules``): a model of depth up to scale gets metres only
    from a scale-only fit per frame to ``sparse_depth`` (``sparse_depth_type``), as the bag tool's
    only from ``--align-to``; ``InputError`` naming the parameter otherwise."""
    aligned = bool(settings.sparse_depth_type)
    check_model_rules(kind, settings.conversion(), settings.stabilize, aligned, parameter_name)


def load_predictor(settings: NodeSettings) -> Any:
    """The node's predictor (the shared builder) with its output checked against the parameters
    (:func:`check_node_output`); on a refusal it is closed before the ``InputError`` goes on."""
    predictor = build_predictor(settings.predictor_args(), settings.model)
    try:
        check_node_output(predictor.output, settings)
    except InputError:
        predictor.close()
        raise
    return predictor


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
    output_kind: str = ""  # "": what the model file says (else relative); "relative" or "metric"
    max_depth: float = 0.0  # a metric model file without metadata: its bound in metres
    sparse_depth_type: str = ""  # "": no alignment; "points" (PointCloud2) or "image" (depth Image)
    extrinsics: str = ""  # the sensor's pose in the camera frame (6 or 7 numbers); "": from tf
    max_time_offset: float = DEFAULTS.max_time_offset  # seconds between an image and its sensor message
    held_out: float = DEFAULTS.held_out  # share of each frame's sensor points that scores the fit
    hold: float = DEFAULTS.hold  # seconds a good fit is held for frames without one
    min_sensor_depth: float = DEFAULTS.min_depth  # sensor depths used, metres (the bag tool's --depth-range)
    max_sensor_depth: float = DEFAULTS.max_depth
    min_inliers: int = DEFAULTS.min_inliers  # fewest inliers a frame's fit may have
    stabilize: bool = False  # relative depth on the scale of the frames before it
    image_topics: str = ""  # several cameras: their image topics, separated by spaces; "": one, on 'image'
    confidence: bool = False  # also publish the model's depth confidence (depth/confidence; DA3-Small/Base)

    def check_alignment(self) -> None:
        """The output kind, alignment and stabilising parameters (``InputError`` naming the bad one)."""
        if self.output_kind not in ("", "relative", "metric"):
            raise InputError(f"output_kind must be '', 'relative' or 'metric', got {self.output_kind!r}")
        if self.sparse_depth_type not in ("", "points", "image"):
            raise InputError(f"sparse_depth_type must be '', 'points' or 'image', got {self.sparse_depth_type!r}")
        if not (math.isfinite(self.max_depth) and self.max_depth >= 0):
            raise InputError(f"max_depth must be a finite number >= 0, got {self.max_depth}")
        self.align_settings()
        if self.extrinsics and not self.sparse_depth_type:
            raise InputError("extrinsics describe the sparse_depth sensor: set sparse_depth_type too")
        if self.extrinsics:
            parse_extrinsics(self.extrinsics)

    def align_settings(self) -> AlignSettings:
        """The alignment settings (the bag tool's rules and defaults: ``runtime.ros.settings``)."""
        values = RobotAlign(
            self.max_time_offset,
            self.held_out,
            self.hold,
            self.min_sensor_depth,
            self.max_sensor_depth,
            self.min_inliers,
        )
        return align_settings(values, parameter_name)

    def predictor_args(self) -> argparse.Namespace:
        """The shared predictor options (``runtime.cli.build_predictor``) these parameters give."""
        size = network_size(self.fixed_size) if self.fixed_size else self.input_size
        return argparse.Namespace(
            backend=self.backend,
            device=self.device,
            precision=self.precision or None,
            output_kind=self.output_kind or None,
            max_depth=self.max_depth or None,
            size=size,
        )

    def predictor_options(self) -> dict[str, Any]:
        """``DepthPredictor`` keyword arguments for ``output_kind`` and ``max_depth``."""
        return {"output_kind": self.output_kind or None, "max_depth": self.max_depth or None}

    def pipeline(self, kind: Any, transforms: Any) -> FramePipeline:
        """The frame pipeline for a model of ``kind``; ``transforms`` serve ``sparse_depth``."""
        from ..align import Stabilizer

        aligner = None
        if self.sparse_depth_type:
            settings = self.align_settings()
            msgtype = POINT_CLOUD2 if self.sparse_depth_type == "points" else IMAGE
            aligner = LiveAligner(kind, msgtype, transforms, settings, self.max_time_offset)
        stabilizer = Stabilizer() if self.stabilize else None
        return FramePipeline(kind, self.conversion(), stabilizer, aligner)

    def check(self) -> NodeSettings:
        if not self.model:
            raise InputError("no model: give --model PATH or --ros-args -p model:=PATH")
        if self.input_size < 14:
            raise InputError(f"input_size must be >= 14, got {self.input_size}")
        check_shared("point_stride", self.point_stride, parameter_name)
        check_shared("max_points", self.max_points, parameter_name)
        # The bag tool's rules; 0 turns the scale and the range cut off (NaN is not 0: refused).
        check_metric_options(self.metric_scale or None, self.metric_shift, self.max_range or None, str)
        self.check_alignment()
        self.size_options()
        node_cameras(split_topics(self.image_topics))
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
        conversion = Conversion(metric, self.point_stride, self.max_range or None, self.point_colors, self.max_points)
        conversion.confidence = bool(self.confidence)
        return conversion


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
    shared = SHARED_OPTIONS  # the bag tool's rules for the options it shares
    parser.add_argument(
        "--point-stride", type=shared["point_stride"], default=defaults.point_stride, help="every Nth pixel for points"
    )
    parser.add_argument("--max-range", type=float, default=defaults.max_range, help="drop points beyond (m); 0: none")
    parser.add_argument("--no-point-colors", action="store_true", help="points without the rgb field")
    parser.add_argument(
        "--max-points",
        type=shared["max_points"],
        default=defaults.max_points,
        help="most points per cloud; larger frames thinned",
    )
    parser.add_argument(
        "--sparse-depth-type",
        choices=("points", "image"),
        default=None,
        help="fit metric depth per frame to 'sparse_depth': a PointCloud2 (points) or a depth image (image); "
        "a model of depth up to scale (DA3-Small/Base, DA3Mono) needs it (the bag tool's --align-to)",
    )
    parser.add_argument("--extrinsics", default="", help="the sensor's pose in the camera frame instead of tf")
    parser.add_argument(
        "--max-time-offset", type=shared["max_time_offset"], default=defaults.max_time_offset, help="seconds"
    )
    parser.add_argument(
        "--held-out", type=shared["held_out"], default=defaults.held_out, help="share of points that scores a fit"
    )
    parser.add_argument("--hold", type=shared["hold"], default=defaults.hold, help="seconds a good fit is held")
    parser.add_argument(
        "--depth-range",
        nargs=2,
        type=shared["depth_range"],
        default=(defaults.min_sensor_depth, defaults.max_sensor_depth),
        metavar=("MIN", "MAX"),
        help="sensor depths used, metres (parameters min_sensor_depth, max_sensor_depth)",
    )
    parser.add_argument(
        "--min-inliers",
        type=shared["min_inliers"],
        default=defaults.min_inliers,
        help="fewest inliers a frame's fit may have",
    )
    parser.add_argument("--stabilize", action="store_true", help="relative depth on one scale across frames")
    parser.add_argument(
        "--image-topic",
        action="append",
        default=[],
        help="a camera's image topic, repeated for several cameras (parameter image_topics, separated by spaces): "
        "each camera's camera info at <ns>/camera_info and depth at <ns>/depth/...; a cycle takes the newest frame "
        "of every camera, one batched model call",
    )
    parser.add_argument("--confidence", action="store_true", help="also publish depth/confidence (32FC1)")
    args = parser.parse_args(ours)
    try:  # ROS parameters given with -p are checked by NodeSettings.check once declared
        check_metric_options(args.metric_scale or None, args.metric_shift, args.max_range or None)
    except InputError as exc:
        parser.error(str(exc))
    check_parsed(args, parser.error)
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
        output_kind=args.output_kind or "",
        max_depth=args.max_depth or 0.0,
        sparse_depth_type=args.sparse_depth_type or "",
        extrinsics=args.extrinsics,
        max_time_offset=args.max_time_offset,
        held_out=args.held_out,
        hold=args.hold,
        min_sensor_depth=args.depth_range[0],
        max_sensor_depth=args.depth_range[1],
        min_inliers=args.min_inliers,
        stabilize=args.stabilize,
        image_topics=" ".join(args.image_topic),
        confidence=args.confidence,
    )
    return settings, ros


def _blob(data: np.ndarray) -> array.array:
    # rclpy stores uint8[] fields as array.array('B'); handing one over skips a per-element check.
    return array.array("B", data.tobytes())


def serve(
    latest: LatestOnly | CameraSlots, handle: Callable[[Any], None], log: Any, running: Callable[[], bool]
) -> None:
    """The depth worker: ``handle`` the newest frame (or cycle of the cameras' newest frames) until
    ``running()`` turns false. A frame that fails (undecodable, a camera info the lens model refuses,
    a backend error) is logged with the ROS logger's ``warning``/``error`` and skipped: one bad
    message never stops the node."""
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


def run_node(settings: NodeSettings, ros_args: list[str]) -> int:
    """Run the node until Ctrl-C or ROS shutdown: the rclpy shell around :class:`NodeCore`."""
    try:
        import rclpy
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
    except ImportError as exc:
        raise MissingDependencyError(RCLPY_MISSING) from exc

    rclpy.init(args=["runtime.ros2", *ros_args])
    node = rclpy.create_node("depth_anything_v2")
    core: NodeCore | None = None
    worker = predictor = None
    try:
        for name, default in vars(settings).items():
            setattr(settings, name, node.declare_parameter(name, default).value)
        settings.check()
        log = node.get_logger()
        predictor = load_predictor(settings)
        log.info(f"{predictor!r}: {predictor.output.describe()}")
        types = {IMAGE: Image, POINT_CLOUD2: PointCloud2, POINT_FIELD: PointField}
        transforms = None
        if settings.extrinsics:
            transforms = fixed_transform(parse_extrinsics(settings.extrinsics))
        elif settings.sparse_depth_type:
            import tf2_ros
            from rclpy.time import Time

            tf_buffer = tf2_ros.Buffer()
            tf_listener = tf2_ros.TransformListener(tf_buffer, node)  # noqa: F841 - it feeds the buffer while alive
            transforms = buffer_transforms(
                tf_buffer.lookup_transform,
                lambda ns: Time(nanoseconds=ns),
                (tf2_ros.LookupException, tf2_ros.ConnectivityException),
                (tf2_ros.TransformException,),
            )
        kinds = {"relative": Image, "metric": Image, "points": PointCloud2, "confidence": Image}
        core = NodeCore(
            settings,
            predictor,
            transforms,
            MessageFactory(lambda msgtype, **fields: types[msgtype](**fields), _blob),
            log,
            lambda key, topic: node.create_publisher(kinds[key], topic, 1),
        )
        # Depth 1: a queue of camera frames behind a slow model is latency, not data.
        newest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        for index, camera in enumerate(core.cameras):
            node.create_subscription(Image, camera.image, core.image(index), newest)
            node.create_subscription(CameraInfo, camera.camera_info, core.camera_info(index), 1)
        if core.sensor_msgtype is not None:
            sensor_type = PointCloud2 if core.sensor_msgtype == POINT_CLOUD2 else Image
            node.create_subscription(sensor_type, "sparse_depth", core.sensor, 5)
            node.create_subscription(CameraInfo, "sparse_depth/camera_info", core.sensor_info, 1)
        log.info(f"cameras: {', '.join(camera.image for camera in core.cameras)}")
        worker = threading.Thread(
            target=serve, args=(core.latest, core.handle, log, rclpy.ok), name="depth-worker", daemon=True
        )
        worker.start()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        if core is not None:
            core.close()
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
