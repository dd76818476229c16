"""The ROS 2 node's core, built and driven without rclpy: its cameras and their pipelines, the
sparse sensor's aligners, the newest-frame slots, and what each callback does. The rclpy shell
(``runtime.ros.node.run_node``) only declares parameters, makes the predictor with the shared
builder, subscribes the callbacks below, hands over publishers and spins; tests drive this
class with real message objects and a real predictor.

    core = NodeCore(settings, predictor, transforms, factory, log, publisher)
    core.image(0)(msg); core.camera_info(0)(info); core.sensor(cloud)   # the subscriptions
    core.step(timeout=0.5)                                              # the worker's loop body
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from typing import Any, Callable

from commands.errors import InputError

from .cameras import CAMERA_INFOS, CameraSlots, node_cameras, run_cycle, split_topics  # noqa: F401 - CAMERA_INFOS: the node's
from .messages import MessageFactory, intrinsics_from_camera_info
from .settings import check_confidence
from .sparse import sensor_problem
from .stamps import ByStamp
from .tf import stamp_ns

STATUS_EVERY = 10.0  # seconds between the log's rate lines


def camera_info_receiver(infos: ByStamp, log: Any) -> Callable[[Any], None]:
    """The ``camera_info`` callback: each message's intrinsics into ``infos`` (a frame takes the
    one with its own stamp, else the newest: ``runtime.ros.stamps``); ``None`` (no points, with a
    warning) for one that cannot be used."""

    def receive(msg: Any) -> None:
        try:
            intrinsics = intrinsics_from_camera_info(msg)
        except ValueError as exc:  # InputError, or numbers that are not numbers
            log.warning(f"camera info unusable, no points: {exc}", throttle_duration_sec=10.0)
            intrinsics = None
        header = getattr(msg, "header", None)
        infos.add(None if header is None else stamp_ns(header), intrinsics)

    return receive


class NodeCore:
    """What the node does, without rclpy (see the module doc).

    ``transforms`` serves the sparse sensor (tf2 or extrinsics; ``None`` without one); ``factory``
    (a ``runtime.ros.messages.MessageFactory``) builds the messages; ``log`` has the ROS logger's
    ``info``/``warning``; ``publisher(key, topic)`` returns an object with ``publish(message)`` for
    each output a camera publishes.
    """

    def __init__(
        self,
        settings: Any,
        predictor: Any,
        transforms: Any,
        factory: MessageFactory,
        log: Any,
        publisher: Callable[[str, str], Any],
    ) -> None:
        self.settings, self.predictor, self.factory, self.log = settings, predictor, factory, log
        self.cameras = node_cameras(split_topics(settings.image_topics))
        check_confidence(getattr(predictor, "extra_outputs", ()), getattr(settings, "confidence", False), "confidence")
        for camera in self.cameras:  # each its own stabiliser and fit state
            camera.pipeline = settings.pipeline(predictor.output, transforms)
            # a metres-per-focal model: the focal length of the image the network saw
            camera.pipeline.network_size = getattr(predictor, "network_size", None)
            if camera.pipeline.aligner is not None:
                camera.pipeline.aligner.warn = log.warning
            camera.publishers = {key: publisher(key, camera.outputs[key]) for key in camera.pipeline.outputs}
        self.aligners = [c.pipeline.aligner for c in self.cameras if c.pipeline.aligner is not None]
        self.latest = CameraSlots(len(self.cameras))
        self._infos = [camera_info_receiver(c.infos, log) for c in self.cameras]
        self.published = 0
        self._sensor_usable = self._sensor_said = False
        self._done, self._since = 0, time.monotonic()

    @property
    def outputs(self) -> list[str]:
        return self.cameras[0].pipeline.outputs

    @property
    def sensor_msgtype(self) -> str | None:
        """The sparse sensor's message type (``None``: the node subscribes to none)."""
        return self.aligners[0].msgtype if self.aligners else None

    def image(self, index: int) -> Callable[[Any], Any]:
        """Camera ``index``'s image callback: the newest frame waits in its slot."""
        return functools.partial(self.latest.put, index)

    def camera_info(self, index: int) -> Callable[[Any], None]:
        return self._infos[index]

    def sensor(self, msg: Any) -> None:
        """The sparse sensor's callback: one sensor feeds every camera's fit. Until one message is
        usable, each is checked for what can never give metres (a depth encoding that is not
        metric, coordinates that are not floats, a broken layout), said once in the log."""
        if not self._sensor_usable and self.aligners:
            problem = sensor_problem(msg, self.aligners[0].msgtype)
            self._sensor_usable = not problem
            if problem and not self._sensor_said:
                self._sensor_said = True
                self.log.error(f"sparse_depth can never give metres as sent: {problem}")
        for aligner in self.aligners:
            aligner.add_sensor(msg)

    def sensor_info(self, msg: Any) -> None:
        try:
            info = intrinsics_from_camera_info(msg)
        except (InputError, ValueError) as exc:
            self.log.warning(f"sparse_depth camera info unusable: {exc}", throttle_duration_sec=10.0)
            info = None
        header = getattr(msg, "header", None)
        for aligner in self.aligners:  # a sensor message takes the one with its stamp
            aligner.set_sensor_info(info, None if header is None else stamp_ns(header))

    def handle(self, cycle: list[tuple[int, Any]]) -> int:
        """One cycle of the cameras' newest frames: depth, each camera's messages, the rate line."""
        done = run_cycle(
            self.predictor,
            self.cameras,
            cycle,
            self.factory,
            lambda text: self.log.warning(text, throttle_duration_sec=5.0),
        )
        self.published += done
        self._done += done
        if time.monotonic() - self._since >= STATUS_EVERY:
            self.log.info(self.status())
            self._done, self._since = 0, time.monotonic()
        return done

    def step(self, timeout: float | None = 0.5) -> int:
        """Take the cameras' newest frames (waiting up to ``timeout``) and handle them."""
        cycle = self.latest.take(timeout=timeout)
        return 0 if cycle is None else self.handle(cycle)

    def status(self) -> str:
        rate = self._done / max(time.monotonic() - self._since, 1e-9)
        line = f"{rate:.1f} frames/s; {self.latest.dropped} of {self.latest.received} frames dropped as stale"
        if self.aligners:
            status = sum((aligner.log.statuses for aligner in self.aligners), Counter())
            line += f"; metric depth: {status['fit']} fitted, {status['held'] + status['gated']} held, "
            line += f"{status['none']} without"
            if self.predictor.output.is_metric:
                line += f", {status['model']} with the model's own metres (the others scale-corrected)"
        return line

    def close(self) -> None:
        self.latest.close()
