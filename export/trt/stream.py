"""Video Depth Anything's streaming step and TensorRT, decided without TensorRT.

The stream ONNX (``docs/video-depth-anything.md``: inputs ``image``, ``slot_pos``, ``cache0`` ..
``cache7``; outputs ``depth``, ``hidden0`` .. ``hidden7``; every shape static) passes this
project's parser rules of TensorRT 8.5 (at opset 16, which ``export.trt`` exports at for 8.5),
8.6, 10.x and 11 (``tests/test_trt_stream.py``). ``export.trt`` builds it as a static engine (no
optimisation profile: ``--min/--opt/--max/--batch`` are refused in one line) and checks the engine
frame by frame with the cache carried, against the stream's reference (``stream_reference``: a few
frames of a photograph panning sideways and each frame's FP32 depth, computed with ONNX Runtime on
the FP32 stream ONNX and written beside it, so it travels with ``--onnx-only``'s ONNX to the
device; ``runtime.stream_check`` runs the check on any backend).

The precision decision (``fp32_stream_nodes``): the four motion modules stay FP32 in an FP16
engine, as the OpenVINO INT8 IR keeps them in float; their attention over the 31 cached frames and
their norms are what keep depth steady, and LayerNorm and Softmax are what overflows in FP16 on
TensorRT (NVIDIA/TensorRT#2564). The pins are node names, the form both ``engine.pin_layers_fp32``
(weakly typed) and ``quantize.fp16.fp16_artefact`` (FP32 types in a strongly typed graph) take.
An INT8 stream engine builds from the Q/DQ stream ONNX of ``export.quantize.stream_qdq``
(calibrated on the images run as one stream with the FP32 model's cache carried, the motion modules
in float, held to the accuracy budget frame by frame); its reference is a stream reference of
held-out frames, which the engine inherits with the budget (``stream_reference``).

``slot_pos`` is INT64 in the ONNX; what the engine's I/O tensor is follows the release
(``SLOT_POS_DTYPES``): the 8.x parser casts INT64 inputs down to INT32, 10.x keeps INT64. The
runtime reads the engine's own dtype (``runtime.backends.trt_stream``); the record says it too.

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import InputError
from runtime.accuracy import precision_rule
from runtime.inherited_reference import inherited_reference
from runtime.metadata import artefact_digest
from runtime.reference import Reference, image_of, make_meta, network_input, reference_path, save_reference
from runtime.stream_check import is_stream_reference, stream_meta

from ..artefact import Artefact
from ..errors import ExportRequestError
from ..graph import Graph, is_quantized, load_onnx
from ..metrics import verification_frames
from ..video import ORT_STREAM, OrtStream, is_stream_onnx

IMAGE = "image"
MOTION_MODULES = "/motion_modules."  # the node-name scope PyTorch gives the temporal head's modules
# The reference's frames: the first (empty cache) and seven that read the cache, the photograph
# moved 40 pixels a frame so that the cached frames differ. Measured on the test weights (56x84,
# ONNX Runtime): a cache one frame stale scores 0.24 here against 0.09 with 4 frames of 6 pixels,
# so FP16's bound (0.1) sees it; slot_pos reversed (0.008) or every position 30 (0.07) stays
# under FP16's bound on those weights, over FP32's (5e-4).
FRAMES = 8
SHIFT = 40
AGAINST = ORT_STREAM
AGAINST_TORCH = "PyTorch FP32, frame by frame with the cache carried"
# What the engine's slot_pos I/O tensor is, per major release (the ONNX's is INT64).
SLOT_POS_DTYPES = {8: "int32", 10: "int64", 11: "int64"}
SRC_SLOT_POS = (
    "onnx-tensorrt 8.5-GA/8.6-GA onnx2trt_utils.cpp convertDtype: ONNX INT64 -> DataType.kINT32 (8.x has no "
    "INT64 tensors); 10.x/11.x: INT64 -> DataType.kINT64 (added in TensorRT 10.0)"
)
PROFILE_REFUSAL = (
    "is a Video Depth Anything stream graph: its engine is static (the cache's shape follows from the "
    "frame size), so it takes no --min/--opt/--max/--batch profile; drop them (re-export the stream at "
    "another --size for another frame size)"
)


def is_stream_graph(model: Any) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) is the streaming step, its frame input named
    ``image`` (what ``runtime.backends.trt_stream`` binds): ``export.video.is_stream_onnx``."""
    return is_stream_onnx(model, IMAGE)


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
    """The nodes an FP16 engine of the stream keeps in FP32: every node of the motion modules that
    computes floats (their shape arithmetic and constants are no layers to pin: a TensorRT 8.x
    layer pinned to FP32 has its outputs set to FP32, which an INT64 shape must not be)."""
    import onnx

    if not any(MOTION_MODULES in n.name for n in model.graph.node):
        return []
    types = Graph(onnx.shape_inference.infer_shapes(model))
    return [
        n.name
        for n in model.graph.node
        if MOTION_MODULES in n.name and n.op_type != "Constant" and all(types.type_name(o) == "FP32" for o in n.output)
    ]


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
        if path.is_file() and sniff(path) == "safetensors":
            raw = safetensors_shapes(path)
        else:
            raw, _ = read_checkpoint(path, "meta")
    except CheckpointError as exc:
        raise ExportRequestError(str(exc)) from exc
    return not is_da3_state(list(raw)) and is_video_state(to_official(raw)[0])


