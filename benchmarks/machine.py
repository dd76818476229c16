"""Facts about the machine a benchmark ran on, and how busy it was while the rows were timed.

Load average counts this benchmark's own threads as well as everyone else's, so it is reported
but not judged. What is judged comes from ``/proc/stat``: the CPU time the whole machine spent
busy, minus what this benchmark's own processes spent (``/proc/<pid>/stat``), is the time other
programs took; ``steal`` is the time the hypervisor gave this virtual machine's CPUs to others.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from runtime.metadata import library_versions

from .cpu import CpuFeatures, detect
from .jetson import jetson_facts

LIBRARIES = ("numpy", "opencv-python-headless", "torch", "onnxruntime", "openvino", "nncf", "tensorrt")
# /proc/stat's per-CPU columns: user nice system idle iowait irq softirq steal (guest time is
# already inside user and nice, so the guest columns are left out of the total).
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_facts(cpu: CpuFeatures | None = None) -> dict:
    cpu = cpu or detect()
    return {
        "cpu": cpu.model,
        "cpu_features": cpu.to_dict(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "gpu": gpu_name(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": library_versions(*LIBRARIES),
        "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "jetson": jetson_facts(),
    }


def parse_proc_stat(text: str) -> dict[str, int]:
    """The machine-wide ``cpu`` line of ``/proc/stat`` as named tick counts."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1 : 1 + len(STAT_FIELDS)]]
            return dict(zip(STAT_FIELDS, values + [0] * (len(STAT_FIELDS) - len(values))))
    raise ValueError("no 'cpu' line in /proc/stat")


def process_ticks(pid: int | str = "self", children: bool = False) -> int:
    """CPU ticks (user + system) a process has used; with ``children``, also those of the
    children it has waited for, so a worker that ended mid-run still counts as this run's."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name in brackets may hold spaces
    # fields[11:15] are utime, stime, cutime, cstime (stat(5) fields 14-17)
    return sum(int(v) for v in fields[11 : 15 if children else 13])


@dataclass(frozen=True)
class Snapshot:
    ticks: dict[str, int]  # machine-wide, from /proc/stat
    own: int  # ticks of this benchmark's processes
    load: tuple[float, float, float]


def snapshot(worker_pids: list[int]) -> Snapshot | None:
    """The machine's CPU counters now, or ``None`` where ``/proc`` does not have them."""
    try:
        ticks = parse_proc_stat(Path("/proc/stat").read_text())
        own = process_ticks("self", children=True)
        for pid in worker_pids:
            try:
                own += process_ticks(pid)
            except OSError:  # ended and reaped: its ticks are in this process's children now
                pass
        load = os.getloadavg()
    except (OSError, ValueError):
        return None
    return Snapshot(ticks, own, tuple(round(v, 2) for v in load))


def busy_shares(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Shares of the machine's CPU time between two snapshots: taken by other programs on this
    machine (``others``), by the hypervisor (``steal``), and by this benchmark (``own``)."""
    delta = {k: after.ticks[k] - before.ticks[k] for k in STAT_FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return {"others": 0.0, "steal": 0.0, "own": 0.0}
    own = after.own - before.own
    busy = sum(delta[k] for k in BUSY_FIELDS)
    return {
        "others": max(0.0, busy - own) / total,
        "steal": delta["steal"] / total,
        "own": min(own, busy) / total,
    }


def machine_state(snapshots: list[Snapshot | None]) -> dict:
    """How busy the machine was while the rows were timed: over the whole time, and in each
    round (``snapshots`` taken at the start of every round and after the last), since a burst of
    other work in one round slows only the rows timed in it."""
    if len(snapshots) < 2 or any(s is None for s in snapshots):
        return {"measured": False}
    rounds = [busy_shares(a, b) for a, b in zip(snapshots, snapshots[1:])]
    return {
        "measured": True,
        "load_before": snapshots[0].load,
        "load_after": snapshots[-1].load,
        **busy_shares(snapshots[0], snapshots[-1]),
        "rounds_others": [r["others"] for r in rounds],
        "rounds_steal": [r["steal"] for r in rounds],
    }
