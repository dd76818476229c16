"""TensorRT backend: one engine; an execution context and a CUDA stream per call in flight
(``streams``, default 1), and one more with an ``IProfiler`` for a profiled pass.

Uses only the name-based API that TensorRT 8.5 through 11 share (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Before deserialising, the
engine's sidecar metadata is checked against the installed TensorRT and the GPU, because a
plan built elsewhere either fails obscurely or runs slowly.
"""

from __future__ import annotations

import queue
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from commands.errors import InputError, MissingDependencyError, ModelFileError, require

from ..metadata import read_sidecar
from ..metric import OutputKind
from ..prediction import extras_of
from ..sky import RUNTIME, SKY, SKY_STEP, apply_sky_step, check_runtime_sky_step, sky_to_far
from ..video_state import STREAM_INPUTS
from .base import Backend, InputSpec, check_depth_output, check_streams
from .cuda import open_cuda, parse_device
from .profiling import LayerTimeRecorder, Profile, timed_calls
from .torch_pre import TorchImagePipeline
from .trt_stream import IMAGE, DeviceCache, engine_tensors, run_step, stream_io

JETPACK_NOTE = "on Jetson TensorRT comes with JetPack (python3-libnvinfer), not from pip"
DEPTH = "depth"  # the depth output's name in every engine built from this toolkit's ONNX (export.onnx)


def rebuild_hint(engine: Path) -> str:
    return f"rebuild it on this machine: python -m export.trt --onnx <the .onnx beside it> --output {engine}"


def same_release(a: str, b: str) -> bool:
    """Engines load only in the TensorRT release (major.minor.patch) that built them."""
    return a.split(".")[:3] == b.split(".")[:3]


def check_engine_metadata(
    engine: Path, meta: dict[str, Any] | None, trt_version: str, gpu_name: str, capability: tuple[int, int]
) -> list[str]:
    """Raise ``ModelFileError`` for an engine this TensorRT or GPU cannot run; return warnings."""
    if meta is None:
        return [f"{engine}: no {engine.name}.json metadata beside it; cannot check its TensorRT version or GPU"]
    built_with = meta.get("versions", {}).get("tensorrt")
    if built_with and not same_release(built_with, trt_version):
        raise ModelFileError(
            f"{engine} was built with TensorRT {built_with} but {trt_version} is installed; {rebuild_hint(engine)}"
        )
    gpu = meta.get("gpu") or {}
    built_cc = tuple(gpu.get("compute_capability", ())) or None
    if built_cc and built_cc != tuple(capability):
        raise ModelFileError(
            f"{engine} was built for {gpu.get('name')} (sm_{built_cc[0]}{built_cc[1]}) but this GPU is {gpu_name} "
            f"(sm_{capability[0]}{capability[1]}); {rebuild_hint(engine)}"
        )
    if gpu.get("name") and gpu["name"] != gpu_name:
        return [f"{engine} was tuned on {gpu['name']}, running on {gpu_name}: rebuild for best speed"]
    return []


def spec_from_dims(
    name: str, dims: tuple[int, ...], profile: tuple[tuple[int, ...], tuple[int, ...]] | None = None
) -> InputSpec:
    """TensorRT marks dynamic dimensions with -1; a dynamic batch takes the batches of the
    engine's ``profile`` (its lowest and highest shape): an engine built for batch N (profile
    max N, ``export.trt --batch N``) gets up to N images a call, never more."""
    if len(dims) != 4:
        raise ModelFileError(f"engine input {name!r} has shape {dims}; expected (N, 3, H, W)")
    batches = (int(profile[0][0]), int(profile[1][0])) if profile is not None and dims[0] < 0 else None
    return InputSpec(name, tuple(None if d < 0 else int(d) for d in dims), batches)  # type: ignore[arg-type]


