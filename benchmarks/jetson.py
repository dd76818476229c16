"""What a Jetson benchmark must say about the board: its L4T/JetPack release, power mode, whether
the clocks are pinned, the GPU and memory clocks, and the energy each frame took.

Everything is read from files (``root`` moves them, for tests and containers), never from tools
that need root. Sources (the research notes of this project hold the details):

- L4T release: line 1 of ``/etc/nv_tegra_release``, ``# R36 (release), REVISION: 4.3, ...``
  (rbonghi/jetson_stats ``jtop/core/jetson_variables.py``, dusty-nv/jetson-containers
  ``l4t_version.py``); JetPack from L4T by NVIDIA's JetPack archive (the table below; only
  releases whose TensorRT/JetPack pairing NVIDIA or PyTorch-TensorRT's Jetson page documents).
  The board: ``/proc/device-tree/model``.
- Power mode: ``/var/lib/nvpmodel/status`` (``pmode:0002``; the mode last selected) named by the
  ``< POWER_MODEL ID=.. NAME=.. >`` blocks of ``/etc/nvpmodel.conf`` (NVIDIA's nvpmodel
  configuration format; mode 0 is not MAXN on every board, so both are reported).
- Clocks pinned (jetson_clocks), jtop's rule (``jtop/core/jetson_clocks.py``): every online CPU's
  cpufreq ``scaling_min_freq == scaling_max_freq`` and the GPU's devfreq ``min_freq == max_freq``.
- GPU clock: the devfreq device whose ``device/of_node/name`` is ``gv11b`` (Xavier), ``ga10b``
  (Orin, JetPack 5), ``gpu`` (Orin, JetPack 6) or ``gb10b`` (jtop ``core/gpu.py``), in Hz.
  Memory clock (EMC): ``/sys/kernel/debug/bpmp/debug/clk/emc/rate`` (debugfs, root only; NVIDIA's
  Jetson Linux "Clocks" page reads it as root), else the power mode's cap
  ``/sys/kernel/nvpmodel_emc_cap/emc_iso_cap``.
- Power: the INA3221 monitors' hwmon files (Linux ``Documentation/hwmon/ina3221.rst``: ``in<k>_label``,
  bus voltage ``in<k>_input`` in mV, current ``curr<k>_input`` in mA) under
  ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*`` (L4T >= 34, JetPack 5+). The board's input
  rail (``VDD_IN``: Orin NX/Nano, Xavier NX) is the total where it exists; on AGX Orin (no input
  rail) the sum of its rails, leaving out ``VDDQ_VDD2_1V8AO``, which ``VIN_SYS_5V0`` already
  includes (Linux ``tegra234-p3701.dtsi`` rail names; NVIDIA's power-model note via jtop).

Energy per frame: a thread samples the rails while the rows are timed, and each row's energy in
its turns is divided by the frames it computed in them.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np

# L4T release -> JetPack (NVIDIA's JetPack archive, as tabled by jetson_stats' NVIDIA_JETPACK).
JETPACK = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
GPU_NODES = ("gv11b", "ga10b", "gb10b", "gpu")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
INCLUDED_ELSEWHERE = ("VDDQ_VDD2_1V8AO",)  # AGX Orin: part of VIN_SYS_5V0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def _number(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def l4t_release(root: Path) -> str | None:
    """``36.4.3`` from ``# R36 (release), REVISION: 4.3, GCID: ...``."""
    text = _read(root / "etc/nv_tegra_release")
    if not text:
        return None
    match = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text.splitlines()[0])
    return f"{match[1]}.{match[2]}.{match[3]}" if match else None


def power_mode(root: Path) -> dict | None:
    status = _read(root / "var/lib/nvpmodel/status")
    match = re.search(r"pmode:0*(\d+)", status or "")
    if not match:
        return None
    mode = int(match[1])
    names = dict(
        (int(i), n)
        for i, n in re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", _read(root / "etc/nvpmodel.conf") or "")
    )
    return {"id": mode, "name": names.get(mode, "unknown")}


def gpu_devfreq(root: Path) -> Path | None:
    for entry in sorted((root / "sys/class/devfreq").glob("*")):
        name = _read(entry / "device/of_node/name") or ""
        if name in GPU_NODES or "gpu" in name:
            return entry
    return None


