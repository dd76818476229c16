"""``python -m export.trt``: TensorRT FP16/INT8 engines, explicit INT8 only.

Every decision that depends on the TensorRT release is made by plain functions below
(``plan_build``, ``check_opset``, ``trtexec_command``, ``timing_cache_path``...) so it is
tested without TensorRT; ``build_engine`` is the thin part that calls the library.

- 8.x (JetPack 5 ships 8.5): explicit-batch network, precision flags; INT8 from Q/DQ + INT8 flag.
- 10.x (JetPack 6 ships 10.3): strongly typed network from a typed ONNX (FP16-typed, or Q/DQ
  INT8 with FP16 elsewhere); ``--weakly-typed`` falls back to the deprecated flags.
- 11.x: strongly typed only; anything needing flags is refused with the reason.

The TensorRT-ready ONNX is always written first and is portable: ``--onnx-only`` stops there
(calibrate on a workstation, build on the Jetson with the printed ``trtexec`` command).
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import MissingDependencyError, require
from runtime.fileio import atomic_write_bytes
from runtime.metadata import library_versions, read_sidecar, sha256_file, write_sidecar

from .common import (
    ExportError,
    add_precision_args,
    add_source_args,
    check_hw,
    check_precision,
    check_request,
    parse_hw,
    run_cli,
    source_onnx,
    source_stem,
)
from .quantize import DEFAULT_METHOD, METHODS

DEFAULT_TARGET = "10.3"  # JetPack 6
JETPACK_NOTE = "on Jetson TensorRT comes with JetPack (python3-libnvinfer), not from pip"


@dataclass(frozen=True)
class TrtVersion:
    major: int
    minor: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)*", text.strip())
        if not match:
            raise ExportError(f"{text!r} is not a TensorRT version (for example 8.5, 10.3 or 11)")
        version = cls(int(match[1]), int(match[2] or 0))
        if version.major < 8 or (version.major == 8 and version.minor < 5):
            raise ExportError(f"TensorRT {text} is too old: the name-based runtime API needs 8.5 (JetPack 5) or newer")
        return version

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def max_opset(self) -> int:
        """Highest ONNX opset the release's parser reads."""
        return 17 if self.major < 10 else 20

    @property
    def has_layernorm_op(self) -> bool:
        return (self.major, self.minor) >= (8, 6)


@dataclass(frozen=True)
class BuildPlan:
    """What to feed TensorRT and how: the ONNX variant, network and builder flags."""

    precision: str
    strongly_typed: bool
    typed_fp16: bool  # the ONNX itself carries FP16 types
    quantized: bool  # the ONNX carries Q/DQ INT8
    builder_flags: tuple[str, ...]
    network_flags: tuple[str, ...]

    @property
    def onnx_suffix(self) -> str:
        return {"fp32": ".trt-fp32.onnx", "fp16": ".trt-fp16.onnx", "int8": ".trt-int8.onnx"}[self.precision]


def plan_build(version: TrtVersion, precision: str, weakly_typed: bool = False) -> BuildPlan:
    check_precision(precision)
    if version.major >= 11 and weakly_typed:
        raise ExportError(
            f"TensorRT {version} builds strongly typed networks only (precision flags were removed); "
            "drop --weakly-typed"
        )
    quantized = precision == "int8"
    if version.major >= 10 and not weakly_typed:
        return BuildPlan(precision, True, precision != "fp32", quantized, (), ("STRONGLY_TYPED",))
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    network = ("EXPLICIT_BATCH",) if version.major < 10 else ()
    return BuildPlan(precision, False, False, quantized, flags, network)


