"""The TensorRT-ready graph of a Depth Anything 3 mono/metric network leaves its sky step out.

The step (``train.models.da3.model.sky_to_far``) sorts every pixel of the image, which exports
as a TopK over the whole image, more than TensorRT's TopK takes (``rules.topk_max_k``). So
``export.trt`` cuts it from the graph, whatever made the graph (an export of a checkpoint here, or
a given ONNX of this toolkit): the step's input, the network's raw depth, becomes the ``depth``
output, ``sky`` stays, and the graph's metadata says ``sky_step: runtime``; the engine's sidecar
carries the same fact and the runtime applies the step on the host (``runtime.sky``), with the
same numbers. A graph is cut only where its ``depth`` output is the step as this toolkit writes it
(``Reshape(Where(keep, Reshape(raw), far))`` with a TopK in ``far``'s making and ``sky`` beside);
any other graph with a TopK over too many values is left to the parser rules, which refuse it.
INT8 engines start from the cut graph too: calibrated on it (the budget's probes apply the
runtime's step, ``export.quantize.probes``), or, for a Q/DQ graph quantized with the step inside,
its cut copy with its reference (``cut_source``).

Python 3.8 clean: ``export.trt`` runs on JetPack 5.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from runtime.metadata import sidecar_path
from runtime.reference import reference_path
from runtime.sky import RUNTIME, SKY_STEP

from ..errors import ExportError
from ..graph import Graph

DEPTH, SKY = "depth", "sky"


def sky_step_input(model: Any) -> str | None:
    """The raw depth tensor the graph's in-graph sky step starts from, or ``None`` for a graph
    without the step (no ``sky`` output, or a ``depth`` not made by it)."""
    outputs = [o.name for o in model.graph.output]
    if DEPTH not in outputs or SKY not in outputs:
        return None
    graph = Graph(model)
    last = graph.producer.get(DEPTH)
    where = graph.producer.get(last.input[0]) if last is not None and last.op_type == "Reshape" else None
    flat = graph.producer.get(where.input[1]) if where is not None and where.op_type == "Where" else None
    if flat is None or flat.op_type != "Reshape":
        return None
    raw = flat.input[0]
    step = _ancestors(graph, [DEPTH]) - _ancestors(graph, [raw, SKY])
    if not any(graph.producer[t].op_type == "TopK" for t in step if t in graph.producer):
        return None
    return raw


def _ancestors(graph: Graph, tensors: list) -> set:
    """Every tensor the given ones are computed from, themselves included."""
    seen, todo = set(), list(tensors)
    while todo:
        tensor = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        node = graph.producer.get(tensor)
        if node is not None:
            todo.extend(t for t in node.input if t)
    return seen


def cut_sky_step(model: Any, path: Any) -> Any:
    """``model`` (changed in place and returned) without its sky step: the raw depth is the
    ``depth`` output, every node only the step used is gone, and the metadata says
    ``sky_step: runtime``. ``ExportError`` for a graph whose step this cannot cut."""
    raw = sky_step_input(model)
    if raw is None:
        raise ExportError(f"{path}: no sky step of this toolkit's Depth Anything 3 export to cut")
    graph = model.graph
    info = {i.name: i for i in (*graph.value_info, *graph.output)}
    shapes = [_dims(info[name]) for name in (raw, DEPTH) if name in info]
    if len(shapes) == 2 and None not in shapes and not _may_match(*shapes):
        raise ExportError(
            f"{path}: the sky step's depth input has shape {shapes[0]}, not the depth output's {shapes[1]}; "
            "re-export the model with python -m export.onnx"
        )
    for node in graph.node:  # the step's last node loses the name, the raw depth takes it
        node.output[:] = [(DEPTH if o == raw else "") if o in (raw, DEPTH) else o for o in node.output]
        node.input[:] = [DEPTH if i == raw else i for i in node.input]
    keep = _ancestors(Graph(model), [o.name for o in graph.output])
    nodes = [n for n in graph.node if any(o in keep for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    values = [v for v in graph.value_info if v.name in keep and v.name != DEPTH]
    del graph.value_info[:]
    graph.value_info.extend(values)
    inits = [i for i in graph.initializer if i.name in keep]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    props = [p for p in model.metadata_props if p.key != SKY_STEP]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=SKY_STEP, value=RUNTIME)
    return model


def _may_match(a: tuple, b: tuple) -> bool:
    """Two shapes that can be one: the same rank, and fixed sizes equal where both are fixed (a
    symbolic size, as shape inference names a dynamic export's, names no size)."""
    fixed = [(x, y) for x, y in zip(a, b) if isinstance(x, int) and isinstance(y, int) and x and y]
    return len(a) == len(b) and all(x == y for x, y in fixed)


def _dims(info: Any) -> tuple | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims)


