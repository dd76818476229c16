"""One benchmark configuration in a fresh process: cold start, latency, peak memory, outputs.

Run in its own process so cold start and peak RSS belong to this configuration alone.
Usage (internal): ``python -m benchmarks.worker CONFIG.json`` -> writes RESULT.json and
the depth maps it predicted (``.npz``) next to the config.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_kib() -> float:
    """This process's peak resident memory. ``VmHWM`` belongs to this program alone; Linux
    carries ``ru_maxrss`` over from the parent across exec, so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(config: dict) -> dict:
    from runtime import DepthPredictor

    from .stats import time_calls

    images = dict(np.load(config["images"]))
    first = images[config["timing_image"]]
    started = time.perf_counter()
    predictor = DepthPredictor(
        config["model"],
        backend=config["backend"],
        device=config["device"],
        precision=config.get("precision_arg"),
        fixed_size=tuple(config["size"]),
        **config.get("backend_options", {}),
    )
    predictor.predict(first)
    cold_start = time.perf_counter() - started
    synchronize = None
    if predictor.info()["device"].startswith("cuda"):
        import torch

        synchronize = torch.cuda.synchronize
    batch = predictor.prepare(first)
    backend = predictor._backend
    model_call = time_calls(lambda: backend.infer(batch), config["warmup"], config["runs"], synchronize=synchronize)
    end_to_end = time_calls(lambda: predictor.predict(first), config["warmup"], config["runs"], synchronize=synchronize)
    outputs = {name: predictor.predict(image) for name, image in images.items()}
    info = predictor.info()
    peak_kib = peak_rss_kib()
    gpu_peak = None
    if synchronize is not None:
        import torch

        gpu_peak = torch.cuda.max_memory_allocated() / 2**20
    np.savez_compressed(config["outputs"], **outputs)
    return {
        "cold_start_s": cold_start,
        "model_call": model_call.to_dict(),
        "end_to_end": end_to_end.to_dict(),
        "peak_rss_mib": peak_kib / 1024,
        "gpu_peak_mib": gpu_peak,
        "info": {k: v for k, v in info.items() if k != "model"},
    }


def main(argv: list[str]) -> int:
    config_path = Path(argv[0])
    config = json.loads(config_path.read_text())
    result = run(config)
    config_path.with_suffix(".result.json").write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