def check_opset(version: TrtVersion, opset: int, has_layernorm: bool) -> None:
    if opset > version.max_opset:
        raise ExportError(
            f"TensorRT {version} reads ONNX opset <= {version.max_opset}, the model has {opset}; "
            f"re-export with --opset {version.max_opset}"
        )
    if has_layernorm and not version.has_layernorm_op:
        raise ExportError(
            f"TensorRT {version} has no LayerNormalization op; re-export with --opset 16 (it splits LayerNorm)"
        )


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
    if plan.strongly_typed:
        args.append("--stronglyTyped")
    args += [f"--{flag.lower()}" for flag in plan.builder_flags]
    if profile is not None:
        for name, shape in profile.shapes().items():
            args.append(f"--{name}Shapes={input_name}:{'x'.join(map(str, shape))}")
    args.append(f"--memPoolSize=workspace:{workspace_mib}M")
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def timing_cache_path(folder: Path, trt_version: str, gpu_name: str, capability: tuple[int, int]) -> Path:
    """One cache per TensorRT release and GPU, so a cache from elsewhere is never silently reused."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return folder / f"timing-trt{trt_version}-{gpu}-sm{capability[0]}{capability[1]}.cache"


def onnx_facts(path: Path) -> tuple[int, bool, str, bool]:
    """Opset, whether it has a LayerNormalization node, input name, whether H/W are dynamic."""
    onnx = require("onnx", "onnx", "onnx")
    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    has_ln = any(n.op_type == "LayerNormalization" for n in model.graph.node)
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    dynamic = len(dims) == 4 and not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value"))
    return opset, has_ln, graph_input.name, dynamic


def installed_tensorrt():
    """The tensorrt module, or ``None`` when it is not installed."""
    try:
        return require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
    except MissingDependencyError:
        return None


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
        description="Build a TensorRT engine (FP16 default, INT8 calibrated on SA-1B samples into explicit Q/DQ).",
    )
    add_source_args(parser, onnx=True)
    add_precision_args(
        parser, {"fp16": "FP16 (default)", "int8": "INT8 with --calib-dir", "fp32": "FP32 (reference)"}, "fp16"
    )
    parser.add_argument("--calib-dir", type=Path, help="SA-1B tar shards or image folder (INT8)")
    parser.add_argument("--calib-samples", type=int, default=500, help="calibration images (default 500)")
    parser.add_argument(
        "--calib-method", choices=METHODS, default=DEFAULT_METHOD, help=f"activation ranges (default {DEFAULT_METHOD})"
    )
    parser.add_argument("--allow-fewer", action="store_true", help="calibrate on fewer images than asked if short")
    parser.add_argument(
        "--keep-fp", action="append", default=[], metavar="PATTERN", help="node-name glob kept in float"
    )
    parser.add_argument("--shape", type=parse_hw, default=(518, 518), help="static input HxW (default 518x518)")
    parser.add_argument("--min", type=parse_hw, dest="min_shape", help="dynamic profile: smallest HxW")
    parser.add_argument("--opt", type=parse_hw, dest="opt_shape", help="dynamic profile: HxW to tune and calibrate at")
    parser.add_argument("--max", type=parse_hw, dest="max_shape", help="dynamic profile: largest HxW")
    parser.add_argument("--max-batch", type=int, default=1, help="dynamic profile: largest batch (default 1)")
    parser.add_argument("--workspace", type=int, default=4096, help="builder workspace in MiB (default 4096)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache folder (default: the output folder)")
    parser.add_argument("--weakly-typed", action="store_true", help="TensorRT 8.x-style precision flags on 10.x")
    parser.add_argument(
        "--trt-version",
        help=f"target TensorRT release when it is not installed here (default {DEFAULT_TARGET}; 8.5 for JetPack 5)",
    )
    parser.add_argument("--onnx-only", action="store_true", help="stop after the TensorRT-ready ONNX")
    parser.add_argument("--output", type=Path, help="engine path (default artifacts/<model>.<precision>.engine)")
    return parser


def resolve_profile(args: argparse.Namespace) -> Profile | None:
    given = [args.min_shape, args.opt_shape, args.max_shape]
    if not any(given):
        return None
    if not all(given):
        raise ExportError("a dynamic profile needs all of --min, --opt and --max")
    return Profile.build(args.min_shape, args.opt_shape, args.max_shape, args.max_batch)


def main(args: argparse.Namespace) -> int:
    trt = installed_tensorrt()
    if trt is None and not args.onnx_only:
        raise ExportError(
            "TensorRT is not installed here: pip install 'dav2-edge[tensorrt]' (" + JETPACK_NOTE + "), "
            "or pass --onnx-only to write the TensorRT-ready ONNX and build it on the target"
        )
    check_request(args)
    version = TrtVersion.parse(trt.__version__ if trt is not None else (args.trt_version or DEFAULT_TARGET))
    if trt is not None and args.trt_version and TrtVersion.parse(args.trt_version) != version:
        raise ExportError(f"--trt-version {args.trt_version} differs from the installed TensorRT {trt.__version__}")
    plan = plan_build(version, args.precision, args.weakly_typed)
    profile = resolve_profile(args)
    height, width = profile.opt[1:] if profile else check_hw(*args.shape)
    output = args.output or Path("artifacts") / f"{source_stem(args)}.{args.precision}.engine"
    if output.suffix not in (".engine", ".plan"):
        raise ExportError(f"{output}: engine files end in .engine or .plan")
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    opset = 17 if version.has_layernorm_op else 16
    source = source_onnx(args, folder, height, width, dynamic=profile is not None, opset=opset)
    opset, has_ln, input_name, dynamic = onnx_facts(source)
    check_opset(version, opset, has_ln)
    if profile is not None and not dynamic:
        raise ExportError(f"{source} has a fixed input shape; export it with --dynamic to use --min/--opt/--max")

    # The ONNX TensorRT reads: typed FP16 and/or Q/DQ INT8 variants are written beside the
    # engine; a plain FP32 model (flag-based FP16 and FP32 builds) is used as it is.
    ready = source
    calibration_info = None
    if plan.quantized:
        from .calibration import CalibrationSet
        from .quantize import quantize_int8

        cache = folder / ".calib_cache"
        calibration = CalibrationSet(
            args.calib_dir, args.calib_samples, (height, width), cache_dir=cache, allow_fewer=args.allow_fewer
        )
        print(calibration.report.summary())
        calibration_info = calibration.describe()
        ready = output.with_name(output.stem + (".qdq-fp32.onnx" if plan.typed_fp16 else plan.onnx_suffix))
        result = quantize_int8(
            source, calibration, ready, args.calib_method, "tensorrt", tuple(args.keep_fp), cache_dir=cache
        )
        print(f"INT8 Q/DQ: {len(result.quantized)} nodes quantized, calibration {result.calibration_seconds:.1f} s")
    if plan.typed_fp16:
        from .quantize import to_fp16

        ready = to_fp16(ready, output.with_name(output.stem + plan.onnx_suffix))
    print(f"TensorRT-ready ONNX: {ready}")

    gpu_name, capability = ("<target GPU>", (0, 0))
    if trt is not None:
        from runtime.backends.cuda import open_cuda

        cuda = open_cuda(0)
        gpu_name, capability = cuda.device_info()
        cuda.close()
    cache_folder = args.timing_cache or folder
    timing = timing_cache_path(cache_folder, str(version), gpu_name, capability) if trt is not None else None
    command = trtexec_command(ready, output, plan, input_name, profile, args.workspace, timing)
    print(f"equivalent trtexec command (build on the target device):\n  {command}")
    if args.onnx_only:
        return 0

    print(f"building TensorRT {trt.__version__} {args.precision} engine on {gpu_name} (this takes minutes) ...")
    engine = build_engine(trt, ready, plan, profile, input_name, args.workspace, timing)
    atomic_write_bytes(output, engine)
    write_sidecar(
        output,
        {
            "format": "tensorrt",
            "precision": args.precision,
            "strongly_typed": plan.strongly_typed,
            "builder_flags": list(plan.builder_flags),
            "source_onnx": str(ready),
            "source_sha256": sha256_file(ready),
            "input_name": input_name,
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
