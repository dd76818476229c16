"""Per-frame alignment to a sparse sensor, shared by the bag tool and the ROS 2 node.

Sensor input is behind one interface, :class:`SensorAligner`: ``align(header, prediction,
intrinsics)`` for a frame, the same call from the frame pipeline in both tools, whether the
sensor comes from a bag's index (``runtime.ros.bag_align.BagAligner.camera``) or a live
subscription (:class:`LiveAligner`). A frame is matched to the sensor message nearest in
time within ``max_time_offset``; the message's points go through the transform between the
sensor's frame and the camera's (the tf tree, or extrinsics given by hand), are projected into
the image and fitted (``runtime.align``). What could not be used is counted by reason in an
``AlignmentLog``, which also keeps the per-frame records the bag tool writes as JSON.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from commands.errors import InputError

from ..align import AlignSettings, FrameAligner, FrameResult, SparseSamples, Stabilizer, sample_points
from ..align.frame import DROP_REASONS
from ..metric import OutputKind, metres_from_focal, network_focal
from ..pointcloud import Intrinsics
from .messages import (
    Conversion,
    MessageFactory,
    depth_message,
    depth_messages,
    metric_depth,
    model_metres,
    output_messages,
    sky_as_far,
)
from .settings import DEFAULTS, check_model_rules, published_outputs
from .sparse import sensor_frame
from .stamps import ByStamp, nearest
from .tf import NoTransformError, TfTree, TransformTimeError, frame_name, stamp_ns, transform_msg_matrix

DEFAULT_MAX_TIME_OFFSET = DEFAULTS.max_time_offset  # seconds between an image and its sensor message
MAX_SENSOR_MESSAGES = 100  # the node's sensor buffer, whatever the stamps say (2 s of a 50 Hz sensor)
SENSOR_INFOS = 32  # the sensor's own camera infos kept by stamp

# camera frame, sensor frame, sensor stamp (ns) -> 4x4 taking sensor points into the camera frame
# (typing's Callable: collections.abc's cannot be subscripted at run time on Python 3.8)
Transforms = Callable[[str, str, int], np.ndarray]


def tree_transforms(tree: TfTree) -> Transforms:
    return lambda camera, sensor, stamp: tree.lookup(camera, sensor, stamp)


def fixed_transform(matrix: np.ndarray) -> Transforms:
    """Extrinsics given by hand: the same sensor-to-camera transform whatever the frames are called."""
    return lambda camera, sensor, stamp: matrix


def frame_samples(
    msg: Any,
    msgtype: str,
    camera_frame: str,
    intrinsics: Intrinsics,
    size: tuple[int, int],
    transforms: Transforms,
    aligner: FrameAligner,
    sensor_intrinsics: Intrinsics | None = None,
) -> tuple[SparseSamples | None, str]:
    """The samples a sensor message gives one image (decoded, moved into the camera frame,
    projected), or None and why not: no transform path or none at that time, an unusable message."""
    fit = aligner.settings.fit
    try:
        sensor = sensor_frame(msg, msgtype, sensor_intrinsics)  # its own camera info only
        matrix = transforms(frame_name(camera_frame), sensor.frame_id, sensor.stamp)
        points = sensor.points @ matrix[:3, :3].T + matrix[:3, 3]
        return sample_points(points, intrinsics, size[0], size[1], fit.min_depth, fit.max_depth), ""
    except (NoTransformError, TransformTimeError) as exc:
        return None, f"no transform: {exc}"
    except InputError as exc:
        return None, f"sensor message unusable: {exc}"


def _category(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


class AlignmentLog:
    """Counts and per-frame records of one run's alignment."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.statuses: Counter = Counter()
        self.reasons: Counter = Counter()
        self.dropped: Counter = Counter()
        self.seconds = 0.0

    def add(self, result: FrameResult, seconds: float, **extra: Any) -> None:
        record = {**result.record, **extra}
        self.records.append(record)
        self.statuses[result.status] += 1
        if "reason" in record:
            self.reasons[_category(record["reason"])] += 1
        for key in DROP_REASONS:
            self.dropped[key] += record.get("points", {}).get(key, 0)
        self.seconds += seconds

    def held_out(self) -> dict[str, float | None]:
        """Medians over the frames of the held-out AbsRel, delta1 and RMSE."""
        scores = [r["held_out"] for r in self.records if r.get("held_out", {}).get("abs_rel") is not None]
        return {
            key: (float(np.median([s[key] for s in scores])) if scores else None)
            for key in ("abs_rel", "delta1", "rmse")
        }

    def summary(self) -> dict[str, Any]:
        frames = len(self.records)
        return {
            "frames": frames,
            "status": dict(self.statuses),
            "reasons": dict(self.reasons),
            "points_dropped": {k: v for k, v in self.dropped.items() if v},
            "held_out_median": self.held_out(),
            "ms_per_frame": round(1e3 * self.seconds / frames, 3) if frames else None,
        }

    def lines(self, topic: str) -> list[str]:
        """The command summary's lines."""
        s = self.summary()
        status = s["status"]
        lines = [
            f"  aligned to {topic}: {status.get('fit', 0)} frames fitted, {status.get('gated', 0)} jumps held back, "
            f"{status.get('held', 0)} on a held fit, {status.get('none', 0)} without metric depth"
            + (f", {status['model']} with the model's own metres" if status.get("model") else "")
            + (f" ({s['ms_per_frame']:.1f} ms a frame)" if s["ms_per_frame"] is not None else "")
        ]
        if s["reasons"]:
            lines.append("    frames without a fit: " + ", ".join(f"{n} {r}" for r, n in sorted(s["reasons"].items())))
        if s["points_dropped"]:
            named = {
                "non_finite": "not finite",
                "behind": "behind the camera",
                "outside": "outside the image",
                "out_of_range": "outside the depth range",
                "occluded": "hidden behind nearer points",
            }
            lines.append(
                "    sensor points left out: " + ", ".join(f"{n} {named[k]}" for k, n in s["points_dropped"].items())
            )
        scores = s["held_out_median"]
        if scores["abs_rel"] is not None:
            lines.append(
                f"    held-out sensor points (median over frames): AbsRel {scores['abs_rel']:.4f}, "
                f"delta1 {scores['delta1']:.3f}, RMSE {scores['rmse']:.3f} m"
            )
        return lines


