"""What this CPU computes natively: the vector and matrix features that decide which backend wins.

Two machines sold under one name ("2-core AMD EPYC") can differ in exactly these: one has
AVX-512 with VNNI and BF16 units, the other AVX2 only, where PyTorch emulates BF16 (about 30x
slower than FP32) and INT8 has no dot-product instruction. Everything here is read from
``/proc/cpuinfo`` (and ``/proc/device-tree/model`` for a Jetson) and parsed by plain functions,
so any machine's flag set can be fed in and checked.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from pathlib import Path

# Flag names as Linux prints them, in the order the report lists them.
X86_FEATURES = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("avx512_fp16", "AVX-512 FP16"),
    ("amx_tile", "AMX"),
    ("amx_bf16", "AMX BF16"),
    ("amx_int8", "AMX INT8"),
    ("amx_fp16", "AMX FP16"),
)
ARM_FEATURES = (
    ("asimd", "NEON"),
    ("asimdhp", "NEON FP16"),
    ("asimddp", "dot product"),
    ("i8mm", "I8MM"),
    ("bf16", "BF16"),
    ("sve", "SVE"),
    ("sve2", "SVE2"),
)
# Which flags give a number format its own arithmetic units (rather than conversion to FP32 and back).
NATIVE = {
    "x86": {
        "bf16": ("avx512_bf16", "amx_bf16"),
        "fp16": ("avx512_fp16", "amx_fp16"),
        "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
    },
    "arm": {"bf16": ("bf16",), "fp16": ("asimdhp",), "int8": ("asimddp", "i8mm")},
}
FORMAT_NAMES = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8", "fp16": "FP16"}


def without_units(fmt: str) -> str:
    """How a format runs on a CPU without units for it: INT8 still multiplies in integers, only slower."""
    return "no INT8 dot-product units" if fmt == "int8" else "emulated"


def why_not_worth_it(cpu: CpuFeatures, fmt: str) -> str | None:
    """The CPU class decision for one number format: None when computing in ``fmt`` can pay on
    this CPU, else why it cannot. INT8 pays only with INT8 dot products (VNNI, AMX, ARM dotprod or
    I8MM): without them it runs through widening multiply-adds at about FP32's rate, and OpenVINO's
    INT8 measured slower than its FP32 on such a CPU (AVX2 Zen 3, issue 32). BF16 and FP16 without
    their units are converted to FP32 and back around every product (emulated: slower than FP32).
    A format that can pay still has to win on the clock: the recommendation compares measurements."""
    if fmt == "fp32" or cpu.native(fmt):
        return None
    if fmt == "int8":
        return "no INT8 dot-product units (VNNI, AMX or ARM dot product): INT8 does not pay on this CPU"
    return f"no {FORMAT_NAMES.get(fmt, fmt)} units: {FORMAT_NAMES.get(fmt, fmt)} is emulated on this CPU"


@dataclass(frozen=True)
class CpuFeatures:
    family: str  # "x86", "arm" or the machine name as Python reports it
    model: str
    flags: frozenset[str]
    board: str | None = None  # /proc/device-tree/model, e.g. "NVIDIA Jetson AGX Orin Developer Kit"

    def native(self, fmt: str) -> bool:
        """Whether this CPU has arithmetic units for ``fmt`` (FP32 always; INT8 means a dot-product
        instruction such as VNNI: without one INT8 still runs, through slower multiply-adds)."""
        if fmt == "fp32":
            return True
        return any(flag in self.flags for flag in NATIVE.get(self.family, {}).get(fmt, ()))

    @property
    def features(self) -> list[str]:
        table = X86_FEATURES if self.family == "x86" else ARM_FEATURES if self.family == "arm" else ()
        return [name for flag, name in table if flag in self.flags]

    def summary(self) -> str:
        """One line for the report header: what is there, and the decisive things that are not."""
        text = ", ".join(self.features) or "no vector extensions recognised"
        if self.family == "x86":
            missing = [
                name
                for absent, name in (
                    ("avx512f" not in self.flags, "AVX-512"),
                    (not self.native("int8"), "VNNI"),
                    (not self.native("bf16"), "native BF16"),
                    ("amx_tile" not in self.flags, "AMX"),
                )
                if absent
            ]
            if missing:
                text += " (no " + ", no ".join(missing) + ")"
        formats = ", ".join(FORMAT_NAMES[f] for f in ("fp32", "bf16", "fp16", "int8") if self.native(f))
        return f"{text}; native formats: {formats}" + (f"; board: {self.board}" if self.board else "")

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "model": self.model,
            "features": self.features,
            "native": {f: self.native(f) for f in ("fp32", "bf16", "fp16", "int8")},
            "board": self.board,
            "summary": self.summary(),
        }


def family_of(machine: str) -> str:
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("aarch64", "arm")):
        return "arm"
    return machine


def parse_cpuinfo(text: str, machine: str, board: str | None = None) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``) of the first core."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return CpuFeatures(family_of(machine), model, frozenset(flags), board)


def detect(root: Path = Path("/proc")) -> CpuFeatures:
    """This machine's CPU (``root`` is there for tests)."""
    try:
        text = (root / "cpuinfo").read_text()
    except OSError:
        text = ""
    try:  # a Jetson names itself here; the string ends in a NUL byte
        board = (root / "device-tree" / "model").read_text().strip("\x00\n ") or None
    except OSError:
        board = None
    features = parse_cpuinfo(text, platform.machine(), board)
    return features if features.model else replace(features, model=platform.processor() or platform.machine())
