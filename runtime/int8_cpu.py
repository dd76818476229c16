"""The INT8 arithmetic of the CPU that runs a model: what ONNX Runtime's (and oneDNN's) u8 x s8
kernels compute here.

Two classes matter for the numbers:

- ``vnni``: the products of unsigned 8-bit activations and signed 8-bit weights are summed in
  32 bits (AVX-512 VNNI, AVX-VNNI, AMX, ARM's dot product, or the plain SSE/NEON kernels that widen
  to 16 bits first): what the Q/DQ graph says, to rounding.
- ``avx2``: x86 CPUs with AVX2 (or AVX-512 without VNNI) multiply with VPMADDUBSW, which adds
  each two neighbouring u8 x s8 products into a signed 16-bit sum that saturates at +/-32767.
  Full-range weights then lose their large products: on the parity ViT-S four times the error
  (``docs/int8-cpus.md``). Weights of 7 bits (|w| <= 64, so 2 x 255 x 64 < 32767) do not saturate.

The features are read from CPUID as numpy's dispatcher sees them (the CPU the process really runs
on, also under an emulator such as ``qemu-x86_64 -cpu Haswell-v4``, which passes the host's
``/proc/cpuinfo`` through), with ``/proc/cpuinfo`` adding the flags numpy does not name (AVX-VNNI,
AMX) only where it agrees with CPUID. Python 3.8 clean.
"""

from __future__ import annotations

import platform

ARITHMETICS = ("vnni", "avx2")
CHOICES = ("auto", *ARITHMETICS)
# What each kind of CPU computes, as the benchmark's rows and the warnings name it.
KINDS = {
    "amx": "AMX (32-bit sums)",
    "avx512-vnni": "AVX-512 VNNI (32-bit sums)",
    "avx-vnni": "AVX-VNNI (32-bit sums)",
    "avx2": "AVX2 pairwise 16-bit (VPMADDUBSW, saturating)",
    "arm-dotprod": "ARM dot product (32-bit sums)",
    "arm-neon": "ARM NEON (16-bit products widened)",
    "other": "no 8-bit dot-product unit (widened products)",
}
CLASS_OF = {"avx2": "avx2"}  # every other kind sums in 32 bits: the vnni class
EFFECT = (
    "its u8 x s8 products are added in saturating 16-bit pairs (VPMADDUBSW) on CPUs without VNNI, "
    "about 4x the error of a VNNI CPU on full-range weights"
)

_cached: dict[str, object] | None = None


def _numpy_features() -> frozenset[str] | None:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found  # numpy >= 2
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found  # numpy 1.20-1.26
        except ImportError:
            return None
    return frozenset(name for name, on in found.items() if on)


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def classify(cpuid: frozenset[str] | None, flags: frozenset[str], machine: str) -> str:
    """The kind (a key of ``KINDS``) of a CPU with numpy's CPUID names ``cpuid`` (``None`` when
    unknown), ``/proc/cpuinfo`` flags ``flags`` and ``platform.machine()`` ``machine``."""
    machine = machine.lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        if (cpuid is not None and "ASIMDDP" in cpuid) or "asimddp" in flags:
            return "arm-dotprod"
        return "arm-neon"
    if cpuid is None:  # an old numpy: the kernel's flags alone
        avx2, vnni512 = "avx2" in flags, "avx512_vnni" in flags
        trusted = flags
    else:
        avx2, vnni512 = "AVX2" in cpuid, "AVX512VNNI" in cpuid
        # cpuinfo is the host's under user-mode emulation: trust its extra flags only where it agrees.
        agrees = ("avx512_vnni" in flags) == vnni512 and ("avx2" in flags) == avx2
        trusted = flags if agrees else frozenset()
    if "amx_int8" in trusted and "amx_tile" in trusted:
        return "amx"
    if vnni512:
        return "avx512-vnni"
    if "avx_vnni" in trusted:
        return "avx-vnni"
    if avx2:
        return "avx2"
    return "other"


def this_cpu() -> dict[str, object]:
    """This CPU's INT8 kind, its class (``vnni`` or ``avx2``), what it computes and the features
    that decided it; read once per process."""
    global _cached
    if _cached is None:
        cpuid, flags = _numpy_features(), _cpuinfo_flags()
        kind = classify(cpuid, flags, platform.machine())
        names = ("AVX2", "AVX512BW", "AVX512VNNI", "ASIMDDP")
        features = sorted(n.lower() for n in names if cpuid is not None and n in cpuid)
        features += sorted(f for f in ("avx_vnni", "amx_int8") if f in flags and kind in ("amx", "avx-vnni"))
        _cached = {
            "kind": kind,
            "class": CLASS_OF.get(kind, "vnni"),
            "arithmetic": KINDS[kind],
            "features": features,
            "machine": platform.machine(),
        }
    return dict(_cached)


def resolve(arithmetic: str) -> str:
    """``auto`` as this CPU's class; ``vnni`` or ``avx2`` as they are."""
    if arithmetic not in CHOICES:
        raise ValueError(f"INT8 arithmetic must be one of {', '.join(CHOICES)}, got {arithmetic!r}")
    return str(this_cpu()["class"]) if arithmetic == "auto" else arithmetic


def mismatch(recorded: dict | None) -> str | None:
    """A one-line warning when an INT8 artefact whose sidecar records the CPU arithmetic it was made
    and measured for (``recorded``, the sidecar's ``int8_cpu``) runs on a CPU of another class;
    ``None`` when they agree or nothing is recorded."""
    if not recorded or "class" not in recorded:
        return None
    here = this_cpu()
    if recorded["class"] == here["class"]:
        return None
    effect = recorded.get("effect_elsewhere") or (
        "full-range weights saturate here" if here["class"] == "avx2" else "expect the error it was measured with"
    )
    return (
        f"this INT8 model was made for {recorded['class']} CPUs ({recorded.get('form', '?')} weights, budget "
        f"measured on {recorded.get('measured_on', '?')}) but this CPU computes {here['arithmetic']}: {effect}; "
        f"re-export with --int8-arithmetic auto on this CPU, or check it with python -m runtime.verify"
    )


def budget_breach(model: object, ran: dict, summary: str) -> str:
    """The one line for an INT8 model over its reference's tolerance on this CPU's INT8 kernels
    (``ran``: the check's run record): the arithmetic, the missing feature, what to re-export."""
    here = this_cpu()
    missing = " (no AVX512_VNNI or AVX_VNNI on this CPU)" if here["class"] == "avx2" else ""
    made_for = ran.get("int8_made_for")
    why = (
        f"it was made for {made_for} CPUs: re-export it on this one with python -m export.quantize --target cpu "
        "--int8-arithmetic auto"
        if made_for and made_for != here["class"]
        else "re-export it, or check the precision= it runs with"
    )
    return (
        f"{model} breaks its INT8 budget (is over its reference's tolerance) on this CPU's "
        f"{ran['int8_arithmetic']}{missing}: {summary}; {why}"
    )
