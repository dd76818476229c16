"""FP16-typed ONNX graphs for strongly typed TensorRT builds, with as few Casts as the graph allows.

A strongly typed network runs each layer in the type its ONNX tensors carry, so an FP16 engine
needs an FP16-typed graph. This pass gives every float tensor one type, decided once:

- nodes that depend on the image compute in FP16, except the op types asked to stay FP32;
- nodes that do not (shape arithmetic, the position-embedding resize: build-time constants that
  TensorRT folds) stay FP32, so folding happens at full precision;
- graph inputs and outputs stay FP32 (the runtime feeds and reads float32);

and inserts one Cast per tensor and wanted type where a consumer needs the other type. Inputs
that ONNX types as float32 regardless of the data (Resize's roi and scales) stay FP32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.io.files import atomic_write
from runtime.metadata import artefact_digest

from ..artefact import Artefact
from ..graph import (
    FLOAT,
    FLOAT16,
    PROTOBUF_LIMIT,
    QDQ_OPS,
    Graph,
    inferred,
    is_quantized,
    load_onnx,
    model_opset,
    save_onnx,
    weightless,
)

# LayerNorm stays in float32 in FP16-typed graphs: its variance of large activations overflows
# FP16, and a strongly typed network computes a layer in its input's type (10.x NvInfer.h,
# INormalizationLayer::setComputePrecision: strongly typed networks take the precision from the
# input type), so the input itself must be float32. Likewise a LayerNorm split at opset < 17.
FP32_OPS = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt")
# QuantizeLinear-19/DequantizeLinear-19 are the first to take FP16 scales.
FP16_QDQ_OPSET = 19
# (op, input index) slots whose type ONNX fixes to float32, whatever the data type.
ALWAYS_FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
# Ops that read only the shape of a float input, whatever its type.
TYPE_AGNOSTIC = {"Shape", "Size"}


def convert_opset(model: Any, opset: int, limit: int = PROTOBUF_LIMIT) -> Any:
    """``onnx.version_converter`` also for models past protobuf's limit: converted without the
    weight values (the adapters rewrite nodes, not weights), which are put back by name."""
    from onnx import version_converter

    if model.ByteSize() <= limit:
        converted = version_converter.convert_version(model, opset)
    else:
        values = {init.name: init.raw_data for init in model.graph.initializer}
        converted = version_converter.convert_version(weightless(model), opset)
        for init in converted.graph.initializer:
            if not init.raw_data and values.get(init.name):
                init.raw_data = values[init.name]
    # The converter keeps the IR version; opsets 19-20 belong to IR 9.
    converted.ir_version = max(converted.ir_version, 9 if opset >= 19 else converted.ir_version)
    return converted


def cast_counts(model: Any) -> tuple[int, int]:
    """Cast nodes in all, and those on image data (they run on every frame). The others act on
    values that do not depend on the image: build-time constants that TensorRT folds away in a
    static engine, shape-dependent values it recomputes per inference in a dynamic one."""
    constant = Graph(model).image_independent()
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    return len(casts), sum(n.output[0] not in constant for n in casts)


def convert_to_fp16(model: Any, keep_fp32_ops: Iterable[str] = (), keep_fp32_nodes: Iterable[str] = ()) -> Any:
    """An FP16-typed copy of ``model`` with float32 inputs and outputs; nodes of ``keep_fp32_ops``
    and the nodes named in ``keep_fp32_nodes`` compute in FP32."""
    import numpy as np
    from onnx import helper, numpy_helper

    model_copy = type(model)()
    model_copy.CopyFrom(model)
    model = model_copy
    graph = model.graph
    _drop_identities(graph)
    types = Graph(inferred(model)).types
    keep = set(keep_fp32_ops)
    keep_nodes = set(keep_fp32_nodes)
    indexed = Graph(model)
    constant = indexed.image_independent()
    graph_outputs = {o.name for o in graph.output}

    def runs_fp16(node: Any) -> bool:
        if node.op_type in keep or node.name in keep_nodes:
            return False
        # Q/DQ on weights are image-independent too, but TensorRT must see DQ -> Conv/MatMul
        # directly to fuse them into an INT8 kernel: they stay in the FP16 graph.
        return node.op_type in QDQ_OPS or not any(o in constant for o in node.output)

    # 1. The type each float tensor is produced in.
    produced: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        wanted = FLOAT16 if runs_fp16(node) else FLOAT
        for out in node.output:
            if types.get(out) == FLOAT:
                produced[out] = wanted
        if node.op_type in ("Cast", "CastLike") and wanted == FLOAT16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
        if node.op_type == "ConstantOfShape" and wanted == FLOAT16:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))

    # 2. Constants (initializers and Constant nodes) take the type of their consumers; a constant
    #    wanted in both types gets an FP16 twin.
    consumers = indexed.consumers

    def wanted_type(node: Any, index: int) -> int | None:
        if node.op_type in TYPE_AGNOSTIC:
            return None
        if (node.op_type, index) in ALWAYS_FP32_INPUTS or not runs_fp16(node):
            return FLOAT
        return FLOAT16

    constants = {init.name: init for init in graph.initializer}
    constant_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    twins: dict[str, str] = {}
    for name in list(constants) + list(constant_nodes):
        if types.get(name) != FLOAT or name in graph_outputs:
            continue
        wants = {wanted_type(node, index) for node, index in consumers.get(name, [])} - {None}
        if wants == {FLOAT16}:
            is_scale = any(node.op_type in QDQ_OPS and index == 1 for node, index in consumers.get(name, []))
            _retype_constant(constants.get(name), constant_nodes.get(name), scale=is_scale)
            produced[name] = FLOAT16
        else:
            produced[name] = FLOAT
            if FLOAT16 in wants:
                twin = f"{name}__fp16"
                value = numpy_helper.to_array(
                    constants[name] if name in constants else constant_nodes[name].attribute[0].t
                )
                graph.initializer.append(numpy_helper.from_array(value.astype(np.float16), twin))
                twins[name] = twin
    for info in graph.input:
        if info.type.tensor_type.elem_type == FLOAT:
            produced[info.name] = FLOAT

    # 3. Rewire consumers to a tensor of the type they need, through one Cast per (tensor, type).
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[Any] = []
    for node in graph.node:
        for index, name in enumerate(node.input):
            have = produced.get(name)
            if have is None:
                continue
            want = wanted_type(node, index)
            if want is None or have == want:
                continue
            if want == FLOAT16 and name in twins:
                node.input[index] = twins[name]
                continue
            key = (name, want)
            if key not in casts:
                casts[key] = f"{name}__to_{'fp16' if want == FLOAT16 else 'fp32'}"
                new_nodes.append(
                    (name, helper.make_node("Cast", [name], [casts[key]], name=f"{casts[key]}_Cast", to=want))
                )
            node.input[index] = casts[key]
    # Graph outputs produced in FP16: rename the producer's output and cast back under the old name.
    for output in graph.output:
        if produced.get(output.name) == FLOAT16:
            inner = f"{output.name}__fp16"
            for node in graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            new_nodes.append(
                (inner, helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_Cast", to=FLOAT))
            )
    _insert_after_producers(graph, new_nodes)
    del graph.value_info[:]
    return model


def _drop_identities(graph: Any) -> None:
    """Rewire around Identity nodes (the exporter writes one per shared weight): a copy has no
    precision of its own, and each would otherwise need a Cast."""
    outputs = {o.name for o in graph.output}
    alias = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
            continue
        node.input[:] = [alias.get(i, i) for i in node.input]
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


FP16_TINY = 2.0**-14  # the smallest normal FP16 value


def _retype_constant(init: Any, constant_node: Any, scale: bool = False) -> None:
    """Store a float32 constant as FP16. A Q/DQ scale below FP16's normal range is raised to its
    bottom (a scale that small means a tensor within +-0.008, where the coarser step still resolves
    it): in FP16 it would turn subnormal or zero, and zero scales break the quantizer."""
    import numpy as np
    from onnx import numpy_helper

    tensor = init if init is not None else constant_node.attribute[0].t
    values = numpy_helper.to_array(tensor)
    if scale:
        values = np.maximum(values, FP16_TINY)
    tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float16), tensor.name))


def _insert_after_producers(graph: Any, new_nodes: list[tuple[str, Any]]) -> None:
    """Place each new Cast right after the node producing its input, keeping topological order."""
    after: dict[str, list[Any]] = {}
    for source, node in new_nodes:
        after.setdefault(source, []).append(node)
    ordered = []
    for source in [*(i.name for i in graph.input), *(i.name for i in graph.initializer)]:
        ordered += after.pop(source, [])
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in after:
            ordered.append(node)
            ordered += after.pop(node.output[0])
            continue
        ordered.append(node)
        for out in node.output:
            ordered += after.pop(out, [])
    for rest in after.values():  # twins' sources that are initializers already placed above
        ordered += rest
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(
    onnx_path: str | Path,
    output: str | Path,
    keep_fp32_ops: tuple[str, ...] = FP32_OPS,
    keep_fp32_nodes: tuple[str, ...] = (),
) -> Path:
    """``fp16_artefact`` of a file given by its path; returns the path written."""
    return fp16_artefact(Artefact.read(onnx_path), output, keep_fp32_ops, keep_fp32_nodes).path


def fp16_artefact(
    source: Artefact,
    output: str | Path,
    keep_fp32_ops: tuple[str, ...] = FP32_OPS,
    keep_fp32_nodes: tuple[str, ...] = (),
) -> Artefact:
    """An FP16-typed copy of ``source`` with float32 I/O, for strongly typed TensorRT builds;
    ``keep_fp32_nodes`` (node names) also stay FP32 (``export.trt``'s FP32 islands, ``fp32_layers``).
    Returns the copy's record, written to its sidecar.

    A model with Q/DQ nodes is converted to opset 19 first, where their scales can be FP16: the
    whole quantized graph is then FP16, without a Cast pair around every Q/DQ (TensorRT >= 10).
    """
    onnx_path, output = source.path, Path(output)
    model = load_onnx(onnx_path)
    if is_quantized(model) and model_opset(model) < FP16_QDQ_OPSET:
        model = convert_opset(model, FP16_QDQ_OPSET)
    converted = convert_to_fp16(model, keep_fp32_ops, keep_fp32_nodes)
    atomic_write(output, lambda tmp: save_onnx(converted, tmp, location=output.name + ".data"))
    made = replace(source, path=output, reference=None, reference_data=None).updated(
        precision="fp16" if source.precision == "fp32" else f"{source.precision}+fp16",
        typed_fp16=True,
        opset=model_opset(converted),
        fp32_ops=list(keep_fp32_ops),
        fp32_nodes=len(set(keep_fp32_nodes)),
        cast_nodes=dict(zip(("total", "per_frame"), cast_counts(converted))),
        **source.source_facts(),
        sha256=artefact_digest(output),
    )
    return made.write()
