"""Time every row in interleaved rounds, each row in a long-lived worker process of its own.

A shared machine has slow moments. Rows timed one after another each see different moments;
here every round visits every row once (A, B, C, ..., then A, B, C, ... again) and the CPU's
matrix-multiply ceilings once, so rows and ceilings sample the same moments, and a speedup is a
ratio of times measured in the same rounds. The machine's CPU counters are read before and
after the rounds, so the report can say how much of the CPU other programs took meanwhile. On a
board with power monitors (a Jetson) the board's power is sampled meanwhile, and each row's
energy in its own turns is divided by the frames it computed in them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.int8_cpu import this_cpu

from .jetson import PowerSampler, energy_per_frame
from .machine import machine_state, process_ticks, snapshot, usable_cores
from .profile import summarize as summarize_profile
from .roofline import CeilingProbes
from .runner import STATUS_RUN_FAILED, Config, Settings, computes_in
from .stats import summarize
from .throughput import pick_rows, stream_options


class WorkerError(RuntimeError):
    pass


class WorkerProcess:
    """``python -m benchmarks.worker`` for one row: requests in, one JSON reply per request."""

    def __init__(self, job: Path) -> None:
        self.log_path = job.with_suffix(".log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.worker", str(job), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        try:
            self.hello = self._reply()
        except WorkerError:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def ask(self, op: str, **arguments: object) -> dict:
        try:
            self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
            self.process.stdin.flush()
        except OSError:
            raise WorkerError(self._death()) from None
        return self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise WorkerError(self._death())
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{reply['error']} (log: {self.log_path})")
        return reply

    def _death(self) -> str:
        code = self.process.wait()
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        return f"{lines[-1].strip() if lines else 'worker ended'} (exit code {code}; log: {self.log_path})"

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # the worker's request loop ends at end of input
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def settle(pid: int, interval: float = 0.03, limit: float = 1.0) -> None:
    """Wait until a worker's threads have gone idle after its turn. Some thread pools spin for a
    while after a call (ONNX Runtime's use about 40 ms of CPU on 2 cores), and that would slow
    whichever row is timed next."""
    deadline = time.monotonic() + limit
    try:
        last = process_ticks(pid)
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = process_ticks(pid)
            if now == last:
                return
            last = now
    except OSError:  # the worker ended: nothing left to wait for
        pass


def _fail(config: Config, exc: Exception) -> None:
    config.result.update(status=STATUS_RUN_FAILED, error=str(exc))


def _latency(rounds: list[list[float]]) -> dict:
    return summarize([d for durations in rounds for d in durations]).to_dict()


def time_rows(configs: list[Config], settings: Settings, probes: CeilingProbes | None = None) -> dict:
    """Start a worker per prepared row, warm each up, time them in ``settings.rounds`` interleaved
    rounds (with one ceiling measurement per round), collect outputs and peak memory, and fill
    each row's result. Returns the ceilings' rounds and the machine's state while rows were timed."""
    phases = settings.phases
    workers: dict[int, WorkerProcess] = {}
    timings: dict[int, dict[str, list[list[float]]]] = {}
    ceiling_rounds: list[dict[str, float]] = []
    power = PowerSampler().start()  # samples only where the board has power monitors
    turns: dict[int, list[tuple[float, float, int]]] = {}  # row -> (start, end, frames) of its timed turns

    def each_worker(op: str, record: bool = False, **arguments: object):
        """Ask every live worker in turn; a worker that fails leaves the rounds with its reason.
        After a timing turn the next one waits for the worker's threads to go idle; ``record``
        keeps the turn's time span and frames (untimed calls, then a model and an e2e call each)."""
        for index in list(workers):
            start = time.monotonic()
            try:
                reply = workers[index].ask(op, **{k: v(index) if callable(v) else v for k, v in arguments.items()})
            except WorkerError as exc:
                _fail(configs[index], exc)
                workers.pop(index).close()
                continue
            if record:
                frames = int(arguments["warmup"]) + 2 * int(arguments["calls"])
                turns.setdefault(index, []).append((start, time.monotonic(), frames))
            if op in ("time", "profile"):
                settle(workers[index].pid)
            yield index, reply

    try:
        with phases.timed("cold starts"):
            for index, config in enumerate(configs):
                try:
                    workers[index] = worker = WorkerProcess(config.job)
                except WorkerError as exc:
                    _fail(config, exc)
                    continue
                config.result.update(worker.hello)
                config.result["computes_in"] = computes_in(config)
                config.result["native"] = settings.cpu.native(config.result["computes_in"])
                ran_on = str((config.result.get("info") or {}).get("device") or config.device).lower()
                if config.result["computes_in"] == "int8" and ran_on.startswith("cpu"):
                    # what this CPU's INT8 kernels compute (VNNI, AVX2's saturating pairs, AMX, ...)
                    config.result["int8_arithmetic"] = this_cpu()["arithmetic"]
                timings[index] = {"model": [], "e2e": []}
        with phases.timed("rows"):
            for _ in each_worker("time", warmup=settings.warmup, calls=0):
                pass
        snapshots = []
        bar = tqdm(total=settings.rounds * len(workers), desc="interleaved rounds", unit="turn")
        for _ in range(settings.rounds):
            snapshots.append(snapshot([w.pid for w in workers.values()]))
            with phases.timed("rows"):
                # One untimed call per turn: the first call after another row ran wakes this
                # row's threads and refills its caches.
                for index, durations in each_worker("time", True, warmup=1, calls=settings.calls_per_round):
                    for kind in ("model", "e2e"):
                        timings[index][kind].append(durations[kind])
                    bar.update()
            if probes is not None:
                with phases.timed("ceilings"):
                    ceiling_rounds.append(probes.measure())
        bar.close()
        snapshots.append(snapshot([w.pid for w in workers.values()]))
        with phases.timed("rows"):
            outputs = {i: str(configs[i].job.with_suffix(".npz")) for i in workers}
            for index, _ in each_worker("outputs", path=outputs.get):
                configs[index].result["outputs"] = outputs[index]
        profiles = {}
        if settings.profile_calls:
            with phases.timed("profiles"):
                profiles = dict(each_worker("profile", calls=settings.profile_calls))
        throughput = {}
        e2e = {i: float(np.median([d for r in timings[i]["e2e"] for d in r])) for i in workers if timings[i]["e2e"]}
        chosen = pick_rows(configs, e2e, settings.throughput)
        if chosen:
            with phases.timed("throughput"):
                for index in chosen:
                    options = stream_options(configs[index].backend, usable_cores())
                    cameras, frames = list(settings.cameras), settings.throughput_frames
                    try:
                        throughput[index] = workers[index].ask(
                            "throughput", cameras=cameras, frames=frames, options=options
                        )
                    except WorkerError as exc:
                        _fail(configs[index], exc)
                        workers.pop(index).close()
        with phases.timed("rows"):
            for index, memory in each_worker("finish"):
                result = configs[index].result
                result.update(memory)
                result["model_call"] = _latency(timings[index]["model"])
                result["end_to_end"] = _latency(timings[index]["e2e"])
                result["round_medians"] = {k: [float(np.median(r)) for r in v] for k, v in timings[index].items()}
                if index in throughput:
                    result["throughput"] = throughput[index]
                if index in profiles:
                    reply = profiles[index]
                    result["profile"] = (
                        summarize_profile(reply["profile"], configs[index].backend, result["model_call"]["median"])
                        if "profile" in reply
                        else {"unavailable": reply["unavailable"]}
                    )
                if power.samples:
                    result["energy"] = energy_per_frame(power.samples, turns.get(index, []))
    finally:
        power.stop()
        for worker in workers.values():
            worker.close()
    return {"ceiling_rounds": ceiling_rounds, "machine_state": machine_state(snapshots)}
