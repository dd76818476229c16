"""Layer timings from each backend's own profiler, in one form, from a pass of their own.

A backend's ``profile(batch, calls)`` runs ``calls`` profiled model calls (after one warm-up) and
returns a :class:`Profile`: one :class:`LayerTime` per layer as the backend ran it (after its own
fusions), in seconds per call, and the wall time of each profiled call. The profilers have a cost
and most must be switched on when the model is loaded, so the profiled pass runs on a second
compiled model, session or execution context, and the timed calls never carry the profiler:

- OpenVINO: performance counters (the ``PERF_COUNT`` property at compile time), read with
  ``InferRequest.get_profiling_info()``; the CPU plugin reports each node's running mean since
  compilation (``PerfCount::avg()`` in ``src/plugins/intel_cpu/src/graph.cpp``), so the mean over
  the profiled calls alone is taken by difference with the counters after the warm-up.
- ONNX Runtime: ``SessionOptions.enable_profiling``; ``end_profiling()`` writes a Chrome-trace JSON
  array with one ``<node>_kernel_time`` event per node and run (``args.op_name``, ``args.provider``;
  ``dur`` in microseconds) and one ``model_run`` event per run (``core/common/profiler.cc``).
- PyTorch: ``torch.profiler`` self CPU time per aten op (microseconds, children excluded).
- TensorRT: an ``IProfiler`` on an execution context of its own; ``report_layer_time`` is called
  once per layer and ``execute_async_v3`` (which then runs synchronously).

Which kind of work a layer does (matrix products, softmax, ...) is decided from these records by
``benchmarks.profile``, one table per backend.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class LayerTime:
    """One layer as the backend ran it: its name, its op type as the profiler names it
    (``FullyConnected``, ``QLinearMatMul``, ``aten::addmm``; TensorRT reports none), the kernel
    (OpenVINO's ``exec_type`` such as ``brgemm_avx512_I8``, ONNX Runtime's provider), seconds per
    call, and the op types of the original graph fused into it where the backend says (OpenVINO)."""

    name: str
    op: str
    seconds: float
    impl: str = ""
    fused: tuple[str, ...] = ()


@dataclass
class Profile:
    source: str
    layers: list[LayerTime]
    wall_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "wall_s": list(self.wall_s),
            "layers": [
                {"name": x.name, "op": x.op, "seconds": x.seconds, "impl": x.impl, "fused": list(x.fused)}
                for x in self.layers
            ],
        }


def timed_calls(run: Callable[[], Any], calls: int, warmup: int = 1) -> list[float]:
    """Wall time of each of ``calls`` calls of ``run``, after ``warmup`` untimed ones."""
    if calls < 1:
        raise ValueError(f"a profile needs at least one profiled call, got {calls}")
    for _ in range(warmup):
        run()
    walls = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        walls.append(time.perf_counter() - start)
    return walls


# --- OpenVINO ---------------------------------------------------------------------------------


def openvino_counters(info: Iterable[Any]) -> dict[str, tuple[str, str, float]]:
    """``node name -> (node_type, exec_type, mean seconds)`` from ``get_profiling_info()``."""
    return {p.node_name: (p.node_type, p.exec_type, p.real_time.total_seconds()) for p in info}


def openvino_layers(
    warm: dict[str, tuple[str, str, float]],
    after: dict[str, tuple[str, str, float]],
    warm_calls: int,
    calls: int,
    fused: dict[str, tuple[str, ...]],
) -> list[LayerTime]:
    """Each node's mean over the ``calls`` profiled calls from its running means after the
    ``warm_calls`` warm-up calls (``warm``) and after all calls (``after``). Nodes the plugin
    fused away report nothing (0 s) and are left out."""
    layers = []
    for name, (op, impl, mean) in after.items():
        before = warm.get(name, (op, impl, 0.0))[2]
        seconds = max(0.0, (mean * (warm_calls + calls) - before * warm_calls) / calls)
        if seconds > 0:
            layers.append(LayerTime(name, op, seconds, impl, fused.get(name, ())))
    return layers


def openvino_fused_types(original: Any, runtime: Any) -> dict[str, tuple[str, ...]]:
    """For each node of a compiled model's runtime graph, the op types of the original model's
    nodes it executes (its ``originalLayersNames``): how a ``Subgraph`` or a ``FullyConnected``
    tells whether it holds an attention block, a GELU or only element-wise work."""
    types = {op.get_friendly_name(): op.get_type_name() for op in original.get_ops()}
    fused = {}
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
        found = sorted({types[n] for n in names.split(",") if n in types})
        fused[op.get_friendly_name()] = tuple(found)
    return fused


# --- ONNX Runtime -----------------------------------------------------------------------------

KERNEL_SUFFIX = "_kernel_time"


def onnxruntime_events(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        events = json.load(handle)
    if isinstance(events, dict):  # a Chrome-trace object rather than ONNX Runtime's bare array
        events = events.get("traceEvents", [])
    return events


def onnxruntime_layers(events: list[dict[str, Any]], runs: int) -> list[LayerTime]:
    """Per-node kernel time per run from ONNX Runtime's profile events (the ``runs`` profiled
    runs only: drop the warm-up's events before calling)."""
    totals: dict[str, list[Any]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX):
            continue
        args = event.get("args") or {}
        node = name[: -len(KERNEL_SUFFIX)]
        entry = totals.setdefault(node, [args.get("op_name", "?"), args.get("provider", ""), 0.0])
        entry[2] += float(event.get("dur", 0)) * 1e-6
    return [LayerTime(node, op, total / runs, provider) for node, (op, provider, total) in totals.items()]


