"""The accuracy budget of an INT8 Video Depth Anything stream, for both INT8 stream exports:
``export.quantize.stream_qdq`` (the Q/DQ ONNX for TensorRT) and ``export.openvino --int8`` (the IR
for CPUs).

With a budget, the held-out images run as one stream (the cache carried, each model its own), and
the INT8 stream's depth of each frame is scored against the FP32 stream's (ONNX Runtime on the
source ONNX) by the output kind's INT8 metric, mean over the frames. Those frames and their FP32
depths are the artefact's reference (``runtime.stream_check``: ``runtime.verify`` judges it frame by
frame by the same number). Over the budget the export is refused in one line and nothing is
written. With the budget off nothing is measured: the reference is a photograph panning sideways,
held to the broken-artefact bound and marked unmeasured, as a single-image INT8 export's is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.accuracy import precision_rule, short_name
from runtime.reference import Reference, image_of, make_meta, network_input, score
from runtime.stream_check import stream_meta
from runtime.verify_result import VerifyResult

from ..errors import ExportError
from ..metrics import verification_frames
from ..reference import UNMEASURED_INT8_TOLERANCE
from ..video import ORT_STREAM as AGAINST

UNMEASURED_FRAMES = 4  # --accuracy-budget off: the reference's frames (a photograph panning sideways)


def budget_frames(images: Any, budget: float | None, shape: tuple[int, int]) -> tuple[list, list[str]]:
    """The frames an INT8 stream is measured on (and its reference holds), and their names: the
    held-out images of ``images`` (a ``HeldOutSplit``) with a budget, else the panning photograph."""
    if budget is not None:
        batches = images.held_out_batches()
        return batches, [f"held_out_{i}" for i in range(len(batches))]
    batches = [network_input(image_of(b)) for b in verification_frames(*shape, UNMEASURED_FRAMES)]
    return batches, [f"frame_{i}" for i in range(len(batches))]


def held_out_reference(
    output: Path, batches: list, fp32: list, kind: str | None, budget: float | None, names: list
) -> Reference:
    """An INT8 stream's reference: ``batches`` (network inputs of 8-bit images) as one stream and the
    FP32 stream's depth of each, held to ``budget`` by the output kind's INT8 metric (every frame
    marked as measured); ``budget=None``: unmeasured, held to the broken-artefact bound."""
    metric, tolerance = precision_rule("int8", budget if budget is not None else UNMEASURED_INT8_TOLERANCE, kind)
    height, width = batches[0].shape[-2:]
    marks = {"budget": True} if budget is not None else {}
    inputs = [{"name": n, "size": [height, width], "outputs_from": AGAINST, **marks} for n in names]
    meta = make_meta(output, "int8", metric, tolerance, inputs, AGAINST, output_kind=kind, **stream_meta(len(names)))
    if budget is None:
        meta["measured"] = False
    return Reference([image_of(b) for b in batches], [d.astype(np.float32) for d in fp32], meta)


class StreamBudgetMissed(ExportError):
    """An INT8 stream over its bound (``check``, in words: ``value > bound``): refused, or quantized
    again with more in float where the export has more to try."""

    def __init__(self, message: str, check: str, value: float, bound: float) -> None:
        super().__init__(message)
        self.check, self.value, self.bound = check, value, bound


def judge_stream(reference: Reference, depths: list, budget: float | None, kept: str, fp16: str) -> VerifyResult:
    """``score`` of the INT8 stream's ``depths`` against ``reference``; over ``budget``,
    ``ExportError`` in one line naming what stayed in float (``kept``) and what to do (``fp16``: how
    the format makes an FP16 artefact instead).
    With the budget off, over the reference's broken-artefact bound too: an export never writes
    what ``runtime.verify`` fails against the reference written with it."""
    checked = score(reference, depths, "int8")
    if budget is not None and not checked.value <= budget:  # NaN fails too
        raise StreamBudgetMissed(
            f"the INT8 stream misses the accuracy budget: {reference.metric} {checked.value:.4f} > {budget} over "
            f"{len(depths)} held-out frames (the cache carried, {kept}); nothing was written. Raise --accuracy-budget, "
            f"add --float-layers, or {fp16}",
            f"{short_name(reference.metric)} vs the FP32 stream (the accuracy budget)",
            checked.value,
            budget,
        )
    if not checked.value <= reference.tolerance:  # budget off: what runtime.verify would fail at once
        raise StreamBudgetMissed(
            f"the INT8 stream is broken: {short_name(reference.metric)} {checked.value:.4f} > "
            f"{reference.tolerance:g} (the bound that tells a broken artefact; accuracy budget off) over "
            f"{len(depths)} frames of a photograph panning sideways (the cache carried, {kept}); nothing was "
            f"written. Calibrate on more images, add --float-layers, or {fp16}",
            f"{short_name(reference.metric)} vs the FP32 stream on a photograph (the broken-artefact bound)",
            checked.value,
            reference.tolerance,
        )
    return checked


def accuracy_record(checked: VerifyResult, budget: float | None, frames: int, floats: list) -> dict:
    """What an INT8 stream's record says of its accuracy (``accuracy``)."""
    measured = budget is not None
    record = {
        "budget": budget,
        "metric": checked.metric,
        "method": "stream" if measured else "unmeasured",
        "error": round(float(checked.value), 6) if measured else None,
        "frames": frames,
        "float_layers": list(floats),
    }
    if not measured:  # only told from a broken artefact, on the photograph
        record["broken_check"] = {"value": round(float(checked.value), 6), "bound": checked.tolerance}
    return record


def accuracy_line(accuracy: dict, layers: str) -> str:
    """The one line an INT8 stream export prints of its accuracy."""
    if accuracy["budget"] is None:
        check = accuracy.get("broken_check") or {}
        told = f"; not broken: {check['value']:.4f} <= {check['bound']:g} on a photograph" if check else ""
        return f"INT8 stream: {layers}; no accuracy check (accuracy budget off){told}"
    return (
        f"INT8 stream: {layers}; {accuracy['metric']} vs the FP32 stream {accuracy['error']:.4f} over "
        f"{accuracy['frames']} held-out frames, the cache carried (budget {accuracy['budget']})"
    )


# OpenVINO (export.openvino --int8 of a stream graph)
OV_FP16 = "export --fp16"


def measure_stream_ir(ir: Any, source: Any, images: Any, budget: float | None, floats: list, kept: str) -> tuple:
    """The staged INT8 stream IR (an ``export.video.IrStream``) against the FP32 stream of
    ``source`` (the same ONNX Runtime session): its reference (not yet written) and its record's
    ``accuracy`` (``floats``: the float patterns and layers; ``kept``: what stayed in float, in
    words); over ``budget``, ``StreamBudgetMissed`` and nothing written."""
    batches, names = budget_frames(images, budget, ir.size)
    fp32 = ir.fp32.depths(batches)
    reference = held_out_reference(ir.path, batches, fp32, source.output_kind().kind, budget, names)
    checked = judge_stream(reference, ir.depths(batches), budget, kept, OV_FP16)
    return reference, accuracy_record(checked, budget, len(batches), floats)
