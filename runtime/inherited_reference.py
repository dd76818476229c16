"""What an artefact built from another inherits of that one's reference (``runtime.reference``):
its inputs at the new artefact's sizes, their FP32 outputs, and the bound an INT8 source was held
to. The exports use it where no FP32 model is at hand: a TensorRT engine built on a Jetson from a
Q/DQ ONNX is checked against the reference that travelled with the ONNX.

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from .accuracy import INT8_METRICS, precision_rule
from .reference import Reference, make_meta


def carried_inputs(
    base: Reference, sizes: Sequence[tuple[int, int]]
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """``base``'s inputs at ``sizes`` (images, FP32 outputs, their meta entries naming where the
    outputs came from) and what carries over to an artefact built from it: an INT8 source's budget
    (``budget``) and metric (``metric``), and an unmeasured one's loose bound (``measured``: False)."""
    images, outputs, inputs = [], [], []
    for image, output, item in zip(base.images, base.outputs, base.meta["inputs"]):
        if tuple(image.shape[:2]) in sizes:
            images.append(image)
            outputs.append(output)
            inputs.append({"outputs_from": base.meta.get("outputs_from", ""), **item})
    carried: dict[str, Any] = {}
    if base.metric in INT8_METRICS:
        carried["budget"], carried["metric"] = base.tolerance, base.metric
        if base.meta.get("measured", True) is False:
            carried["measured"] = False
    return images, outputs, inputs, carried


def inherited_reference(
    base: Reference, artefact: str, precision: str, sizes: Sequence[tuple[int, int]]
) -> Reference | None:
    """The reference of ``artefact`` (its file name), built at ``precision`` from the artefact
    ``base`` belongs to: ``base``'s inputs and outputs at ``sizes``, held to ``precision``'s rule
    (or the carried INT8 budget); in memory, for its writer to save once the artefact is final.
    ``None``, with a note, when ``base`` has no input at those sizes; ``ValueError`` where ``base``
    marks the inputs its INT8 budget was measured on and ``sizes`` leave every one of them out."""
    sizes = [tuple(int(v) for v in s) for s in sizes]
    images, outputs, inputs, carried = carried_inputs(base, sizes)
    missing = [f"{h}x{w}" for h, w in sizes if all(tuple(i.shape[:2]) != (h, w) for i in images)]
    if missing:
        print(
            f"note: the source's reference has no input at {', '.join(missing)} for {artefact}; "
            "its reference keeps what the source's holds",
            file=sys.stderr,
        )
    if not images:
        return None
    if any(base.in_budget) and not any(item.get("budget") is True for item in inputs):
        # Judged by the rule of references without marks, the photographs' mean would be held to a
        # budget no one measured on them (export.trt.budget_sizes adds the budget's size first).
        measured = sorted({f"{h}x{w}" for (h, w), mark in zip(base.sizes, base.in_budget) if mark})
        raise ValueError(
            f"the INT8 budget of {base.meta.get('artefact')} was measured at {', '.join(measured)}, not among "
            f"{artefact}'s sizes {', '.join(f'{h}x{w}' for h, w in sizes)}: check it at that size too"
        )
    kind = base.meta.get("output_kind")
    metric, tolerance = precision_rule(precision, carried.pop("budget", None), kind)
    carried_metric = carried.pop("metric", None)
    if carried_metric and "int8" in precision:
        metric = carried_metric
    if kind is not None:
        carried["output_kind"] = kind
    if "stream" in base.meta:  # a Video Depth Anything stream's frames: checked in order, the cache carried
        carried["stream"] = base.meta["stream"]
    origins = "; ".join(dict.fromkeys(item["outputs_from"] for item in inputs))
    return Reference(images, outputs, make_meta(artefact, precision, metric, tolerance, inputs, origins, **carried))