def onnxruntime_runs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``model_run`` events, in order."""
    return sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e.get("ts", 0))


def events_after(events: list[dict[str, Any]], start_us: float) -> list[dict[str, Any]]:
    return [e for e in events if float(e.get("ts", 0)) >= start_us]


# --- PyTorch ----------------------------------------------------------------------------------


# The span each profiled call runs in, which marks the calling thread; its own (self) time is the
# interpreter's: Python and dispatch between the ops, part of the call as a user pays it.
TORCH_MARKER = "dav2-edge::profiled_call"
TORCH_BETWEEN_OPS = "python"


def torch_layers(events: Iterable[Any], calls: int, device: bool = False) -> list[LayerTime]:
    """Self time per op per call from ``prof.events()``, on the calling thread only (the one that
    ran the ``TORCH_MARKER`` spans): ops that parallelise (a slow-path convolution, for one) call
    further ops on worker threads, whose time the calling thread's op already spans. Self time, so a
    parent such as ``aten::linear`` counts only its own overhead and nothing is counted twice; the
    marker's self time is the Python between ops (``TORCH_BETWEEN_OPS``). ``device``: the CUDA time
    of the kernels each op launched instead (the Python between them costs no GPU time)."""
    events = list(events)
    threads = {e.thread for e in events if e.name == TORCH_MARKER}
    totals: dict[str, float] = {}
    for event in events:
        if event.thread not in threads or (device and event.name == TORCH_MARKER):
            continue
        micros = event.self_device_time_total if device else event.self_cpu_time_total
        name = TORCH_BETWEEN_OPS if event.name == TORCH_MARKER else event.name
        if micros > 0:
            totals[name] = totals.get(name, 0.0) + float(micros)
    return [LayerTime(name, name, micros * 1e-6 / calls) for name, micros in totals.items()]


# --- TensorRT ---------------------------------------------------------------------------------


class LayerTimeRecorder:
    """What an ``IProfiler.report_layer_time(layer_name, ms)`` receives, summed per layer; the
    TensorRT backend subclasses ``trt.IProfiler`` around it."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.order: list[str] = []

    def record(self, layer: str, ms: float) -> None:
        if layer not in self.totals:
            self.totals[layer] = 0.0
            self.order.append(layer)
        self.totals[layer] += float(ms) * 1e-3

    def reset(self) -> None:
        self.totals.clear()
        self.order.clear()

    def layers(self, calls: int) -> list[LayerTime]:
        return [LayerTime(name, "", self.totals[name] / calls) for name in self.order]
