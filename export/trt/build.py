"""Build a TensorRT engine: ``build_trt`` runs the pipeline as named steps that hand one record
down: ``plan_job`` (every check that needs nothing written), ``source_step`` (the FP32 or given
ONNX), ``ready_step`` (INT8 calibration, FP16 typing, references, the parser rules), then
``engine_step`` (the build attempts, each checked against the reference, and the engine's
record, written once). ``export.trt.engine`` is the thin part that calls TensorRT.
``python -m export.trt`` and the benchmark both call ``build_trt``.

The TensorRT-ready ONNX is always written first and is portable: ``onnx_only`` stops there
(calibrate on a workstation, then on the Jetson ``python -m export.trt --int8 --onnx <it>`` or
the printed ``trtexec`` command).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commands.runner import stage
from runtime.inherited_reference import inherited_reference
from runtime.io.files import staging_dir
from runtime.metadata import library_versions, sidecar_path
from runtime.reference import Reference, reference_path, stamp_reference

from .. import source as sources
from ..artefact import Artefact
from ..errors import ExportError, ExportRequestError
from ..graph import load_onnx
from ..onnx import source_onnx
from ..quantize.fp16 import FP32_OPS, fp16_artefact
from ..reference import write_typed_reference
from ..source import check_hw, check_output_folder, default_output, licence_note, source_stem
from .budget_sizes import budget_sizes
from .decisions import (
    JETPACK_NOTE,
    BuildPlan,
    EngineAttempt,
    OnnxFacts,
    Profile,
    checked_build,
    engine_attempts,
    engine_sizes,
    export_opset,
    fp32_island_nodes,
    islands_onnx,
    match_layers,
    onnx_facts,
    plan_build,
    plan_facts,
    refusal_message,
    split_layernorm_nodes,
    timing_cache_path,
    trtexec_command,
    verification_record,
)
from .engine import build_engine, gpu_info, run_reference
from .installed import installed_tensorrt, target_version
from .outputs import exp_tail_nodes, extra_outputs_fact, onnx_outputs
from .rules import TrtCompatibilityError, TrtVersion, check_onnx, require_compatible
from .sky_step import cut_removed_on_failure, engine_cut_path, sky_less_source, sky_step_fact
from .stream import (
    check_stream_checkpoint,
    check_stream_request,
    fp32_stream_nodes,
    is_stream_graph,
    stream_fact,
    stream_reference,
)

if TYPE_CHECKING:
    from ..quantize.options import Int8Options


@dataclass
class TrtRequest:
    """One engine to build: from ``onnx`` (an FP32 or already calibrated Q/DQ ONNX), or from
    ``checkpoint``/``encoder`` (exported to ONNX first), at ``size`` or over ``profile``."""

    precision: str = "fp16"
    onnx: Path | Artefact | None = None  # a path, or the record of an ONNX made in the same run
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


def source_hint(request: TrtRequest, version: TrtVersion) -> str:
    """How to get an ONNX this release reads, for a --onnx that breaks its rules."""
    opset = export_opset(version)
    if request.onnx is None:
        return ""
    return (
        f"; re-export it for TensorRT {version} with `opset` {opset}, "
        f"or give `checkpoint` instead of `onnx` and it exports at opset {opset} itself"
    )


@dataclass(frozen=True)
class TrtJob:
    """What ``plan_job`` settles before anything is written: the release and its build plan, the
    given ONNX's record and facts (and, for an FP16-typed one, its source's record), the input
    size (or the profile's opt size) and the output."""

    request: TrtRequest
    trt: Any  # the tensorrt module, None where it is not installed
    version: TrtVersion
    plan: BuildPlan
    given: Artefact | None
    given_facts: OnnxFacts | None
    given_source: Artefact | None  # of an FP16-typed given ONNX: the record it was typed from, where it is here
    height: int
    width: int
    output: Path

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return engine_sizes(self.height, self.width, self.request.profile)


@dataclass(frozen=True)
class Ready:
    """What ``ready_step`` made: the TensorRT-ready ONNX's record, the FP32 source's, the FP32 or
    Q/DQ record the ready one was typed from (None where it is not on this machine), the build
    attempts and the layers every attempt pins to FP32."""

    record: Artefact
    source: Artefact
    facts: OnnxFacts  # of the source ONNX
    pretyped: Artefact | None
    attempts: list[EngineAttempt]
    expected: Reference | None  # the engine's reference, in memory until the engine lands beside it
    base_pins: tuple[str, ...] = ()
    calibration: dict | None = None
    outputs: tuple[str, ...] = ("depth",)  # the ONNX's outputs, depth first: every one the engine keeps


def build_trt(request: TrtRequest) -> Artefact:
    """Build the engine ``request`` describes (or, with ``onnx_only``, its TensorRT-ready ONNX);
    returns the record of what it wrote. Every ONNX on the way is checked against the target release's
    parser rules before anything is built or handed to trtexec."""
    job = plan_job(request, installed_tensorrt())
    started = time.perf_counter()
    fresh = not job.output.absolute().parent.exists()
    # The folder is made after plan_job's checks; a refusal removes it, a checkpoint's FP32 ONNX and the cut
    with sources.output_folder(job.output), sources.intermediates(job.output.parent, fresh) as made:
        with cut_removed_on_failure(engine_cut_path(job.output)):
            source, facts = source_step(job, made)
            ready = ready_step(job, source, facts)
    target = handoff(job, ready)
    if request.onnx_only:
        return ready.record
    return engine_step(job, ready, target, started)


def plan_job(request: TrtRequest, trt) -> TrtJob:
    """Every check of ``request`` that needs nothing written; the given ONNX's record (and an
    FP16-typed one's source's) is read here, once. A stream graph asked with a profile is refused
    first (``stream``)."""
    given_path = Artefact.of(request.onnx).path if request.onnx is not None else None
    check_stream_request(given_path, request.precision, request.profile)
    if given_path is None:  # a checkpoint: known before its export
        check_stream_checkpoint(request.checkpoint, request.precision, request.profile)
    if trt is None and not request.onnx_only:
        raise ExportRequestError(
            "TensorRT is not installed here: pip install 'dav2-edge[tensorrt]' (" + JETPACK_NOTE + "), "
            "or pass --onnx-only to write the TensorRT-ready ONNX and build it on the target"
        )
    given = Artefact.of(request.onnx) if request.onnx is not None else None
    facts = onnx_facts(given.path) if given is not None else None
    prequantized = facts is not None and facts.quantized
    if prequantized and request.precision != "int8":
        raise ExportRequestError(
            f"{given.path} is already quantized (Q/DQ INT8): pass `precision='int8'` or the FP32 ONNX"
        )
    if not prequantized:
        if request.precision == "int8" and request.int8 is None:
            raise ExportRequestError(
                "`precision='int8'` needs calibration images: pass `int8.calib_dir`, SA-1B shards or an image folder"
            )
        if given is None and request.checkpoint is None and request.encoder is None:
            raise ExportRequestError("give `onnx`, `checkpoint` or `encoder`")
    version = target_version(trt, request.trt_version)
    plan = plan_build(version, request.precision, request.weakly_typed)
    profile, size = request.profile, request.size
    if facts is not None and facts.dynamic and profile is None:
        raise ExportRequestError(f"{given.path} has a dynamic input: give `profile` for the engine")
    if facts is not None and facts.hw is not None:
        if size is not None and tuple(size) != facts.hw:
            raise ExportRequestError(
                f"{given.path} takes {facts.hw[0]}x{facts.hw[1]} inputs; drop `size` or re-export it"
            )
        size = facts.hw
    height, width = profile.opt[1:] if profile else check_hw(*(size or (518, 518)))
    stem = source_stem(given.path if given else None, request.checkpoint, request.encoder)
    output = request.output or default_output(stem, f".{request.precision}.engine")
    if output.suffix not in (".engine", ".plan"):
        raise ExportRequestError(f"{output}: engine files end in .engine or .plan")
    check_output_folder(output)  # made by build_trt when the work starts
    given_source = typed_from(given) if facts is not None and facts.typed_fp16 else None
    return TrtJob(request, trt, version, plan, given, facts, given_source, height, width, output)


def source_step(job: TrtJob, made: list[Path] | None = None) -> tuple[Artefact, OnnxFacts]:
    """The record and facts of the ONNX the engine starts from (the given one, or an export of the
    checkpoint at the release's opset, listed in ``made``), checked against the release's parser rules."""
    request, version = job.request, job.version
    source = job.given
    if source is None:
        with stage("exporting the ONNX model"):
            source = source_onnx(
                None,
                request.checkpoint,
                request.encoder,
                job.output.parent,
                job.height,
                job.width,
                dynamic=request.profile is not None,
                opset=export_opset(version),
            )
        if made is not None:
            made.append(source.path)
    if job.given is None:  # a checkpoint's export: the step of a Video Depth Anything model
        check_stream_request(source.path, request.precision, request.profile)
    facts = job.given_facts or onnx_facts(source.path)
    source, facts = sky_less_source(source, facts, job.output)  # DA3 mono/metric, INT8 too
    if request.profile is not None and not facts.dynamic:
        raise ExportRequestError(
            f"{source.path} has a fixed input shape (batch 1); export it with `dynamic` to give it a `profile`"
        )
    if facts.typed_fp16 and not job.plan.typed_fp16:
        raise ExportRequestError(
            f"{source.path} is FP16-typed (made for TensorRT >= 10); give the FP32 ONNX it came from"
        )
    if not facts.quantized and not facts.typed_fp16:
        with stage("checking the source ONNX"):
            findings = check_onnx(source.path, version)
        if findings:
            raise ExportError(
                str(TrtCompatibilityError(source.path, version, findings)) + source_hint(request, version)
            )
    return source, facts


def ready_step(job: TrtJob, source: Artefact, facts: OnnxFacts) -> Ready:
    """The ONNX TensorRT reads, with its reference: typed FP16 and/or Q/DQ INT8 variants are written
    beside the engine; a plain FP32 model (flag-based FP16 and FP32 builds) is used as it is."""
    request, plan, version, output, sizes = job.request, job.plan, job.version, job.output, job.sizes
    record = source
    if plan.quantized and not facts.quantized:
        from ..quantize.budget import export_int8

        qdq = output.with_name(output.stem + (".qdq-fp32.onnx" if plan.typed_fp16 else plan.onnx_suffix))
        record = export_int8(source, qdq, request.int8, (job.height, job.width), "tensorrt")
    calibration = record.calibration if plan.quantized or facts.quantized else None
    sizes = budget_sizes(record.reference_data, sizes, request.profile, record.path)  # INT8: its budget's too
    pretyped = record if not facts.typed_fp16 else job.given_source
    if request.fp32_layers and pretyped is None:
        raise ExportRequestError(
            f"{record.path} is FP16-typed already: `fp32_layers` needs the FP32 or Q/DQ ONNX it was typed from"
        )
    nodes_of = load_onnx((pretyped or record).path, load_external_data=False)
    pinned = [*exp_tail_nodes(nodes_of), *fp32_stream_nodes(nodes_of)]  # a stream's motion modules too
    attempts = engine_attempts(plan, fp32_island_nodes(nodes_of), match_layers(nodes_of, request.fp32_layers), pinned)
    typing = plan.typed_fp16 and not facts.typed_fp16
    if typing:
        with stage("converting to an FP16-typed graph"):
            record = fp16_artefact(
                pretyped, output.with_name(output.stem + plan.onnx_suffix), FP32_OPS, attempts[0].fp32_nodes
            )
        casts = record.get("cast_nodes", {})
        print(f"FP16-typed graph: {casts.get('total')} Cast nodes, {casts.get('per_frame')} of them per frame")
    stream = is_stream_graph(nodes_of)
    if stream:  # a stream's reference: frames in order with the cache carried (export.trt.stream)
        record = record.with_reference(stream_reference(record, pretyped, "fp16" if typing else "fp32"))
    elif typing or (record.reference is None and not facts.quantized and not facts.typed_fp16):
        # The ready ONNX's reference, from the record it was typed from (itself, where it is the FP32 source).
        record = record.with_reference(write_typed_reference(record, pretyped, sizes, "fp16" if typing else "fp32"))
    # What the engine will be checked against: the ready ONNX's reference at the engine's precision.
    expected = None
    outputs = tuple(onnx_outputs(nodes_of))
    if record.reference_data is not None:
        expected = inherited_reference(record.reference_data, output.name, request.precision, sizes)
    if expected is not None:  # it holds depth; it says which outputs the engine has besides
        expected.meta.update({**extra_outputs_fact(outputs), **sky_step_fact(nodes_of)})
    ready = record.path
    with stage(f"checking the TensorRT {version} parser rules"):
        require_compatible(ready, version)
    base_pins = () if plan.strongly_typed else tuple(split_layernorm_nodes(load_onnx(ready, load_external_data=False)))
    if plan.typed_fp16 and len(attempts) > 1 and request.onnx_only and pretyped is not None:
        # The fallback's ONNX travels with the TensorRT-ready one: the device cannot retype it.
        with stage("writing the fallback's FP16-typed graph"):
            islands = fp16_artefact(pretyped, islands_onnx(ready), FP32_OPS, attempts[1].fp32_nodes)
            # every file written has its reference
            stream_reference(islands, pretyped, "fp16") if stream else write_typed_reference(islands, pretyped, sizes)
    if plan.strongly_typed and pretyped is None and not islands_onnx(ready).is_file():
        attempts = attempts[:1]  # an FP16-typed ONNX without its source: nothing to retype
    print(f"TensorRT-ready ONNX: {ready} (passes the TensorRT {version} parser rules)")
    return Ready(record, source, facts, pretyped, attempts, expected, base_pins, calibration, outputs)


@dataclass(frozen=True)
class Target:
    """The GPU the engine is built on (a placeholder without TensorRT) and its timing cache."""

    gpu: str
    capability: tuple[int, int]
    timing: Path | None


def handoff(job: TrtJob, ready: Ready) -> Target:
    """The GPU and timing cache of the build, and the equivalent trtexec command, printed for
    building on the target device."""
    request, trt = job.request, job.trt
    gpu, capability = gpu_info(trt)
    folder = request.timing_cache or job.output.parent
    timing = timing_cache_path(folder, str(job.version), gpu, capability) if trt is not None else None
    first_plan = job.plan.pin_fp32([*ready.base_pins, *ready.attempts[0].fp32_nodes])
    ready_path, name = ready.record.path, ready.facts.input_name
    command = trtexec_command(ready_path, job.output, first_plan, name, request.profile, request.workspace_mib, timing)
    print(f"equivalent trtexec command (build on the target device):\n  {command}")
    licence_note(ready.record.get("licence"), ready_path)
    return Target(gpu, capability, timing)


class EngineAttempts:
    """The engine's attempts, each built under the staging name with its record beside it (the
    backend checks its TensorRT release and GPU from there) and measured against the reference;
    ``engine`` is the record as the last attempt built left it."""

    def __init__(self, job: TrtJob, ready: Ready, engine: Artefact, staged: Path, target: Target):
        self.job, self.ready, self.engine, self.staged = job, ready, engine, staged
        self.gpu, self.timing = target.gpu, target.timing

    def onnx_for(self, attempt: EngineAttempt) -> Artefact:
        """The record of the ONNX an attempt builds from: the ready one, or for a strongly typed
        fallback the one with the islands typed FP32 (made now from its source, or the one
        --onnx-only wrote beside it, read)."""
        ready, plan = self.ready, self.job.plan
        if not plan.strongly_typed or attempt is ready.attempts[0]:
            return ready.record
        islands = islands_onnx(ready.record.path)
        if ready.pretyped is not None:  # never an islands ONNX left by an earlier run from another source
            with stage("writing the fallback's FP16-typed graph"):
                made = fp16_artefact(ready.pretyped, islands, FP32_OPS, attempt.fp32_nodes)
        else:
            made = Artefact.read(islands)
        require_compatible(islands, self.job.version)
        return made

    def build(self, attempt: EngineAttempt) -> Path:
        job, request = self.job, self.job.request
        attempt_plan = job.plan.pin_fp32([*self.ready.base_pins, *attempt.fp32_nodes])
        built = self.onnx_for(attempt)
        built_from = built.path
        name = self.ready.facts.input_name
        print(f"building TensorRT {job.trt.__version__} {request.precision} engine on {self.gpu}, {attempt.label} ...")
        with stage("building the engine"):
            settings = (request.profile, name, request.workspace_mib, self.timing, self.ready.outputs)
            engine = build_engine(job.trt, built_from, attempt_plan, *settings)
        self.staged.write_bytes(engine)
        command = trtexec_command(
            built_from, job.output, attempt_plan, name, request.profile, request.workspace_mib, self.timing
        )
        self.engine = self.engine.updated(**built.source_facts(), trtexec=command, **plan_facts(attempt_plan))
        replace(self.engine, path=self.staged).write()  # the backend checks its TensorRT release and GPU
        return self.staged

    def refuse(self, results: list) -> str:
        return refusal_message(
            self.ready.attempts, results, self.job.version, self.job.output, self.job.plan.strongly_typed
        )


def engine_step(job: TrtJob, ready: Ready, target: Target, started: float) -> Artefact:
    """Build the engine from ``ready`` (each attempt checked against the reference until one is
    within tolerance) and write its record once, with the engine landing last."""
    request, output, trt = job.request, job.output, job.trt
    profile, source = request.profile, ready.source
    graph = load_onnx(ready.record.path, load_external_data=False)  # read once: its facts below
    engine = ready.record.made(
        output,
        {
            "format": "tensorrt",
            "precision": request.precision,
            "strongly_typed": job.plan.strongly_typed,
            "input_name": ready.facts.input_name,
            "input_shape": [1, 3, job.height, job.width] if profile is None else None,
            "profile": {k: list(v) for k, v in profile.shapes().items()} if profile else None,
            "encoder": source.encoder,
            **source.output_kind().sidecar(),
            **extra_outputs_fact(ready.outputs),
            **sky_step_fact(graph),
            **stream_fact(graph, job.version.major),
            "licence": ready.record.licence,
            **ready.record.identity(),
            "gpu": {"name": target.gpu, "compute_capability": list(target.capability)},
            "calibration": ready.calibration,
            "versions": {**library_versions("onnx", "onnxruntime"), "tensorrt": trt.__version__},
        },
    )
    workdir = staging_dir(output)
    try:
        staged = workdir / output.name
        reference = ready.expected
        attempts = EngineAttempts(job, ready, engine, staged, target)
        if reference is None:
            note = "the engine is NOT checked (export it with this toolkit)"
            print(f"warning: no reference for {ready.record.path}: {note}")
            attempt, results = ready.attempts[0], []
            attempts.build(attempt)
        else:
            measure = lambda built: run_reference(built, reference)  # noqa: E731
            _, attempt, results = checked_build(ready.attempts, attempts.build, measure, attempts.refuse)
        engine = attempts.engine.updated(  # as the kept attempt left it
            build_seconds=round(time.perf_counter() - started, 1),
            verification=verification_record(reference, ready.attempts, results, attempt),
        )
        replace(engine, path=staged).write()
        if reference is not None:
            stamp_reference(staged, reference)  # written once, naming the engine it was checked with
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
    if reference is not None:
        reference.path = reference_path(output)
    return engine.with_reference(reference)


def typed_from(ready: Artefact) -> Artefact | None:
    """The record of the FP32 or Q/DQ ONNX an FP16-typed one was made from, when it is on this machine."""
    source = ready.get("source_onnx")
    return Artefact.read(source) if source and Path(source).is_file() else None
