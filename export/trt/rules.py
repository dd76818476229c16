"""What each TensorRT release's ONNX parser accepts, checked without TensorRT.

No machine that runs the tests has TensorRT, so the parser's documented rules are kept here as
data and code, each with the document it comes from, and every ONNX that ``export.trt`` builds
from or hands to ``trtexec`` is checked against the target release first:

- ``operators.json``: the operator support matrix (op -> supported tensor types, and the ops
  marked unsupported) transcribed from onnx-tensorrt ``docs/operators.md`` of the 8.5-GA, 8.6-GA
  and 10.1-GA branches; the 11.x table adds what the 10.15 GA matrix and the 11.0 changelog add.
- ``check_model``: the per-node restrictions those documents, TensorRT's ``NvInfer.h`` and the
  parser's importer source state (Einsum inputs, Q/DQ types, zero points and scales, Resize modes,
  constant axes, opset ceilings, DOUBLE tensors).

An op the table does not know is reported, never passed. Keep this module Python 3.8 clean:
``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from commands.errors import require

from ..errors import ExportError, ExportRequestError
from ..graph import ONNX_TYPES, Graph, load_onnx, model_opset

OPERATOR_TABLES = Path(__file__).with_name("operators.json")
# The releases these rules describe (NVIDIA/TensorRT release branches and release notes): 8.5 and
# 8.6 GA, 10.0 GA to 10.16, 11.0 and 11.1. A target outside them is refused rather than checked
# against the nearest table: a later parser may accept or reject what none of the tables says.
KNOWN_RELEASES = {8: (5, 6), 10: tuple(range(17)), 11: (0, 1)}


@dataclass(frozen=True)
class TrtVersion:
    major: int
    minor: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)*", str(text).strip())
        if not match:
            raise ExportRequestError(f"{text!r} is not a TensorRT version (for example 8.5, 10.3 or 11)")
        version = cls(int(match[1]), int(match[2] or 0))
        if version < cls(8, 5):
            raise ExportRequestError(
                f"TensorRT {text} is too old: the name-based runtime API needs 8.5 (JetPack 5) or newer"
            )
        if cls(9, 0) <= version < cls(10, 0):
            raise ExportRequestError(
                f"TensorRT {text} was a short-lived preview; target 8.5/8.6 (JetPack 5/6.0) or 10.x (JetPack 6.1+)"
            )
        return version

    @classmethod
    def target(cls, text: str) -> TrtVersion:
        """A release to check and build for (``--trt-version``): one of :data:`KNOWN_RELEASES`."""
        version = cls.parse(text)
        if not version.known:
            raise ExportRequestError(
                f"TensorRT {text} is not a release whose parser rules this project knows; known: {known_releases()}"
            )
        return version

    @property
    def known(self) -> bool:
        return self.minor in KNOWN_RELEASES.get(self.major, ())

    def __lt__(self, other: TrtVersion) -> bool:
        return (self.major, self.minor) < (other.major, other.minor)

    def __le__(self, other: TrtVersion) -> bool:
        return (self.major, self.minor) <= (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def table(self) -> str:
        """Which transcribed operator table describes this release."""
        if self.major == 8:
            return "8.5" if self.minor <= 5 else "8.6"
        return "10" if self.major == 10 and self.minor < 15 else "11"

    @property
    def max_opset(self) -> int:
        return release_rules(self.table).max_opset

    @property
    def has_layernorm_op(self) -> bool:
        return "LayerNormalization" in release_rules(self.table).ops

    @property
    def fp16_qdq_scales(self) -> bool:
        """Q/DQ with FP16 scales: ONNX opset >= 19 (QuantizeLinear-19) and a parser that reads it (10.x)."""
        return self.major >= 10


def known_releases() -> str:
    """``8.5, 8.6, 10.0-10.16, 11.0, 11.1``: the releases of :data:`KNOWN_RELEASES`, for messages."""
    parts = []
    for major, minors in KNOWN_RELEASES.items():
        if len(minors) > 2:
            parts.append(f"{major}.{minors[0]}-{major}.{minors[-1]}")
        else:
            parts += [f"{major}.{minor}" for minor in minors]
    return ", ".join(parts)


@dataclass(frozen=True)
class ReleaseRules:
    name: str
    document: str
    min_opset: int
    max_opset: int
    ops: dict[str, frozenset]
    unsupported: frozenset


@lru_cache(maxsize=None)
def release_rules(table: str) -> ReleaseRules:
    data = json.loads(OPERATOR_TABLES.read_text())[table]
    header = [int(h) for h in data["header"]]
    # 8.x documents state only a ceiling ("up to Opset 17"); the floor of every release is 9 or lower.
    low, high = (header[0], header[1]) if len(header) == 2 else (1, header[0])
    ops = {op: frozenset(types.split()) for op, types in data["ops"].items()}
    if table.startswith("8."):
        # The 8.x tables list FP32 only, but the importer (8.5-GA/8.6-GA builtin_op_importers.cpp,
        # ConstantOfShape) rejects only UINT8 values and casts INT64 down like every other constant;
        # PyTorch writes every ``expand`` with an INT64 ConstantOfShape.
        ops["ConstantOfShape"] = ops["ConstantOfShape"] | {"INT32"}
        # ...and its Range importer takes INT32 and FP32 only, though the tables list FP16 too.
        ops["Range"] = ops["Range"] - {"FP16"}
    return ReleaseRules(table, data["document"], low, high, ops, frozenset(data["unsupported"]))


@dataclass(frozen=True)
class Finding:
    """One way the model breaks a release's rules: where, which rule, what to do, and the source."""

    node: str
    op: str
    rule: str
    message: str
    source: str

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op})" if self.node else "model"
        return f"{where}: {self.message} [{self.rule}; {self.source}]"


