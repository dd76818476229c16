"""ONNX export of a Video Depth Anything model as its streaming step.

The graph takes the frame and the cache as explicit inputs and returns the depth and the
frame's hidden states, so a plain ONNX Runtime or OpenVINO session runs the stream:

    inputs   image (1, 3, H, W) float32, slot_pos (31,) int64, cache0..cache7 (tokens, 31, C)
    outputs  depth (1, H, W), hidden0..hidden7 (tokens, 1, C)

Between frames the caller writes the hidden states into the cache and moves ``slot_pos`` on
(``runtime.video_state.StreamState``: two calls). One fixed input size per graph: the cache's
token counts follow from it.

Python 3.8 clean: ``export.trt.stream`` (JetPack 5) runs its stream graphs with ``OrtStream`` and
tells them with ``is_stream_onnx``; PyTorch and OpenVINO are imported where they are used.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import require
from runtime.accuracy import Comparison, compare
from runtime.backends.openvino import openvino_core
from runtime.backends.signal_stack import alternate_stack_kept
from runtime.stream_check import stream_depths
from runtime.video_state import STREAM_INPUTS, STREAM_OUTPUTS, StreamState, slot_positions

from .errors import ExportError, ExportRequestError
from .graph import load_onnx
from .metrics import OnnxRuntimeRunner, verification_frames

VERIFY_FRAMES = 3


# What a stream reference made with OrtStream says its depths came from.
ORT_STREAM = "ONNX Runtime FP32 on the stream ONNX, frame by frame with the cache carried"


def is_video_model(model: Any) -> bool:
    return getattr(model, "family", "") == "video-depth-anything"


def video_metadata(model: Any) -> dict[str, str]:
    """What every artefact of the model says about it (ONNX metadata, rt_info, sidecars)."""
    return {
        "family": model.family,
        "variant": getattr(model, "variant", ""),
        "stream": "video-depth-anything-31",  # the cache layout of runtime.video_state (a 31-frame window)
    }


def check_video_request(model: Any, dynamic: bool) -> None:
    if model.metric:
        raise ExportRequestError(
            f"{model.variant} outputs metres with no stated bound, which an artefact's output kind cannot say "
            "yet (relative, or metric up to max_depth): export the relative checkpoint, or run this one in "
            "PyTorch with output_kind='metric' and max_depth"
        )
    if dynamic:
        raise ExportRequestError(
            f"{getattr(model, 'variant', 'Video Depth Anything')} exports at one fixed size (its cache's shape "
            "follows from it): drop --dynamic and give --size HxW"
        )


class _Step:
    """``torch.nn.Module`` wrapper whose forward is the model's streaming step."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class Step(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model.step(*args)

        return Step()


def stream_frames(height: int, width: int, frames: int = VERIFY_FRAMES) -> list[np.ndarray]:
    """A photograph panning sideways, as network inputs: what the stream exports are checked on."""
    return verification_frames(height, width, frames)


def run_stream(step: Any, shapes: list[tuple[int, ...]], batches: list[np.ndarray]) -> list[np.ndarray]:
    """Depth per frame from ``step(image, slot_pos, caches) -> [depth, hidden...]``."""
    return stream_depths(step, shapes, batches)


