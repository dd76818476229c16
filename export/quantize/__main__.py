"""``python -m export.quantize``: a calibrated Q/DQ INT8 ONNX within the accuracy budget (or an
FP16-typed ONNX for strongly typed TensorRT builds)."""

from __future__ import annotations

import argparse
from pathlib import Path

from commands.runner import command, stage
from runtime.int8_cpu import CHOICES as INT8_ARITHMETICS
from runtime.sky import sky_step_refusal

from ..artefact import Artefact
from ..cli import add_calibration_args, add_size_arg, speaks_flags
from ..errors import ExportRequestError
from ..formats import FORMATS
from ..graph import input_hw, load_onnx
from ..reference import write_typed_reference
from ..source import check_output_folder, output_folder
from .budget import export_int8
from .fp16 import fp16_artefact
from .options import DEFAULT_METHOD, DEFAULT_PERCENTILE, METHODS, Int8Options
from .qdq import TARGETS


def percentile(text: str) -> float:
    """argparse type: the share of calibration values inside the clipping range, in (0, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 100:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: a percentile is in (0, 100], for example 99.99")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description="Calibrate an ONNX model on SA-1B samples and write a Q/DQ INT8 ONNX (or an FP16-typed one).",
        epilog=FORMATS["onnx-quantized"].help(),
    )
    parser.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX from python -m export.onnx")
    parser.add_argument("--output", type=Path, help="output .onnx (default: beside the input, .int8.onnx)")
    parser.add_argument("--fp16", action="store_true", help="write the FP16-typed model instead (no calibration)")
    add_calibration_args(parser, METHODS, DEFAULT_METHOD, aliases=("--method",))
    add_size_arg(parser, "the model's, else 518x518", aliases=("--calib-shape",))
    parser.add_argument(
        "--percentile",
        type=percentile,
        default=DEFAULT_PERCENTILE,
        help=f"for --calib-method percentile ({DEFAULT_PERCENTILE})",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="tensorrt",
        help="tensorrt: symmetric int8 activations; cpu: uint8 activations for ONNX Runtime's CPU provider",
    )
    parser.add_argument(
        "--int8-arithmetic",
        choices=INT8_ARITHMETICS,
        default="auto",
        help="--target cpu: the INT8 arithmetic of the CPUs it is for; vnni: VNNI, AMX or ARM dot product "
        "(full-range weights); avx2: x86 without VNNI, whose 16-bit pair sums saturate (7-bit weights); "
        "auto: this CPU's (default). See docs/int8-cpus.md",
    )
    parser.add_argument(
        "--keep-fp", action="append", default=[], metavar="PATTERN", help="node-name glob kept in float (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    return parser


@command("python -m export.quantize")
@speaks_flags
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fp16:
        output = check_output_folder(args.output or args.onnx.with_name(args.onnx.stem + ".fp16.onnx"))
        source = Artefact.read(args.onnx)  # its sidecar and reference, read once
        with stage("converting to an FP16-typed graph"):
            typed = fp16_artefact(source, output)
        write_typed_reference(typed, source)
        print(f"wrote {output}")
        return 0
    if args.target != "cpu" and args.int8_arithmetic != "auto":
        raise ExportRequestError(
            "--int8-arithmetic is for --target cpu (ONNX Runtime's CPU kernels); TensorRT has its own"
        )
    if args.calib_dir is None:
        raise ExportRequestError("INT8 needs calibration images: pass --calib-dir with SA-1B shards or an image folder")
    output = args.output or args.onnx.with_name(
        args.onnx.stem + f".int8{'' if args.target == 'tensorrt' else '-cpu'}.onnx"
    )
    # For TensorRT the probes and the runtime apply the step (export.trt --int8 calibrates such a file too).
    refusal = sky_step_refusal(args.onnx, "INT8 quantization for --target cpu") if args.target == "cpu" else None
    if refusal:
        raise ExportRequestError(refusal)
    shape = args.size or input_hw(load_onnx(args.onnx, load_external_data=False)) or (518, 518)
    with output_folder(output):  # removed again if the work fails or is refused
        _quantize(args, output, shape)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _quantize(args: argparse.Namespace, output: Path, shape: tuple[int, int]) -> None:
    source = Artefact.read(args.onnx)
    from ..trt.sky_step import cut_removed_on_failure, quantize_cut_path, sky_less_for_quantizing

    cut = quantize_cut_path(source.path, output) if args.target == "tensorrt" else None
    with cut_removed_on_failure(cut):  # a refusal or a missed budget leaves no sky-less copy
        if cut is not None:  # a DA3 mono/metric graph: its TensorRT-ready copy, without the sky step
            source = sky_less_for_quantizing(source, output)
        export_int8(source, output, Int8Options.from_args(args), shape, args.target)


if __name__ == "__main__":
    raise SystemExit(main())