def check_profile(shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...]) -> None:
    """Reject a batch outside the engine's optimisation profile with the allowed range."""
    if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
        raise ValueError(
            f"input shape {tuple(shape)} is outside the engine's profile {tuple(low)}..{tuple(high)}; "
            "rebuild with a wider --min/--max profile"
        )


def engine_profile(dims: tuple[int, ...], profile_shape: Callable[[], Any]) -> tuple[tuple[int, ...], ...]:
    """The (lowest, highest) input shape an engine accepts. A static engine (no -1 in its input
    dims) was built without an optimisation profile: its shape is the only one, and asking it for
    profile 0 is not needed (nor defined in every release)."""
    if all(d >= 0 for d in dims):
        return tuple(dims), tuple(dims)
    low, _, high = profile_shape()
    return tuple(low), tuple(high)


def engine_io(
    engine: Path, tensors: Sequence[tuple[str, bool, bool, tuple[int, ...]]], meta: dict[str, Any] | None
) -> tuple[str, str, tuple[str, ...]]:
    """The engine's input, its depth output and the outputs after depth (a DA3 network's ``sky`` or
    ``depth_conf``), from its I/O tensors as TensorRT lists them (``ICudaEngine.num_io_tensors``,
    ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``: 8.5-11),
    each ``(name, is_input, is_float32, shape)``. The outputs are found by name, not by position
    (the engine's order is not documented to be the ONNX's): one output is depth whatever its name;
    several are ``depth`` and the extra outputs the sidecar names (``extra_outputs``, in its order),
    no more, no fewer. ``ModelFileError`` otherwise."""
    for name, _, is_float, _ in tensors:
        if not is_float:
            raise ModelFileError(f"{engine}: tensor {name!r} is not float32; export engines with FP32 I/O")
    inputs = [name for name, is_input, _, _ in tensors if is_input]
    outputs = [name for name, is_input, _, _ in tensors if not is_input]
    said = list((meta or {}).get("extra_outputs") or [])
    if len(inputs) != 1 or not outputs:
        raise ModelFileError(f"{engine}: expected one input and a depth output, found {inputs} and {outputs}")
    if len(outputs) == 1 and not said:
        return inputs[0], outputs[0], ()
    others = [n for n in outputs if n != DEPTH]
    if DEPTH not in outputs:
        raise ModelFileError(f"{engine}: outputs {', '.join(outputs)} and none named {DEPTH!r}; {rebuild_hint(engine)}")
    if meta is not None and sorted(others) != sorted(said):
        raise ModelFileError(
            f"{engine}: its outputs after depth are {', '.join(others) or 'none'} but its sidecar says "
            f"{', '.join(said) or 'none'}; the engine and {engine.name}.json are of different builds: "
            + rebuild_hint(engine)
        )
    try:
        extras = extras_of([DEPTH, *(said if meta is not None else others)], engine)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    return inputs[0], DEPTH, extras


def engine_sky_step(engine: Path, meta: dict[str, Any] | None, extras: tuple[str, ...]) -> bool:
    """Whether the runtime applies the DA3 sky step to the engine's depth: its sidecar says the step
    is the runtime's (``sky_step: runtime``, an engine built from the graph without the step, whose
    TopK TensorRT cannot build). The step changes nothing on a depth whose sky is already far, so an
    engine with a ``sky`` output gets it whatever its sidecar says: one built by the printed trtexec
    command has no sidecar, and an engine of the whole graph is left as it was."""
    try:
        return check_runtime_sky_step(meta, extras, engine) or SKY in extras
    except ValueError as exc:
        raise ModelFileError(f"{exc}; {rebuild_hint(engine)}") from None


