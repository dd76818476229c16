"""One benchmark row (backend x precision x size) in a long-lived process of its own.

The parent (``benchmarks.rounds``) starts one worker per row and keeps them all alive while it
times the rows in interleaved rounds: each request times a few calls of this row, then the next
row's worker takes its turn, so every row samples the same moments of the machine. A process
of its own keeps cold start and peak memory this row's alone.

Usage (internal): ``python -m benchmarks.worker CONFIG.json PARENT_PID``. Requests arrive one
JSON object per line on stdin; replies go one per line to the original stdout, and anything a
library prints goes to stderr (the parent's log file for this row). The worker ends with its
parent, however the parent ends (see ``tie_to_parent``).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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


def watch_parent(parent_pid: int, on_orphan: Callable[[], None], interval: float = 0.5) -> threading.Thread:
    """A daemon thread that calls ``on_orphan`` once this process's parent is no longer
    ``parent_pid`` (it ended and the process was re-parented)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        on_orphan()

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def tie_to_parent(parent_pid: int) -> None:
    """End this process when the benchmark that started it ends, even by SIGKILL: a killed
    benchmark must not leave workers running at full CPU. Linux delivers SIGKILL on the
    parent's death (``PR_SET_PDEATHSIG``); the watchdog thread covers other systems and a
    parent that died before this ran."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    watch_parent(parent_pid, lambda: os._exit(1))


class Row:
    """The predictor of one row and the calls the parent times on it."""

    def __init__(self, config: dict) -> None:
        from runtime import DepthPredictor

        self.config = config
        self.images = dict(np.load(config["images"]))
        self.first = self.images[config["timing_image"]]
        started = time.perf_counter()
        self.predictor = DepthPredictor(
            config["model"],
            backend=config["backend"],
            device=config["device"],
            precision=config.get("precision_arg"),
            fixed_size=tuple(config["size"]),
            **config.get("backend_options", {}),
        )
        self.predictor.predict(self.first)
        self.cold_start = time.perf_counter() - started
        self.synchronize = None
        # PyTorch's CUDA work is asynchronous; the other backends return once their outputs are on
        # the host (and a Jetson running an engine has no PyTorch to import).
        if self.predictor.backend == "torch" and self.predictor.info()["device"].startswith("cuda"):
            import torch

            self.synchronize = torch.cuda.synchronize
        self.verification = None
        if config.get("reference"):
            from runtime.reference import load_reference, verify_backend

            reference = load_reference(config["reference"])
            self.verification = verify_backend(self.predictor._backend, reference).to_dict()
        self.batch = self.predictor.prepare(self.first)
        self.backend = self.predictor._backend

    def hello(self) -> dict:
        info = {k: v for k, v in self.predictor.info().items() if k != "model"}
        return {
            "cold_start_s": self.cold_start,
            "info": info,
            "execution": info.pop("execution", None),
            "verification": self.verification,
        }

    def time(self, warmup: int, calls: int) -> dict[str, list[float]]:
        """``warmup`` untimed model calls, then ``calls`` turns of a model call on the prepared
        tensor and an end-to-end ``predict`` on the image."""
        from .stats import time_calls

        return time_calls(
            {"model": lambda: self.backend.infer(self.batch), "e2e": lambda: self.predictor.predict(self.first)},
            calls,
            warmup,
            synchronize=self.synchronize,
        )

    def outputs(self, path: str) -> dict:
        outputs = {name: self.predictor.predict(image) for name, image in self.images.items()}
        np.savez_compressed(path, **outputs)
        return {}

    def finish(self) -> dict:
        gpu_peak = None
        if self.synchronize is not None:
            import torch

            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        return {"peak_rss_mib": peak_rss_kib() / 1024, "gpu_peak_mib": gpu_peak}


def error_text(exc: BaseException) -> str:
    """The exception's class and first line; the full trace is in the row's log file."""
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__


def serve(config: dict, requests, replies) -> None:
    def reply(message: dict) -> None:
        replies.write(json.dumps(message, default=str) + "\n")
        replies.flush()

    try:
        row = Row(config)
        reply(row.hello())
    except Exception as exc:  # the parent turns this into the row's "run failed" status
        traceback.print_exc()
        reply({"error": error_text(exc)})
        return
    for line in requests:
        request = json.loads(line)
        try:
            if request["op"] == "time":
                reply(row.time(request["warmup"], request["calls"]))
            elif request["op"] == "outputs":
                reply(row.outputs(request["path"]))
            elif request["op"] == "finish":
                reply(row.finish())
                return
            else:
                reply({"error": f"unknown request {request['op']!r}"})
        except Exception as exc:
            traceback.print_exc()
            reply({"error": error_text(exc)})
            return


def main(argv: list[str]) -> int:
    config_path, parent_pid = Path(argv[0]), int(argv[1])
    tie_to_parent(parent_pid)
    # Replies own the original stdout; whatever a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(json.loads(config_path.read_text()), sys.stdin, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
