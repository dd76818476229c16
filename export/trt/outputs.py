"""Engines with more than one output (Depth Anything 3: ``depth`` and ``sky`` or ``depth_conf``),
decided without TensorRT.

The documented TensorRT behaviour these decisions rest on, as data with the release and document:

- ``PARSER_OUTPUTS``: the ONNX parser marks every graph output as a network output under its ONNX
  name; ``engine.build_engine`` checks the parsed network's outputs against the ONNX's
  (``check_network_outputs``) so no output is lost or renamed before the build.
- ``ENGINE_IO``: a built engine lists its inputs and outputs by name (``num_io_tensors``,
  ``get_tensor_name``, ``get_tensor_mode``), and ``execute_async_v3`` needs an address for every
  one of them (``set_tensor_address``): the runtime allocates a buffer for each output
  (``engine_outputs``) and returns each by name.
- ``FP16_MAX``: an FP16 engine computes the output heads' ``exp`` in FP16 unless told otherwise;
  FP16's largest finite value is 65504, so ``exp`` of a logit over ln(65504) = 11.09 is ``inf``,
  and a logit's FP16 rounding (2^-11 of it) is a relative error of ``exp``'s output of the same
  size: ``exp_tail_nodes`` names the Conv that makes the logits, the ``Exp`` and what follows it to
  the graph output (the ``+ 1`` of the depth confidence), which every FP16 and INT8 build keeps in
  FP32 (the pins ``decisions.engine_attempts`` already applies: layer precisions on 8.x and
  ``--weakly-typed``, FP32 types in the FP16-typed ONNX on 10.x/11.x).

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from runtime.video_state import STREAM_OUTPUTS

from ..errors import ExportError
from ..graph import Graph

PARSER_OUTPUTS = (
    "onnx-tensorrt 8.5-GA, 8.6-GA and 10.x ModelImporter: every ONNX graph output is marked as a network "
    "output with its ONNX name (INetworkDefinition.num_outputs, get_output)"
)
ENGINE_IO = (
    "TensorRT 8.5-11 Python API: ICudaEngine.num_io_tensors, get_tensor_name(i), get_tensor_mode(name) "
    "(TensorIOMode.INPUT/OUTPUT), get_tensor_dtype, get_tensor_shape; IExecutionContext.set_tensor_address "
    "for every I/O tensor before execute_async_v3"
)
FP16_MAX = 65504.0  # IEEE 754 binary16's largest finite value
FP16_EXP_LIMIT = math.log(FP16_MAX)  # 11.09: exp of a larger logit is inf in FP16
# Ops between the logit Conv and the Exp, and between the Exp and the graph output, that move or
# pick values without arithmetic (the DualDPT head picks its channel with Gather; Squeeze drops the
# channel axis); Add is the depth confidence's "+ 1".
_MOVES = ("Gather", "Slice", "Split", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Cast")
_TAIL = (*_MOVES, "Add")


def exp_tail_nodes(model: Any) -> list[str]:
    """Names of the nodes an FP16 or INT8 engine keeps in FP32 so that an output made by ``exp``
    cannot overflow: for every ``Exp`` that reaches a graph output through ``_TAIL`` ops, the Exp,
    those ops, and the Conv making its input (through ``_MOVES``). A graph whose outputs are not
    made by ``exp`` (Depth Anything V2: ReLU or sigmoid) gets none."""
    graph = Graph(model)
    outputs = {o.name for o in model.graph.output}
    names: list[str] = []
    for exp in (n for n in model.graph.node if n.op_type == "Exp"):
        tail = _path_to_output(graph, exp.output[0], outputs)
        if tail is None:
            continue
        head, tensor = [], exp.input[0]
        while tensor in graph.producer and graph.producer[tensor].op_type in _MOVES:
            head.append(graph.producer[tensor])
            tensor = graph.producer[tensor].input[0]
        conv = graph.producer.get(tensor)
        head += [conv] if conv is not None and conv.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") else []
        names += [n.name for n in (*reversed(head), exp, *tail)]
    return list(dict.fromkeys(n for n in names if n))


def _path_to_output(graph: Graph, tensor: str, outputs: set) -> list | None:
    """The ``_TAIL`` nodes from ``tensor`` to a graph output, or ``None`` where it reaches none."""
    path: list = []
    while tensor not in outputs:
        users = graph.users(tensor)
        if len(users) != 1 or users[0].op_type not in _TAIL:
            return None
        if users[0].op_type == "Add" and not any(graph.is_constant(i) for i in users[0].input):
            return None  # an Add of two maps is arithmetic of its own, not the "+ 1"
        path.append(users[0])
        tensor = users[0].output[0]
    return path


def onnx_outputs(model: Any) -> list[str]:
    """The graph's outputs in order: ``depth``, then the extra outputs its metadata names."""
    return [o.name for o in model.graph.output]


def check_network_outputs(onnx: Sequence[str], network: Sequence[str], path: Any) -> None:
    """``ExportError`` unless the parsed network outputs exactly the ONNX's outputs (by name;
    ``PARSER_OUTPUTS``): an engine without one would run and return less than its sidecar says."""
    if sorted(onnx) != sorted(network):
        raise ExportError(
            f"TensorRT parsed {path} into a network with outputs {', '.join(network) or 'none'}, "
            f"not the ONNX's {', '.join(onnx)}; no engine was built"
        )


def extra_outputs_fact(names: Sequence[str]) -> dict:
    """What an engine's sidecar and reference say of its outputs after ``depth`` (as the ONNX's)."""
    extras = [n for n in names[1:] if n not in STREAM_OUTPUTS]  # a stream's hidden states are no map
    return {"extra_outputs": extras} if extras else {}
