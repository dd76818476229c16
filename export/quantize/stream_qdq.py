"""INT8 Q/DQ of a Video Depth Anything stream graph for TensorRT, held to the accuracy budget.

The stream ONNX (``export.video``: ``image``, ``slot_pos``, ``cache0`` .. ``cache7`` in; ``depth``,
``hidden0`` .. ``hidden7`` out) is quantized as ``export.quantize.qdq`` quantizes a single-image
graph for TensorRT (symmetric INT8 activations, per-channel INT8 weights on Conv and constant-weight
MatMul, the patch embedding and the output convolutions in float), with two differences:

- Calibration runs the calibration images as one stream (``StreamCalibration``): each image is fed
  with the cache the FP32 model built over the images before it, as
  ``export.video.quantize_stream_openvino`` does for OpenVINO, so the ranges are those of frames
  that read a cache, not of first frames only.
- The motion modules (the temporal head's attention over the 31 cached frames and its norms) stay
  in float: none of their nodes is quantized, and none reads a dequantized tensor (a tensor shared
  by a quantized convolution and a motion module reaches the motion module unquantized,
  ``float_motion_inputs``). A TensorRT engine of the graph builds them in FP32
  (``export.trt.stream.fp32_stream_nodes``), as its FP16 engines do.

The budget is measured frame by frame: the held-out images run as one stream (the cache carried,
each model its own), the Q/DQ graph's depth as written (ONNX Runtime's float simulation of the INT8
arithmetic, ``export.metrics.OnnxRuntimeRunner``) against the FP32 stream's, by the metric of the
output kind, mean over the frames. That stream and its FP32 depths are the Q/DQ graph's reference
(``runtime.stream_check``: ``runtime.verify`` and the engine check judge it frame by frame by the
same number). Over the budget the export is refused in one line and nothing is written; with the
budget off, over the broken-artefact bound its unmeasured reference holds (``runtime.verify`` would
fail it at once). Both checks are ``export.quantize.stream_budget``'s, shared with OpenVINO. There is
no layer search (``export.quantize.search`` probes single images): plain INT8 with the motion
modules (and ``float_layers``) in float, then the budget check.
"""

from __future__ import annotations

import glob
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from commands.runner import stage
from runtime.io.files import staging_dir
from runtime.metadata import artefact_digest, sidecar_path
from runtime.reference import reference_path, save_reference
from runtime.video_state import StreamState

from ..artefact import Artefact
from ..errors import ExportRequestError
from ..graph import load_onnx, save_onnx
from ..video import OrtStream
from .qdq import quantize_int8, select_nodes
from .stream_budget import accuracy_line, accuracy_record, budget_frames, held_out_reference, judge_stream

MOTION_SCOPE = ("*/motion_modules.*",)  # node-name globs of the temporal head's modules: float
KEPT = "motion modules in float"
FP16 = "build --fp16"
CPU_REFUSAL = (
    "is a Video Depth Anything stream graph: its INT8 Q/DQ is made for TensorRT (--target tensorrt); for "
    "CPUs use the OpenVINO INT8 stream (python -m export.openvino --int8)"
)


class StreamCalibration:
    """The calibration images (``export.quantize.calibration``) as one stream: each sample is the
    feeds of one image with the cache the FP32 model at ``source`` built over the images before it,
    made as they are read (one frame's cache in memory at a time)."""

    def __init__(self, images: Any, source: Path) -> None:
        self.images, self.source = images, source
        self.key = f"stream-{images.key}"

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[dict]:
        step, state = OrtStream(self.source), StreamState(max_gap=None)
        for batch in self.images:
            slot_pos, cache = state.inputs(step.shapes)
            feeds = step.feeds(batch, slot_pos.copy(), [c.copy() for c in cache])
            yield feeds
            state.update(step(batch, slot_pos, cache)[1:])

    def describe(self) -> dict:
        return {**self.images.describe(), "stream": "one stream, the FP32 model's cache carried"}


