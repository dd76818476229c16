"""``python -m export.trt``: TensorRT FP16/INT8 engines, explicit INT8 only.

The pipeline is ``export.trt.build.build_trt``; the release-dependent decisions are plain
functions in ``export.trt.decisions`` and the parser rules data in ``export.trt.rules``. ``--onnx-only``
writes the portable TensorRT-ready ONNX without TensorRT; ``--check MODEL.onnx`` runs the rule
check alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from commands.runner import command
from runtime.cli import positive_int

from ..cli import add_calibration_args, add_precision_args, add_size_arg, add_source_args, parse_hw, speaks_flags
from ..errors import ExportRequestError
from ..formats import FORMATS
from ..quantize.options import DEFAULT_METHOD, METHODS, Int8Options
from .build import TrtRequest, build_trt
from .decisions import DEFAULT_TARGET, Profile
from .installed import installed_tensorrt, target_version
from .rules import TrtVersion, check_onnx, grouped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.trt",
        description="Build a TensorRT engine (FP16 default, INT8 calibrated on SA-1B samples into explicit Q/DQ). "
        "Every ONNX it builds from or hands to trtexec is first checked against the target release's parser rules.",
        epilog=FORMATS["tensorrt"].help(),
    )
    add_source_args(parser, onnx=True)
    add_precision_args(
        parser, {"fp16": "FP16 (default)", "int8": "INT8 with --calib-dir", "fp32": "FP32 (reference)"}, "fp16"
    )
    add_calibration_args(parser, METHODS, DEFAULT_METHOD)
    parser.add_argument(
        "--keep-fp", action="append", default=[], metavar="PATTERN", help="node-name glob kept in float"
    )
    parser.add_argument(
        "--fp32-layers",
        action="append",
        default=[],
        metavar="GLOB",
        help="ONNX node names (globs, repeatable) built in FP32: pinned layers (weakly typed) or FP32 types in "
        "the TensorRT-ready ONNX (strongly typed)",
    )
    add_size_arg(parser, "a static --onnx's own, else 518x518", aliases=("--shape",))
    parser.add_argument("--min", type=parse_hw, dest="min_shape", help="dynamic profile: smallest HxW")
    parser.add_argument("--opt", type=parse_hw, dest="opt_shape", help="dynamic profile: HxW to tune and calibrate at")
    parser.add_argument("--max", type=parse_hw, dest="max_shape", help="dynamic profile: largest HxW")
    parser.add_argument(
        "--max-batch", type=positive_int, help="dynamic profile: largest batch, tuned at batch 1 (default 1)"
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        metavar="N",
        help="images per call, say one per camera: a profile of batch 1 to N tuned at N, at --size (or over "
        "--min/--opt/--max); runtime.DepthPredictor.predict_batch then runs up to N frames a call",
    )
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
    if args.batch is not None and args.max_batch is not None:
        raise ExportRequestError("give --batch N (batch 1 to N, tuned at N) or --max-batch (tuned at 1), not both")
    if not any(given):
        if args.max_batch is not None:
            raise ExportRequestError("--max-batch goes with --min/--opt/--max; for a batch alone give --batch")
        if args.batch is None or args.batch == 1:
            return None
        size = args.size or (518, 518)  # a static --onnx's own size: build_trt refuses a fixed batch
        return Profile.build(size, size, size, args.batch, args.batch)
    if not all(given):
        raise ExportRequestError("a dynamic profile needs all of --min, --opt and --max")
    if args.batch is not None:
        return Profile.build(args.min_shape, args.opt_shape, args.max_shape, args.batch, args.batch)
    return Profile.build(args.min_shape, args.opt_shape, args.max_shape, args.max_batch or 1)


def check_command(path: Path, version: TrtVersion) -> int:
    findings = check_onnx(path, version)
    if not findings:
        print(f"{path}: passes every TensorRT {version} parser rule this project encodes")
        return 0
    lines = "\n".join(grouped(findings))
    print(f"{path}: {len(findings)} problem(s) for TensorRT {version}:\n{lines}")
    return 1


def request_from_args(args: argparse.Namespace) -> TrtRequest:
    return TrtRequest(
        precision=args.precision,
        onnx=args.onnx,
        checkpoint=args.checkpoint,
        encoder=args.encoder,
        output=args.output,
        size=args.size,
        profile=resolve_profile(args),
        int8=Int8Options.from_args(args) if args.calib_dir is not None else None,
        workspace_mib=args.workspace,
        timing_cache=args.timing_cache,
        weakly_typed=args.weakly_typed,
        trt_version=args.trt_version,
        onnx_only=args.onnx_only,
        fp32_layers=tuple(args.fp32_layers),
    )


@command("python -m export.trt")
@speaks_flags
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check is not None:
        return check_command(args.check, target_version(installed_tensorrt(), args.trt_version))
    build_trt(request_from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
