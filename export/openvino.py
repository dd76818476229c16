"""``python -m export.openvino``: OpenVINO IR in FP16 (compressed weights) or INT8 (NNCF).

INT8 is NNCF post-training quantization with its transformer preset on the same SA-1B
``CalibrationSet`` the TensorRT path uses, held to the accuracy budget by the same method
(``export.quantize.openvino_int8``). Before it lands, the IR (run with f32 inference,
since OpenVINO otherwise runs bf16 on CPUs that have it) is verified against an independent
reference, ONNX Runtime FP32 on the source ONNX, on a photograph, within a tolerance per
precision; the metric is ``export.metrics.MAX_REL_STD``. The .xml/.bin pair appears as a whole or not
at all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from commands.errors import require
from commands.runner import command, stage
from runtime.backends.openvino import RT_INFO_PRECISION, import_openvino, load_error, openvino_core, telemetry_off
from runtime.io.files import staging_dir
from runtime.metadata import artefact_digest, library_versions, sidecar_path
from runtime.reference import reference_path, save_reference
from runtime.sky import sky_step_refusal

from .artefact import Artefact
from .cli import (
    add_calibration_args,
    add_precision_args,
    add_size_arg,
    add_source_args,
    args_stem,
    check_request,
    speaks_flags,
)
from .errors import ExportError, ExportRequestError
from .formats import FORMATS
from .graph import input_hw, load_onnx
from .metrics import FP32_TOLERANCE, MAX_REL_STD, compare, run_onnxruntime, short_name, verification_input
from .onnx import source_onnx
from .quantize.openvino_int8 import checked_layer_names, ov_names
from .quantize.openvino_int8 import compile_f32 as _compile_f32
from .quantize.options import ACCURACY_METHODS, Int8Options
from .quantize.stream_budget import StreamBudgetMissed, accuracy_line, measure_stream_ir
from .reference import FP16_TOLERANCE, UNMEASURED_INT8_TOLERANCE, make_reference, onnx_runner, other_size
from .source import (
    CALIBRATION_CACHE,
    PRECISIONS,
    check_precision,
    default_output,
    intermediates,
    licence_note,
    output_folder,
)
from .video import (
    STREAM_FLOAT_SCOPES,
    IrStream,
    is_stream_graph,
    is_stream_onnx,
    quantize_stream_openvino,
    stream_feeds,
)

# Largest MAX_REL_STD against ONNX Runtime FP32 an IR may show on the verification photo. Measured
# on vits with the parity weights at 98x98 / 266x266 / 518x518: fp32 2e-5 / 5e-5 / 6e-5, fp16
# 9e-3 / 1.3e-2 / 1.9e-2, int8 0.5 / 0.6 / 0.9 (12 images). The INT8 bound catches a broken
# artefact (one weight tensor with its sign flipped: 7 to 11), not a loss of accuracy: that is
# the benchmark's AbsRel column.
TOLERANCES = {"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": 2.0}


def export_openvino(
    onnx_path: str | Path | Artefact,
    output: str | Path,
    precision: str = "fp16",
    calibration=None,
    verify_shape: tuple[int, int] | None = None,
    int8: Int8Options | None = None,
    *,
    tolerance: float | None = None,
) -> Artefact:
    """Convert an ONNX model (a path, or its record) to IR at ``output`` (``.xml`` + ``.bin``);
    returns the IR's record, also written to its sidecar.

    INT8 follows ``int8`` (the accuracy budget, float layers, method; its images are
    ``calibration``, a ``HeldOutSplit`` when a budget is set); without it, no budget.

    Nothing is written unless the saved IR, read back, matches ONNX Runtime FP32 on the source
    ONNX within ``TOLERANCES[precision]``. An interrupted export leaves the previous pair or
    none (never a new .bin beside an old .xml); the next export removes its temporary folder.

    ``tolerance``: that bound instead of ``TOLERANCES[precision]``, for ``benchmarks.family_cost``
    alone (the cost of a ViT-L INT8 IR whose numbers it does not use); no flag reaches it. The
    record holds the bound the IR was held to, the error it had and, where they differ, the default.
    """
    ov = import_openvino()
    output = Path(output)
    if not (onnx_path.path if isinstance(onnx_path, Artefact) else Path(onnx_path)).is_file():
        raise ExportRequestError(f"{onnx_path}: no such ONNX file")
    source = Artefact.of(onnx_path)
    onnx_path = source.path
    check_precision(precision)
    if tolerance is not None and precision != "int8":
        raise ExportRequestError(f"a tolerance other than the default applies to int8 only, not {precision}")
    bound = TOLERANCES[precision] if tolerance is None else float(tolerance)
    if output.suffix != ".xml":
        raise ExportRequestError(f"{output}: OpenVINO IR files end in .xml")
    if precision == "int8" and calibration is None:
        raise ExportRequestError(
            "`precision='int8'` needs calibration images: pass `calibration` (SA-1B shards or an image folder)"
        )
    if precision == "int8" and len(calibration) == 0:
        raise ExportRequestError("INT8 needs at least one calibration image; the calibration set is empty")
    require("onnxruntime", "onnx", "ONNX Runtime (the reference the IR is verified against)")
    started = time.perf_counter()
    with stage("converting the ONNX model to OpenVINO"), telemetry_off():
        model = ov.convert_model(str(onnx_path))
    output_kind = source.output_kind()
    quantization = budget = None
    scopes: list = []  # a stream INT8 IR's float scopes left to try (export.video.STREAM_FLOAT_SCOPES)
    stream = is_stream_graph(model)  # Video Depth Anything: the cache in and out (export.video)
    stream_int8 = stream and precision == "int8"  # measured against its budget, with float scopes to try
    if stream_int8:
        budget = int8.budget if int8 is not None else None
        if budget is not None and not hasattr(calibration, "held_out_batches"):
            raise ExportRequestError(
                "an accuracy budget needs held-out images: pass export.quantize.budget's read_int8_images"
            )
        wanted = check_stream_int8(int8)
        names = checked_layer_names(model, load_onnx(onnx_path), wanted) if wanted else {}
        floats = ov_names(wanted, names)  # NNCF's ignored scope names OpenVINO ops
        scopes, converted = list(STREAM_FLOAT_SCOPES), model
        with stage("running the calibration images as one stream"):
            feeds = stream_feeds(ov, converted, calibration)

        def requantize():  # the next scope of what stays in float
            scope = scopes.pop(0)
            with stage(f"quantizing the stream step ({scope[0]} in float)"):
                quantized, record = quantize_stream_openvino(converted, feeds, floats, scope)
            return quantized, {**record, "float_layers": list(wanted), "float_ops": floats}

        model, quantization = requantize()
    elif precision == "int8":
        from .quantize.openvino_int8 import quantize_openvino

        options = int8 or Int8Options(Path(), len(calibration), budget=None)
        budget = options.budget
        if options.budget is not None and not hasattr(calibration, "held_out_batches"):
            raise ExportRequestError(
                "an accuracy budget needs held-out images: pass export.quantize.budget's read_int8_images"
            )
        model, quantization = quantize_openvino(ov, model, onnx_path, calibration, output, options)
    workdir = staging_dir(output)
    try:
        staged = workdir / output.name
        shape = _static_hw(model) or verify_shape or (518, 518)
        fp32_stream = None  # a stream's ONNX Runtime FP32 session: one for every IR tried
        while True:  # once, or again for a stream INT8 IR over a bound while scopes are left
            model.set_rt_info(precision, RT_INFO_PRECISION)  # the runtime keeps an FP32 IR in f32 from this
            with stage("saving and verifying the IR"):
                for key, value in output_kind.metadata().items():  # read back by runtime.backends.openvino
                    model.set_rt_info(value, ["dav2_edge", key])
                for key, value in {**source.identity(), "licence": source.licence}.items():  # what the model is
                    model.set_rt_info(value, ["dav2_edge", key])
                ov.save_model(model, str(staged), compress_to_fp16=precision != "fp32")
                if stream:  # read and compiled once for both checks
                    ir = IrStream(staged, onnx_path, fp32_stream)
                    fp32_stream, check, shape = ir.fp32, ir.verify(), ir.size
                else:
                    check = verify_ir(ov, staged, onnx_path, shape)
            retry = stream_int8 and bool(scopes)  # a scope left to try
            missed = None  # (check, value, bound) of a stream INT8 IR over a bound, tried again
            if not check.max_rel_std <= bound:  # NaN fails too
                if not retry:
                    raise ExportError(
                        f"the {precision} IR differs from ONNX Runtime FP32 at {shape[0]}x{shape[1]}: {check}, over "
                        f"the tolerance {bound:g}; nothing was written"
                    )
                missed = (f"max error vs ONNX Runtime FP32, {MAX_REL_STD}", check.max_rel_std, bound)
            elif not stream_int8:
                break
            else:  # held to the budget before anything lands
                with stage("measuring the INT8 stream frame by frame against the FP32 stream"):
                    floats_all = [*quantization["float"], *quantization["float_layers"]]
                    try:
                        measured = measure_stream_ir(ir, source, calibration, budget, floats_all, quantization["kept"])
                    except StreamBudgetMissed as exc:
                        if not retry:
                            raise
                        missed = (exc.check, exc.value, exc.bound)
                if missed is None:
                    break
            what, value, over = missed
            print(
                f"note: with {quantization['kept']} the INT8 stream is over its bound: {what} {value:.4f} > "
                f"{over:g}; quantizing again with {scopes[0][0]} in float",
                file=sys.stderr,
            )
            tried = {"kept": quantization["kept"], "check": what, "value": round(float(value), 6), "bound": over}
            ir = None  # the staged IR's compiled model goes before the next IR is saved over it
            model, quantization = requantize()
            quantization["tried_first"] = tried
        # Old metadata and .xml go first, the new .xml lands last: at every moment the folder
        # holds the old pair, no loadable pair, or the new pair.
        sidecar_path(output).unlink(missing_ok=True)
        reference_path(output).unlink(missing_ok=True)
        output.unlink(missing_ok=True)
        staged.with_suffix(".bin").replace(output.with_suffix(".bin"))
        staged.replace(output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = {
        "format": "openvino",
        "precision": precision,
        **output_kind.sidecar(),
        "input_name": model.input(0).any_name,
        "input_shape": [d.get_length() if d.is_static else None for d in model.input(0).get_partial_shape()],
        "encoder": source.encoder,
        "licence": source.licence,
        **source.identity(),
        **({"stream": source.get("stream")} if source.get("stream") else {}),
        **source.source_facts(),
        "quantization": quantization,
        "calibration": calibration.describe() if calibration is not None else None,
        "verification": {
            "against": "ONNX Runtime FP32 on the source ONNX (IR run with f32 inference)",
            "metric": MAX_REL_STD,
            "tolerance": bound,
            **({"default_tolerance": TOLERANCES[precision]} if bound != TOLERANCES[precision] else {}),
            "checks": {f"{shape[0]}x{shape[1]}": vars(check)},
        },
        "seconds": round(time.perf_counter() - started, 2),
        "sha256": artefact_digest(output),  # the .xml and its .bin
        "versions": library_versions("openvino", "nncf"),
    }
    if stream_int8:
        reference, data["accuracy"] = measured
    record = source.made(output, data).write()
    if stream_int8:  # the measured frames and their FP32 depths
        reference.meta["artefact_sha256"] = record.sha256
        reference.path = save_reference(reference_path(output), reference)
        licence_note(record.licence, output)
        return record.with_reference(reference)
    if stream:  # a stream's reference: the source ONNX's frames (made with ONNX Runtime where it has none)
        from .trt.stream import stream_reference

        with stage("writing the stream reference"):
            reference = stream_reference(record, source, precision)
        licence_note(record.licence, output)
        return record.with_reference(reference)
    # INT8 with --accuracy-budget off measured nothing: its reference says so and holds it only to
    # the broken-artefact bound, as export.quantize's does (not the 0.01 budget it never met).
    unmeasured = {"measured": False} if precision == "int8" and budget is None else {}
    with stage("writing the reference"):
        reference = make_reference(
            output,
            precision,
            [shape] if _static_hw(model) else [shape, other_size(*shape)],
            onnx_runner(onnx_path),
            "ONNX Runtime FP32 on the source ONNX",
            source=source,
            held_out=calibration.held_out_batches() if budget is not None else (),
            budget=UNMEASURED_INT8_TOLERANCE if unmeasured else budget,
            sha256=record.sha256,  # the IR as its record hashed it: the same bytes
            **unmeasured,
        )
    licence_note(record.licence, output)
    return record.with_reference(reference)


def check_stream_int8(int8: Int8Options | None) -> tuple[str, ...]:
    """The stream's INT8 options it cannot follow, refused in one line; its ``--float-layers``."""
    if int8 is None:
        return ()
    if int8.accuracy_method != "sensitivity":
        raise ExportRequestError(
            f"--accuracy-method {int8.accuracy_method}: a stream graph's INT8 is held to its budget by measuring "
            "the stream as a whole (no per-layer search, no NNCF accuracy control); drop the option"
        )
    if int8.keep_fp:
        raise ExportRequestError(
            "keep_fp: a stream graph's INT8 keeps the motion modules' attention in float, and the modules whole "
            "where that misses the bound, by its own scopes; name more layers with --float-layers (ONNX node names)"
        )
    if int8.smooth != "auto":
        raise ExportRequestError(
            f"--smooth {int8.smooth}: a stream graph's INT8 uses NNCF's transformer preset (its SmoothQuant), "
            "not this project's outlier migration; drop the option"
        )
    return int8.float_layers


