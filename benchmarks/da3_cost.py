"""``python -m benchmarks.da3_cost [SIZE ...]``: per-frame cost of DA3-Small on one view against
DA-V2-S, PyTorch FP32 and ONNX Runtime FP32, batch 1, square inputs (default 266), random weights
(the cost does not depend on them). Rounds are interleaved (each round times every model and
backend once, after a warm-up); the medians and their ratio are printed."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(sizes: list[int], rounds: int) -> dict[str, tuple[float, float, float]]:
    import onnxruntime as ort
    import torch

    from export.onnx import INPUT_NAME, export_onnx
    from train.models import DepthAnythingV2
    from train.models.da3 import DepthAnything3

    torch.manual_seed(0)
    models = {"dav2-s": DepthAnythingV2("vits").eval(), "da3-small": DepthAnything3("da3-small").eval().deployable()}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            x = torch.randn(1, 3, size, size)
            sessions = {}
            for name, model in models.items():
                path = Path(tmp) / f"{name}_{size}.onnx"
                export_onnx(model, path, size, size, verify=False)
                sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            times: dict[tuple[str, str], list[float]] = {(n, b): [] for n in models for b in ("torch", "ort")}
            with torch.inference_mode():
                for step in range(rounds + 1):  # the first round warms up
                    for name, model in models.items():
                        start = time.perf_counter()
                        model(x)
                        torch_s = time.perf_counter() - start
                        start = time.perf_counter()
                        sessions[name].run(None, {INPUT_NAME: x.numpy()})
                        ort_s = time.perf_counter() - start
                        if step:
                            times[(name, "torch")].append(torch_s)
                            times[(name, "ort")].append(ort_s)
            for backend in ("torch", "ort"):
                base = float(np.median(times[("dav2-s", backend)])) * 1e3
                da3 = float(np.median(times[("da3-small", backend)])) * 1e3
                results[f"{size}x{size} {backend}"] = (base, da3, da3 / base)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.da3_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[266], help="square input sizes (multiples of 14)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (default 8)")
    args = parser.parse_args(argv)
    for key, (base, da3, ratio) in measure(args.sizes, args.rounds).items():
        print(f"{key}: DA-V2-S {base:.1f} ms, DA3-Small {da3:.1f} ms, ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