def motion_nodes(model: Any) -> set:
    """Names of the motion modules' nodes (not the Q/DQ pairs named after a motion module's output
    tensor: those quantize the input of the head convolution that reads it)."""
    import fnmatch

    qdq = ("QuantizeLinear", "DequantizeLinear")
    scope = [n for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in MOTION_SCOPE)]
    return {n.name for n in scope if n.op_type not in qdq}


def float_motion_inputs(model: Any) -> int:
    """Rewire every motion-module input that is a dequantized activation to the tensor its
    QuantizeLinear read (ONNX Runtime feeds every consumer of a quantized tensor its Q/DQ copy);
    returns how many inputs were rewired. Weight Q/DQ pairs are left alone (no motion module node is
    quantized, so none reads one)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    motion, rewired = motion_nodes(model), 0
    for node in model.graph.node:
        if node.name not in motion:
            continue
        for index, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
                rewired += 1
    return rewired


def check_stream_target(path: Path, target: str) -> None:
    """A stream's INT8 Q/DQ is TensorRT's: ``ExportRequestError`` (one line) for another target."""
    if target != "tensorrt":
        raise ExportRequestError(f"{path} {CPU_REFUSAL}")


def export_stream_int8(source: Artefact, output: Path, options: Any, images: Any, cache: Path) -> Artefact:
    """``export.quantize.budget.export_int8`` for a stream graph, on ``images`` (its calibration
    images, with the held-out ones where a budget is set): the Q/DQ stream ONNX at ``output`` with
    its stream reference and record, within ``options.budget``; over it, ``ExportError`` (one
    line) and nothing written."""
    model = load_onnx(source.path)
    keep = (*MOTION_SCOPE, *options.keep_fp, *(glob.escape(name) for name in options.float_layers))
    shape = tuple(getattr(images, "base", images).input_shape)
    batches, names = budget_frames(images, options.budget, shape)
    kind = source.output_kind().kind
    workdir = staging_dir(output)
    try:
        staged = workdir / output.name
        with stage("calibrating the stream (the FP32 cache carried) and quantizing"):
            result = quantize_int8(
                source,
                StreamCalibration(images, source.path),
                staged,
                method=options.method,
                target="tensorrt",
                keep_fp=keep,
                percentile=options.percentile,
                cache_dir=cache,
                write=False,
            )
        qdq = load_onnx(staged)
        rewired = float_motion_inputs(qdq)
        if rewired:
            save_onnx(qdq, staged)
        with stage("measuring the INT8 stream frame by frame against the FP32 stream"):
            fp32 = OrtStream(source.path).depths(batches)
            reference = held_out_reference(output, batches, fp32, kind, options.budget, names)
            depths = OrtStream(staged, as_written=True).depths(batches)
            checked = judge_stream(reference, depths, options.budget, KEPT, FP16)
        for old in (output, sidecar_path(output), reference_path(output)):
            old.unlink(missing_ok=True)
        for item in sorted(workdir.glob(output.name + "*"), key=lambda p: p.name == output.name):
            item.replace(output.parent / item.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    digest = artefact_digest(output)
    floats = sorted(motion_nodes(model) & set(select_nodes(model, ())[0]))
    quantization = {
        **result.artefact.get("quantization"),
        "float": list(MOTION_SCOPE),
        "motion_module_layers": len(floats),
        "motion_inputs_unquantized": rewired,
        "float_layers": list(options.float_layers),
        "search": "none (plain INT8, the motion modules in float)",
    }
    accuracy = accuracy_record(checked, options.budget, len(batches), [*MOTION_SCOPE, *options.float_layers])
    accuracy["int8_layers"] = len(result.quantized)
    made = replace(result.artefact, path=output).updated(
        quantization=quantization, **source.source_facts(), sha256=digest, accuracy=accuracy
    )
    made.write()
    reference.meta["artefact_sha256"] = digest
    reference.path = save_reference(reference_path(output), reference)
    print(accuracy_line(accuracy, f"Q/DQ, {len(result.quantized)} layers INT8, the motion modules in float"))
    return made.with_reference(reference)