class TrtCompatibilityError(ExportError):
    def __init__(self, path: Path | str, version: TrtVersion, findings: list[Finding]) -> None:
        self.findings = findings
        groups = grouped(findings)
        shown = "; ".join(groups[:3]) + (f"; and {len(groups) - 3} more kinds" if len(groups) > 3 else "")
        super().__init__(f"{path} would not build on TensorRT {version}: {shown}")


def grouped(findings: list[Finding]) -> list[str]:
    """One line per rule and op: the first finding, and how many nodes share it."""
    first: dict[tuple[str, str], Finding] = {}
    count: dict[tuple[str, str], int] = {}
    for finding in findings:
        key = (finding.rule, finding.op)
        first.setdefault(key, finding)
        count[key] = count.get(key, 0) + 1
    return [str(first[k]) + (f" (and {count[k] - 1} more like it)" if count[k] > 1 else "") for k in first]


# Restrictions not expressed by the type table. Each names its source.
DOC_85 = "onnx-tensorrt 8.5-GA docs/operators.md"
SRC_85 = "onnx-tensorrt 8.5-GA/8.6-GA builtin_op_importers.cpp, QuantDequantLinearHelper"
SRC_10 = "onnx-tensorrt 10.1-GA onnxOpImporters.cpp, QuantDequantLinearHelper"
NVINFER_EINSUM = "TensorRT 8.5/8.6 NvInfer.h, IEinsumLayer: no ellipsis, diagonal or more than two inputs"
NVINFER_DQ = "TensorRT 8.5 and 10.3 NvInfer.h, IQuantizeLayer/IDequantizeLayer: per-channel only for weights"
ONNX_QDQ_19 = "ONNX operator spec: QuantizeLinear/DequantizeLinear take float scales only before opset 19"
DOC_TYPES = "docs/operators.md of every release: limited DOUBLE support, cast down to FLOAT with clamping"
RESIZE_MODES = ("nearest", "linear", "cubic")  # 8.5-GA importer implements cubic although the table omits it
RESIZE_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
# Ops whose documented types describe the value they produce, not their first input.
TYPED_BY_OUTPUT = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike", "Shape", "Size"}
# Inputs the importers read as weights, so they must be initializers or Constant outputs, not
# computed: 8.5 table ("`axes` must be an initializer"); 10.1-GA onnxOpImporters.cpp (Squeeze, Clip)
# and importerUtils.cpp (reduce axes: "Axis input must be an initializer!").
CONSTANT_INPUTS = {"Squeeze": (1,), "Unsqueeze": (1,), "Clip": (1, 2)}
CONSTANT_INPUTS_8X = {"Slice": (3,)}
REDUCE_OPS = {
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceMax": 18,
    "ReduceMin": 18,
    "ReduceProd": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 18,
    "ReduceLogSumExp": 18,
    "ReduceSumSquare": 18,
}  # op -> first opset where axes is an input
SRC_CONSTANTS = "onnx-tensorrt 8.5-GA docs/operators.md; 10.1-GA onnxOpImporters.cpp and importerUtils.cpp"
# TopK's K, per release: the 10.x operator docs' TopK says "k <= d, k <= 3840" (docs.nvidia.com/
# deeplearning/tensorrt/latest/_static/operators/TopK.html); the archived TensorRT 8.6.0 EA operator
# page says "k <= d, k <= 1024" (.../tensorrt/archives/tensorrt-860-ea/operators/docs/TopK.html),
# so the 8.x releases are held to 1024. A sort exports as a TopK over the whole axis: the DA3
# mono/metric sky step sorts every pixel of the image (export.trt leaves it to the runtime).
TOPK_MAX_K = 3840  # 10.x and later
TOPK_MAX_K_8X = 1024
SRC_TOPK = "TensorRT 10.x operator docs, TopK: k <= 3840"
SRC_TOPK_8X = "TensorRT 8.6.0 EA operator docs (archives/tensorrt-860-ea), TopK: k <= 1024"


