"""Sensor input matched by stamp: one implementation for the bag tool (its sensor index,
``runtime.ros.bag_align``; its camera infos, ``runtime.ros.bag_pass``) and the node (its live
sensor buffer, ``runtime.ros.align.LiveAligner``; its camera infos, ``runtime.ros.cameras``).

- :func:`nearest`: the message whose stamp is nearest a frame's, within ``max_time_offset``
  (and how far the nearest one is, for the log). The bag tool hands the messages recorded near
  the frame in the bag as candidates (a clock that loops or a far-future stamp never pairs a
  frame with another part of the bag), ties broken by bag time; the node's buffer is sorted by
  stamp and its two neighbours of the frame's stamp are the candidates.
- :class:`ByStamp`: a camera info (or anything stamped) for a frame: the one with the frame's
  own stamp, as message_filters' synchronisers pair them, else the newest; the last few kept.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


def nearest(
    stamps: Sequence[int],
    stamp: int,
    max_offset_ns: float,
    candidates: Iterable[int] | None = None,
    tie: Callable[[int], Any] | None = None,
) -> tuple[int | None, int | None]:
    """The index of the stamp nearest ``stamp`` among ``candidates`` (default: its neighbours in
    the sorted ``stamps``), ``None`` when it is farther than ``max_offset_ns``; and its offset
    (``None`` when there is no candidate). Of equal offsets, the smallest ``tie(index)`` wins,
    else the first candidate."""
    if candidates is None:
        i = bisect.bisect_left(stamps, stamp)
        candidates = [j for j in (i - 1, i) if 0 <= j < len(stamps)]
    best, key = None, None
    for k in candidates:
        here = (abs(stamps[k] - stamp), 0 if tie is None else tie(k))
        if key is None or here < key:
            best, key = k, here
    if key is None:
        return None, None
    return (best if key[0] <= max_offset_ns else None), key[0]


class ByStamp(Generic[T]):
    """The newest value (``None``: the newest message could not be used) and the last ``size``
    by their stamps; :meth:`at` serves a frame (see the module doc)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.newest: T | None = None
        self._by_stamp: OrderedDict = OrderedDict()

    def add(self, stamp: int | None, value: T | None) -> None:
        """A message's value (``None`` when unusable), stamped ``stamp`` (``None``: unreadable)."""
        self.newest = value
        if stamp is not None:
            self._by_stamp[stamp] = value
            self._by_stamp.move_to_end(stamp)
            while len(self._by_stamp) > self.size:
                self._by_stamp.popitem(last=False)

    def at(self, stamp: int, default: Any = ...) -> T | None:
        """The value with ``stamp``, else ``default`` (default: the newest)."""
        return self._by_stamp.get(stamp, self.newest if default is ... else default)

    def __len__(self) -> int:
        return len(self._by_stamp)
