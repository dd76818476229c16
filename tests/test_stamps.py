"""One time-matching implementation (runtime.ros.stamps) for the bag tool and the node: the nearest
stamp within the offset (and how far the nearest one was), ties by bag time, camera infos by stamp
(the one with the frame's stamp, else the newest), bounded; and both tools use it."""

from __future__ import annotations

import inspect

from runtime.ros import align, bag_align, bag_pass, cameras, stamps
from runtime.ros.stamps import ByStamp, nearest

MS = 1_000_000


def test_nearest_in_a_sorted_buffer_within_the_offset():
    buffer = [0, 100 * MS, 200 * MS, 300 * MS]
    assert nearest(buffer, 130 * MS, 50 * MS) == (1, 30 * MS)
    assert nearest(buffer, 170 * MS, 50 * MS) == (2, 30 * MS)
    assert nearest(buffer, 150 * MS, 50 * MS) == (1, 50 * MS)  # of equal offsets, the first; the limit is inclusive
    assert nearest(buffer, 500 * MS, 50 * MS) == (None, 200 * MS)  # too far: none, and how far the nearest was
    assert nearest(buffer, -70 * MS, 50 * MS) == (None, 70 * MS)
    assert nearest([], 0, 50 * MS) == (None, None)


def test_nearest_among_candidates_with_ties_by_bag_time():
    # a looping clock: the same stamps twice in the bag; the frame at bag time 1.25 s takes the second loop's
    stamp_list = [0, 100 * MS, 0, 100 * MS]
    times = [1000 * MS, 1100 * MS, 1200 * MS, 1300 * MS]
    tie = lambda k: abs(times[k] - 1250 * MS)  # noqa: E731
    assert nearest(stamp_list, 90 * MS, 50 * MS, range(4), tie) == (3, 10 * MS)
    assert nearest(stamp_list, 10 * MS, 50 * MS, range(4), tie) == (2, 10 * MS)
    assert nearest(stamp_list, 10 * MS, 50 * MS, range(0, 2), tie) == (0, 10 * MS)  # only the first loop's
    assert nearest(stamp_list, 10 * MS, 50 * MS, range(0), tie) == (None, None)  # none recorded near the frame


def test_by_stamp_serves_its_own_stamp_else_the_newest_and_stays_bounded():
    infos: ByStamp[str] = ByStamp(3)
    assert infos.at(5) is None and infos.newest is None
    infos.add(10, "a")
    infos.add(20, "b")
    assert infos.at(10) == "a" and infos.at(20) == "b" and infos.at(15) == "b"
    assert infos.at(15, "mine") == "mine"  # the frame's own, when none has its stamp
    infos.add(30, None)  # an unusable one: no points for its stamp, nor for frames after it
    assert infos.at(30) is None and infos.at(40) is None and infos.at(10) == "a"
    infos.add(None, "c")  # a message whose stamp could not be read: only the newest
    assert infos.newest == "c" and len(infos) == 3
    for stamp in range(100, 110):
        infos.add(stamp, str(stamp))
    assert len(infos) == 3 and infos.at(10) == "109" and infos.at(108) == "108"


def test_the_bag_tool_and_the_node_match_with_it():
    """One implementation: both tools' matching and camera infos come from runtime.ros.stamps."""
    assert bag_align.nearest is stamps.nearest and align.nearest is stamps.nearest
    for module in (bag_align, bag_pass, cameras, align):
        assert module.ByStamp is stamps.ByStamp
    for module in (align, bag_align, bag_pass, cameras):
        assert "OrderedDict" not in inspect.getsource(module) and "def nearest" not in inspect.getsource(module)