def verify_ir(ov, xml: Path, onnx_path: Path, shape: tuple[int, int]):
    """``compare`` of the IR at ``xml`` (f32 inference) with ONNX Runtime FP32 on ``onnx_path``."""
    batch = verification_input(*shape)
    try:
        got = _compile_f32(ov, openvino_core().read_model(str(xml)))({0: batch})[0]
    except RuntimeError as exc:
        raise ExportError(f"the saved IR cannot be read back ({load_error(exc)}); nothing was written") from exc
    return compare(np.asarray(got), run_onnxruntime(onnx_path, batch))


def _static_hw(model) -> tuple[int, int] | None:
    shape = model.input(0).get_partial_shape()
    if shape.is_static:
        return int(shape[2].get_length()), int(shape[3].get_length())
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.openvino",
        description="Convert to OpenVINO IR: FP16 (default) or INT8 calibrated with NNCF on SA-1B samples.",
        epilog=FORMATS["openvino"].help(),
    )
    add_source_args(parser, onnx=True)
    add_precision_args(parser, {name: f"{name.upper()} IR" for name in PRECISIONS}, "fp16")
    add_size_arg(parser, "a static ONNX's own, else 518x518", aliases=("--shape",))
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    add_calibration_args(parser)
    parser.add_argument(
        "--accuracy-method",
        choices=ACCURACY_METHODS,
        default="sensitivity",
        help="how INT8 holds the budget: sensitivity (this project's per-layer probes, default) or nncf "
        "(NNCF's accuracy control)",
    )
    parser.add_argument("--output", type=Path, help="IR path (default artifacts/<model>.<precision>.xml)")
    return parser


