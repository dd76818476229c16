"""Build a TensorRT engine: ``build_trt`` runs the whole pipeline (source ONNX, INT8 calibration,
FP16 typing, the parser-rule check, the build, the sidecar); ``build_engine`` is the thin part
that calls TensorRT. ``python -m export.trt`` and the benchmark both call ``build_trt``.

The TensorRT-ready ONNX is always written first and is portable: ``onnx_only`` stops there
(calibrate on a workstation, then on the Jetson ``python -m export.trt --int8 --onnx <it>`` or
the printed ``trtexec`` command).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from commands.errors import MissingDependencyError, require
from commands.runner import stage
from runtime.io.files import atomic_write_bytes, staging_dir
from runtime.metadata import library_versions, sha256_file, sidecar_path, write_sidecar
from runtime.reference import find_reference, reference_path, stamp_reference

from ..artefact import Artefact
from ..errors import ExportError, ExportRequestError
from ..graph import load_onnx
from ..onnx import source_onnx
from ..quantize.fp16 import FP32_OPS, fp16_artefact
from ..reference import onnx_runner, write_fp16_reference, write_reference
from ..source import check_hw, default_output, licence_note, source_stem
from .decisions import (
    DEFAULT_TARGET,
    JETPACK_NOTE,
    BuildPlan,
    EngineAttempt,
    Profile,
    checked_build,
    engine_attempts,
    export_opset,
    fp32_island_nodes,
    match_layers,
    onnx_facts,
    plan_build,
    refusal_message,
    split_layernorm_nodes,
    timing_cache_path,
    trtexec_command,
)
from .rules import TrtCompatibilityError, TrtVersion, check_onnx, known_releases, require_compatible

if TYPE_CHECKING:
    from ..quantize.options import Int8Options


@dataclass
class TrtRequest:
    """One engine to build: from ``onnx`` (an FP32 or already calibrated Q/DQ ONNX), or from
    ``checkpoint``/``encoder`` (exported to ONNX first), at ``size`` or over ``profile``."""

    precision: str = "fp16"
    onnx: Path | None = None
    checkpoint: Path | None = None
    encoder: str | None = None
    output: Path | None = None
    size: tuple[int, int] | None = None
    profile: Profile | None = None
    int8: Int8Options | None = None  # calibration, for INT8 from an FP32 source
    workspace_mib: int = 4096
    timing_cache: Path | None = None  # folder; default: the output folder
    weakly_typed: bool = False
    trt_version: str | None = None  # the target when TensorRT is not installed here
    onnx_only: bool = False
    fp32_layers: tuple[str, ...] = ()  # node-name globs built in FP32 (--fp32-layers)


def installed_tensorrt():
    """The tensorrt module, or ``None`` when it is not installed."""
    try:
        return require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
    except MissingDependencyError:
        return None


def target_version(trt, requested: str | None) -> TrtVersion:
    """The installed TensorRT, or the release named by --trt-version (default: JetPack 6's), which
    must be one whose rules are known (an installed newer release is checked with the newest table)."""
    wanted = TrtVersion.target(requested) if requested else None
    if trt is None:
        return wanted or TrtVersion.target(DEFAULT_TARGET)
    version = TrtVersion.parse(trt.__version__)
    if wanted is not None and wanted != version:
        raise ExportRequestError(f"`trt_version` {requested} differs from the installed TensorRT {trt.__version__}")
    if not version.known:
        print(
            f"note: TensorRT {trt.__version__} is newer than the parser rules this project encodes "
            f"({known_releases()}); checking against the nearest table",
            file=sys.stderr,
        )
    return version


def source_hint(request: TrtRequest, version: TrtVersion) -> str:
    """How to get an ONNX this release reads, for a --onnx that breaks its rules."""
    opset = export_opset(version)
    if request.onnx is None:
        return ""
    return (
        f"; re-export it for TensorRT {version} with `opset` {opset}, "
        f"or give `checkpoint` instead of `onnx` and it exports at opset {opset} itself"
    )


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
        print(f"pinned {pinned} of {len(plan.fp32_layers)} layers to FP32")
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


def build_trt(request: TrtRequest) -> Artefact:
    """Build the engine ``request`` describes (or, with ``onnx_only``, its TensorRT-ready ONNX);
    returns the record of what it wrote. Every ONNX on the way is checked against the target release's
    parser rules before anything is built or handed to trtexec."""
    trt = installed_tensorrt()
    if trt is None and not request.onnx_only:
        raise ExportRequestError(
            "TensorRT is not installed here: pip install 'dav2-edge[tensorrt]' (" + JETPACK_NOTE + "), "
            "or pass --onnx-only to write the TensorRT-ready ONNX and build it on the target"
        )
    given = onnx_facts(request.onnx) if request.onnx is not None else None
    prequantized = given is not None and given.quantized
    if prequantized and request.precision != "int8":
        raise ExportRequestError(
            f"{request.onnx} is already quantized (Q/DQ INT8): pass `precision='int8'` or the FP32 ONNX"
        )
    if not prequantized:
        if request.precision == "int8" and request.int8 is None:
            raise ExportRequestError(
                "`precision='int8'` needs calibration images: pass `int8.calib_dir`, SA-1B shards or an image folder"
            )
        if request.onnx is None and request.checkpoint is None and request.encoder is None:
            raise ExportRequestError("give `onnx`, `checkpoint` or `encoder`")
    version = target_version(trt, request.trt_version)
    plan = plan_build(version, request.precision, request.weakly_typed)
    profile = request.profile
    size = request.size
    if given is not None and given.dynamic and profile is None:
        raise ExportRequestError(f"{request.onnx} has a dynamic input: give `profile` for the engine")
    if given is not None and given.hw is not None:
        if size is not None and tuple(size) != given.hw:
            raise ExportRequestError(
                f"{request.onnx} takes {given.hw[0]}x{given.hw[1]} inputs; drop `size` or re-export it"
            )
        size = given.hw
    height, width = profile.opt[1:] if profile else check_hw(*(size or (518, 518)))
    stem = source_stem(request.onnx, request.checkpoint, request.encoder)
    output = request.output or default_output(stem, f".{request.precision}.engine")
    if output.suffix not in (".engine", ".plan"):
        raise ExportRequestError(f"{output}: engine files end in .engine or .plan")
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    with stage("exporting the ONNX model"):
        source_record = source_onnx(
            request.onnx,
            request.checkpoint,
            request.encoder,
            folder,
            height,
            width,
            dynamic=profile is not None,
            opset=export_opset(version),
        )
    source = source_record.path
    facts = given or onnx_facts(source)
    if profile is not None and not facts.dynamic:
        raise ExportRequestError(
            f"{source} has a fixed input shape (batch 1); export it with `dynamic` to give it a `profile`"
        )
    if facts.typed_fp16 and not plan.typed_fp16:
        raise ExportRequestError(f"{source} is FP16-typed (made for TensorRT >= 10); give the FP32 ONNX it came from")
    if not facts.quantized and not facts.typed_fp16:
        with stage("checking the source ONNX"):
            findings = check_onnx(source, version)
        if findings:
            raise ExportError(str(TrtCompatibilityError(source, version, findings)) + source_hint(request, version))

    # The ONNX TensorRT reads: typed FP16 and/or Q/DQ INT8 variants are written beside the
    # engine; a plain FP32 model (flag-based FP16 and FP32 builds) is used as it is.
    record = source_record  # the record of the ONNX TensorRT reads, step by step
    sizes = engine_sizes(height, width, profile)
    if plan.quantized and not facts.quantized:
        from ..quantize.budget import export_int8

        qdq = output.with_name(output.stem + (".qdq-fp32.onnx" if plan.typed_fp16 else plan.onnx_suffix))
        record = export_int8(source_record, qdq, request.int8, (height, width), "tensorrt")
    calibration_info = record.calibration if plan.quantized or facts.quantized else None
    pretyped_record = record if not facts.typed_fp16 else typed_from(record)
    ready = record.path
    pretyped = pretyped_record.path if pretyped_record is not None else None
    nodes_of = load_onnx(pretyped or ready, load_external_data=False)
    if request.fp32_layers and pretyped is None:
        raise ExportRequestError(
            f"{ready} is FP16-typed already: `fp32_layers` needs the FP32 or Q/DQ ONNX it was typed from"
        )
    attempts = engine_attempts(plan, fp32_island_nodes(nodes_of), match_layers(nodes_of, request.fp32_layers))
    if plan.typed_fp16 and not facts.typed_fp16:
        with stage("converting to an FP16-typed graph"):
            record = fp16_artefact(
                pretyped_record, output.with_name(output.stem + plan.onnx_suffix), FP32_OPS, attempts[0].fp32_nodes
            )
            ready = record.path
            write_fp16_reference(ready, pretyped, sizes)
        casts = record.get("cast_nodes", {})
        print(f"FP16-typed graph: {casts.get('total')} Cast nodes, {casts.get('per_frame')} of them per frame")
    elif find_reference(ready) is None and not facts.quantized and not facts.typed_fp16:
        write_reference(ready, "fp32", sizes, onnx_runner(ready), "ONNX Runtime FP32 on the source ONNX")
    with stage(f"checking the TensorRT {version} parser rules"):
        require_compatible(ready, version)
    base_pins = () if plan.strongly_typed else tuple(split_layernorm_nodes(load_onnx(ready, load_external_data=False)))
    if plan.typed_fp16 and len(attempts) > 1 and request.onnx_only and pretyped is not None:
        # The fallback's ONNX travels with the TensorRT-ready one: the device cannot retype it.
        with stage("writing the fallback's FP16-typed graph"):
            fp16_artefact(pretyped_record, islands_onnx(ready), FP32_OPS, attempts[1].fp32_nodes)
            write_fp16_reference(islands_onnx(ready), pretyped, sizes)  # every file written has its reference
    print(f"TensorRT-ready ONNX: {ready} (passes the TensorRT {version} parser rules)")

    gpu_name, capability = ("<target GPU>", (0, 0))
    if trt is not None:
        from runtime.backends.cuda import open_cuda

        cuda = open_cuda(0)
        gpu_name, capability = cuda.device_info()
        cuda.close()
    cache_folder = request.timing_cache or folder
    timing = timing_cache_path(cache_folder, str(version), gpu_name, capability) if trt is not None else None
    first_plan = plan.pin_fp32([*base_pins, *attempts[0].fp32_nodes])
    command = trtexec_command(ready, output, first_plan, facts.input_name, profile, request.workspace_mib, timing)
    print(f"equivalent trtexec command (build on the target device):\n  {command}")
    licence_note(record.get("licence"), ready)
    if request.onnx_only:
        return record

    def onnx_for(attempt: EngineAttempt) -> Path:
        """The ONNX an attempt builds from: the ready one, or for a strongly typed fallback the one
        with the islands typed FP32 (written beside it by --onnx-only, or now from its source)."""
        if not plan.strongly_typed or attempt is attempts[0]:
            return ready
        if pretyped is not None:  # never an islands ONNX left by an earlier run from another source
            with stage("writing the fallback's FP16-typed graph"):
                fp16_artefact(pretyped_record, islands_onnx(ready), FP32_OPS, attempt.fp32_nodes)
        require_compatible(islands_onnx(ready), version)
        return islands_onnx(ready)

    if plan.strongly_typed and pretyped is None and not islands_onnx(ready).is_file():
        attempts = attempts[:1]  # an FP16-typed ONNX without its source: nothing to retype
    meta = {
        "format": "tensorrt",
        "precision": request.precision,
        "strongly_typed": plan.strongly_typed,
        "input_name": facts.input_name,
        "input_shape": [1, 3, height, width] if profile is None else None,
        "profile": {k: list(v) for k, v in profile.shapes().items()} if profile else None,
        "encoder": source_record.encoder,
        **source_record.output_kind().sidecar(),
        "licence": record.licence,
        **record.identity(),
        "gpu": {"name": gpu_name, "compute_capability": list(capability)},
        "calibration": calibration_info,
        "versions": {**library_versions("onnx", "onnxruntime"), "tensorrt": trt.__version__},
    }
    workdir = staging_dir(output)
    try:
        staged = workdir / output.name
        reference = engine_reference(staged, request.precision, sizes, ready)

        def build_candidate(attempt: EngineAttempt) -> Path:
            attempt_plan = plan.pin_fp32([*base_pins, *attempt.fp32_nodes])
            built_from = onnx_for(attempt)
            print(f"building TensorRT {trt.__version__} {request.precision} engine on {gpu_name}, {attempt.label} ...")
            with stage("building the engine"):
                engine = build_engine(
                    trt, built_from, attempt_plan, profile, facts.input_name, request.workspace_mib, timing
                )
            staged.write_bytes(engine)
            meta.update(
                source_onnx=str(built_from),
                source_sha256=sha256_file(built_from),
                trtexec=trtexec_command(
                    built_from, output, attempt_plan, facts.input_name, profile, request.workspace_mib, timing
                ),
                **plan_facts(attempt_plan),
            )
            write_sidecar(staged, meta)  # the backend checks its TensorRT release and GPU
            return staged

        def refuse(results: list) -> str:
            return refusal_message(attempts, results, version, output, plan.strongly_typed)

        if reference is None:
            print(f"warning: no reference for {ready}: the engine is NOT checked (export it with this toolkit)")
            attempt, results = attempts[0], []
            build_candidate(attempt)
        else:
            _, attempt, results = checked_build(
                attempts, build_candidate, lambda e: run_reference(e, reference), refuse
            )
        engine = Artefact(
            output,
            {
                **meta,  # as the kept attempt left it
                "build_seconds": round(time.perf_counter() - started, 1),
                "verification": verification_record(reference, attempts, results, attempt),
            },
        )
        write_sidecar(staged, dict(engine.facts))
        if reference_path(staged).is_file():
            stamp_reference(staged)  # the reference names the engine it was checked with
        # Old files go first and the engine lands last: never a new engine beside old metadata.
        for old in (output, sidecar_path(output), reference_path(output)):
            old.unlink(missing_ok=True)
        for item in (reference_path(staged), sidecar_path(staged), staged):
            if item.is_file():
                item.replace(output.parent / item.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print(f"engine checked against its reference, {attempt.label}: {results[-1].summary()}")
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return replace(engine, reference=find_reference(output))


def engine_sizes(height: int, width: int, profile: Profile | None) -> list[tuple[int, int]]:
    """The sizes an engine's reference holds: its own, or the profile's opt size and one other."""
    if profile is None:
        return [(height, width)]
    other = profile.min[1:] if profile.min[1:] != profile.opt[1:] else profile.max[1:]
    return [(height, width)] if other == (height, width) else [(height, width), tuple(other)]


def typed_from(ready: Artefact) -> Artefact | None:
    """The record of the FP32 or Q/DQ ONNX an FP16-typed one was made from, when it is on this machine."""
    source = ready.get("source_onnx")
    return Artefact.read(source) if source and Path(source).is_file() else None


def islands_onnx(ready: Path) -> Path:
    """Where the FP16-typed ONNX with the FP32 islands goes: named after the ready one, so a copy
    of ``<ready>*`` takes it along."""
    return ready.with_name(ready.name + ".fp32-islands.onnx")


def engine_reference(staged: Path, precision: str, sizes: list, ready: Path):
    """The engine's reference (written beside the staged engine), from the ready ONNX's."""
    from runtime.reference import load_reference

    written = write_reference(staged, precision, sizes, None, source=ready)
    return load_reference(written) if written is not None else None


def run_reference(engine: Path, reference):
    """The engine on its reference's inputs, through the runtime's TensorRT backend."""
    from runtime.backends.tensorrt import TensorRTBackend
    from runtime.reference import verify_backend

    with stage("running the engine on its reference"), TensorRTBackend(engine) as backend:
        return verify_backend(backend, reference)


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
