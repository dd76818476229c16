"""``python -m benchmarks.int8_forms``: the error of each ONNX Runtime CPU INT8 form (full-range,
7-bit and unsigned weights) against FP32, as written and with ONNX Runtime's kernels on this CPU,
and with the AVX2 kernels under ``qemu-x86_64 -cpu Haswell-v4`` (``--emulate``); the figures of
``docs/int8-cpus.md``.

The model is ViT-S with the test suite's parity weights, calibrated on 12 images of a shard made by
``tests.sa1b.make_shard`` and measured on ``tests.sa1b.held_out_photos``: the repository's tests
must be present. Emulation takes minutes a call at 266x266: run it outside shared CPU locks, niced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FORMS = ("u8s8", "u8s7", "u8u8")


def build(folder: Path, size: int) -> dict:
    """The FP32 ONNX, each form's INT8 ONNX and their errors as written and on this CPU."""
    from export.metrics import OnnxRuntimeRunner, abs_rel
    from export.onnx import export_onnx
    from export.quantize.calibration import CalibrationSet
    from export.quantize.qdq import quantize_int8
    from runtime.preprocessing import prepare_fixed
    from tests.conftest import official_state_dict
    from tests.sa1b import held_out_photos, make_shard
    from train.models import DepthAnythingV2

    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "vits.onnx"
    if not fp32.exists():
        model = DepthAnythingV2("vits")
        model.load_state_dict(official_state_dict("vits"), strict=True)
        export_onnx(model.eval(), fp32, size, size)
    make_shard(folder / "sa1b" / "sa_000000.tar", count=12)
    calibration = CalibrationSet(folder / "sa1b", 12, (size, size), progress=False)
    batches = [prepare_fixed(image, (size, size)) for image in held_out_photos()]
    np.save(folder / "held.npy", np.concatenate(batches))
    references = OnnxRuntimeRunner(fp32).run_all(batches)
    np.save(folder / "fp32.npy", np.concatenate(references))
    found = {}
    for form in FORMS:
        path = folder / f"vits.{form}.onnx"
        quantize_int8(fp32, calibration, path, target="cpu", form=form, cache_dir=folder / "cache")
        written = OnnxRuntimeRunner(path, as_written=True).run_all(batches)
        native = OnnxRuntimeRunner(path).run_all(batches)
        found[form] = {"as_written": abs_rel(written, references), "this_cpu": abs_rel(native, references)}
        print(form, found[form], flush=True)
    return found


def run_native(folder: Path, forms: list[str], images: int) -> None:
    """Each form through ONNX Runtime's kernels of the CPU this process sees (the emulated one)."""
    import onnxruntime as ort

    from runtime.int8_cpu import this_cpu

    held = np.load(folder / "held.npy")[:images]
    print(json.dumps(this_cpu()), flush=True)
    for form in forms:
        session = ort.InferenceSession(str(folder / f"vits.{form}.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        started = time.perf_counter()
        outputs = [session.run(None, {name: held[i : i + 1]})[0] for i in range(len(held))]
        print(f"{form}: {(time.perf_counter() - started) / len(held):.0f} s a call", flush=True)
        np.save(folder / f"avx2.{form}.npy", np.concatenate(outputs))


def emulated(folder: Path, forms: list[str], images: int) -> dict:
    """Errors of the forms on the AVX2 kernels, run under qemu (per image, and their mean)."""
    from export.metrics import abs_rel

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("qemu-x86_64 not found: apt-get install qemu-user (Debian)")
    command = [qemu, "-cpu", "Haswell-v4", sys.executable, "-m", "benchmarks.int8_forms", "--folder", str(folder)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*command, "--native-only", "--images", str(images), "--forms", *forms], check=True, env=env)
    fp32 = np.load(folder / "fp32.npy")[:images]
    found = {}
    for form in forms:
        outputs = np.load(folder / f"avx2.{form}.npy")
        found[form] = [abs_rel([outputs[i : i + 1]], [fp32[i : i + 1]]) for i in range(len(outputs))]
        print(form, "AVX2 per image", found[form], flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("outputs/int8_forms"))
    parser.add_argument("--size", type=int, default=266, help="square input size (default 266)")
    parser.add_argument("--emulate", action="store_true", help="also run the AVX2 kernels under qemu")
    parser.add_argument("--images", type=int, default=2, help="held-out photographs to emulate (default 2)")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--native-only", action="store_true", help=argparse.SUPPRESS)  # the emulated half
    args = parser.parse_args(argv)
    folder = args.folder / str(args.size)
    if args.native_only:
        run_native(args.folder, args.forms, args.images)
        return 0
    result = {"this_cpu": build(folder, args.size)}
    if args.emulate:
        result["avx2"] = emulated(folder, args.forms, args.images)
    (folder / "int8_forms.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
