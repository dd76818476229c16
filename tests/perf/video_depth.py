"""Video Depth Anything Small streaming against Depth Anything V2 Small, per frame at the same
size and backend, with peak memory and the flicker figure with and without the temporal head.

    flock /tmp/heavy.lock python -m tests.perf.video_depth [--out DIR]

Deterministic weights (the parity recipe; speed does not depend on the values), the six test
frames resized to 340x240 (network input 266x378 at ``input_size=266``), rounds interleaved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from runtime import DepthPredictor
from runtime.align.stabilize import FlickerMeter
from tests.parity import deterministic_state_dict, official_keys
from tests.video_fixtures import frames_bgr, vda_state_dict

FRAMES = [cv2.resize(f, (340, 240), interpolation=cv2.INTER_AREA) for f in frames_bgr()]


def setup(out: Path) -> dict[str, dict[str, str]]:
    from export.onnx import export_onnx
    from train.models import load_model

    out.mkdir(parents=True, exist_ok=True)
    vda, dav2 = out / "video_depth_anything_vits.pth", out / "depth_anything_v2_vits.pth"
    torch.save(vda_state_dict(), vda)
    torch.save({k: torch.from_numpy(v) for k, v in deterministic_state_dict(official_keys("vits")).items()}, dav2)
    models = {"torch": {"vda": str(vda), "dav2": str(dav2)}, "onnxruntime": {}}
    for name, path in (("vda", vda), ("dav2", dav2)):
        onnx = path.with_suffix(".266x378.onnx")
        export_onnx(load_model(path), onnx, 266, 378, verify=False)
        models["onnxruntime"][name] = str(onnx)
    return models


def runner(model: str):
    predictor = DepthPredictor(model, input_size=266)
    count = [0]
    video = predictor.video_stream(max_gap=None) if predictor.is_stream_model else None

    def call() -> np.ndarray:
        frame = FRAMES[count[0] % len(FRAMES)]
        count[0] += 1
        return video.push(frame) if video is not None else predictor.predict(frame)

    return predictor, call


def speed(models: dict, rounds: int = 10) -> dict:
    result = {}
    for backend, pair in models.items():
        (pv, cv), (pd, cd) = runner(pair["vda"]), runner(pair["dav2"])
        for _ in range(3):  # warm-up; the stream's cache is full-size from its second frame
            cv(), cd()
        tv, td = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            cv()
            tv.append(time.perf_counter() - t)
            t = time.perf_counter()
            cd()
            td.append(time.perf_counter() - t)
        result[backend] = {
            "vda_ms": round(1e3 * float(np.median(tv)), 1),
            "dav2_ms": round(1e3 * float(np.median(td)), 1),
            "ratio": round(float(np.median(tv) / np.median(td)), 3),
        }
        print(backend, result[backend], flush=True)
        pv.close(), pd.close()
    return result


def peak_memory(model: str) -> float:
    """Peak resident memory (MiB) of a fresh process that loads ``model`` and runs six frames."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.perf.video_depth", "--memory", model], capture_output=True, text=True
    )
    return float(run.stdout.split()[-1]) if run.returncode == 0 else float("nan")


def flicker(vda: str) -> dict:
    from export.metrics import verification_photos

    predictor = DepthPredictor(vda, input_size=266)
    still = cv2.resize(next(iter(verification_photos().values())), (320, 240))
    rng = np.random.default_rng(0)
    noisy = [np.clip(still + rng.normal(0, 3, still.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    out = {}
    for name, frames in (("test frames (panning)", list(frames_bgr())), ("still photo + sensor noise", noisy)):
        streamed, alone = FlickerMeter(), FlickerMeter()
        for frame, depth in zip(frames, predictor.stream(frames), strict=True):
            streamed.update(frame, depth)
        for frame, depth in zip(frames, predictor.predict_batch(frames), strict=True):
            alone.update(frame, depth)
        out[name] = {"stream (temporal head)": streamed.figure, "each frame alone": alone.figure}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/vda_perf"))
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory:
        _, call = runner(args.memory)
        for _ in range(6):
            call()
        # VmHWM: this process's own peak (ru_maxrss carries the parent's over fork and exec)
        print(int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024)
        return
    models = setup(args.out)
    result = {"speed": speed(models), "flicker": flicker(models["torch"]["vda"])}
    result["peak_rss_mib"] = {
        f"{name} {backend}": peak_memory(path) for backend, pair in models.items() for name, path in pair.items()
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
