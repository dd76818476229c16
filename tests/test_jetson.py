"""Jetson facts and energy per frame, read from a tree of the files as they read on an Orin (made
here under tmp_path: the paths and formats ``benchmarks.jetson`` cites), and absent elsewhere."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.jetson import (
    PowerSampler,
    board_power_rails,
    energy_j,
    energy_per_frame,
    jetson_facts,
    jetson_line,
    rail_files,
)
from benchmarks.report import markdown

NVPMODEL_CONF = """< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
GPU MAX_FREQ 1300500000
< POWER_MODEL ID=1 NAME=MODE_15W >
GPU MAX_FREQ 408000000
< POWER_MODEL ID=2 NAME=MODE_30W >
GPU MAX_FREQ 612000000
< PM_CONFIG DEFAULT=2 >
"""


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def agx_orin(root: Path, pinned: bool = True, mode: str = "pmode:0000") -> Path:
    """An AGX Orin on JetPack 6.2 (L4T 36.4.3) after ``sudo jetson_clocks`` (or not)."""
    write(
        root,
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, "
        "EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n",
    )
    write(root, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    write(root, "var/lib/nvpmodel/status", mode + "\n")
    write(root, "etc/nvpmodel.conf", NVPMODEL_CONF)
    for cpu in range(12):
        low = "2201600" if pinned else "115200"
        write(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_min_freq", low + "\n")
        write(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq", "2201600\n")
        write(root, f"sys/devices/system/cpu/cpu{cpu}/online", "1\n")
    gpu = "sys/class/devfreq/17000000.gpu"
    write(root, f"{gpu}/device/of_node/name", "gpu\x00")
    write(root, f"{gpu}/cur_freq", "1300500000\n")
    write(root, f"{gpu}/min_freq", ("1300500000" if pinned else "306000000") + "\n")
    write(root, f"{gpu}/max_freq", "1300500000\n")
    write(root, "sys/kernel/nvpmodel_emc_cap/emc_iso_cap", "3199000000\n")  # debugfs (emc rate) needs root
    # INA3221 at i2c 1-0040 and 1-0041 (tegra234-p3701.dtsi): mV and mA per channel
    first = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for k, (label, mv, ma) in enumerate(
        [("VDD_GPU_SOC", 5000, 1200), ("VDD_CPU_CV", 5000, 400), ("VIN_SYS_5V0", 5000, 900)], 1
    ):
        write(root, f"{first}/in{k}_label", label + "\n")
        write(root, f"{first}/in{k}_input", f"{mv}\n")
        write(root, f"{first}/curr{k}_input", f"{ma}\n")
    write(root, f"{first}/in7_label", "sum of shunt voltages\n")
    second = "sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4"
    write(root, f"{second}/in2_label", "VDDQ_VDD2_1V8AO\n")
    write(root, f"{second}/in2_input", "5000\n")
    write(root, f"{second}/curr2_input", "100\n")
    write(root, f"{second}/in1_label", "NC\n")
    return root


def test_an_agx_orin_reads_as_one(tmp_path):
    facts = jetson_facts(agx_orin(tmp_path))
    assert facts["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (facts["l4t"], facts["jetpack"]) == ("36.4.3", "6.2")
    assert facts["power_mode"] == {"id": 0, "name": "MAXN"}
    clocks = facts["clocks"]
    assert clocks["pinned"] and clocks["gpu_mhz"] == {"cur": 1300.5, "min": 1300.5, "max": 1300.5}
    assert clocks["emc_mhz"] is None and clocks["emc_cap_mhz"] == 3199.0
    # no input rail on AGX Orin: the sum of its rails, without the one VIN_SYS_5V0 already includes
    assert facts["power_rails"] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]
    line = jetson_line(facts)
    assert "L4T 36.4.3 (JetPack 6.2)" in line and "power mode MAXN (nvpmodel id 0)" in line
    assert "pinned (jetson_clocks)" in line and "GPU 1300 MHz" in line and "cap 3199 MHz" in line


def test_unpinned_clocks_another_mode_and_an_input_rail(tmp_path):
    root = agx_orin(tmp_path, pinned=False, mode="pmode:0002 fmode:fan_mode_quiet")
    write(root, "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_label", "VDD_IN\n")  # Orin NX / Nano
    facts = jetson_facts(root)
    assert facts["power_mode"] == {"id": 2, "name": "MODE_30W"}
    assert not facts["clocks"]["pinned"] and "not pinned" in jetson_line(facts)
    assert facts["power_rails"] == ["VDD_IN"]


def test_other_machines_have_no_jetson_facts(tmp_path):
    assert jetson_facts(tmp_path) is None
    assert rail_files(tmp_path) == {} and not PowerSampler(tmp_path).start().samples


def test_the_sampler_reads_the_board_power(tmp_path):
    root = agx_orin(tmp_path)
    rails = rail_files(root)
    assert board_power_rails(rails) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]
    sampler = PowerSampler(root, interval=0.005).start()
    deadline = time.monotonic() + 5
    while len(sampler.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert len(sampler.samples) >= 3
    assert all(watts == pytest.approx(5.0 * (1.2 + 0.4 + 0.9)) for _, watts in sampler.samples)


def test_energy_is_power_integrated_over_each_turn():
    samples = [(0.0, 10.0), (1.0, 10.0), (2.0, 20.0), (3.0, 20.0)]
    assert energy_j(samples, 0.0, 1.0) == pytest.approx(10.0)
    assert energy_j(samples, 1.0, 2.0) == pytest.approx(15.0)  # trapezoid between the samples
    assert energy_j(samples, 0.5, 1.5) == pytest.approx(5.0 + 6.25)  # edges interpolated
    assert energy_j(samples, 10.0, 11.0) is None  # no sample near the window
    per_frame = energy_per_frame(samples, [(0.0, 1.0, 4), (2.0, 3.0, 4)])
    assert per_frame == {"mj_per_frame": pytest.approx(1000 * 30 / 8), "mean_w": pytest.approx(15.0), "frames": 8}


def report_data(jetson: dict | None, energy: dict | None) -> dict:
    """The smallest report one row makes."""
    stats = {"median": 0.1, "p90": 0.11, "p99": 0.12, "fps": 10.0, "cv": 0.01}
    row = {"backend": "tensorrt", "variant": "m.engine", "precision": "fp16", "size": [518, 518], "status": "ok"}
    row.update(model_call=stats, end_to_end=stats, vs_fp32={"abs_rel": 0.001, "delta1": 1.0}, energy=energy)
    return {
        "rows": [row],
        "fastest_within_budget": None,
        "machine": {
            "cpu": "ARMv8",
            "usable_cores": 12,
            "gpu": None,
            "python": "3.10",
            "libraries": {},
            "jetson": jetson,
        },
        "settings": {"rounds": 5, "warmup": 2, "calls_per_round": 1},
        "model": "m",
        "images": "i",
        "calibration": "c",
        "reliability": {
            "reliable": True,
            "problems": [],
            "limits": {"p90_over_p50": 1.5, "ceiling_spread": 1.5},
            "machine_state": {},
            "max_spread": None,
            "max_ceiling_spread": None,
        },
        "phases": {},
        "wall_seconds": 1.0,
        "accuracy_budget": 0.02,
    }


def test_the_report_shows_the_board_and_energy(tmp_path):
    energy = {"mj_per_frame": 142.0, "mean_w": 11.5, "frames": 20}
    text = markdown(report_data(jetson_facts(agx_orin(tmp_path)), energy))
    assert "- **Jetson**: NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.3 (JetPack 6.2)" in text
    assert "energy mJ/frame (mean power)" in text and "| 142 (11.5 W) |" in text
    elsewhere = markdown(report_data(None, None))
    assert "**Jetson**" not in elsewhere and "energy" not in elsewhere
