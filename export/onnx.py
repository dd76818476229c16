"""``python -m export.onnx``: a verified, self-contained ONNX file from a checkpoint.

The TorchScript-based exporter is used on purpose: TensorRT 8.5 (JetPack 5) reads opset
<= 17, which the ``torch.export`` exporter (opset 18+) cannot produce. Position embeddings
are computed with plain tensor arithmetic (see ``train.models.backbone``), so a dynamic
export matches PyTorch at every size, not only the traced one.
"""

from __future__ import annotations

import argparse
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from commands.errors import require
from commands.runner import command, stage
from runtime.io.files import staging_dir
from runtime.metadata import artefact_digest, library_versions, sidecar_path
from runtime.metric import OutputKind
from runtime.reference import Reference, reference_path, save_reference

from .artefact import Artefact
from .cli import add_size_arg, add_source_args, patch_multiple, speaks_flags
from .errors import ExportError, ExportRequestError
from .formats import FORMATS
from .graph import save_onnx
from .metrics import (
    FP32_TOLERANCE,
    MAX_REL_STD,
    Comparison,
    OnnxRuntimeRunner,
    check_sizes,
    compare,
    verification_frames,
)
from .reference import make_reference, other_size, torch_runner
from .source import (
    check_hw,
    check_output_folder,
    default_output,
    licence_note,
    load_source_model,
    model_identity,
    model_licence,
    source_stem,
)
from .video import (
    VERIFY_FRAMES,
    check_video_request,
    export_step,
    is_video_model,
    verify_stream,
    video_metadata,
)

INPUT_NAME = "image"
OUTPUT_NAME = "depth"
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(14, 21)


@dataclass
class OnnxExport:
    path: Path
    seconds: float
    checks: dict[str, Comparison] = field(default_factory=dict)
    extra_checks: dict[str, dict[str, Comparison]] = field(default_factory=dict)  # output -> size -> check
    artefact: Artefact | None = None  # the record of what was written (its sidecar's facts)


def _torch_export(
    model: Any, path: Path, height: int, width: int, dynamic: bool, opset: int, extras: tuple = ()
) -> None:
    import torch

    names = [OUTPUT_NAME, *extras]  # a DA3 network's sky map or depth confidence after depth
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 1: "height", 2: "width"} for name in names})
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's notes on shape arithmetic,
        # which the dynamic-size checks below verify instead of trusting.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, height, width),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=axes if dynamic else None,
            do_constant_folding=True,
        )