def topk_max_k(version: TrtVersion) -> int:
    """The most values TensorRT ``version``'s TopK takes."""
    return TOPK_MAX_K_8X if version.major == 8 else TOPK_MAX_K


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def check_model(model: Any, version: TrtVersion) -> list[Finding]:
    """Every rule of ``version`` that ``model`` (an ``onnx.ModelProto``) breaks; empty when it parses."""
    onnx = require("onnx", "onnx", "onnx")
    rules = release_rules(version.table)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = Graph(inferred)
    findings: list[Finding] = []
    trt = f"TensorRT {version}"

    opset = model_opset(model)
    if not rules.min_opset <= opset <= rules.max_opset:
        findings.append(
            Finding(
                "",
                "",
                "opset",
                f"ONNX opset {opset}; {trt} reads opset {rules.min_opset}..{rules.max_opset}",
                rules.document,
            )
        )
    for tensor, code in sorted(graph.types.items()):
        if ONNX_TYPES.get(code) == "DOUBLE":
            findings.append(
                Finding(
                    "",
                    "",
                    "no-double",
                    f"tensor {tensor!r} is float64; {trt} would cast it to float32 with clamping: export in float32",
                    DOC_TYPES,
                )
            )

    for node in inferred.graph.node:
        name, op = node.name or f"<{node.op_type}>", node.op_type
        if node.domain not in ("", "ai.onnx"):
            findings.append(
                Finding(
                    name, op, "standard-ops", f"custom-domain op {node.domain}::{op} is not an ONNX op", rules.document
                )
            )
            continue
        if op in rules.unsupported or op not in rules.ops:
            known = "is marked unsupported in" if op in rules.unsupported else "is not in the operator table of"
            hint = "; export at opset 16, which splits it" if op == "LayerNormalization" else ""
            findings.append(Finding(name, op, "operator", f"{op} {known} {trt}{hint}", rules.document))
            continue
        findings += _check_types(node, graph, rules, version)
        findings += _check_node(node, graph, version)
    return findings


def _allowed(types: frozenset, type_name: str, version: TrtVersion) -> bool:
    if type_name in types:
        return True
    # 8.x documents: "limited support for INT32, INT64 ... TensorRT will attempt to cast down INT64 to INT32".
    return version.major == 8 and type_name == "INT64" and "INT32" in types


def _check_types(node: Any, graph: Graph, rules: ReleaseRules, version: TrtVersion) -> list[Finding]:
    types = rules.ops[node.op_type]
    tensors = list(node.output[:1]) if node.op_type in TYPED_BY_OUTPUT else list(node.input[:1])
    if node.op_type in ("Cast", "CastLike"):
        tensors = [node.input[0], node.output[0]]
    found = []
    for tensor in tensors:
        type_name = graph.type_name(tensor)
        if not tensor or type_name is None or _allowed(types, type_name, version):
            continue
        message = (
            f"{node.op_type} on {type_name} tensor {tensor!r}; TensorRT {version} takes {', '.join(sorted(types))}"
        )
        if node.op_type == "DequantizeLinear" and type_name == "INT32":
            message += " (an INT32 quantized bias: quantize without biases, QuantizeBias off)"
        found.append(Finding(node.name, node.op_type, "types", message, rules.document))
    return found


