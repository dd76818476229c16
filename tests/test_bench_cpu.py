"""What the benchmark knows about a CPU, fed known flag sets, and the rows it skips because of it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from benchmarks.artifacts import ModelSource
from benchmarks.cpu import detect, parse_cpuinfo
from benchmarks.roofline import ceiling_formats
from benchmarks.runner import Settings, make_configs, prepare
from benchmarks.worker import watch_parent

# /proc/cpuinfo flags as Linux prints them (abridged to the decisive ones plus some noise).
ZEN4 = (
    "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
    "avx512_bf16 avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg avx512_vpopcntdq"
)
EPYC_AVX2 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni clzero"
SAPPHIRE_RAPIDS = ZEN4 + " avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8"
ORIN = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
GRAVITON3 = ORIN + " sha3 sm3 sm4 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve sve2 i8mm bf16"


def x86(flags: str, model: str = "AMD EPYC"):
    return parse_cpuinfo(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n", "x86_64")


def arm(features: str, board: str | None = None):
    return parse_cpuinfo(f"processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: {features}\n", "aarch64", board)


@pytest.mark.parametrize(
    "cpu,bf16,int8,fp16,features,absent",
    [
        (x86(ZEN4), True, True, False, ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16"], "(no AMX)"),
        (x86(EPYC_AVX2), False, False, False, ["AVX2", "FMA"], "(no AVX-512, no VNNI, no native BF16, no AMX)"),
        (x86(SAPPHIRE_RAPIDS, "Intel Xeon"), True, True, True, ["AMX", "AMX BF16", "AMX INT8", "AVX-VNNI"], None),
        (arm(ORIN, "NVIDIA Jetson AGX Orin Developer Kit"), False, True, True, ["NEON", "dot product"], None),
        (arm(GRAVITON3), True, True, True, ["NEON", "I8MM", "BF16", "SVE", "SVE2"], None),
    ],
    ids=["zen4", "epyc-avx2", "sapphire-rapids", "jetson-orin", "graviton3"],
)
def test_features_from_known_flag_sets(cpu, bf16, int8, fp16, features, absent):
    assert (cpu.native("fp32"), cpu.native("bf16"), cpu.native("int8"), cpu.native("fp16")) == (True, bf16, int8, fp16)
    assert set(features) <= set(cpu.features)
    summary = cpu.summary()
    if absent:
        assert absent in summary
    else:
        assert "(no " not in summary
    assert ("BF16" in summary.split("native formats: ")[1]) == bf16
    assert cpu.to_dict()["native"]["bf16"] == bf16


def test_jetson_board_and_model_come_from_proc(tmp_path):
    (tmp_path / "device-tree").mkdir()
    (tmp_path / "device-tree" / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nFeatures\t: {ORIN}\nCPU part\t: 0xd42\n")
    cpu = detect(tmp_path)
    assert cpu.board == "NVIDIA Jetson Orin Nano Developer Kit" and "board: NVIDIA Jetson Orin Nano" in cpu.summary()
    assert cpu.model  # no "model name" line on ARM: Python's name for the machine instead


def test_this_machine_matches_its_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    cpu = detect()
    if flags:
        assert cpu.native("bf16") == ("avx512_bf16" in flags or "amx_bf16" in flags)
        assert cpu.native("int8") == bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def test_ceilings_only_for_formats_this_cpu_has():
    assert ceiling_formats(x86(ZEN4), emulated=False) == ("fp32", "bf16", "int8")
    assert ceiling_formats(x86(EPYC_AVX2), emulated=False) == ("fp32", "int8")
    assert ceiling_formats(x86(EPYC_AVX2), emulated=True) == ("fp32", "bf16", "int8")


def _settings(tmp_path, cpu, emulated=False) -> Settings:
    return Settings(tmp_path, 0, 1, 1, None, 1, 0.1, cpu, emulated)


@pytest.mark.parametrize("emulated", [False, True])
def test_rows_in_emulated_formats_are_skipped_unless_asked(tmp_path, emulated):
    """On a CPU without BF16 units the BF16 rows are 'unavailable (no native bf16 on this CPU)'
    and never built; --emulated-formats builds them."""
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not read: the builds below are stand-ins")
    settings = _settings(tmp_path, x86(EPYC_AVX2), emulated)
    configs = make_configs(ModelSource(checkpoint, "test"), [(56, 84)], settings, gpu=False)
    bf16 = [c for c in configs if c.needs == "bf16"]
    assert {(c.backend, c.precision) for c in bf16} == {("torch", "bf16"), ("openvino", "fp16/bf16")}
    built = []
    for config in bf16:
        config.build = lambda config=config: built.append(config.label) or checkpoint
        prepared = prepare(config, settings, tmp_path / "images.npz", "x")
        assert prepared == emulated
        if not emulated:
            assert config.result == {
                "status": "unavailable",
                "error": "no native bf16 on this CPU; --emulated-formats times it anyway",
            }
    assert len(built) == (2 if emulated else 0)
    fp32 = next(c for c in configs if (c.backend, c.precision) == ("torch", "fp32") and not c.variant)
    assert prepare(fp32, settings, tmp_path / "images.npz", "x") and fp32.job.is_file()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    import torch

    from export.onnx import export_onnx
    from tests.conftest import make_tiny_spec
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ov") / "tiny.onnx"
    return export_onnx(DepthAnythingV2(make_tiny_spec()).eval(), path, 56, 84, verify=False).path


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_rows_report_the_format_they_really_compute_in(tiny_onnx, precision):
    """A BF16 hint runs BF16 kernels only on a CPU with BF16 units; OpenVINO falls back to f32 elsewhere."""
    pytest.importorskip("openvino")
    from runtime import DepthPredictor

    predictor = DepthPredictor(tiny_onnx, backend="openvino", device="cpu", precision=precision)
    execution = predictor.info()["execution"]
    expected = "bf16" if precision == "bf16" and detect().native("bf16") else "fp32"
    assert execution["format"] == expected and execution["matrix_layers"][expected] > 0


def test_watchdog_notices_a_lost_parent():
    orphaned = threading.Event()
    watch_parent(os.getppid(), orphaned.set, interval=0.01)
    time.sleep(0.1)
    assert not orphaned.is_set()  # our parent is still there
    watch_parent(os.getpid(), orphaned.set, interval=0.01)  # a parent we never had: as if re-parented
    assert orphaned.wait(2)
