"""The sizes an INT8 engine built from a Q/DQ ONNX is checked at, decided without TensorRT.

A Q/DQ ONNX's reference marks the held-out images its accuracy budget was measured on
(``"budget": true``), at the size it was calibrated at; the engine's reference holds the Q/DQ
reference's inputs at the engine's sizes (``decisions.engine_sizes``: its own, or a profile's opt
size and one other). A dynamic Q/DQ ONNX calibrated at one size and built with a profile whose
opt size is another kept none of the marked inputs, and the engine's check fell back to the rule
of references written before the marks: the mean over the photographs, which no budget measured,
held to the budget (``runtime.verify_result.judged_value``), so a working engine could fail and a
worse one pass. Now the calibration size joins the sizes the engine is checked at wherever the
profile covers it (the marked inputs are then judged by the budget, the photographs by the
broken-artefact bound, as on the Q/DQ ONNX); where the profile does not cover it, the build is
refused in one line: no input the engine can take was measured against the budget.

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ExportRequestError


def covers(profile: Any, size: tuple) -> bool:
    """Whether ``profile`` (``decisions.Profile``; ``None``: a static engine) takes ``size`` (HxW)."""
    return profile is not None and all(
        low <= value <= high for low, value, high in zip(profile.min[1:], size, profile.max[1:])
    )


def budget_sizes(reference: Any, sizes: Sequence[tuple], profile: Any, path: Any) -> list:
    """``sizes`` (the engine's check sizes), with the sizes of the inputs ``reference`` (the Q/DQ
    ONNX's, or ``None``) marks as the budget's that ``profile`` covers; ``ExportRequestError`` where
    the reference marks budget inputs and the engine can take none of them."""
    sizes = [tuple(s) for s in sizes]
    if reference is None:
        return sizes
    marked = list(dict.fromkeys(s for s, mark in zip(reference.sizes, reference.in_budget) if mark))
    if not marked or any(s in sizes for s in marked):
        return sizes
    taken = [s for s in marked if covers(profile, s)]
    if taken:
        return [*sizes, *taken]
    shown = ", ".join(f"{h}x{w}" for h, w in marked)
    span = f"profile {_hw(profile.min)} to {_hw(profile.max)}" if profile is not None else f"size {_hw(sizes[0])}"
    raise ExportRequestError(
        f"{path}: its INT8 accuracy budget was measured at {shown}, outside the engine's {span}, so the engine "
        f"could not be checked against it: give --min/--opt/--max that take {shown}, or quantize at a size the "
        "engine takes (python -m export.trt --int8 --calib-dir DIR --onnx FP32.onnx --opt HxW ...)"
    )


def _hw(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in tuple(shape)[-2:])