def _finalise(raw: Path, path: Path, metadata: dict[str, str], slim: bool) -> None:
    """Stamp metadata, optionally slim, check, and save as one file (external data past 2 GB)."""
    onnx = require("onnx", "onnx", "onnx")
    model = onnx.load(str(raw))
    if slim:
        onnxslim = require("onnxslim", "slim", "onnxslim (for --slim)")
        model = onnxslim.slim(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    save_onnx(model, path)
    onnx.checker.check_model(str(path))


def export_onnx(
    model: Any,
    output: str | Path,
    height: int = 518,
    width: int = 518,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    slim: bool = False,
    tolerance: float = FP32_TOLERANCE,
    source: str = "",
) -> OnnxExport:
    """Export ``model`` (a ``DepthAnythingV2``, or a ``DepthAnything3`` whose ``depth`` becomes the
    graph's output) to ``output``; verified against PyTorch before it lands.

    Nothing appears under ``output`` unless the file passed ``onnx.checker`` and, with
    ``verify``, ONNX Runtime matched PyTorch within ``tolerance`` (``MAX_REL_STD``) on a photograph.
    An interrupted export leaves the previous model or none, never a mix; its temporary folder
    is removed by the next export to the same path.
    """
    import torch

    check_hw(height, width)
    if opset not in SUPPORTED_OPSETS:
        raise ExportRequestError(
            f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    output = Path(output)
    if output.suffix != ".onnx":
        raise ExportRequestError(f"{output}: the output name must end in .onnx")
    check_output_folder(output)
    graph = model  # what is traced: a Depth Anything 3 network with its sky map or depth confidence
    if hasattr(model, "deployable"):
        graph, model = model.deployable(extras=True).eval().float().cpu(), model.deployable()
    extras = tuple(getattr(graph, "extra_outputs", ()))
    model = model.eval().float().cpu()
    video = is_video_model(model)  # Video Depth Anything: its streaming step, the cache explicit
    if video:
        check_video_request(model, dynamic)
    # What the model says of itself, in the ONNX metadata and the record alike.
    identity = {"licence": model_licence(model), **model_identity(model), **(video_metadata(model) if video else {})}
    licence_note(identity["licence"], output)
    sizes = [(height, width), other_size(height, width)] if dynamic else [(height, width)]
    # The inputs it is verified on, prepared before the staging folder exists: at each size checked
    # a photograph (a stream: the photograph panning over a few frames).
    inputs: dict[tuple[int, int], list] = {}
    for h, w in check_sizes(height, width, dynamic) if verify else ():
        inputs[h, w] = verification_frames(h, w, VERIFY_FRAMES if video else 1)
    started = time.perf_counter()
    workdir = staging_dir(output)
    try:
        raw, staged = workdir / "raw.onnx", workdir / output.name
        with stage("tracing the model to ONNX"):
            if video:
                export_step(model, raw, height, width, opset)
            else:
                _torch_export(graph, raw, height, width, dynamic, opset, extras)
        spec = getattr(model, "spec", None)
        max_depth = getattr(model, "max_depth", None)
        output_kind = OutputKind("metric", float(max_depth)) if max_depth is not None else OutputKind()
        if max_depth is None and isinstance(getattr(model, "output_kind", None), str):  # DA3, a DA3 student
            output_kind = OutputKind(model.output_kind)
        metadata = {
            "producer": "dav2-edge",
            "encoder": getattr(spec, "name", "custom"),
            "input_shape": "dynamic" if dynamic else f"1x3x{height}x{width}",
            **output_kind.metadata(),  # output_kind and max_depth: what every artefact made from it outputs
            **identity,
            **({"extra_outputs": ",".join(extras)} if extras else {}),
        }
        with stage("checking and saving the ONNX file"):
            _finalise(raw, staged, metadata, slim)
        raw.unlink()
        seconds = time.perf_counter() - started
        result = OnnxExport(output, seconds)
        if verify and video:
            with stage(f"verifying the stream with ONNX Runtime at {height}x{width}"):
                result.checks[f"{height}x{width}"] = verify_stream(model, staged, inputs[height, width], tolerance)
        elif verify:
            for (h, w), (batch,) in inputs.items():
                with torch.inference_mode():
                    expected = graph(torch.from_numpy(batch))
                expected = [t.numpy() for t in (expected if extras else (expected,))]
                with stage(f"verifying with ONNX Runtime at {h}x{w}"):
                    got = OnnxRuntimeRunner(staged).outputs(batch)
                for name, a, b in zip((OUTPUT_NAME, *extras), got, expected):
                    comparison = compare(a, b)
                    if name == OUTPUT_NAME:
                        result.checks[f"{h}x{w}"] = comparison
                    else:  # the sidecar's verification.extra_outputs
                        result.extra_checks.setdefault(name, {})[f"{h}x{w}"] = comparison
                    if not comparison.max_rel_std <= tolerance:  # NaN fails too
                        raise ExportError(
                            f"ONNX Runtime differs from PyTorch at {h}x{w} ({name}): {comparison}, over the "
                            f"tolerance {tolerance:g}; the file was not written"
                        )
        written = None
        digest = artefact_digest(staged)  # the record's and the reference's: landing is a rename, same bytes
        if video:  # a stream's reference: frames of a panning photograph, the cache carried
            with stage("writing the stream reference"):
                written = _stream_reference(staged, digest, model)
        else:
            with stage("writing the reference"):
                runner = torch_runner(model)
                written = make_reference(
                    staged, "fp32", sizes, runner, "PyTorch FP32", sha256=digest, output_kind=output_kind.kind
                )
        # The old sidecar, reference and model go first: an external .data file must never land
        # beside an older .onnx, and a new model never sits beside an old model's metadata; the
        # model lands last, after its reference.
        sidecar_path(output).unlink(missing_ok=True)
        reference_path(output).unlink(missing_ok=True)
        output.unlink(missing_ok=True)
        for item in sorted(workdir.iterdir(), key=lambda p: p.suffix == ".onnx"):  # data first, model last
            item.replace(output.parent / item.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record = Artefact(
        output,
        {
            "format": "onnx",
            "precision": "fp32",
            "opset": opset,
            "dynamic": dynamic,
            "input_name": INPUT_NAME,
            "input_shape": [None, 3, None, None] if dynamic else [1, 3, height, width],
            "encoder": metadata["encoder"],
            **output_kind.sidecar(),
            "source": source,
            **identity,
            "sha256": digest,
            "export_seconds": round(result.seconds, 2),
            "verification": {
                "against": "PyTorch FP32",
                "metric": MAX_REL_STD,
                "tolerance": tolerance,
                "checks": {k: vars(v) for k, v in result.checks.items()},
                **(
                    {"extra_outputs": {n: {k: vars(v) for k, v in c.items()} for n, c in result.extra_checks.items()}}
                    if extras
                    else {}
                ),
            },
            **({"extra_outputs": list(extras)} if extras else {}),
            "versions": library_versions("torch", "onnx", "onnxruntime"),
        },
    ).write()
    if written is not None:
        written.path = reference_path(output)  # where it landed
    result.artefact = record.with_reference(written)
    return result


def _stream_reference(staged: Path, digest: str, model: Any) -> Reference:
    """The stream reference of the staged stream ONNX, its depths from the PyTorch ``model`` (not
    from ONNX Runtime: checked in ONNX Runtime, it would be that runtime against itself), written
    beside it so that it lands with the model."""
    from .trt.stream import make_stream_reference  # export.trt imports this module

    made = make_stream_reference(staged, staged, "fp32", model=model)
    made.meta["artefact_sha256"] = digest
    made.path = save_reference(reference_path(staged), made)
    return made


def source_onnx(
    onnx: Path | None,
    checkpoint: Path | None,
    encoder: str | None,
    folder: Path,
    height: int,
    width: int,
    dynamic: bool,
    opset: int = DEFAULT_OPSET,
) -> Artefact:
    """The record of the FP32 ONNX the other exports start from: ``onnx`` as given (its sidecar
    read once), or a verified export of the checkpoint (or random ``encoder`` weights) written
    into ``folder``."""
    if onnx is not None:
        return Artefact.read(onnx)
    suffix = "" if opset == DEFAULT_OPSET else f".opset{opset}"  # an 8.5 target's split-LayerNorm export
    path = (
        folder
        / f"{source_stem(None, checkpoint, encoder)}.{'dynamic' if dynamic else f'{height}x{width}'}{suffix}.onnx"
    )
    print(f"exporting ONNX (opset {opset}) -> {path}")
    model = load_source_model(checkpoint, encoder)
    return export_onnx(model, path, height, width, dynamic=dynamic, opset=opset, source=str(checkpoint)).artefact


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export a Depth Anything V2, Depth Anything 3 or Video Depth Anything checkpoint to ONNX, "
        "verified against PyTorch with ONNX Runtime.",
        epilog=FORMATS["onnx"].help(),
    )
    add_source_args(parser)
    add_size_arg(parser, "518x518; with --dynamic the size it is traced and verified at")
    # --height/--width: the pre-vocabulary spelling, still accepted for one release
    parser.add_argument("--height", type=patch_multiple, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=patch_multiple, help=argparse.SUPPRESS)
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 17; 16 splits LayerNorm for TensorRT 8.5)"
    )
    parser.add_argument("--output", type=Path, help="output .onnx (default artifacts/<checkpoint>_<HxW|dynamic>.onnx)")
    parser.add_argument("--slim", action="store_true", help="simplify the graph with onnxslim before verifying")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    return parser


@command("python -m export.onnx")
@speaks_flags
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    height, width = args.size or (518, 518)
    args.height, args.width = args.height or height, args.width or width
    if args.output is not None:  # before the checkpoint loads
        check_output_folder(args.output)
    with stage("loading the checkpoint"):
        model = load_source_model(args.checkpoint, args.encoder, args.variant)
    if is_video_model(model):  # refused before anything is said of the export
        check_video_request(model, args.dynamic)
    stem = source_stem(None, args.checkpoint, model.spec.name)
    output = args.output or default_output(
        stem, f"_{'dynamic' if args.dynamic else f'{args.height}x{args.width}'}.onnx"
    )
    print(f"exporting {model.spec.name} at {'dynamic' if args.dynamic else f'{args.height}x{args.width}'} ...")
    result = export_onnx(
        model,
        output,
        args.height,
        args.width,
        args.dynamic,
        args.opset,
        not args.no_verify,
        args.slim,
        source=str(args.checkpoint or f"random:{args.encoder}"),
    )
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MiB) in {result.seconds:.1f} s")
    for size, check in result.checks.items():
        print(f"  ONNX Runtime vs PyTorch at {size}: {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
