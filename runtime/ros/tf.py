"""A small tf tree: transforms from ``/tf_static`` and ``/tf`` (``tf2_msgs/TFMessage``), chained
through parents such as ``base_link``, or given by hand as static_transform_publisher takes them.

A transform (parent, child) is the child frame's pose in the parent: it maps points in the child
frame into the parent (REP 103 axes; REP 105 names such as ``base_link``, ``odom``, ``map``).
``TfTree.lookup(target, source, stamp)`` composes the edges along the path between the two
frames, in either direction; edges from ``/tf`` are interpolated at the stamp (linear in
translation, slerp in rotation) and refused past the ends of their records. No ROS library is
imported: messages are read by attribute, as everywhere in ``runtime.ros``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from commands.errors import InputError

TF_TYPES = ("tf2_msgs/msg/TFMessage", "tf/msg/tfMessage")


class NoTransformError(InputError):
    """No path between two frames: a configuration problem, said in one line."""


class TransformTimeError(LookupError):
    """A path exists, but a ``/tf`` edge on it has no record near the stamp asked for."""


def frame_name(frame_id: str) -> str:
    """tf2 frame names carry no leading slash (ROS 1's tf did)."""
    return str(frame_id).lstrip("/")


def stamp_ns(header: Any) -> int:
    stamp = header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _unit_quaternion(q: Sequence[float]) -> np.ndarray:
    q = np.asarray(q, np.float64)
    norm = float(np.linalg.norm(q))
    if q.shape != (4,) or not np.isfinite(q).all() or norm < 1e-6:
        raise InputError(f"a rotation quaternion (x, y, z, w) must be 4 finite numbers, not all zero; got {q.tolist()}")
    return q / norm


def transform_matrix(translation: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """4x4 from a translation and an (x, y, z, w) quaternion (normalised here)."""
    t = np.asarray(translation, np.float64)
    if t.shape != (3,) or not np.isfinite(t).all():
        raise InputError(f"a translation must be 3 finite numbers, got {t.tolist()}")
    x, y, z, w = _unit_quaternion(quaternion)
    matrix = np.eye(4)
    matrix[:3, :3] = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    matrix[:3, 3] = t
    return matrix


def transform_msg_matrix(transform: Any) -> np.ndarray:
    """4x4 of a ``geometry_msgs/Transform`` (its ``translation`` and ``rotation``)."""
    t, r = transform.translation, transform.rotation
    return transform_matrix((t.x, t.y, t.z), (r.x, r.y, r.z, r.w))


def parse_extrinsics(values: Sequence[float] | str) -> np.ndarray:
    """The sensor's pose in the camera's optical frame, as ``static_transform_publisher`` takes it:
    ``x y z yaw pitch roll`` (radians) or ``x y z qx qy qz qw``. Maps sensor points into the camera."""
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.replace(",", " ").split()]
        except ValueError:
            raise InputError(
                f"extrinsics must be numbers: 'x y z yaw pitch roll' or 'x y z qx qy qz qw', got {values!r}"
            ) from None
    values = [float(v) for v in values]
    if len(values) == 6:
        yaw, pitch, roll = values[3:]
        cy, sy, cp, sp, cr, sr = (f(a / 2) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
        quaternion = [
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
            cr * cp * cy + sr * sp * sy,
        ]
        return transform_matrix(values[:3], quaternion)
    if len(values) == 7:
        return transform_matrix(values[:3], values[3:])
    raise InputError(f"extrinsics take 6 numbers (x y z yaw pitch roll) or 7 (x y z qx qy qz qw), got {len(values)}")


def _slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0:  # the shorter way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - w) * theta) * q0 + math.sin(w * theta) * q1) / math.sin(theta)


class _Track:
    """One ``/tf`` edge over time."""

    def __init__(self) -> None:
        self._records: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._sorted = True

    def add(self, stamp: int, translation: np.ndarray, quaternion: np.ndarray) -> None:
        if self._records and stamp < self._records[-1][0]:
            self._sorted = False
        self._records.append((stamp, translation, quaternion))

    def at(self, stamp: int, tolerance: int) -> np.ndarray:
        if not self._sorted:
            self._records.sort(key=lambda r: r[0])
            self._sorted = True
        stamps = [r[0] for r in self._records]
        i = int(np.searchsorted(stamps, stamp))
        if i == 0 or i == len(stamps):
            nearest = self._records[0 if i == 0 else -1]
            if abs(nearest[0] - stamp) > tolerance:
                raise TransformTimeError(f"{abs(nearest[0] - stamp) / 1e6:.0f} ms from the nearest record")
            return transform_matrix(nearest[1], nearest[2])
        (t0, p0, q0), (t1, p1, q1) = self._records[i - 1], self._records[i]
        w = (stamp - t0) / (t1 - t0) if t1 > t0 else 0.0
        return transform_matrix(p0 + w * (p1 - p0), _slerp(q0, q1, w))


class TfTree:
    """Transforms collected from tf messages (or added by hand), looked up between any two frames.

    ``tolerance`` (seconds): how far a ``/tf`` edge may be used past its first or last record.
    """

    def __init__(self, tolerance: float = 0.1) -> None:
        self.tolerance = int(tolerance * 1e9)
        self._static: dict[tuple[str, str], np.ndarray] = {}
        self._dynamic: dict[tuple[str, str], _Track] = {}
        self._neighbours: dict[str, set[str]] = {}

    def add(
        self,
        parent: str,
        child: str,
        translation: Sequence[float],
        quaternion: Sequence[float],
        stamp: int = 0,
        static: bool = True,
    ) -> None:
        parent, child = frame_name(parent), frame_name(child)
        if parent == child:
            return
        if static:
            self._static[(parent, child)] = transform_matrix(translation, quaternion)
        else:
            track = self._dynamic.setdefault((parent, child), _Track())
            track.add(stamp, np.asarray(translation, np.float64), _unit_quaternion(quaternion))
        self._neighbours.setdefault(parent, set()).add(child)
        self._neighbours.setdefault(child, set()).add(parent)

    def add_message(self, msg: Any, static: bool) -> int:
        """Add every transform of a ``TFMessage``; returns how many were usable (bad ones are skipped)."""
        added = 0
        for item in msg.transforms:
            t, r = item.transform.translation, item.transform.rotation
            try:
                self.add(
                    item.header.frame_id,
                    item.child_frame_id,
                    (t.x, t.y, t.z),
                    (r.x, r.y, r.z, r.w),
                    stamp_ns(item.header),
                    static,
                )
            except InputError:
                continue
            added += 1
        return added

    @property
    def edges(self) -> list[str]:
        return sorted({f"{p}->{c}" for p, c in [*self._static, *self._dynamic]})

    def path(self, target: str, source: str) -> list[str]:
        """The frames from ``source`` to ``target``, or ``NoTransformError`` naming what the tree holds."""
        target, source = frame_name(target), frame_name(source)
        previous: dict[str, str | None] = {source: None}
        queue = deque([source])
        while queue and target not in previous:
            frame = queue.popleft()
            for nxt in sorted(self._neighbours.get(frame, ())):
                if nxt not in previous:
                    previous[nxt] = frame
                    queue.append(nxt)
        if target not in previous:
            edges = self.edges
            shown = ", ".join(edges[:12]) + (f", ... ({len(edges)} in all)" if len(edges) > 12 else "")
            missing = [f"'{f}'" for f in (source, target) if f not in self._neighbours]
            absent = f" ({' and '.join(missing)} in none of them)" if missing else ""
            raise NoTransformError(
                f"no transform between '{source}' and '{target}': the transforms found are "
                f"{shown or 'none'}{absent}; record /tf_static, or give --extrinsics"
            )
        frames = [target]
        while frames[-1] != source:
            frames.append(previous[frames[-1]])  # type: ignore[arg-type]
        return frames[::-1]

    def _edge(self, parent: str, child: str, stamp: int) -> np.ndarray:
        if (parent, child) in self._static:
            return self._static[(parent, child)]
        try:
            return self._dynamic[(parent, child)].at(stamp, self.tolerance)
        except TransformTimeError as exc:
            raise TransformTimeError(f"/tf has no {parent}->{child} at {stamp / 1e9:.3f} s: {exc}") from None

    def lookup(self, target: str, source: str, stamp: int = 0) -> np.ndarray:
        """4x4 mapping points in ``source`` into ``target`` at ``stamp`` (ns; static edges ignore it)."""
        frames = self.path(target, source)
        matrix = np.eye(4)
        for here, nxt in zip(frames[:-1], frames[1:]):
            if (nxt, here) in self._static or (nxt, here) in self._dynamic:  # up to a parent
                step = self._edge(nxt, here, stamp)
            else:  # down to a child
                step = np.linalg.inv(self._edge(here, nxt, stamp))
            matrix = step @ matrix
        return matrix

    def is_static(self, target: str, source: str) -> bool:
        """Whether every edge between the frames is static (the lookup then never depends on time)."""
        frames = self.path(target, source)
        return all((a, b) in self._static or (b, a) in self._static for a, b in zip(frames[:-1], frames[1:]))