def output_buffers(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[tuple[int, ...], int]]:
    """Each output's shape and size in bytes (float32) once the input shape is set
    (``IExecutionContext.get_tensor_shape``): an engine that still reports a dynamic dimension
    cannot be given a buffer."""
    buffers = {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise RuntimeError(f"TensorRT reports output {name!r} of shape {shape} after the input shape was set")
        buffers[name] = (shape, int(np.prod(shape, dtype=np.int64)) * 4)
    return buffers


PREPROCESS = ("auto", "numpy", "device")


def device_pipeline_torch(preprocess: str) -> Any:
    """PyTorch for pre- and post-processing on the GPU, or None for OpenCV on the CPU. ``auto`` uses
    it where it is installed with CUDA (an x86 host); a Jetson without PyTorch keeps the CPU path:
    a CUDA kernel compiled at run time through NVRTC (cuda-python) or nvcc (pycuda on JetPack) is
    two toolchains to keep right, for one resize."""
    if preprocess == "numpy":
        return None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return torch
    if preprocess == "device":
        raise MissingDependencyError(
            "preprocess='device' with TensorRT runs PyTorch ops on the GPU: install a CUDA build of torch "
            "(pip install 'dav2-edge[torch]'), or use preprocess='numpy'"
        )
    return None


def layer_profiler(trt: Any, recorder: LayerTimeRecorder) -> Any:
    """A ``trt.IProfiler`` that hands each ``report_layer_time`` to ``recorder`` (the Python
    binding needs ``IProfiler.__init__`` called explicitly)."""

    class Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            recorder.record(layer_name, ms)

    return Profiler()


class Lane:
    """One execution context on a CUDA stream of its own, with its own buffers: one call in
    flight. Several lanes let several calls overlap on the GPU (``streams``)."""

    def __init__(self, engine: Any, cuda: Any, tensors: tuple[str, tuple[str, ...]], profiler: Any = None) -> None:
        self.cuda, (self.input, self.outputs) = cuda, tensors  # outputs: depth first, then the extra ones
        self.buffers: dict[str, tuple[int, int, np.ndarray, int]] = {}  # name -> (device, host ptr, host, bytes)
        cuda.activate()
        try:
            self.context = engine.create_execution_context()
            if profiler is not None:
                self.context.profiler = profiler  # execute_async_v3 then reports, synchronously
        finally:
            cuda.deactivate()

    def _buffer(self, tensor: str, nbytes: int) -> tuple[int, int, np.ndarray]:
        held = self.buffers.get(tensor)
        if held is None or held[3] < nbytes:
            if held is not None:
                self.cuda.free(held[0])
                self.cuda.free_pinned(held[1])
            host_ptr, host = self.cuda.pinned(nbytes)
            held = (self.cuda.alloc(nbytes), host_ptr, host, nbytes)
            self.buffers[tensor] = held
        return held[0], held[1], held[2]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the engine on ``batch``, by name (each needs an address: ``execute_async_v3``)."""
        cuda, context = self.cuda, self.context
        cuda.activate()
        try:
            context.set_input_shape(self.input, batch.shape)
            layout = output_buffers({name: tuple(context.get_tensor_shape(name)) for name in self.outputs})
            in_dev, in_ptr, in_host = self._buffer(self.input, batch.nbytes)
            in_host[: batch.nbytes] = batch.reshape(-1).view(np.uint8)
            cuda.to_device(in_dev, in_ptr, batch.nbytes)
            context.set_tensor_address(self.input, in_dev)
            held = {}
            for name, (_, nbytes) in layout.items():
                held[name] = self._buffer(name, nbytes)
                context.set_tensor_address(name, held[name][0])
            if not context.execute_async_v3(cuda.stream_handle):
                raise RuntimeError("TensorRT execution failed; see the TensorRT log above")
            for name, (_, nbytes) in layout.items():
                cuda.to_host(held[name][1], held[name][0], nbytes)
            cuda.synchronize()
            return {
                name: held[name][2][:nbytes].view(np.float32).reshape(shape).copy()
                for name, (shape, nbytes) in layout.items()
            }
        finally:
            cuda.deactivate()

    def run_device(self, torch: Any, batch: Any) -> Any:
        """``run`` on a float32 CUDA tensor the pipeline made (no host copies): the engine reads it and
        writes a tensor of PyTorch's in place, ordered after the pipeline's work on the lane's stream
        and before whatever the caller's stream does next."""
        cuda, context = self.cuda, self.context
        caller = torch.cuda.current_stream(batch.device)
        lane = torch.cuda.ExternalStream(cuda.stream_handle, device=batch.device)
        cuda.activate()
        try:
            lane.wait_stream(caller)
            batch = batch.contiguous()
            context.set_input_shape(self.input, tuple(batch.shape))
            layout = output_buffers({name: tuple(context.get_tensor_shape(name)) for name in self.outputs})
            with torch.cuda.stream(lane):
                outs = {
                    name: torch.empty(shape, dtype=torch.float32, device=batch.device)
                    for name, (shape, _) in layout.items()
                }
            context.set_tensor_address(self.input, batch.data_ptr())
            for name, out in outs.items():
                context.set_tensor_address(name, out.data_ptr())
            if not context.execute_async_v3(cuda.stream_handle):
                raise RuntimeError("TensorRT execution failed; see the TensorRT log above")
            batch.record_stream(lane)  # not reused by PyTorch's allocator before the engine has read it
            caller.wait_stream(lane)
            for out in outs.values():
                out.record_stream(caller)
            return outs
        finally:
            cuda.deactivate()

    def close(self) -> None:
        self.cuda.activate()
        try:
            for device, host_ptr, _, _ in self.buffers.values():
                self.cuda.free(device)
                self.cuda.free_pinned(host_ptr)
            self.buffers.clear()
            self.context = None
        finally:
            self.cuda.deactivate()
        self.cuda.close()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self, model: Any, device: str = "auto", precision: str | None = None, streams: int = 1, preprocess: str = "auto"
    ) -> None:
        super().__init__()
        if preprocess not in PREPROCESS:
            raise ValueError(f"the tensorrt backend's preprocess is one of {', '.join(PREPROCESS)}, not {preprocess!r}")
        path = self.model_path(model, ".engine/.plan files", "engine file")
        trt = require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
        self._trt = trt
        self._index = parse_device(device)
        self.max_concurrency = check_streams(streams)
        meta = read_sidecar(path)
        built = (meta or {}).get("precision")
        if precision is not None and built is not None and precision != built:
            # An engine's precision is fixed when it is built; a label that says otherwise would lie.
            raise ValueError(
                f"{path} was built in {built} and runs in {built}, not {precision}: "
                f"build a {precision} engine (python -m export.trt --{precision}) or pass precision=None"
            )
        self._cuda = open_cuda(self._index)
        gpu_name, capability = self._cuda.device_info()
        for message in check_engine_metadata(path, meta, trt.__version__, gpu_name, capability):
            warnings.warn(message, stacklevel=2)
        self.device = f"cuda:{self._index} ({gpu_name})"
        self.precision = precision or built or "unknown"
        self.read_identity(meta or {})
        self.output_kind = OutputKind.from_metadata(meta, "sidecar")
        self._cuda.activate()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ModelFileError(f"{path}: TensorRT could not deserialise it; {rebuild_hint(path)}")
        finally:
            self._cuda.deactivate()
        engine = self._engine
        tensors = engine_tensors(trt, engine)
        self._stream = stream_io(path, tensors)  # a Video Depth Anything stream step (trt_stream), or None
        if self._stream is not None:
            self.stream_names, image, depth, self.extra_outputs = STREAM_INPUTS, IMAGE, DEPTH, ()
        else:
            image, depth, self.extra_outputs = engine_io(
                path, [(n, i, d == "float32", s) for n, i, d, s in tensors], meta
            )
        self._sky_step = engine_sky_step(path, meta, self.extra_outputs)
        self._tensors = (image, (depth, *self.extra_outputs))
        for name in self._tensors[1]:
            check_depth_output(path, tuple(engine.get_tensor_shape(name)))  # each one map per image
        dims = tuple(engine.get_tensor_shape(image))
        self._profile_range = engine_profile(dims, lambda: engine.get_tensor_profile_shape(image, 0))
        self.input_spec = spec_from_dims(image, dims, self._profile_range)
        self._torch = device_pipeline_torch(preprocess)
        if self._torch is not None:
            self.pipeline = TorchImagePipeline(self._torch, f"cuda:{self._index}")
        # The first lane uses the stream opened above; each further one opens its own.
        self._lanes: queue.Queue = queue.Queue()
        for i in range(self.max_concurrency):
            self._lanes.put(Lane(self._engine, self._cuda if i == 0 else open_cuda(self._index), self._tensors))

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        check_profile(batch.shape, *self._profile_range)
        lane = self._lanes.get()
        try:
            outs = lane.run(batch)
        finally:
            self._lanes.put(lane)
        depth = outs.pop(self._tensors[1][0])
        result = {"depth": depth, **outs}  # the extra outputs under their own names, as ONNX Runtime's
        return apply_sky_step(result) if self._sky_step else result  # at network resolution

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)["depth"]

    def _infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(batch)

    def _infer_on_device(self, batch: Any) -> Any:
        check_profile(tuple(batch.shape), *self._profile_range)
        lane = self._lanes.get()
        try:
            outs = lane.run_device(self._torch, batch)
        finally:
            self._lanes.put(lane)
        depth = outs.pop(self._tensors[1][0])
        if self._sky_step:  # on the host, as ``_run``: the step's sort is no work for a GPU kernel here
            far = sky_to_far(depth.cpu().numpy(), outs["sky"].cpu().numpy())
            depth = self._torch.from_numpy(far).to(depth.device)
        return {"depth": depth, **outs} if self.extra_outputs else depth

    def _step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        if self._stream is None:
            raise NotImplementedError(f"{self._tensors[0]!r} is the only input of this engine: it runs no stream")
        on_gpu = isinstance(caches, DeviceCache)  # a VideoStream's: bound where they lie, never copied
        if on_gpu and caches.shapes != self._stream.cache_shapes:
            raise InputError(f"the stream's GPU cache is {caches.shapes}, this engine's {self._stream.cache_shapes}")
        feeds = self._stream.feeds(batch, slot_pos, None if on_gpu else caches)
        lane = self._lanes.get()
        try:
            return run_step(lane, self._stream, feeds, caches.resident() if on_gpu else None)
        finally:
            self._lanes.put(lane)

    def stream_store(self, shapes: list) -> Any:
        if self._stream is None:
            return super().stream_store(shapes)
        return DeviceCache(open_cuda(self._index), shapes)  # a CUDA stream of its own for the cache's copies

    def stream_shapes(self, height: int, width: int) -> list:
        if self._stream is None:
            return super().stream_shapes(height, width)
        return self._stream.cache_shapes

    def _profile(self, batch: np.ndarray, calls: int) -> Profile:
        check_profile(batch.shape, *self._profile_range)
        recorder = LayerTimeRecorder()
        lane = Lane(self._engine, open_cuda(self._index), self._tensors, layer_profiler(self._trt, recorder))
        try:
            lane.run(batch)  # warm-up, not counted
            recorder.reset()
            walls = timed_calls(lambda: lane.run(batch), calls, warmup=0)
        finally:
            lane.close()
        return Profile("TensorRT IProfiler, an execution context of its own", recorder.layers(calls), walls)

    def versions(self) -> dict[str, str]:
        return {"tensorrt": self._trt.__version__}

    def info(self) -> dict[str, Any]:
        low, high = self._profile_range
        return {
            **super().info(),
            "profile": [list(low), list(high)],
            "streams": self.max_concurrency,
            "preprocess": "device" if self.pipeline else "numpy",
            **({SKY_STEP: RUNTIME} if self._sky_step else {}),
        }

    def _release(self) -> None:
        while not self._lanes.empty():
            self._lanes.get().close()  # the first lane closes the CUDA helper the engine was loaded with
        self._engine = self._runtime = None