def sky_step_fact(model: Any) -> dict:
    """What the engine's sidecar and reference say of a graph whose metadata leaves the step to
    the runtime (``{"sky_step": "runtime"}``), else nothing."""
    return {SKY_STEP: RUNTIME} if any(p.key == SKY_STEP and p.value == RUNTIME for p in model.metadata_props) else {}


def sky_less_source(source: Any, facts: Any, output: Any) -> tuple:
    """The record and facts of the ONNX an engine starts from: ``source`` itself, or for a graph
    with the sky step (FP32, or a Q/DQ INT8 graph ``export.quantize`` made before it cut the step)
    its copy without the step (``<engine>.sky-less.onnx``, with its record and, for a Q/DQ graph,
    its reference: ``cut_source``). An FP16-typed graph is left to the parser rules."""
    from ..graph import load_onnx
    from .decisions import onnx_facts

    model = load_onnx(source.path, False)
    if facts.typed_fp16 or sky_step_fact(model) or sky_step_input(model) is None:
        return source, facts  # a sky-less ONNX given again is taken as it is, for INT8 too
    path = engine_cut_path(output)
    made = cut_source(source, path)
    print(f"sky step left to the runtime (TensorRT's TopK cannot sort every pixel): {path}")
    return made, onnx_facts(path)


def cut_source(source: Any, path: Any) -> Any:
    """Write ``source`` (a record) without its sky step at ``path``, with its record, and return
    that record (read back, with its hash). A Q/DQ INT8 source's reference comes along: the cut
    graph plus the runtime's step computes what the whole graph did (``runtime.sky``, the same
    numbers), so the FP32 outputs it holds (the step applied), the budget it was measured against
    and the inputs it was measured on (``"budget": true``) all stay true of the cut graph."""
    from runtime.metadata import artefact_digest
    from runtime.reference import Reference, reference_path, save_reference

    from ..artefact import Artefact
    from ..graph import is_quantized, load_onnx, save_onnx

    model = cut_sky_step(load_onnx(source.path), source.path)
    quantized = is_quantized(model)
    save_onnx(model, path)
    # An FP32 record's accuracy is its own export's check; a Q/DQ record's is its budget, true of the cut graph too.
    dropped = ("sha256", "verification") if quantized else ("sha256", "accuracy", "verification")
    kept = {k: v for k, v in source.facts.items() if k not in dropped}
    Artefact(path, {**kept, SKY_STEP: RUNTIME, **(source.source_facts() if "sha256" in source.facts else {})}).write()
    base = source.reference_data
    if quantized and base is not None:
        meta = {**base.meta, "artefact": path.name, "artefact_sha256": artefact_digest(path), SKY_STEP: RUNTIME}
        save_reference(reference_path(path), Reference(base.images, base.outputs, meta))
    return Artefact.read(path)


def sky_less_for_quantizing(source: Any, output: Any) -> Any:
    """The FP32 graph ``python -m export.quantize --target tensorrt`` quantizes for ``output``:
    ``source`` (a record) itself, or for a graph with the sky step its copy without the step,
    written beside ``output`` (``<source>.sky-less.onnx``): the Q/DQ graph is then TensorRT-ready,
    its budget measured on the depth after the runtime's step (``export.quantize.probes``)."""
    from ..graph import is_quantized, load_onnx

    model = load_onnx(source.path, False)
    if is_quantized(model) or sky_step_input(model) is None:
        return source
    path = quantize_cut_path(source.path, output)
    made = cut_source(source, path)
    print(f"sky step left to the runtime (TensorRT's TopK cannot sort every pixel): quantizing {path}")
    return made


def engine_cut_path(output: Any) -> Path:
    """Where ``export.trt`` writes the sky-less copy of the ONNX the engine ``output`` starts from."""
    output = Path(output)
    return output.with_name(output.stem + ".sky-less.onnx")


def quantize_cut_path(source: Any, output: Any) -> Path:
    """Where ``export.quantize --target tensorrt`` writes the sky-less copy of ``source`` it
    quantizes for ``output``."""
    return Path(output).with_name(Path(source).stem + ".sky-less.onnx")


@contextmanager
def cut_removed_on_failure(path: Any) -> Iterator[None]:
    """Around the steps from the cut (``cut_source`` at ``path``; ``None``: no cut) to the command's
    last check: where any of them fails (a refusal, too few calibration images, a missed accuracy
    budget), the sky-less copy, its sidecar and its reference are removed again, so a refused
    command leaves nothing it wrote. Files that were there before the command (a sky-less ONNX
    given as the source, or a finished run's) are left."""
    files = () if path is None else (Path(path), sidecar_path(path), reference_path(path))
    before = {f for f in files if f.exists()}
    try:
        yield
    except BaseException:
        for f in files:
            if f not in before and f.exists():
                f.unlink()
        raise
