"""``python -m runtime.verify MODEL [--reference FILE]``: does this artefact still give the numbers
it was exported with, here, on this backend?

It runs the artefact (TensorRT engine, OpenVINO IR or ONNX file) on the backend that loads it,
through ``DepthPredictor``'s backend (numpy and that backend's library; no PyTorch, no onnx
package), on the inputs of its reference (``<artefact>.reference.npz``, written by every export;
see ``runtime.reference``), prints the numbers per input and exits 0 within the reference's
tolerance, 1 over it, 2 when no reference is found or a file cannot be read. A Video Depth
Anything stream's reference is checked frame by frame with the cache carried (``runtime.stream_check``).
``DepthPredictor(..., verify=True)`` does the same check when it loads a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from commands.runner import command, stage

from .reference import reference_for, require_within
from .stream_check import check_backend


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.verify",
        description="Run an artefact (engine, IR, ONNX) on the backend that loads it against its reference "
        "(<artefact>.reference.npz, written by every export) and say whether it is within its tolerance.",
        epilog="Exit codes: 0 within tolerance; 1 over it; 2 no reference found, or a file that cannot be read.",
    )
    parser.add_argument("model", type=Path, help="the artefact: .engine/.plan, .xml (+ .bin) or .onnx")
    parser.add_argument("--reference", type=Path, help="reference file (default: <MODEL>.reference.npz beside it)")
    parser.add_argument("--backend", default="auto", help="auto (from the suffix), onnxruntime, openvino, tensorrt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, gpu, ... (default: auto)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="run in this precision instead of the artefact's (e.g. bf16 on OpenVINO)",
    )
    return parser


@command("python -m runtime.verify")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .predictor import DepthPredictor

    with stage("reading the reference"):
        reference = reference_for(args.model, args.reference)
    with stage("loading the model"):
        predictor = DepthPredictor(args.model, backend=args.backend, device=args.device, precision=args.precision)
    with predictor, stage("running the reference inputs"):
        result = check_backend(predictor._backend, reference)
    ran = result.ran
    print(f"{args.model} on {ran['backend']} ({ran['device']}, {ran['precision']}) against {reference.path}:")
    print("\n".join(result.lines()))
    if result.note:
        print(f"  note: {result.note}")
    print(f"{'PASSED' if result.passed else 'FAILED'}: {result.summary()} ({result.seconds:.2f} s)")
    require_within(result, args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