def safetensors_shapes(path: Path) -> dict:
    """A ``.safetensors`` file's tensors by name as meta tensors of their shapes: its header read,
    not its weights (a Depth Anything 3 file is gigabytes)."""
    import torch
    from safetensors import SafetensorError, safe_open

    from train.models import CheckpointError

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def slot_pos_dtype(major: int) -> str:
    """The numpy dtype of a release's engine's ``slot_pos`` input (``SLOT_POS_DTYPES``)."""
    return SLOT_POS_DTYPES[8 if major < 10 else min(major, 11)]


def stream_refusal(precision: str, profile: Any) -> str | None:
    """Why an engine of a stream graph cannot be built as asked (the rest of one line), or ``None``."""
    if profile is not None:
        return PROFILE_REFUSAL
    return None  # INT8 too: export.quantize.stream_qdq calibrates the stream


def check_stream_request(path: Any, precision: str, profile: Any) -> bool:
    """Whether the ONNX at ``path`` is a stream graph (``None``: no ONNX given, not yet known);
    ``ExportRequestError`` (exit code 2), one line, for a stream engine asked with a profile."""
    if path is None:
        return False
    model = load_onnx(path, load_external_data=False)
    if not is_stream_graph(model):
        return False
    why = stream_refusal(precision, profile)
    if why is not None:
        raise ExportRequestError(f"{path} {why}")
    stream_shapes(model)  # every shape static, or one line now
    return True


def check_stream_checkpoint(path: Any, precision: str, profile: Any) -> None:
    """``check_stream_request`` for a checkpoint, before its ONNX is exported: a Video Depth Anything
    checkpoint (``checkpoint_is_stream``) asked with a profile is refused in one line."""
    why = stream_refusal(precision, profile) if path is not None else None
    if why is not None and checkpoint_is_stream(path):
        raise ExportRequestError(f"{path} {why}")


def stream_fact(model: Any, major: int) -> dict:
    """What an engine's record says of a stream graph (nothing for another graph)."""
    if not is_stream_graph(model):
        return {}
    return {"stream": stream_meta(FRAMES)["stream"]["layout"], "slot_pos_dtype": slot_pos_dtype(major)}


