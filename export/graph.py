"""One index of an ONNX graph that every pass uses (TensorRT rules, FP16 typing, SmoothQuant,
node selection), and the file handling every pass shares.

Python 3.8 clean: ``export.trt`` and what it imports run on JetPack 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from commands.errors import require
from runtime.metric import OutputKind

from .errors import ExportRequestError

PROTOBUF_LIMIT = 2**31 - 1  # one protobuf message; larger models (vitg) keep their weights in a .data file
FLOAT, FLOAT16 = 1, 10
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# ONNX TensorProto element types by number (onnx.TensorProto.DataType), named as TensorRT's
# parser documents name them.
ONNX_TYPES = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
    17: "FP8",  # FLOAT8E4M3FN, the FP8 TensorRT reads
    22: "INT4",
    23: "FP4",  # FLOAT4E2M1
}


def load_onnx(path: str | Path, load_external_data: bool = True) -> Any:
    """``onnx.load`` with one-line errors for a missing or unreadable file."""
    onnx = require("onnx", "onnx", "onnx")
    path = Path(path)
    if not path.is_file():
        raise ExportRequestError(f"{path}: no such ONNX file (export one with python -m export.onnx)")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # a truncated or non-ONNX file: protobuf's own errors say little
        raise ExportRequestError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    if not model.ir_version and not model.graph.node:  # protobuf reads an empty file as an empty model
        what = "it is empty (0 bytes)" if path.stat().st_size == 0 else "it holds no model"
        raise ExportRequestError(f"{path} is not an ONNX file: {what}; export one with python -m export.onnx")
    return model


def save_onnx(model: Any, path: str | Path, location: str | None = None) -> None:
    """Save ``model``; past protobuf's 2 GB limit its weights go to one external data file
    (``location``, default ``<name>.data`` beside it)."""
    onnx = require("onnx", "onnx", "onnx")
    path = Path(path)
    large = model.ByteSize() > PROTOBUF_LIMIT
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=location or path.name + ".data",
    )


def onnx_output_kind(path: str | Path) -> OutputKind:
    """What an ONNX file outputs, from its metadata (relative when it says nothing)."""
    model = load_onnx(path, load_external_data=False)
    values = {entry.key: entry.value for entry in model.metadata_props}
    return OutputKind.from_metadata(values, f"{Path(path).name} metadata") or OutputKind()


def model_opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def input_hw(model: Any) -> tuple[int, int] | None:
    """The fixed ``(H, W)`` of the model's NCHW input, ``None`` when dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return (values[2], values[3]) if len(values) == 4 and values[2] and values[3] else None


def is_quantized(model: Any) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def weightless(model: Any, limit: int = 1 << 20) -> Any:
    """A copy without the values of large float initializers: enough for shape and type inference,
    and small enough to serialise when the model itself is past protobuf's 2 GB (vitg)."""
    copy = type(model)()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.data_type in (FLOAT, FLOAT16) and len(init.raw_data) > limit:
            init.ClearField("raw_data")  # dims and type stay: they are what inference reads
    return copy


def inferred(model: Any) -> Any:
    """``model`` with inferred tensor types (run on a weightless copy: also for vitg)."""
    from onnx import shape_inference

    return shape_inference.infer_shapes(weightless(model))


class Graph:
    """Producers, consumers, constants and element types of an ONNX graph.

    Built once per pass; a pass that rewires nodes builds a new one. Element types are those the
    model records (inputs, outputs, ``value_info``, constants): pass an ``inferred`` model to
    have them for every tensor.
    """

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.model = model
        self.opset = model_opset(model)
        self.types: dict[str, int] = {}
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type.elem_type
        self.constants: dict[str, Any] = {}  # initializers and Constant outputs -> their TensorProto
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.constants[init.name] = init
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}  # tensor -> (node, input index)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for index, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, index))
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.types[node.output[0]] = attr.t.data_type
                        self.constants[node.output[0]] = attr.t

    def users(self, tensor: str) -> list[Any]:
        """The nodes reading ``tensor``, once each, in graph order."""
        seen: list[Any] = []
        for node, _ in self.consumers.get(tensor, []):
            if all(node is not other for other in seen):
                seen.append(node)
        return seen

    def only_user(self, tensor: str, op: str) -> Any:
        """The one ``op`` node reading ``tensor``, or ``None`` when there are none or several."""
        found = [n for n in self.users(tensor) if n.op_type == op]
        return found[0] if len(found) == 1 else None

    def type_name(self, tensor: str) -> str | None:
        code = self.types.get(tensor)
        return ONNX_TYPES.get(code, f"type {code}") if code else None

    def array(self, tensor: str) -> Any:
        from onnx import numpy_helper

        init = self.constants.get(tensor)
        return None if init is None else numpy_helper.to_array(init)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def weight_source(self, tensor: str) -> str | None:
        """The constant behind ``tensor``, also through the Identity nodes the exporter writes for
        shared weights (what the TensorRT importers take as weights); ``None`` if it is not one."""
        while tensor not in self.constants:
            node = self.producer.get(tensor)
            if node is None or node.op_type != "Identity":
                return None
            tensor = node.input[0]
        return tensor

    def is_weights(self, tensor: str) -> bool:
        return self.weight_source(tensor) is not None

    def rooted_at_constant(self, tensor: str) -> bool:
        """Whether ``tensor`` comes from constants only (the weight path of a Q/DQ pair)."""
        seen: set[str] = set()
        todo = [tensor]
        while todo:
            name = todo.pop()
            if name in seen or self.is_constant(name) or not name:
                continue
            seen.add(name)
            node = self.producer.get(name)
            if node is None:  # a graph input
                return False
            todo.extend(node.input)
        return True

    def image_independent(self) -> set[str]:
        """Output tensors of nodes whose values do not depend on the graph inputs (the image):
        shape arithmetic and the position-embedding resize, which TensorRT folds at build time."""
        graph = self.model.graph
        data = {i.name for i in graph.input}
        todo = list(data)
        while todo:  # no reliance on node order: some converters append nodes out of order
            for node in self.users(todo.pop()):
                if node.op_type in ("Shape", "Size"):
                    continue
                for out in node.output:
                    if out not in data:
                        data.add(out)
                        todo.append(out)
        return {out for node in graph.node for out in node.output if out not in data}