def clocks(root: Path) -> dict:
    """GPU and memory clocks (MHz) and whether jetson_clocks pinned them."""
    cpus = []
    for cpu in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*")):
        if _read(cpu / "online") == "0":
            continue
        low, high = _number(cpu / "cpufreq/scaling_min_freq"), _number(cpu / "cpufreq/scaling_max_freq")
        if low is not None and high is not None:
            cpus.append(low == high)
    gpu = gpu_devfreq(root)
    gpu_freq = {k: _number(gpu / f"{k}_freq") for k in ("cur", "min", "max")} if gpu else {}
    gpu_pinned = bool(gpu_freq) and None not in gpu_freq.values() and gpu_freq["min"] == gpu_freq["max"]
    emc = _number(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate")
    cap = _number(root / "sys/kernel/nvpmodel_emc_cap/emc_iso_cap")
    return {
        "pinned": bool(cpus) and all(cpus) and gpu_pinned,
        "cpu_pinned": bool(cpus) and all(cpus),
        "gpu_mhz": {k: v / 1e6 for k, v in gpu_freq.items() if v is not None},
        "emc_mhz": emc / 1e6 if emc else None,
        "emc_cap_mhz": cap / 1e6 if cap else None,
    }


def rail_files(root: Path) -> dict[str, tuple[Path, Path]]:
    """Rail name -> (bus voltage file, current file) of every connected INA3221 channel."""
    rails = {}
    for hwmon in sorted((root / "sys/bus/i2c/drivers/ina3221").glob("*/hwmon/hwmon*")):
        for label_file in sorted(hwmon.glob("in*_label")):
            channel = label_file.name[2:].split("_")[0]
            label = _read(label_file) or ""
            if not label or "NC" in label.split() or label.lower().startswith("sum of"):
                continue
            voltage, current = hwmon / f"in{channel}_input", hwmon / f"curr{channel}_input"
            if voltage.is_file() and current.is_file():
                rails[label] = (voltage, current)
    return rails


def board_power_rails(rails: dict[str, tuple[Path, Path]]) -> list[str]:
    """The rails whose sum is the board's power: its input rail where it has one."""
    for name in TOTAL_RAILS:
        if name in rails:
            return [name]
    return [name for name in rails if name not in INCLUDED_ELSEWHERE]


def read_power_w(rails: dict[str, tuple[Path, Path]], names: list[str]) -> float | None:
    total = 0.0
    for name in names:
        volts, amps = (_number(p) for p in rails[name])
        if volts is None or amps is None:
            return None
        total += volts * amps / 1e6  # mV x mA = uW
    return total


def jetson_facts(root: str | Path = "/") -> dict | None:
    """The board's facts, or ``None`` on a machine that is not a Jetson."""
    root = Path(root)
    release = l4t_release(root)
    model = _read(root / "proc/device-tree/model")
    if release is None and not (model and "jetson" in model.lower()):
        return None
    rails = rail_files(root)
    return {
        "model": model,
        "l4t": release,
        "jetpack": JETPACK.get(release or "", "unknown"),
        "power_mode": power_mode(root),
        "clocks": clocks(root),
        "power_rails": board_power_rails(rails),
    }


class PowerSampler:
    """Board power sampled by a background thread every ``interval`` seconds, as (time, watts)."""

    def __init__(self, root: str | Path = "/", interval: float = 0.02) -> None:
        self.rails = rail_files(Path(root))
        self.names = board_power_rails(self.rails)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)

    @property
    def available(self) -> bool:
        return bool(self.names)

    def _run(self) -> None:
        while not self._stop.is_set():
            watts = read_power_w(self.rails, self.names)
            if watts is not None:
                self.samples.append((time.monotonic(), watts))
            self._stop.wait(self.interval)

    def start(self) -> PowerSampler:
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def energy_j(samples: list[tuple[float, float]], start: float, end: float, reach: float = 0.5) -> float | None:
    """Joules between ``start`` and ``end``: power interpolated linearly between the samples (held
    flat past the first and last) and integrated by the trapezoid rule. ``None`` when no sample
    lies within ``reach`` seconds of the window."""
    times = np.array([t for t, _ in samples], dtype=np.float64)
    if not times.size or not ((times >= start - reach) & (times <= end + reach)).any():
        return None
    watts = np.array([w for _, w in samples], dtype=np.float64)
    grid = np.concatenate([[start], times[(times > start) & (times < end)], [end]])
    power = np.interp(grid, times, watts)
    return float(np.sum(np.diff(grid) * (power[1:] + power[:-1]) / 2))


def energy_per_frame(samples: list[tuple[float, float]], turns: list[tuple[float, float, int]]) -> dict | None:
    """A row's board energy over its turns (start, end, frames computed) per frame, and its mean power."""
    joules, frames, seconds = 0.0, 0, 0.0
    for start, end, count in turns:
        energy = energy_j(samples, start, end)
        if energy is None:
            return None
        joules += energy
        frames += count
        seconds += end - start
    if not frames or seconds <= 0:
        return None
    return {"mj_per_frame": 1000 * joules / frames, "mean_w": joules / seconds, "frames": frames}


def jetson_line(facts: dict | None) -> str | None:
    """The report's line about the board."""
    if not facts:
        return None
    mode = facts.get("power_mode") or {}
    clock = facts.get("clocks") or {}
    gpu = clock.get("gpu_mhz") or {}
    memory = (
        f"{clock['emc_mhz']:.0f} MHz"
        if clock.get("emc_mhz")
        else f"not readable without root (cap {clock['emc_cap_mhz']:.0f} MHz)"
        if clock.get("emc_cap_mhz")
        else "not readable without root"
    )
    power = " + ".join(facts.get("power_rails") or []) or "no power monitors found"
    pinned = "pinned (jetson_clocks)" if clock.get("pinned") else "not pinned (sudo jetson_clocks pins them)"
    return (
        f"- **Jetson**: {facts.get('model') or 'unknown board'}, L4T {facts.get('l4t') or 'unknown'} "
        f"(JetPack {facts.get('jetpack')}); power mode {mode.get('name', 'unknown')} "
        f"(nvpmodel id {mode.get('id', '?')}); clocks {pinned}; GPU {gpu.get('cur', 0):.0f} MHz "
        f"(range {gpu.get('min', 0):.0f}-{gpu.get('max', 0):.0f}); memory {memory}; energy per frame from {power}."
    )
