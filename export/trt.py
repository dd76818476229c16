"""``python -m export.trt``: TensorRT FP16/INT8 engines, explicit INT8 only.

Every decision that depends on the TensorRT release is made by plain functions below
(``plan_build``, ``export_opset``, ``split_layernorm_nodes``, ``trtexec_command``...) and every
ONNX it builds from or hands to ``trtexec`` passes ``export.trt_rules`` (the release's
documented parser rules) first, so both are tested without TensorRT; ``build_engine`` is the
thin part that calls the library.

- 8.x (JetPack 5.1 ships 8.5, JetPack 6.0 8.6): explicit-batch network, precision flags; INT8
  from FP32 Q/DQ + the INT8 flag; a LayerNorm split at opset 16 (8.5) is pinned to FP32.
- 10.x (JetPack 6.1/6.2 ship 10.3): strongly typed network from an FP16-typed ONNX (Q/DQ with
  FP16 scales at opset 19 for INT8); ``--weakly-typed`` falls back to the deprecated flags.
- 11.x: strongly typed only; anything needing flags is refused with the reason.

The TensorRT-ready ONNX is always written first and is portable: ``--onnx-only`` stops there
(calibrate on a workstation, then on the Jetson ``python -m export.trt --int8 --onnx <it>`` or
the printed ``trtexec`` command). ``--check MODEL.onnx`` runs the rule check alone.
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.errors import MissingDependencyError, require
from runtime.fileio import atomic_write_bytes
from runtime.metadata import library_versions, read_sidecar, sha256_file, write_sidecar

from .common import (
    ExportError,
    add_calibration_args,
    add_precision_args,
    add_size_arg,
    add_source_args,
    check_hw,
    check_precision,
    check_request,
    parse_hw,
    run_cli,
    source_onnx,
    source_stem,
    stage,
)
from .quantize import DEFAULT_METHOD, METHODS
from .trt_rules import TrtCompatibilityError, TrtVersion, check_onnx, grouped, model_opset, require_compatible

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
        raise ExportError(
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
    from onnx import numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    constants = {init.name: init for init in model.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"})

    def only_user(tensor: str, op: str):
        found = [n for n in users.get(tensor, []) if n.op_type == op]
        return found[0] if len(found) == 1 else None

    names: list[str] = []
    for pow_node in (n for n in model.graph.node if n.op_type == "Pow"):
        exponent = constants.get(pow_node.input[1])
        sub = producer.get(pow_node.input[0])
        if exponent is None or float(numpy_helper.to_array(exponent).reshape(-1)[0]) != 2.0:
            continue
        if sub is None or sub.op_type != "Sub":
            continue
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        variance = only_user(pow_node.output[0], "ReduceMean")
        add = variance and only_user(variance.output[0], "Add")
        sqrt = add and only_user(add.output[0], "Sqrt")
        div = sqrt and only_user(sqrt.output[0], "Div")
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
    def build(cls, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...], max_batch: int = 1) -> Profile:
        shapes = []
        for name, hw, batch in (("min", low, 1), ("opt", opt, 1), ("max", high, max_batch)):
            check_hw(*hw, what=f"--{name} profile")
            shapes.append((batch, *hw))
        for axis in (1, 2):
            if not shapes[0][axis] <= shapes[1][axis] <= shapes[2][axis]:
                raise ExportError(f"profile must satisfy min <= opt <= max in every dimension, got {shapes}")
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
    onnx = require("onnx", "onnx", "onnx")
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file (export one with python -m export.onnx)")
    model = onnx.load(str(path), load_external_data=False)
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    dynamic = len(dims) == 4 and not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value"))
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    typed = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    hw = None if dynamic or len(dims) != 4 else (dims[2].dim_value, dims[3].dim_value)
    return OnnxFacts(model_opset(model), graph_input.name, dynamic, quantized, typed, hw)


def installed_tensorrt():
    """The tensorrt module, or ``None`` when it is not installed."""
    try:
        return require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
    except MissingDependencyError:
        return None


def pin_layers_fp32(trt, network, names: tuple[str, ...]) -> int:
    """Set FP32 precision and output types on the named layers; how many were found."""
    wanted, pinned = set(names), 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def build_engine(
    trt,
    onnx_path: Path,
    plan: BuildPlan,
    profile: Profile | None,
    input_name: str,
    workspace_mib: int,
    timing_cache: Path | None,
) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine, reusing and updating the timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.fp32_layers:
        pinned = pin_layers_fp32(trt, network, plan.fp32_layers)
        print(f"pinned {pinned} of {len(plan.fp32_layers)} split-LayerNorm layers to FP32")
    if profile is not None:
        optimisation = builder.create_optimization_profile()
        shapes = profile.shapes()
        optimisation.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(optimisation)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"warning: {timing_cache} does not match this TensorRT/GPU; starting a new timing cache")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine; its log above says why")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.trt",
        description="Build a TensorRT engine (FP16 default, INT8 calibrated on SA-1B samples into explicit Q/DQ). "
        "Every ONNX it builds from or hands to trtexec is first checked against the target release's parser rules.",
    )
    add_source_args(parser, onnx=True)
    add_precision_args(
        parser, {"fp16": "FP16 (default)", "int8": "INT8 with --calib-dir", "fp32": "FP32 (reference)"}, "fp16"
    )
    add_calibration_args(parser, METHODS, DEFAULT_METHOD)
    parser.add_argument(
        "--keep-fp", action="append", default=[], metavar="PATTERN", help="node-name glob kept in float"
    )
    add_size_arg(parser, "a static --onnx's own, else 518x518", aliases=("--shape",))
    parser.add_argument("--min", type=parse_hw, dest="min_shape", help="dynamic profile: smallest HxW")
    parser.add_argument("--opt", type=parse_hw, dest="opt_shape", help="dynamic profile: HxW to tune and calibrate at")
    parser.add_argument("--max", type=parse_hw, dest="max_shape", help="dynamic profile: largest HxW")
    parser.add_argument("--max-batch", type=int, default=1, help="dynamic profile: largest batch (default 1)")
    parser.add_argument("--workspace", type=int, default=4096, help="builder workspace in MiB (default 4096)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache folder (default: the output folder)")
    parser.add_argument("--weakly-typed", action="store_true", help="TensorRT 8.x-style precision flags on 10.x")
    parser.add_argument(
        "--trt-version",
        help=f"target TensorRT release when it is not installed here (default {DEFAULT_TARGET}): "
        "8.5 = JetPack 5.1, 8.6 = JetPack 6.0, 10.3 = JetPack 6.1/6.2",
    )
    parser.add_argument("--onnx-only", action="store_true", help="stop after the TensorRT-ready ONNX")
    parser.add_argument(
        "--check",
        type=Path,
        metavar="MODEL.onnx",
        help="only check MODEL.onnx against the target release's parser rules (--trt-version or the installed one)",
    )
    parser.add_argument("--output", type=Path, help="engine path (default artifacts/<model>.<precision>.engine)")
    return parser


def resolve_profile(args: argparse.Namespace) -> Profile | None:
    given = [args.min_shape, args.opt_shape, args.max_shape]
    if not any(given):
        return None
    if not all(given):
        raise ExportError("a dynamic profile needs all of --min, --opt and --max")
    return Profile.build(args.min_shape, args.opt_shape, args.max_shape, args.max_batch)


def target_version(trt, requested: str | None) -> TrtVersion:
    """The installed TensorRT, or the release named by --trt-version (default: JetPack 6's)."""
    version = TrtVersion.parse(trt.__version__ if trt is not None else (requested or DEFAULT_TARGET))
    if trt is not None and requested and TrtVersion.parse(requested) != version:
        raise ExportError(f"--trt-version {requested} differs from the installed TensorRT {trt.__version__}")
    return version


def check_command(path: Path, version: TrtVersion) -> int:
    findings = check_onnx(path, version)
    if not findings:
        print(f"{path}: passes every TensorRT {version} parser rule this project encodes")
        return 0
    lines = "\n".join(grouped(findings))
    print(f"{path}: {len(findings)} problem(s) for TensorRT {version}:\n{lines}")
    return 1


def source_hint(args: argparse.Namespace, version: TrtVersion) -> str:
    """How to get an ONNX this release reads, for a --onnx that breaks its rules."""
    opset = export_opset(version)
    if args.onnx is None:
        return ""
    return (
        f"; re-export it for TensorRT {version}: python -m export.onnx --checkpoint CKPT --opset {opset}, "
        f"or pass export.trt --checkpoint CKPT instead of --onnx and it exports at opset {opset} itself"
    )


def main(args: argparse.Namespace) -> int:
    trt = installed_tensorrt()
    if args.check is not None:
        return check_command(args.check, target_version(trt, args.trt_version))
    if trt is None and not args.onnx_only:
        raise ExportError(
            "TensorRT is not installed here: pip install 'dav2-edge[tensorrt]' (" + JETPACK_NOTE + "), "
            "or pass --onnx-only to write the TensorRT-ready ONNX and build it on the target"
        )
    given = onnx_facts(args.onnx) if args.onnx is not None else None
    prequantized = given is not None and given.quantized
    if prequantized and args.precision != "int8":
        raise ExportError(f"{args.onnx} is already quantized (Q/DQ INT8): pass --int8, or give the FP32 ONNX")
    if not prequantized:
        check_request(args)
    version = target_version(trt, args.trt_version)
    plan = plan_build(version, args.precision, args.weakly_typed)
    profile = resolve_profile(args)
    if given is not None and given.dynamic and profile is None:
        raise ExportError(f"{args.onnx} has a dynamic input: give --min, --opt and --max for the engine's profile")
    if given is not None and given.hw is not None:
        if args.size is not None and tuple(args.size) != given.hw:
            raise ExportError(f"{args.onnx} takes {given.hw[0]}x{given.hw[1]} inputs; drop --size or re-export it")
        args.size = given.hw
    height, width = profile.opt[1:] if profile else check_hw(*(args.size or (518, 518)))
    output = args.output or Path("artifacts") / f"{source_stem(args)}.{args.precision}.engine"
    if output.suffix not in (".engine", ".plan"):
        raise ExportError(f"{output}: engine files end in .engine or .plan")
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    with stage("exporting the ONNX model"):
        source = source_onnx(args, folder, height, width, dynamic=profile is not None, opset=export_opset(version))
    facts = given or onnx_facts(source)
    if profile is not None and not facts.dynamic:
        raise ExportError(f"{source} has a fixed input shape; export it with --dynamic to use --min/--max")
    if facts.typed_fp16 and not plan.typed_fp16:
        raise ExportError(f"{source} is FP16-typed (made for TensorRT >= 10); give the FP32 ONNX it came from")
    if not facts.quantized and not facts.typed_fp16:
        with stage("checking the source ONNX"):
            findings = check_onnx(source, version)
        if findings:
            raise ExportError(str(TrtCompatibilityError(source, version, findings)) + source_hint(args, version))

    # The ONNX TensorRT reads: typed FP16 and/or Q/DQ INT8 variants are written beside the
    # engine; a plain FP32 model (flag-based FP16 and FP32 builds) is used as it is.
    ready = source
    calibration_info = (read_sidecar(source) or {}).get("calibration") if facts.quantized else None
    if plan.quantized and not facts.quantized:
        from .accuracy import export_int8

        ready = output.with_name(output.stem + (".qdq-fp32.onnx" if plan.typed_fp16 else plan.onnx_suffix))
        calibration_info = export_int8(
            source,
            ready,
            args.calib_dir,
            args.calib_samples,
            (height, width),
            args.accuracy_budget,
            args.accuracy_images,
            args.smooth,
            args.calib_method,
            "tensorrt",
            tuple(args.keep_fp),
            allow_fewer=args.allow_fewer,
        )
    if plan.typed_fp16 and not facts.typed_fp16:
        from .quantize import to_fp16

        with stage("converting to an FP16-typed graph"):
            ready = to_fp16(ready, output.with_name(output.stem + plan.onnx_suffix))
        casts = (read_sidecar(ready) or {}).get("cast_nodes", {})
        print(f"FP16-typed graph: {casts.get('total')} Cast nodes, {casts.get('per_frame')} of them per frame")
    with stage(f"checking the TensorRT {version} parser rules"):
        require_compatible(ready, version)
    if not plan.strongly_typed:
        onnx = require("onnx", "onnx", "onnx")
        plan = plan.pin_fp32(split_layernorm_nodes(onnx.load(str(ready), load_external_data=False)))
    print(f"TensorRT-ready ONNX: {ready} (passes the TensorRT {version} parser rules)")

    gpu_name, capability = ("<target GPU>", (0, 0))
    if trt is not None:
        from runtime.backends.cuda import open_cuda

        cuda = open_cuda(0)
        gpu_name, capability = cuda.device_info()
        cuda.close()
    cache_folder = args.timing_cache or folder
    timing = timing_cache_path(cache_folder, str(version), gpu_name, capability) if trt is not None else None
    command = trtexec_command(ready, output, plan, facts.input_name, profile, args.workspace, timing)
    print(f"equivalent trtexec command (build on the target device):\n  {command}")
    if args.onnx_only:
        return 0

    print(f"building TensorRT {trt.__version__} {args.precision} engine on {gpu_name} (this takes minutes) ...")
    with stage("building the engine"):
        engine = build_engine(trt, ready, plan, profile, facts.input_name, args.workspace, timing)
    atomic_write_bytes(output, engine)
    write_sidecar(
        output,
        {
            "format": "tensorrt",
            "precision": args.precision,
            "strongly_typed": plan.strongly_typed,
            "builder_flags": list(plan.builder_flags),
            "fp32_layers": len(plan.fp32_layers),
            "source_onnx": str(ready),
            "source_sha256": sha256_file(ready),
            "input_name": facts.input_name,
            "input_shape": [1, 3, height, width] if profile is None else None,
            "profile": {k: list(v) for k, v in profile.shapes().items()} if profile else None,
            "encoder": (read_sidecar(source) or {}).get("encoder"),
            "gpu": {"name": gpu_name, "compute_capability": list(capability)},
            "calibration": calibration_info,
            "trtexec": command,
            "build_seconds": round(time.perf_counter() - started, 1),
            "versions": {**library_versions("onnx", "onnxruntime"), "tensorrt": trt.__version__},
        },
    )
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, build_parser(), None))