def _check_node(node: Any, graph: Graph, version: TrtVersion) -> list[Finding]:
    op, name, found = node.op_type, node.name, []

    def add(rule: str, message: str, source: str) -> None:
        found.append(Finding(name, op, rule, message, source))

    if op == "Einsum":
        equation = _attr(node, "equation", "")
        if version.major == 8 and len(node.input) > 2:
            add(
                "einsum-inputs",
                f"Einsum {equation!r} has {len(node.input)} inputs; TensorRT 8.x takes two",
                NVINFER_EINSUM,
            )
        if version.major == 8 and "..." in equation:
            add("einsum-ellipsis", f"Einsum {equation!r} uses an ellipsis", NVINFER_EINSUM)
        if version.major == 8 and any(len(set(t)) != len(t) for t in equation.split("->")[0].split(",")):
            add("einsum-diagonal", f"Einsum {equation!r} repeats a label within one input", NVINFER_EINSUM)
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        found += _check_qdq(node, graph, version)
    elif op == "Resize":
        mode = _attr(node, "mode", "nearest")
        transform = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES:
            add("resize-mode", f"Resize mode {mode!r}", DOC_85)
        if transform not in RESIZE_TRANSFORMS:
            add("resize-transform", f"Resize coordinate transformation {transform!r}", DOC_85)
        if _attr(node, "antialias", 0):
            add("resize-antialias", "Resize with antialias", "onnx-tensorrt 10.15 GA docs/operators.md")
    elif op == "TopK":
        bound, most = _topk_bound(node, graph), topk_max_k(version)
        if bound is None or bound > most:
            values = f"{bound} values" if bound is not None else "a number of values known only at run time"
            add(
                "topk-k",
                f"TopK of {values} (a sort over the whole axis); TensorRT {version} takes K <= {most}"
                + (": the sky step of a DA3 mono/metric graph sorts every pixel" if _outputs_sky(graph) else ""),
                SRC_TOPK_8X if version.major == 8 else SRC_TOPK,
            )
    indices = CONSTANT_INPUTS.get(op, ()) + (CONSTANT_INPUTS_8X.get(op, ()) if version.major == 8 else ())
    if op in REDUCE_OPS and graph.opset >= REDUCE_OPS[op]:
        indices += (1,)
    if op == "Clip" and graph.type_name(node.input[0]) not in ("FP32", "FP16", "BF16"):
        indices = ()  # the integer Clip takes tensors
    for index in indices:
        if len(node.input) > index and node.input[index] and not graph.is_weights(node.input[index]):
            add(
                "constant-input",
                f"{op} input {index} ({node.input[index]!r}) is computed, not an initializer",
                SRC_CONSTANTS,
            )
    return found


def _topk_bound(node: Any, graph: Graph) -> int | None:
    """The most values a TopK returns: its constant K, else the length of its axis (K <= it), or
    ``None`` where neither is known before run time."""
    k = graph.array(node.input[1]) if len(node.input) > 1 else None
    if k is not None:
        return int(k.reshape(-1)[0])
    axis = _attr(node, "axis", -1)
    graph_proto = graph.model.graph
    for info in (*graph_proto.value_info, *graph_proto.input, *graph_proto.output):
        if info.name == node.input[0] and info.type.HasField("tensor_type"):
            dims = info.type.tensor_type.shape.dim
            if -len(dims) <= axis < len(dims) and dims[axis].HasField("dim_value"):
                return int(dims[axis].dim_value)
    return None


def _outputs_sky(graph: Graph) -> bool:
    return any(o.name == "sky" for o in graph.model.graph.output)


def _check_qdq(node: Any, graph: Graph, version: TrtVersion) -> list[Finding]:
    op, found = node.op_type, []
    source = SRC_85 if version.major == 8 else SRC_10

    def add(rule: str, message: str, src: str = source) -> None:
        found.append(Finding(node.name, op, rule, message, src))

    if version.major == 8 and len(node.input) < 3:
        add("qdq-zero-point-input", f"{op} without its zero-point input; TensorRT 8.x requires all three inputs")
    scale = graph.array(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        add("qdq-constant-scale", f"{op} scale {node.input[1]!r} is not a constant")
    elif not (scale > 0).all():
        add("qdq-positive-scale", f"{op} has scales <= 0")
    scale_type = graph.type_name(node.input[1]) if len(node.input) > 1 else None
    if scale_type not in (None, "FP32") and graph.opset < 19:
        add("qdq-scale-type", f"{op} scale is {scale_type} at opset {graph.opset}", ONNX_QDQ_19)
    if version.major == 8 and scale_type not in (None, "FP32"):
        add("qdq-scale-type", f"{op} scale is {scale_type}; TensorRT 8.x takes FP32 scales")
    if len(node.input) > 2 and node.input[2]:
        zero = graph.array(node.input[2])
        if zero is None or zero.any():
            add("qdq-zero-point", f"{op} zero point is not all zeros (TensorRT quantizes symmetrically)")
        elif graph.type_name(node.input[2]) == "UINT8":
            add("qdq-uint8", f"{op} zero point is UINT8; TensorRT quantizes to signed INT8")
    if scale is not None and scale.size > 1 and not graph.rooted_at_constant(node.input[0]):
        add("qdq-per-channel-activation", f"{op} quantizes an activation per channel", NVINFER_DQ)
    return found


def check_onnx(path: Path | str, version: TrtVersion) -> list[Finding]:
    """``check_model`` on a file; external data is not loaded (the rules never need weight values
    beyond scales and zero points, which are small initializers stored inline)."""
    return check_model(load_onnx(path, load_external_data=False), version)


def require_compatible(path: Path | str, version: TrtVersion) -> None:
    findings = check_onnx(path, version)
    if findings:
        raise TrtCompatibilityError(path, version, findings)