@command("python -m export.openvino")
@speaks_flags
def main(argv: list[str] | None = None, *, int8_tolerance: float | None = None) -> int:
    """``int8_tolerance``: the INT8 IR's verification bound instead of ``TOLERANCES["int8"]``, for
    ``benchmarks.family_cost``'s ViT-L cost only. Deliberately no flag: a user's IR is held to it."""
    args = build_parser().parse_args(argv)
    check_request(args)
    if args.onnx is not None and args.dynamic:
        raise ExportRequestError(
            f"--dynamic applies to an export from --checkpoint/--encoder; {args.onnx} keeps its own input shapes: "
            "export it with python -m export.onnx --dynamic"
        )
    if int8_tolerance is not None and args.precision != "int8":
        raise ExportRequestError(f"int8_tolerance applies to --int8 only, not --{args.precision}")
    output = args.output or default_output(args_stem(args), f".{args.precision}.xml")
    height, width = args.size or (518, 518)
    fresh = not output.absolute().parent.exists()
    # The folder removed again if the work fails or is refused, and before it the FP32 ONNX a
    # checkpoint was exported to on the way (export.source.intermediates).
    with output_folder(output), intermediates(output.parent, fresh) as made:
        return _export(args, output, height, width, int8_tolerance, made)


def _export(
    args: argparse.Namespace, output: Path, height: int, width: int, int8_tolerance: float | None, made: list[Path]
) -> int:
    source = source_onnx(args.onnx, args.checkpoint, args.encoder, output.parent, height, width, args.dynamic)
    if args.onnx is None:
        made.append(source.path)
    refusal = sky_step_refusal(source.path, "an OpenVINO IR")
    if refusal:
        raise ExportRequestError(refusal)
    graph = load_onnx(source.path, load_external_data=False)
    fixed = input_hw(graph)  # a static ONNX's own size, as export.quantize
    if fixed is not None and args.size is not None and tuple(args.size) != fixed:
        raise ExportRequestError(
            f"{source.path} takes {fixed[0]}x{fixed[1]} images (a static ONNX), "
            f"not --size {args.size[0]}x{args.size[1]}: drop --size, or export the ONNX at that size (or --dynamic)"
        )
    height, width = fixed or (height, width)
    calibration = options = None
    if args.precision == "int8":
        from .quantize.budget import read_int8_images

        options = Int8Options.from_args(args)
        if is_stream_onnx(graph):
            check_stream_int8(options)  # before any image is read
        with stage("reading the calibration images"):
            calibration = read_int8_images(options, (height, width), output.parent / CALIBRATION_CACHE)
    hw = (height, width)
    data = export_openvino(source, output, args.precision, calibration, hw, options, tolerance=int8_tolerance)
    accuracy = (data.get("quantization") or {}).get("accuracy")
    if accuracy:
        floats = f", {len(accuracy['float_layers'])} in float" if accuracy["float_layers"] else ""
        errors = accuracy.get("errors") or {}
        extra = "".join(f", {name} {value:.4f}" for name, value in errors.items() if name != "depth")
        print(
            f"INT8 AbsRel vs FP32 on {accuracy['held_out_images']} held-out images: {accuracy['error']:.4f} "
            f"(by {short_name(accuracy['metric'])}{extra}; plain INT8 {accuracy['plain_error']:.4f}, budget "
            f"{accuracy['budget']}); {accuracy['int8_layers']} "
            f"layers INT8{floats}{', outliers migrated' if accuracy['smoothed'] else ''} "
            f"(report {output}.quant.json)"
        )
    if data.get("accuracy"):  # a stream's
        print(accuracy_line(data["accuracy"], data["quantization"]["kept"]))
    size = output.with_suffix(".bin").stat().st_size / 2**20
    verification = data["verification"]
    ((shape, check),) = verification["checks"].items()
    print(f"wrote {output} (+ .bin, {size:.1f} MiB) in {data['seconds']:.1f} s")
    print(
        f"  vs ONNX Runtime FP32 at {shape}: max error {check['max_rel_std']:.2e} of the reference's std "
        f"(tolerance {verification['tolerance']:g}), mean abs {check['mean_abs']:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