def make_stream_reference(
    onnx_path: Path, artefact: Path, precision: str, frames: int = FRAMES, model: Any = None
) -> Reference:
    """The stream reference of ``artefact``, made from the FP32 stream ONNX at ``onnx_path`` with
    ONNX Runtime, or with the PyTorch ``model`` it was exported from where given (``export.onnx``:
    a reference the exported file's own runtime made would check that runtime against itself):
    ``frames`` frames of a photograph panning sideways (kept as uint8 images, the network inputs
    their exact normalisation), each frame's depth with the cache carried; held to ``precision``'s
    tolerance, the worst frame judged. In memory (``save_reference`` writes it)."""
    ort = OrtStream(onnx_path) if model is None else None  # no session only to read the size
    if ort is not None:
        height, width = ort.size
    else:
        dims = load_onnx(onnx_path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        height, width = int(dims[2].dim_value), int(dims[3].dim_value)
    images = [image_of(batch) for batch in verification_frames(height, width, frames, SHIFT)]
    batches = [network_input(image) for image in images]
    against = AGAINST if model is None else AGAINST_TORCH
    if ort is not None:
        depths = ort.depths(batches)
    else:
        from ..video import run_stream, torch_step  # PyTorch only here: export.trt imports this module

        depths = run_stream(torch_step(model), model.state_shapes(height, width), batches)
    kind = Artefact.of(onnx_path).output_kind().kind
    metric, tolerance = precision_rule(precision, None, kind)
    source = f"a photograph panning sideways ({SHIFT} pixels a frame)"
    inputs = [
        {"name": f"frame_{i}", "source": source, "size": [height, width], "outputs_from": against}
        for i in range(len(images))
    ]
    meta = make_meta(artefact, precision, metric, tolerance, inputs, against, output_kind=kind, **stream_meta(frames))
    return Reference(images, [d.reshape(height, width).astype(np.float32) for d in depths], meta)


def digest_of(record: Artefact) -> str:
    """The sha256 of the file ``record`` stands for, read from the file as it is now (a sidecar's
    record of it may be older than the file)."""
    return artefact_digest(record.path)


def stream_reference(record: Artefact, fp32: Artefact | None, precision: str) -> Reference | None:
    """The stream reference of ``record`` (the TensorRT-ready stream ONNX, written beside it where
    it has none): its own where it has one, else the FP32 ``fp32``'s (made and written beside that
    one with ONNX Runtime where it has none) at ``precision``; ``None`` where neither is here (an
    FP16-typed ONNX without its reference or source, or a Q/DQ one without its own: its engine is not
    checked). A Q/DQ source's reference holds FP32 depths at its INT8 budget: what is typed from it
    inherits that budget (``precision`` int8)."""
    own, own_digest = record.reference_data, digest_of(record)  # each file read once for its digest
    if own is not None and is_stream_reference(own) and own.meta.get("artefact_sha256") == own_digest:
        return own  # the ready ONNX's own, written for this very file
    base = fp32.reference_data if fp32 is not None else None
    same = fp32 is not None and fp32.path == record.path
    digest = own_digest if same else digest_of(fp32) if fp32 is not None else None
    stale = base is None or not is_stream_reference(base) or base.meta.get("artefact_sha256") != digest
    if fp32 is not None and is_quantized(load_onnx(fp32.path, load_external_data=False)):
        if stale:
            return None  # a Q/DQ graph's outputs are no FP32 depths to make one from
        precision = "int8"
    elif fp32 is not None and stale:  # none, one of another file, or one naming no file: made again from the FP32 ONNX
        base = make_stream_reference(fp32.path, fp32.path, "fp32")
        base.meta["artefact_sha256"] = digest
        try:  # kept beside the FP32 ONNX for the next build; in memory where that folder is read-only
            base.path = save_reference(reference_path(fp32.path), base)
        except (OSError, InputError):  # atomic_write says a folder it may not write in as an InputError
            base.path = None
    if base is None:
        return None
    if same:
        return base
    made = inherited_reference(base, record.path.name, precision, base.sizes)
    made.meta["artefact_sha256"] = own_digest
    made.path = save_reference(reference_path(record.path), made)
    return made