@runtime_checkable
class SensorAligner(Protocol):
    """Sensor input for one camera's frames, as the frame pipeline sees it in both tools: the
    bag tool's (``BagAligner.camera(topic)``, the sensor index of a bag) and the node's
    (:class:`LiveAligner`, a live subscription). ``align`` fits a frame's prediction to the sensor
    message matched to the frame's ``header`` (its stamp and optical frame), projected with the
    frame's ``intrinsics`` (``None``: no camera info, no fit); ``log`` counts what it did."""

    log: AlignmentLog

    def align(self, header: Any, prediction: np.ndarray, intrinsics: Intrinsics | None) -> FrameResult: ...


class LiveAligner:
    """The node's alignment: sensor messages arrive on one thread, frames are aligned on another.

    Sensor messages are kept (undecoded, sorted by stamp whatever order they arrive in) for
    ``keep`` seconds behind the newest one and at most ``MAX_SENSOR_MESSAGES`` of them; a frame
    takes the one nearest its stamp within ``max_time_offset`` and decodes it then. A stamp more
    than ``keep`` behind the newest (a clock that jumped back: a looping bag, a restarted driver)
    or ahead of it (a far-future stamp) empties the buffer and starts again from it, said once
    through ``warn``: no stamp can stop the pruning.
    """

    def __init__(
        self,
        kind: OutputKind,
        msgtype: str,
        transforms: Transforms,
        settings: AlignSettings | None = None,
        max_time_offset: float = DEFAULT_MAX_TIME_OFFSET,
        keep: float = 2.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if not max_time_offset >= 0:
            raise InputError(f"max_time_offset must be >= 0 seconds, got {max_time_offset}")
        self.aligner = FrameAligner(kind, settings)
        self.msgtype, self.transforms = msgtype, transforms
        self.max_offset = int(max_time_offset * 1e9)
        self.keep = int(keep * 1e9)
        self.sensor_infos: ByStamp[Intrinsics] = ByStamp(SENSOR_INFOS)  # the sensor's own camera infos
        self.log = AlignmentLog()
        self.warn = warn or (lambda text: None)
        self.resets = 0  # times the sensor's clock jumped and the buffer started again
        self._stamps: list[int] = []  # sorted
        self._messages: list[Any] = []  # in the order of _stamps
        self._lock = threading.Lock()

    def add_sensor(self, msg: Any) -> None:
        stamp = stamp_ns(msg.header)
        with self._lock:
            stamps = self._stamps
            if stamps and not stamps[-1] - self.keep <= stamp <= stamps[-1] + self.keep:
                jump = (stamp - stamps[-1]) / 1e9
                if not self.resets:
                    self.warn(
                        f"sensor stamps jumped {jump:+.1f} s (a clock that went back, a restarted driver or a "
                        "far-future stamp): its buffer starts again (said once)"
                    )
                self.resets += 1
                stamps.clear(), self._messages.clear()
            i = bisect.bisect_right(stamps, stamp)
            stamps.insert(i, stamp)
            self._messages.insert(i, msg)
            stale = bisect.bisect_left(stamps, stamps[-1] - self.keep)
            stale = max(stale, len(stamps) - MAX_SENSOR_MESSAGES)
            if stale > 0:
                del stamps[:stale], self._messages[:stale]

    @property
    def buffered(self) -> int:
        return len(self._stamps)

    def set_sensor_info(self, intrinsics: Intrinsics | None, stamp: int | None = None) -> None:
        """The sensor's camera info (``None``: unusable); a sensor message takes the one with its stamp."""
        with self._lock:
            self.sensor_infos.add(stamp, intrinsics)

    @property
    def sensor_intrinsics(self) -> Intrinsics | None:
        """The newest of the sensor's camera infos."""
        return self.sensor_infos.newest

    def align(self, header: Any, prediction: np.ndarray, intrinsics: Intrinsics | None) -> FrameResult:
        start = time.perf_counter()
        stamp = stamp_ns(header)
        with self._lock:
            index, offset = nearest(self._stamps, stamp, self.max_offset)
            msg = None if index is None else self._messages[index]
            info = None if msg is None else self.sensor_infos.at(self._stamps[index])
        samples, missing = None, ""
        if intrinsics is None:
            missing = "no camera info"
        elif msg is None:
            missing = self._no_message(offset)
        else:
            samples, missing = frame_samples(
                msg,
                self.msgtype,
                header.frame_id,
                intrinsics,
                prediction.shape,
                self.transforms,
                self.aligner,
                info,
            )
        result = self.aligner.align(prediction, samples, stamp, missing)
        self.log.add(result, time.perf_counter() - start)
        return result

    def _no_message(self, offset: int | None) -> str:
        limit = self.max_offset / 1e6
        if offset is None:
            return f"no sensor message within {limit:.0f} ms (none received)"
        return f"no sensor message within {limit:.0f} ms (nearest {offset / 1e6:.0f} ms)"


def buffer_transforms(
    lookup_transform: Callable[[str, str, Any], Any],
    to_time: Callable[[int], Any],
    no_path: tuple[type[BaseException], ...],
    no_time: tuple[type[BaseException], ...],
) -> Transforms:
    """Transforms from a tf2 buffer (the node's listener on /tf and /tf_static): ``lookup_transform``
    is ``tf2_ros.Buffer.lookup_transform``, its lookup and connectivity errors ``no_path``, its
    extrapolation errors ``no_time``."""

    def lookup(camera: str, sensor: str, stamp: int) -> np.ndarray:
        try:
            stamped = lookup_transform(camera, sensor, to_time(stamp))
        except no_path as exc:
            raise NoTransformError(f"no transform between '{sensor}' and '{camera}': {exc}") from None
        except no_time as exc:
            raise TransformTimeError(str(exc)) from None
        return transform_msg_matrix(stamped.transform)

    return lookup


class FramePipeline:
    """What happens to a frame after inference, in the bag tool and the node alike: stabilise,
    then align (a fit per frame) or convert (constants, or a metric model's own metres), then
    the messages.

    ``kind`` is the model's output; ``conversion`` its constants (relative models only);
    ``stabilizer`` and ``aligner`` (a :class:`SensorAligner`: the node's :class:`LiveAligner`, the
    bag tool's ``BagAligner.camera(topic)``) are optional. A metric model's output is never
    published as relative depth; a relative model gets metres only from constants or a fit.
    """

    def __init__(
        self,
        kind: OutputKind,
        conversion: Conversion,
        stabilizer: Stabilizer | None = None,
        aligner: SensorAligner | None = None,
    ) -> None:
        self.aligned = aligner is not None
        self.conversion = check_model_rules(kind, conversion, stabilizer is not None, self.aligned, str)
        self.kind, self.stabilizer, self.aligner = kind, stabilizer, aligner
        # A metres-per-focal model's network input size for an image (``DepthPredictor.network_size``):
        # its focal length is that of the image the network saw.
        self.network_size: Callable[[np.ndarray], tuple[int, int]] | None = None

    @property
    def outputs(self) -> list[str]:
        """The message keys this pipeline may publish: ``relative``, ``metric``, ``points``."""
        return published_outputs(
            self.kind, self.conversion.metric is not None, self.aligned, self.conversion.confidence
        )

    def process(
        self,
        factory: MessageFactory,
        header: Any,
        image: np.ndarray,
        prediction: np.ndarray,
        intrinsics: Intrinsics | None,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        """The frame's messages, and what they publish as depth (metres when there are any; the
        relative depth otherwise; ``None`` for an aligned frame without metres). With an aligner,
        the (stabilised) prediction is fitted by ``aligner.align(header, prediction, intrinsics)``.

        A prediction with a sky mask (``runtime.prediction``) publishes its sky as ``+inf`` metres
        (REP 117), left out of fits and point clouds; with ``conversion.confidence`` its depth
        confidence goes out beside the frame's depth (``confidence``)."""
        messages, published = self._process(factory, header, image, prediction, intrinsics)
        confidence = getattr(prediction, "confidence", None)
        if self.conversion.confidence and confidence is not None and ("metric" in messages or "relative" in messages):
            messages["confidence"] = depth_message(factory, header, confidence)
        return messages, published

    def _process(
        self,
        factory: MessageFactory,
        header: Any,
        image: np.ndarray,
        prediction: np.ndarray,
        intrinsics: Intrinsics | None,
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        sky = getattr(prediction, "sky", None)
        if self.stabilizer is not None:
            prediction = self.stabilizer(image, prediction)
        if self.kind.needs_focal:  # metres only with this frame's focal length: none without camera info
            if intrinsics is None or self.network_size is None:
                return {}, None
            k = intrinsics.for_image(*image.shape[:2])
            focal = network_focal(k.fx, k.fy, image.shape[:2], self.network_size(image))
            metres = sky_as_far(model_metres(metres_from_focal(prediction, focal)), sky)
            return output_messages(factory, header, image, intrinsics, self.conversion, None, metres), metres
        if self.aligner is None:
            messages = depth_messages(factory, header, prediction, image, intrinsics, self.conversion)
            if self.kind.is_metric:
                return messages, prediction
            metric = self.conversion.metric
            return messages, prediction if metric is None else metric_depth(prediction, metric)
        fitted = prediction if sky is None else np.where(sky, np.float32(np.nan), prediction)  # no fit on sky
        metres = sky_as_far(self.aligner.align(header, fitted, intrinsics).depth, sky)
        relative = None if self.kind.is_depth else prediction
        return output_messages(factory, header, image, intrinsics, self.conversion, relative, metres), metres

    def messages(
        self,
        factory: MessageFactory,
        header: Any,
        image: np.ndarray,
        prediction: np.ndarray,
        intrinsics: Intrinsics | None,
    ) -> dict[str, Any]:
        return self.process(factory, header, image, prediction, intrinsics)[0]