def torch_step(model: Any) -> Any:
    import torch

    def step(batch: np.ndarray, slot_pos: np.ndarray, cache: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = model.step(torch.from_numpy(batch), torch.from_numpy(slot_pos), *map(torch.from_numpy, cache))
        return [o.numpy() for o in out]

    return step


def is_stream_inputs(names: Iterable[str], image: str | None = None) -> bool:
    """The one test of a Video Depth Anything stream graph, by its input names in order: the frame
    (named ``image`` where given: a TensorRT stream engine's runtime binds it by that name), then
    ``slot_pos`` and ``cache0`` .. ``cache7`` (``runtime.video_state.STREAM_INPUTS``)."""
    names = tuple(names)
    return names[1:] == STREAM_INPUTS and (image is None or names[:1] == (image,))


def is_stream_onnx(model: Any, image: str | None = None) -> bool:
    """Whether an ONNX model (an ``onnx.ModelProto``, or the file at a path: read without its
    external data) is a stream graph (``is_stream_inputs``)."""
    if isinstance(model, (str, Path)):
        model = load_onnx(model, load_external_data=False)
    return is_stream_inputs((i.name for i in model.graph.input), image)


def is_stream_graph(model: Any) -> bool:
    """An OpenVINO model (or ONNX-imported one) that is a stream step (``is_stream_inputs``)."""
    return is_stream_inputs(p.any_name for p in model.inputs)


class OrtStream:
    """One ONNX Runtime CPU session of a stream graph as a ``step(image, slot_pos, cache) -> [depth,
    hidden0..7]``, its inputs fed by the graph's own names and order. The session's options are
    ``export.metrics.OnnxRuntimeRunner``'s: ONNX Runtime's defaults (its thread count, FP32
    arithmetic), or with ``as_written`` a Q/DQ graph's pairs run as written (float simulation)."""

    def __init__(self, path: str | Path, as_written: bool = False) -> None:
        self.session = OnnxRuntimeRunner(path, as_written=as_written).session
        inputs = self.session.get_inputs()
        self.names = [i.name for i in inputs]
        self.size = tuple(inputs[0].shape[2:])  # (height, width): one fixed size per stream graph
        self.shapes = [tuple(i.shape) for i in inputs[2:]]

    def feeds(self, batch: np.ndarray, slot_pos: np.ndarray, cache: list) -> dict:
        values = (batch, slot_pos, *cache)
        if len(values) != len(self.names):
            raise ValueError(f"the stream graph takes {len(self.names)} inputs, got {len(values)}")
        return dict(zip(self.names, values))

    def __call__(self, batch: np.ndarray, slot_pos: np.ndarray, cache: list) -> list:
        return self.session.run(None, self.feeds(batch, slot_pos, cache))

    def depths(self, batches: list) -> list:
        """Depth per frame, the frames as one stream with this model's own cache carried."""
        return [np.asarray(d).reshape(d.shape[-2:]) for d in stream_depths(self, self.shapes, batches)]


def export_step(model: Any, path: Path, height: int, width: int, opset: int) -> None:
    import torch

    shapes = model.state_shapes(height, width)
    args = (
        torch.zeros(1, 3, height, width),
        torch.from_numpy(slot_positions(5)),  # traced as tensor arithmetic: any positions run
        *(torch.zeros(s) for s in shapes),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Step(model),
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image", *STREAM_INPUTS],
            output_names=["depth", *STREAM_OUTPUTS],
            do_constant_folding=True,
        )


def verify_stream(model: Any, path: Path, batches: list[np.ndarray], tolerance: float) -> Comparison:
    """ONNX Runtime against PyTorch over a few streamed frames (``stream_frames``); the worst frame."""
    height, width = batches[0].shape[-2:]
    shapes = model.state_shapes(height, width)
    expected = run_stream(torch_step(model), shapes, batches)
    got = run_stream(OrtStream(path), shapes, batches)
    checks = [compare(g, e) for g, e in zip(got, expected)]
    worst = max(checks, key=lambda c: c.max_rel_std if c.max_rel_std == c.max_rel_std else float("inf"))
    if not worst.max_rel_std <= tolerance:
        raise ExportError(
            f"the exported stream differs from PyTorch over {len(batches)} frames at {height}x{width}: {worst}, "
            f"over the tolerance {tolerance:g}; the file was not written"
        )
    return worst


def openvino_step(ov: Any, model: Any) -> Any:
    compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    names = [p.any_name for p in model.inputs]

    def step(batch: np.ndarray, slot_pos: np.ndarray, cache: list[np.ndarray]) -> list[np.ndarray]:
        request.infer(dict(zip(names, (batch, slot_pos, *cache))))
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

    return step


def stream_shape(model: Any) -> tuple[tuple[int, int], list[tuple[int, ...]]]:
    image = model.input(0).get_shape()
    return (int(image[2]), int(image[3])), [tuple(p.get_shape()) for p in model.inputs[2:]]


class IrStream:
    """A saved stream IR read and compiled once (f32 inference for its float parts, as the runtime
    runs it) beside one ONNX Runtime FP32 session of its source ONNX: the export's checks run both
    on the same frames, each as one stream with its own cache carried."""

    def __init__(self, xml: Path, onnx_path: Path, fp32: OrtStream | None = None) -> None:
        """``fp32``: the session of an earlier ``IrStream`` of the same source, else a new one."""
        self.path = xml
        model = openvino_core().read_model(str(xml))
        self.size, self.shapes = stream_shape(model)  # (height, width), the cache's shapes
        self.step = openvino_step(None, model)
        self.fp32 = fp32 if fp32 is not None else OrtStream(onnx_path)

    def depths(self, batches: list) -> list:
        """The IR's depth per frame."""
        return run_stream(self.step, self.shapes, batches)

    def verify(self) -> Comparison:
        """The IR against ONNX Runtime on a photograph panning sideways; the worst frame."""
        batches = stream_frames(*self.size)
        expected = run_stream(self.fp32, self.shapes, batches)
        checks = [compare(g, e) for g, e in zip(self.depths(batches), expected)]
        return max(checks, key=lambda c: c.max_rel_std if c.max_rel_std == c.max_rel_std else float("inf"))


# What an INT8 stream IR keeps in float, tried in this order (NNCF ignored-scope patterns over the
# OpenVINO op names). First the motion modules' attention blocks: their products with the 31 cached
# frames and the softmax are what keeps depth steady from frame to frame (the norms stay in float
# in any case: NNCF quantizes no norm), while each module's input and output projections and
# feed-forward run in INT8 (the stream's cost per frame: docs/video-depth-anything.md#measured).
# When that IR misses a bound (the max-error check against ONNX Runtime, the accuracy budget, or
# with the budget off the broken-artefact bound), the four motion modules whole.
STREAM_FLOAT_SCOPES = (
    ("the motion modules' attention", (".*motion_modules.*attention_blocks.*",)),
    ("the motion modules", (".*motion_modules.*",)),
)


def stream_feeds(ov: Any, model: Any, images: Any) -> list[dict]:
    """The calibration images as one stream's inputs to a stream step (an OpenVINO model): each
    carries the cache the float model built over the images before it. The same for every float
    scope the INT8 export tries, so made once."""
    _, shapes = stream_shape(model)
    float_step = openvino_step(ov, model)
    names = [p.any_name for p in model.inputs]
    feeds, state = [], StreamState(max_gap=None)
    for batch in images:
        slot_pos, cache = state.inputs(shapes)
        feeds.append(dict(zip(names, (batch, slot_pos.copy(), *(c.copy() for c in cache)))))
        state.update(float_step(batch, slot_pos, cache)[1:])
    return feeds


def quantize_stream_openvino(
    model: Any, feeds: list[dict], floats: Iterable[str] = (), scope: tuple = STREAM_FLOAT_SCOPES[0]
) -> tuple[Any, dict]:
    """NNCF INT8 of a stream step, calibrated on ``feeds`` (``stream_feeds``); ``scope`` (a
    ``STREAM_FLOAT_SCOPES`` entry), and the OpenVINO ops ``floats``, in float. ``model`` itself is
    left as it was."""
    nncf = require("nncf", "openvino", "NNCF")
    kept, patterns = scope
    from .quantize.nncf_log import nncf_quiet  # its info lines (every ignored node) would bury ours

    with alternate_stack_kept(), nncf_quiet():  # NNCF's own OpenVINO Cores: see runtime.backends.signal_stack
        quantized = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(patterns=list(patterns), names=list(floats), validate=False),
        )
    from .quantize.sq_fold import fold_smooth_quant_into_float

    folded = fold_smooth_quant_into_float(quantized)  # SmoothQuant's multiplies before the float layers
    record = {"method": "nncf.quantize (stream feeds)", "float": list(patterns), "kept": f"{kept} in float"}
    return quantized, {**record, "frames": len(feeds), "smooth_quant_folded": folded}
