"""What a TensorRT build of this project is, decided without TensorRT.

Every decision that depends on the TensorRT release is made by the plain functions here
(``plan_build``, ``export_opset``, ``split_layernorm_nodes``, ``trtexec_command``...), so all of
them are tested on machines without TensorRT; ``export.trt.build`` is the thin part that calls
the library, and every ONNX it builds from passes ``export.trt.rules`` first.

- 8.x (JetPack 5.1 ships 8.5, JetPack 6.0 8.6): explicit-batch network, precision flags; INT8
  from FP32 Q/DQ + the INT8 flag; a LayerNorm split at opset 16 (8.5) is pinned to FP32.
- 10.x (JetPack 6.1/6.2 ship 10.3): strongly typed network from an FP16-typed ONNX (Q/DQ with
  FP16 scales at opset 19 for INT8); ``--weakly-typed`` falls back to the deprecated flags.
- 11.x: strongly typed only; anything needing flags is refused with the reason.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ExportError, ExportRequestError
from ..graph import FLOAT16, Graph, is_quantized, load_onnx, model_opset
from ..source import check_hw, check_precision
from .rules import TrtVersion

DEFAULT_TARGET = "10.3"  # JetPack 6
JETPACK_NOTE = "on Jetson TensorRT comes with JetPack (python3-libnvinfer), not from pip"


@dataclass(frozen=True)
class BuildPlan:
    """What to feed TensorRT and how: the ONNX variant, network and builder flags."""

    precision: str
    strongly_typed: bool
    typed_fp16: bool  # the ONNX itself carries FP16 types
    quantized: bool  # the ONNX carries Q/DQ INT8
    builder_flags: tuple[str, ...]
    network_flags: tuple[str, ...]
    fp32_layers: tuple[str, ...] = ()  # layers pinned to FP32 (8.x: a split LayerNorm under FP16)
    cleared_flags: tuple[str, ...] = ()  # flags on by default that this build turns off

    @property
    def onnx_suffix(self) -> str:
        return {"fp32": ".trt-fp32.onnx", "fp16": ".trt-fp16.onnx", "int8": ".trt-int8.onnx"}[self.precision]

    def pin_fp32(self, layers: list[str]) -> BuildPlan:
        """Pin ``layers`` to FP32 where FP16 is enabled by flag; a typed network needs no pins."""
        if not layers or self.strongly_typed or "FP16" not in self.builder_flags:
            return self
        flags = (*self.builder_flags, "OBEY_PRECISION_CONSTRAINTS")
        return replace(self, builder_flags=flags, fp32_layers=tuple(layers))


def plan_build(version: TrtVersion, precision: str, weakly_typed: bool = False) -> BuildPlan:
    check_precision(precision)
    if version.major >= 11 and weakly_typed:
        raise ExportRequestError(
            f"TensorRT {version} builds strongly typed networks only (precision flags were removed); "
            "drop --weakly-typed"
        )
    quantized = precision == "int8"
    # TF32 is on by default (NvInfer.h 8.5-11.1, BuilderFlag::kTF32): an FP32 reference would not be FP32.
    cleared = ("TF32",) if precision == "fp32" else ()
    if version.major >= 10 and not weakly_typed:
        # 11 types every network strongly; its STRONGLY_TYPED flag is deprecated and ignored (NvInfer.h 11.1).
        network = ("STRONGLY_TYPED",) if version.major == 10 else ()
        return BuildPlan(precision, True, precision != "fp32", quantized, (), network, cleared_flags=cleared)
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    network = ("EXPLICIT_BATCH",) if version.major < 10 else ()
    return BuildPlan(precision, False, False, quantized, flags, network, cleared_flags=cleared)


def export_opset(version: TrtVersion) -> int:
    """The opset to export at: 16 splits LayerNorm for releases without the op (8.5)."""
    return 17 if version.has_layernorm_op else 16


def split_layernorm_nodes(model) -> list[str]:
    """Names of the nodes of every LayerNorm written out as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div
    (opset < 17): the ones that overflow in FP16 on TensorRT 8.x (NVIDIA/TensorRT#2564 and #2781,
    where the builder's own warning says so). The affine Mul/Add after them stay free."""
    graph = Graph(model)
    names: list[str] = []
    for pow_node in (n for n in model.graph.node if n.op_type == "Pow"):
        exponent = graph.array(pow_node.input[1])
        sub = graph.producer.get(pow_node.input[0])
        if exponent is None or float(exponent.reshape(-1)[0]) != 2.0:
            continue
        if sub is None or sub.op_type != "Sub":
            continue
        mean = graph.producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        variance = graph.only_user(pow_node.output[0], "ReduceMean")
        add = variance and graph.only_user(variance.output[0], "Add")
        sqrt = add and graph.only_user(add.output[0], "Sqrt")
        div = sqrt and graph.only_user(sqrt.output[0], "Div")
        if div is None or div.input[0] != sub.output[0]:
            continue
        names += [node.name for node in (mean, sub, pow_node, variance, add, sqrt, div)]
    return names


@dataclass(frozen=True)
class Profile:
    """Batch x height x width ranges of a dynamic engine (``None`` ranges: static)."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def build(
        cls, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...], max_batch: int = 1, opt_batch: int = 1
    ) -> Profile:
        """Batch 1 to ``max_batch``, tuned at ``opt_batch``: TensorRT picks the kernels fastest at the
        opt shape among those valid over min..max (``tensorrt.IOptimizationProfile``), so an engine
        for N cameras is tuned at batch N (``--batch N``)."""
        if not 1 <= opt_batch <= max_batch:
            raise ExportRequestError(f"a profile's batch needs 1 <= opt <= max, got opt {opt_batch}, max {max_batch}")
        shapes = []
        for name, hw, batch in (("min", low, 1), ("opt", opt, opt_batch), ("max", high, max_batch)):
            check_hw(*hw, what=f"--{name} profile")
            shapes.append((batch, *hw))
        for axis in (1, 2):
            if not shapes[0][axis] <= shapes[1][axis] <= shapes[2][axis]:
                raise ExportRequestError(f"profile must satisfy min <= opt <= max in every dimension, got {shapes}")
        return cls(*shapes)

    def shapes(self) -> dict[str, tuple[int, int, int, int]]:
        return {k: (v[0], 3, v[1], v[2]) for k, v in (("min", self.min), ("opt", self.opt), ("max", self.max))}


TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "OBEY_PRECISION_CONSTRAINTS": "--precisionConstraints=obey"}


def trtexec_command(
    onnx: Path,
    engine: Path,
    plan: BuildPlan,
    input_name: str,
    profile: Profile | None,
    workspace_mib: int,
    timing_cache: Path | None,
) -> str:
    """The ``trtexec`` call that builds the same engine on the target device."""
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if "STRONGLY_TYPED" in plan.network_flags:  # 11's trtexec types strongly by default
        args.append("--stronglyTyped")
    args += [TRTEXEC_FLAGS[flag] for flag in plan.builder_flags]
    if "TF32" in plan.cleared_flags:
        args.append("--noTF32")
    if plan.fp32_layers:
        # trtexec takes exact layer names (the ONNX node names) or "*", no patterns.
        args.append("--layerPrecisions=" + ",".join(f"{name}:fp32" for name in plan.fp32_layers))
        args.append("--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in plan.fp32_layers))
    if profile is not None:
        for name, shape in profile.shapes().items():
            args.append(f"--{name}Shapes={input_name}:{'x'.join(map(str, shape))}")
    args.append(f"--memPoolSize=workspace:{workspace_mib}")  # MiB; 8.x's trtexec takes no unit suffix
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def timing_cache_path(folder: Path, trt_version: str, gpu_name: str, capability: tuple[int, int]) -> Path:
    """One cache per TensorRT release and GPU, so a cache from elsewhere is never silently reused."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return folder / f"timing-trt{trt_version}-{gpu}-sm{capability[0]}{capability[1]}.cache"


@dataclass(frozen=True)
class OnnxFacts:
    opset: int
    input_name: str
    dynamic: bool  # height/width dynamic
    quantized: bool  # carries Q/DQ nodes already (calibrated earlier)
    typed_fp16: bool  # carries FP16 tensors (made for a strongly typed build)
    hw: tuple[int, int] | None  # the fixed input height and width, None when dynamic


def onnx_facts(path: Path) -> OnnxFacts:
    model = load_onnx(path, load_external_data=False)
    if not model.graph.input:
        raise ExportRequestError(f"{path} has no graph input; export.trt builds models that take an image")
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    dynamic = len(dims) == 4 and not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value"))
    typed = any(i.data_type == FLOAT16 for i in model.graph.initializer)
    hw = None if dynamic or len(dims) != 4 else (dims[2].dim_value, dims[3].dim_value)
    return OnnxFacts(model_opset(model), graph_input.name, dynamic, is_quantized(model), typed, hw)


# ----------------------------------------------------------------------------------------------
# The engine's check against its reference, and the FP32 fallback when it fails.
#
# TensorRT 10.3 and 10.4 (JetPack 6.1/6.2 ship 10.3) build DINOv2 / Depth Anything V2 engines
# whose FP16 output is wrong while 8.6 and 10.12 build them right (NVIDIA/TensorRT#4723, #4742;
# spacewalk01/depth-anything-tensorrt#49 on an AGX Orin); the overflow-prone parts of a ViT in
# FP16 are LayerNorm and attention (NVIDIA/TensorRT#2564: "set it to FP32 manually"). So an engine
# over its reference's tolerance is built once more with LayerNorm, Softmax and the attention
# MatMuls in FP32, in the form the release accepts: weakly typed (8.x, --weakly-typed on 10.x)
# as layer precisions and output types with OBEY_PRECISION_CONSTRAINTS (NvInfer.h 8.5-10.x,
# ILayer::setPrecision: hints unless a precision-constraints flag is set); strongly typed (10.x,
# 11 always) as FP32 types in the ONNX itself (NvInfer.h 10.3: "Strongly-typed networks reject
# calls to method setPrecision").

# In FP16-typed and Q/DQ graphs these sit between an attention MatMul and its Softmax; they do no
# arithmetic of their own, so the search for the MatMuls looks through them.
_PASS_THROUGH = ("Cast", "QuantizeLinear", "DequantizeLinear")
ISLANDS = "LayerNorm, Softmax and the attention MatMuls"


def _through(graph: Graph, tensor: str, upward: bool) -> list:
    """The nodes reached from ``tensor`` through Cast and Q/DQ: its producer (``upward``) or its readers."""
    found, todo = [], [tensor]
    while todo:
        name = todo.pop()
        if upward:
            nodes = [graph.producer[name]] if name in graph.producer else []
        else:
            nodes = graph.users(name)
        for node in nodes:
            if node.op_type in _PASS_THROUGH:
                todo.append(node.input[0] if upward else node.output[0])
            else:
                found.append(node)
    return found


def fp32_island_nodes(model) -> list[str]:
    """Names of the nodes a FP32 fallback keeps in FP32: every LayerNorm (the op, or split at
    opset < 17), every Softmax, the MatMul before it (Q x K^T) with the scale Muls on its inputs,
    and the MatMul after it (x V). Q/DQ and Cast nodes between them are looked through."""
    graph = Graph(model)
    names = [n.name for n in model.graph.node if n.op_type == "LayerNormalization"]
    names += split_layernorm_nodes(model)
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        names.append(softmax.name)
        for scores in _through(graph, softmax.input[0], upward=True):
            if scores.op_type != "MatMul":
                continue
            names.append(scores.name)
            for operand in scores.input:
                names += [n.name for n in _through(graph, operand, upward=True) if n.op_type in ("Mul", "Div")]
        names += [n.name for n in _through(graph, softmax.output[0], upward=False) if n.op_type == "MatMul"]
    return list(dict.fromkeys(n for n in names if n))


def match_layers(model, patterns: tuple[str, ...]) -> list[str]:
    """Node names matching any of the ``--fp32-layers`` globs; a glob that matches nothing is an error."""
    names = [n.name for n in model.graph.node if n.name]
    found: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ExportRequestError(
                f"--fp32-layers {pattern!r} matches no node of the model (node names look like {names[0]!r})"
                if names
                else f"--fp32-layers {pattern!r}: the model's nodes have no names"
            )
        found += hits
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class EngineAttempt:
    """One build of the engine: its name in messages and the node names it keeps in FP32."""

    label: str
    fp32_nodes: tuple[str, ...]


def engine_attempts(
    plan: BuildPlan, islands: list[str], asked: list[str], pinned: Sequence[str] = ()
) -> list[EngineAttempt]:
    """The builds to try in turn: as planned (with the ``--fp32-layers`` asked for), then, where the
    build has FP16 arithmetic to take back, with the FP32 islands too. An FP32 build has none.
    ``pinned``: nodes every build with FP16 arithmetic keeps in FP32 (``outputs.exp_tail_nodes``)."""
    has_fp16 = plan.typed_fp16 or "FP16" in plan.builder_flags
    kept = tuple(dict.fromkeys([*(pinned if has_fp16 else ()), *asked]))
    first = EngineAttempt("as built" if not asked else f"with {len(asked)} --fp32-layers nodes in FP32", kept)
    wider = tuple(dict.fromkeys([*kept, *islands]))
    if not has_fp16 or set(wider) == set(kept):
        return [first]
    return [first, EngineAttempt(f"rebuilt with {ISLANDS} in FP32 ({len(wider)} nodes)", wider)]


class EngineOverTolerance(ExportError):
    """Every build of the engine was over its reference's tolerance: nothing written (exit code 1)."""

    def __init__(self, message: str, results: list) -> None:
        super().__init__(message)
        self.results = results


def refusal_message(
    attempts: list[EngineAttempt], results: list, version: TrtVersion, engine: Path, strongly_typed: bool
) -> str:
    """Both errors, the release and what to try, for an engine no build got within tolerance."""
    tried = "; ".join(f"{a.label}: {r.summary()}" for a, r in zip(attempts, results))
    hints = [
        "a newer TensorRT (10.3 and 10.4 build wrong FP16 DINOv2 / Depth Anything engines, NVIDIA/TensorRT#4723 "
        "and #4742; later releases fixed related bugs, NVIDIA/TensorRT#4419)",
        "more layers in FP32 with --fp32-layers 'GLOB' (node names of the ONNX, repeatable)",
        "an FP32 engine (--fp32)",
    ]
    if len(attempts) == 1 and strongly_typed:
        hints.insert(1, "the FP32 or Q/DQ ONNX this FP16-typed one came from, so the fallback can retype it")
    return (
        f"the TensorRT {version} engine is over its reference's tolerance ({tried}); no engine was written to "
        f"{engine}. Try {', or '.join(hints)}"
    )


def checked_build(
    attempts: list[EngineAttempt],
    build: Callable[[EngineAttempt], Path],
    measure: Callable[[Path], object],
    refuse: Callable[[list], str],
) -> tuple[Path, EngineAttempt, list]:
    """Build each attempt in turn until one is within tolerance; return its file, the attempt and
    every result. ``build`` writes a candidate under a temporary name, ``measure`` scores it
    against the reference (a ``runtime.reference.VerifyResult``). A candidate over tolerance is
    deleted; when all are, ``EngineOverTolerance`` carries ``refuse(results)``."""
    results = []
    for attempt in attempts:
        candidate = build(attempt)
        try:
            result = measure(candidate)
        except BaseException:
            candidate.unlink(missing_ok=True)
            raise
        results.append(result)
        if result.passed:
            return candidate, attempt, results
        print(f"engine {attempt.label}: {result.summary()}")
        candidate.unlink(missing_ok=True)
    raise EngineOverTolerance(refuse(results), results)


# ----------------------------------------------------------------------------------------------
# What an engine's record says of its sizes, its build and its check.


def engine_sizes(height: int, width: int, profile: Profile | None) -> list[tuple[int, int]]:
    """The sizes an engine's reference holds: its own, or the profile's opt size and one other."""
    if profile is None:
        return [(height, width)]
    other = profile.min[1:] if profile.min[1:] != profile.opt[1:] else profile.max[1:]
    return [(height, width)] if other == (height, width) else [(height, width), tuple(other)]


def islands_onnx(ready: Path) -> Path:
    """Where the FP16-typed ONNX with the FP32 islands goes: named after the ready one, so a copy
    of ``<ready>*`` takes it along."""
    return ready.with_name(ready.name + ".fp32-islands.onnx")


def plan_facts(plan: BuildPlan) -> dict:
    return {"builder_flags": list(plan.builder_flags), "fp32_layers": len(plan.fp32_layers)}


def verification_record(reference, attempts: list, results: list, chosen: EngineAttempt) -> dict:
    """What the engine's sidecar says about its check: every attempt's error and the one kept."""
    if reference is None:
        return {"checked": False, "why": "no reference beside the TensorRT-ready ONNX"}
    final = results[-1]
    return {
        "checked": True,
        "against": reference.meta.get("outputs_from"),
        "metric": final.metric,
        "tolerance": final.tolerance,
        "error": final.value,
        "attempts": [{"build": a.label, "error": r.value} for a, r in zip(attempts, results)],
        "fp32_nodes": len(chosen.fp32_nodes),
    }
