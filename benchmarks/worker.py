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
        self.predictor = self.open(DepthPredictor)
        self.predictor.predict(self.first)
        self.cold_start = time.perf_counter() - started
        self.synchronize = None
        # PyTorch's CUDA work is asynchronous; the other backends return once their outputs are on
        # the host (and a Jetson running an engine has no PyTorch to import).
        if self.predictor.backend == "torch" and self.predictor.info()["device"].startswith("cuda"):
            import torch

            self.synchronize = torch.cuda.synchronize
        self.verification = None
        self.backend = self.predictor._backend
        if config.get("reference"):
            self.verification = self.verify(config["reference"])
        self.batch = self.predictor.prepare(self.first)
        self.video = self.state = None
        if self.predictor.is_stream_model:  # timed as a stream step with its cache full (from frame 2)
            self.video = self.predictor.video_stream(max_gap=None)
            for _ in range(2):
                self.video.push(self.first)
            # The step's input as the stream makes it (its own size rule: smaller for frames wider
            # than 16:9), so that it fits the cache the pushes left.
            self.batch = self.video.network_input(self.first, self.video.rgb)
            self.state = self.video.state.inputs(self.backend.stream_shapes(*self.batch.shape[2:]))
        self.memory: dict | None = None  # peak memory, read before the profiled pass adds its own

    def verify(self, path: str) -> dict | None:
        """The row's check against its reference (``runtime.reference``), with AbsRel and delta1 as the
        model's output kind means its numbers (``benchmarks.stats.kind_metrics``)."""
        from runtime.reference import load_reference, score
        from runtime.stream_check import is_stream_reference, stream_depths

        from .stats import kind_metrics, kind_wording

        reference = load_reference(path)
        stream = self.predictor.is_stream_model
        if stream != is_stream_reference(reference):
            return None  # a stream model is scored on a stream's frames only (and a single-image model never)
        reference.fits(self.backend.input_spec.fixed_hw)
        started = time.perf_counter()
        batches = reference.inputs()
        if stream:  # frame by frame, the cache carried, as runtime.stream_check checks it
            shapes = self.backend.stream_shapes(*batches[0].shape[2:])
            outputs = [d.reshape(d.shape[-2:]) for d in stream_depths(self.backend.step, shapes, batches)]
        else:
            outputs = [self.backend.infer(batch)[0] for batch in batches]
        info = self.backend.info()
        result = score(reference, outputs, info.get("precision"))
        result.seconds = time.perf_counter() - started
        result.ran = {k: info.get(k) for k in ("backend", "device", "precision")}
        result.ran.update({k: info[k] for k in ("int8_arithmetic", "int8_made_for") if k in info})
        kind = self.predictor.output.kind
        per_input = [kind_metrics(o, r.reshape(o.shape), kind) for o, r in zip(outputs, reference.outputs)]
        return {
            **result.to_dict(),
            "kind": kind,
            "kind_metric": kind_wording(kind),
            "kind_scores": [{k: m[k] for k in ("abs_rel", "delta1")} for m in per_input],
        }

    def open(self, predictor_class, **extra):
        config = self.config
        return predictor_class(
            config["model"],
            backend=config["backend"],
            device=config["device"],
            precision=config.get("precision_arg"),
            fixed_size=tuple(config["size"]),
            **{**config.get("backend_options", {}), **extra},
        )

    def hello(self) -> dict:
        info = {k: v for k, v in self.predictor.info().items() if k != "model"}
        info["stream"] = self.predictor.is_stream_model
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

        if self.video is not None:  # one stream step on a full cache; e2e: the next frame pushed
            slot_pos, caches = self.state
            calls_of = {
                "model": lambda: self.backend.step(self.batch, slot_pos, caches),
                "e2e": lambda: self.video.push(self.first),
            }
        else:
            calls_of = {
                "model": lambda: self.backend.infer(self.batch),
                "e2e": lambda: self.predictor.predict(self.first),
            }
        return time_calls(
            calls_of,
            calls,
            warmup,
            synchronize=self.synchronize,
        )

    def outputs(self, path: str) -> dict:
        """The row's outputs on every image (a stream model: the images as one stream, in order)."""
        names = list(self.images)
        if self.video is not None:
            outputs = dict(zip(names, self.predictor.stream([self.images[n] for n in names])))
        else:
            outputs = {name: self.predictor.predict(image) for name, image in self.images.items()}
        np.savez_compressed(path, **outputs)
        return {}

    def profile(self, calls: int) -> dict:
        """Layer timings from the backend's profiler, in a pass of its own after the timed rounds
        (its second model does not count in the row's peak memory); a backend without a profiler,
        or one that fails, costs the row its profile only."""
        self.memory = self.memory or self.peak_memory()
        if self.video is not None:
            return {"unavailable": "a stream model's step is not profiled"}
        try:
            return {"profile": self.backend.profile(self.batch, calls).to_dict()}
        except Exception as exc:
            traceback.print_exc()
            return {"unavailable": error_text(exc)}

    def throughput(self, cameras: list[int], frames: int, options: dict) -> dict:
        """Frames per second for each camera count (``benchmarks.throughput``), the in-flight
        calls on a second predictor opened with ``options`` (``streams``) where there are any."""
        from runtime import DepthPredictor

        from .throughput import measure

        self.memory = self.memory or self.peak_memory()
        if self.video is not None:
            return {"unavailable": "a stream model runs one camera's frames in order: no frames per second for several"}
        in_flight = None
        try:
            in_flight = self.open(DepthPredictor, **options) if options else self.predictor
            images = list(self.images.values())
            return {"cameras": measure(self.predictor, in_flight, images, tuple(cameras), frames), "options": options}
        except Exception as exc:
            traceback.print_exc()
            return {"unavailable": error_text(exc)}
        finally:
            if in_flight is not None and in_flight is not self.predictor:
                in_flight.close()

    def peak_memory(self) -> dict:
        gpu_peak = None
        if self.synchronize is not None:
            import torch

            gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        return {"peak_rss_mib": peak_rss_kib() / 1024, "gpu_peak_mib": gpu_peak}

    def finish(self) -> dict:
        return self.memory or self.peak_memory()


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
            elif request["op"] == "profile":
                reply(row.profile(request["calls"]))
            elif request["op"] == "throughput":
                reply(row.throughput(request["cameras"], request["frames"], request["options"]))
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
