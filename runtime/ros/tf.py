"""A tf tree as tf2 keeps one: transforms from ``/tf_static`` and ``/tf`` (``tf2_msgs/TFMessage``),
chained through parents such as ``base_link``, or given by hand as static_transform_publisher takes them.

A transform (parent, child) is the child frame's pose in the parent: it maps points in the child
frame into the parent (REP 103 axes; REP 105 names such as ``base_link``, ``odom``, ``map``).
Each frame has one parent, the newest given; static edges hold for all time; a ``/tf`` edge keeps
a sorted history of ``cache`` seconds (tf2's 10 s) behind its newest record, looked up by
bisection, interpolated at the stamp (linear in translation, slerp in rotation) and refused past
the ends of what is kept. ``TfTree.lookup(target, source, stamp)`` composes the edges through the
frames' nearest common parent. Invalid transforms are counted where they were found and named by
any refusal they cause. No ROS library is imported: messages are read by attribute, as
everywhere in ``runtime.ros``.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from commands.errors import InputError

TF_TYPES = ("tf2_msgs/msg/TFMessage", "tf/msg/tfMessage")
DEFAULT_CACHE = 10.0  # seconds of /tf history kept per edge, as tf2's buffer keeps by default


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
    """One ``/tf`` edge over time: a sorted history of at most ``cache`` ns behind its newest
    record (tf2's ``TimeCache``, 10 s by default), looked up by bisection."""

    def __init__(self, cache: int) -> None:
        self.cache = cache
        self.stamps: list[int] = []
        self.values: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def newest(self) -> int | None:
        return self.stamps[-1] if self.stamps else None

    def add(self, stamp: int, translation: np.ndarray, quaternion: np.ndarray) -> bool:
        """Insert a record in stamp order; ``False`` (not kept) when it is older than the cache."""
        stamps = self.stamps
        if stamps and stamp < stamps[-1] - self.cache:
            return False  # tf2: "TF_OLD_DATA", ignored
        i = bisect.bisect_right(stamps, stamp)
        if i and stamps[i - 1] == stamp:  # the same stamp again: the newer record replaces it
            self.values[i - 1] = (translation, quaternion)
            return True
        stamps.insert(i, stamp)
        self.values.insert(i, (translation, quaternion))
        stale = bisect.bisect_left(stamps, stamps[-1] - self.cache)
        if stale >= 64 or (stale and stale * 4 >= len(stamps)):  # in batches: a list's front is costly to cut
            del stamps[:stale], self.values[:stale]
        return True

    def at(self, stamp: int, tolerance: int) -> np.ndarray:
        stamps = self.stamps
        if not stamps:
            raise TransformTimeError("no record kept")
        i = bisect.bisect_left(stamps, stamp)
        if i < len(stamps) and stamps[i] == stamp:
            return transform_matrix(*self.values[i])
        if i == 0 or i == len(stamps):
            j = 0 if i == 0 else -1
            if abs(stamps[j] - stamp) > tolerance:
                raise TransformTimeError(f"{abs(stamps[j] - stamp) / 1e6:.0f} ms from the nearest record kept")
            return transform_matrix(*self.values[j])
        t0, t1 = stamps[i - 1], stamps[i]
        (p0, q0), (p1, q1) = self.values[i - 1], self.values[i]
        w = (stamp - t0) / (t1 - t0)
        return transform_matrix(p0 + w * (p1 - p0), _slerp(q0, q1, w))


class TfTree:
    """Transforms collected from tf messages (or added by hand), looked up between any two frames.

    As tf2 keeps them: one parent per child frame, the newest (a frame given another parent, or
    moved between ``/tf_static`` and ``/tf``, drops its old edge; said once in :attr:`notes`);
    a static edge holds for all time; a ``/tf`` edge keeps a sorted history of ``cache`` seconds
    behind its newest record. :meth:`keep_history` limits the histories kept to the edges a
    lookup needs. Invalid transforms (zero quaternion, numbers that are not finite) are counted
    where they were found (:attr:`invalid`) and named by any refusal they cause.

    ``tolerance`` (seconds): how far a ``/tf`` edge may be used past its first or last record.
    """

    def __init__(self, tolerance: float = 0.1, cache: float = DEFAULT_CACHE) -> None:
        self.tolerance = int(tolerance * 1e9)
        self.cache = int(cache * 1e9)
        self._parent: dict[str, str] = {}  # child -> its parent
        self._static: dict[str, np.ndarray] = {}  # child -> its pose in the parent
        self._dynamic: dict[str, _Track] = {}  # child -> its history
        self._keep: set[str] | None = None  # children whose history is kept (None: all)
        self.invalid: Counter = Counter()  # (where, "parent->child", why) -> count
        self.notes: list[str] = []  # re-parented frames, once each
        self._moved: set[str] = set()
        self.newest = -(2**63)  # the newest /tf stamp kept (ns)

    def add(
        self,
        parent: str,
        child: str,
        translation: Sequence[float],
        quaternion: Sequence[float],
        stamp: int = 0,
        static: bool = True,
        where: str = "",
    ) -> bool:
        """Add one transform; ``InputError`` for an invalid one (counted under ``where`` when given).
        Returns whether a record was kept (``False``: an edge whose history is not kept, or too old)."""
        parent, child = frame_name(parent), frame_name(child)
        try:
            t = np.asarray(translation, np.float64)
            if t.shape != (3,) or not np.isfinite(t).all():
                raise InputError(f"translation not finite: {t.tolist()}")
            q = _unit_quaternion(quaternion)
        except InputError as exc:
            why = "zero quaternion" if "not all zero" in str(exc) and np.isfinite(quaternion).all() else "not finite"
            self.invalid[(where or "by hand", f"{parent}->{child}", why)] += 1
            raise
        if parent == child:
            return False
        old = self._parent.get(child)
        kind = "static" if static else "dynamic"
        was = None if old is None else ("static" if child in self._static else "dynamic")
        if old is not None and (old != parent or was != kind):
            if child not in self._moved:
                self._moved.add(child)
                self.notes.append(
                    f"frame '{child}' re-parented: {old}->{child} ({was}) replaced by the newer {parent}->{child} "
                    f"({kind}{', ' + where if where else ''}); tf keeps one parent per frame, the newest"
                )
            self._static.pop(child, None)
            self._dynamic.pop(child, None)
        self._parent[child] = parent
        if static:
            self._static[child] = transform_matrix(t, q)
            return True
        track = self._dynamic.setdefault(child, _Track(self.cache))
        if self._keep is not None and child not in self._keep:
            return False
        kept = track.add(int(stamp), t, q)
        if kept:
            self.newest = max(self.newest, int(stamp))
        return kept

    def add_message(self, msg: Any, static: bool, where: str = "") -> int:
        """Add every transform of a ``TFMessage``; returns how many were usable (bad ones are counted)."""
        where = where or ("/tf_static" if static else "/tf")
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
                    where,
                )
            except InputError:
                continue
            added += 1
        return added

    def feed(self, msg: Any) -> int:
        """A ``/tf`` message read after the structure is known (the bag tool's main pass): records of
        the edges whose history is kept, with the parent the tree holds, go into their histories;
        the rest (superseded parents, other edges, invalid ones: counted when first read) are skipped."""
        kept = 0
        for item in msg.transforms:
            parent, child = frame_name(item.header.frame_id), frame_name(item.child_frame_id)
            if self._parent.get(child) != parent or child not in self._dynamic:
                continue
            if self._keep is not None and child not in self._keep:
                continue
            t, r = item.transform.translation, item.transform.rotation
            try:
                translation = np.array([t.x, t.y, t.z], np.float64)
                if not np.isfinite(translation).all():
                    continue
                quaternion = _unit_quaternion((r.x, r.y, r.z, r.w))
            except InputError:
                continue
            stamp = stamp_ns(item.header)
            if self._dynamic[child].add(stamp, translation, quaternion):
                self.newest = max(self.newest, stamp)
                kept += 1
        return kept

    def newest_on(self, children: set[str]) -> int | None:
        """The oldest of the newest records of these edges (None when one has none yet)."""
        newest = [self._dynamic[c].newest for c in children if c in self._dynamic]
        return None if not newest or None in newest else min(newest)  # type: ignore[type-var]

    def keep_history(self, children: set[str] | None) -> None:
        """Keep ``/tf`` history only for these child frames' edges (``None``: all); others are emptied."""
        self._keep = None if children is None else set(children)
        for child, track in self._dynamic.items():
            if self._keep is not None and child not in self._keep:
                track.stamps.clear(), track.values.clear()

    def clear_history(self) -> None:
        """Empty every ``/tf`` history (the structure and static edges stay)."""
        for track in self._dynamic.values():
            track.stamps.clear(), track.values.clear()
        self.newest = -(2**63)

    @property
    def edges(self) -> list[str]:
        return sorted(f"{parent}->{child}" for child, parent in self._parent.items())

    def invalid_lines(self, frames: Sequence[str] = ()) -> list[str]:
        """The invalid transforms found (those touching ``frames`` when given), one phrase each."""
        wanted = {frame_name(f) for f in frames}
        return [
            f"{count} invalid {edge} on {where} ({why})"
            for (where, edge, why), count in sorted(self.invalid.items())
            if not wanted or wanted & set(edge.split("->"))
        ]

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent and len(chain) <= len(self._parent):
            chain.append(self._parent[chain[-1]])
        return chain

    def path(self, target: str, source: str) -> list[str]:
        """The frames from ``source`` to ``target`` through their nearest common parent, or
        ``NoTransformError`` naming what the tree holds and any invalid transform that touched them."""
        target, source = frame_name(target), frame_name(source)
        up, down = self._chain(source), self._chain(target)
        common = next((frame for frame in up if frame in set(down)), None)
        if common is None:
            edges = self.edges
            shown = ", ".join(edges[:12]) + (f", ... ({len(edges)} in all)" if len(edges) > 12 else "")
            known = set(self._parent) | set(self._parent.values())
            missing = [f"'{f}'" for f in (source, target) if f not in known]
            absent = f" ({' and '.join(missing)} in none of them)" if missing else ""
            bad = self.invalid_lines((source, target))
            invalid = f"; left out as invalid: {', '.join(bad)}" if bad else ""
            raise NoTransformError(
                f"no transform between '{source}' and '{target}': the transforms found are "
                f"{shown or 'none'}{absent}{invalid}; record /tf_static, or give --extrinsics"
            )
        return up[: up.index(common) + 1] + down[: down.index(common)][::-1]

    def dynamic_on_path(self, target: str, source: str) -> set[str]:
        """The child frames of the ``/tf`` edges between two frames (empty: the lookup is static)."""
        frames = self.path(target, source)
        edges = {a if self._parent.get(a) == b else b for a, b in zip(frames[:-1], frames[1:])}
        return {child for child in edges if child in self._dynamic}

    def _edge(self, child: str, stamp: int) -> np.ndarray:
        if child in self._static:
            return self._static[child]
        try:
            return self._dynamic[child].at(stamp, self.tolerance)
        except TransformTimeError as exc:
            edge = f"{self._parent[child]}->{child}"
            raise TransformTimeError(f"/tf has no {edge} at {stamp / 1e9:.3f} s: {exc}") from None

    def lookup(self, target: str, source: str, stamp: int = 0) -> np.ndarray:
        """4x4 mapping points in ``source`` into ``target`` at ``stamp`` (ns; static edges ignore it)."""
        frames = self.path(target, source)
        matrix = np.eye(4)
        for here, nxt in zip(frames[:-1], frames[1:]):
            if self._parent.get(here) == nxt:  # up to a parent
                step = self._edge(here, stamp)
            else:  # down to a child
                step = np.linalg.inv(self._edge(nxt, stamp))
            matrix = step @ matrix
        return matrix

    def is_static(self, target: str, source: str) -> bool:
        """Whether every edge between the frames is static (the lookup then never depends on time)."""
        return not self.dynamic_on_path(target, source)
