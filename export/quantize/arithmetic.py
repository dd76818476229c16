"""The cpu target's INT8 arithmetic: which weight form an export for some CPUs gets, how its
accuracy budget is measured on this CPU, and what the sidecar records (``int8_cpu``).

The CPUs (``runtime.int8_cpu``) fall in two classes: ``vnni`` (32-bit sums: VNNI, AMX, ARM dot
product) and ``avx2`` (x86 without VNNI: VPMADDUBSW adds two u8 x s8 products into a saturating
16-bit sum). An export for ``avx2`` CPUs stores 7-bit weights (``u8s7``), which cannot saturate
there (2 x 255 x 64 = 32640 <= 32767; ``saturation_bound`` checks the written model), so what such a
CPU computes is the Q/DQ graph as written, to rounding. The budget is therefore measured

- with ONNX Runtime's own kernels when this CPU is of the target's class (what the target runs),
- else with the Q/DQ pairs run as written (``OnnxRuntimeRunner(as_written=True)``): what a VNNI
  CPU computes, and for the 7-bit form what an AVX2 CPU computes.

``tests/test_int8_cpus.py`` runs the AVX2 kernels under ``qemu-x86_64 -cpu Haswell-v4`` and checks
both statements; ``docs/int8-cpus.md`` has the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.int8_cpu import resolve, this_cpu

from ..errors import ExportRequestError

# The cpu target's weight forms: (weight type, 7-bit weights). U8U8 (unsigned weights, widened to
# 16 bits before the products) does not saturate either; it is measured in docs/int8-cpus.md.
CPU_FORMS = {"u8s8": ("QInt8", False), "u8s7": ("QInt8", True), "u8u8": ("QUInt8", False)}
FORM_FOR = {"vnni": "u8s8", "avx2": "u8s7"}  # the INT8 arithmetic of the CPUs -> the form
INT16_MAX = 32767
U8_MAX = 255


@dataclass(frozen=True)
class CpuPlan:
    arithmetic: str  # the class of the CPUs the export is for: vnni or avx2
    form: str  # the weight form (a key of CPU_FORMS)
    native: bool  # the budget is measured with this CPU's kernels (else as written)

    @classmethod
    def of(cls, arithmetic: str) -> CpuPlan:
        try:
            target = resolve(arithmetic)
        except ValueError as exc:
            raise ExportRequestError(str(exc)) from None
        return cls(target, FORM_FOR[target], target == this_cpu()["class"])

    def record(self) -> dict:
        """The sidecar's ``int8_cpu``: what the export is for and how its budget was measured."""
        here = this_cpu()
        return {
            "class": self.arithmetic,
            "form": self.form,
            "measured_on": here["arithmetic"],
            "measured_features": here["features"],
            "measured_with": "ONNX Runtime's kernels on this CPU"
            if self.native
            else "the Q/DQ graph as written (what this class computes for this form)",
            "effect_elsewhere": EFFECTS[self.arithmetic],
        }


EFFECTS = {
    "vnni": "on a CPU without VNNI (AVX2) its full-range weights saturate in 16-bit pairs: about 1.2-4x the "
    "error, docs/int8-cpus.md",
    "avx2": "on a VNNI CPU its 7-bit weights run as written (no saturation either way) but give away accuracy a "
    "full-range export for that CPU keeps",
}


def saturation_bound(model) -> int:
    """The largest |u8 x s8 + u8 x s8| pair sum any two weights of one output channel of ``model``
    (an ``onnx.ModelProto``) can give with u8 activations: over ``INT16_MAX`` means an AVX2 CPU
    may saturate. Signed 8-bit weights behind a DequantizeLinear count; others (float, unsigned
    weights, which ONNX Runtime widens to 16 bits) do not."""
    from onnx import TensorProto, numpy_helper

    dequantized = {node.input[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    worst = 0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.INT8 or init.name not in dequantized:
            continue
        weights = np.abs(numpy_helper.to_array(init).astype(np.int64))
        top = np.sort(weights.reshape(-1))[-2:]  # the two largest, whichever pair the kernel forms
        worst = max(worst, int(U8_MAX * top.sum()))
    return worst
