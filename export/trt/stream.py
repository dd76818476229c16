"""Video Depth Anything's streaming step and TensorRT, decided without TensorRT.

The stream ONNX (``docs/video-depth-anything.md``: inputs ``image``, ``slot_pos``, ``cache0`` ..
``cache7``; outputs ``depth``, ``hidden0`` .. ``hidden7``; every shape static) passes this
project's parser rules of TensorRT 8.5 (at opset 16, which ``export.trt`` exports at for 8.5),
8.6, 10.x and 11 (``tests/test_trt_stream.py``). What ``export.trt`` cannot do with it yet is
check an engine: its references and its FP16-typed graphs' references run single images
(``runtime.reference``), while a stream is checked frame by frame with its cache carried
(``export.video.verify_stream``). An engine that nothing checked is not written, so a stream graph
is refused in one line before anything is built (``STREAM_REFUSAL``).

The precision decision for when it builds (``fp32_stream_nodes``): the four motion modules stay
FP32 in an FP16 or INT8 engine, as the OpenVINO INT8 IR keeps them in float; their attention over
the 31 cached frames and their norms are what keep depth steady, and LayerNorm and Softmax are
what overflows in FP16 on TensorRT (NVIDIA/TensorRT#2564). The pins are node names, the form both
``engine.pin_layers_fp32`` (weakly typed) and ``quantize.fp16.fp16_artefact`` (FP32 types in a
strongly typed graph) take.

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.video_state import STREAM_INPUTS

from ..errors import ExportRequestError
from ..graph import load_onnx

IMAGE = "image"
MOTION_MODULES = "/motion_modules."  # the node-name scope PyTorch gives the temporal head's modules
STREAM_REFUSAL = (
    "is a Video Depth Anything stream graph (image, slot_pos, cache0..7); it passes the TensorRT parser "
    "rules (`python -m export.trt --check` shows it), but export.trt checks engines on single images, not "
    "frame by frame with the cache, and writes no engine it has not checked: run the stream with ONNX "
    "Runtime or OpenVINO (runtime.DepthPredictor)"
)


def is_stream_graph(model: Any) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) is the streaming step: its inputs by name."""
    return tuple(i.name for i in model.graph.input) == (IMAGE, *STREAM_INPUTS)


def stream_shapes(model: Any) -> dict:
    """Each input's and output's static shape, by name, as the ONNX states it (an engine of the
    stream needs no optimisation profile); ``ExportRequestError`` for a dimension not fixed."""
    shapes = {}
    for info in (*model.graph.input, *model.graph.output):
        dims = info.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            raise ExportRequestError(f"stream tensor {info.name!r} has a dynamic shape; export the stream at one size")
        shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


def fp32_stream_nodes(model: Any) -> list:
    """The nodes an FP16 or INT8 engine of the stream keeps in FP32: every node of the motion modules."""
    return [n.name for n in model.graph.node if MOTION_MODULES in n.name]


def refuse_stream(path: Any) -> None:
    """``ExportRequestError`` (exit code 2), one line, when the ONNX at ``path`` is a stream graph
    (``None``: no ONNX given, nothing to refuse)."""
    if path is not None and is_stream_graph(load_onnx(path, load_external_data=False)):
        raise ExportRequestError(f"{path} {STREAM_REFUSAL}")


def checkpoint_is_stream(path: Any) -> bool:
    """Whether the checkpoint at ``path`` exports as a stream graph (a Video Depth Anything
    checkpoint, told as ``train.models.load_model`` tells it: by its temporal head's tensor names),
    known before any ONNX is exported: a ``.pth`` is read onto PyTorch's meta device (names and
    shapes, no weights). ``None`` or a folder (a Depth Anything 3 snapshot): ``False``; a file that
    is no checkpoint: ``ExportRequestError``, as its export would raise."""
    if path is None or Path(path).is_dir():
        return False
    from train.models import CheckpointError
    from train.models.checkpoint import read_checkpoint, sniff, to_official
    from train.models.da3.checkpoint import is_da3_state
    from train.models.video.checkpoint import is_video_state

    path = Path(path)
    try:
        raw, _ = read_checkpoint(path, "cpu" if path.is_file() and sniff(path) == "safetensors" else "meta")
    except CheckpointError as exc:
        raise ExportRequestError(str(exc)) from exc
    return not is_da3_state(list(raw)) and is_video_state(to_official(raw)[0])
