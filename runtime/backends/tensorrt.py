"""TensorRT backend: one engine, one execution context and one CUDA stream per predictor.

Uses only the name-based API that TensorRT 8.5 through 11 share (``num_io_tensors``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Before deserialising, the
engine's sidecar metadata is checked against the installed TensorRT and the GPU, because a
plan built elsewhere either fails obscurely or runs slowly.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelFileError, require
from ..metadata import read_sidecar
from ..metric import OutputKind
from .base import Backend, InputSpec
from .cuda import open_cuda, parse_device

JETPACK_NOTE = "on Jetson TensorRT comes with JetPack (python3-libnvinfer), not from pip"


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


def spec_from_dims(name: str, dims: tuple[int, ...]) -> InputSpec:
    """TensorRT marks dynamic dimensions with -1."""
    if len(dims) != 4:
        raise ModelFileError(f"engine input {name!r} has shape {dims}; expected (N, 3, H, W)")
    return InputSpec(name, tuple(None if d < 0 else int(d) for d in dims))  # type: ignore[arg-type]


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


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model: Any, device: str = "auto", precision: str | None = None) -> None:
        super().__init__()
        path = self.model_path(model, ".engine/.plan files", "engine file")
        trt = require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
        self._trt = trt
        index = parse_device(device)
        meta = read_sidecar(path)
        built = (meta or {}).get("precision")
        if precision is not None and built is not None and precision != built:
            # An engine's precision is fixed when it is built; a label that says otherwise would lie.
            raise ValueError(
                f"{path} was built in {built} and runs in {built}, not {precision}: "
                f"build a {precision} engine (python -m export.trt --{precision}) or pass precision=None"
            )
        self._cuda = open_cuda(index)
        gpu_name, capability = self._cuda.device_info()
        for message in check_engine_metadata(path, meta, trt.__version__, gpu_name, capability):
            warnings.warn(message, stacklevel=2)
        self.device = f"cuda:{index} ({gpu_name})"
        self.precision = precision or built or "unknown"
        self.licence = (meta or {}).get("licence", self.licence)
        self.output_kind = OutputKind.from_metadata(meta, "sidecar")
        self._cuda.activate()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self._engine is None:
                raise ModelFileError(f"{path}: TensorRT could not deserialise it; {rebuild_hint(path)}")
            self._context = self._engine.create_execution_context()
        finally:
            self._cuda.deactivate()
        inputs, outputs = [], []
        for i in range(self._engine.num_io_tensors):
            tensor = self._engine.get_tensor_name(i)
            is_input = self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(tensor)
            if self._engine.get_tensor_dtype(tensor) != trt.DataType.FLOAT:
                raise ModelFileError(f"{path}: tensor {tensor!r} is not float32; export engines with FP32 I/O")
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output, found {inputs} and {outputs}")
        (self._input,), (self._output,) = inputs, outputs
        dims = tuple(self._engine.get_tensor_shape(self._input))
        self.input_spec = spec_from_dims(self._input, dims)
        self._profile = engine_profile(dims, lambda: self._engine.get_tensor_profile_shape(self._input, 0))
        self._buffers: dict[str, tuple[int, int, np.ndarray, int]] = {}  # name -> (device, host ptr, host, bytes)

    def _buffer(self, tensor: str, nbytes: int) -> tuple[int, int, np.ndarray]:
        held = self._buffers.get(tensor)
        if held is None or held[3] < nbytes:
            if held is not None:
                self._cuda.free(held[0])
                self._cuda.free_pinned(held[1])
            host_ptr, host = self._cuda.pinned(nbytes)
            held = (self._cuda.alloc(nbytes), host_ptr, host, nbytes)
            self._buffers[tensor] = held
        return held[0], held[1], held[2]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        check_profile(batch.shape, *self._profile)
        self._cuda.activate()
        try:
            self._context.set_input_shape(self._input, batch.shape)
            out_shape = tuple(self._context.get_tensor_shape(self._output))
            out_bytes = int(np.prod(out_shape)) * 4
            in_dev, in_ptr, in_host = self._buffer(self._input, batch.nbytes)
            out_dev, out_ptr, out_host = self._buffer(self._output, out_bytes)
            in_host[: batch.nbytes] = batch.reshape(-1).view(np.uint8)
            self._cuda.to_device(in_dev, in_ptr, batch.nbytes)
            self._context.set_tensor_address(self._input, in_dev)
            self._context.set_tensor_address(self._output, out_dev)
            if not self._context.execute_async_v3(self._cuda.stream_handle):
                raise RuntimeError("TensorRT execution failed; see the TensorRT log above")
            self._cuda.to_host(out_ptr, out_dev, out_bytes)
            self._cuda.synchronize()
            return out_host[:out_bytes].view(np.float32).reshape(out_shape).copy()
        finally:
            self._cuda.deactivate()

    def versions(self) -> dict[str, str]:
        return {"tensorrt": self._trt.__version__}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "profile": [list(self._profile[0]), list(self._profile[1])]}

    def _release(self) -> None:
        self._cuda.activate()
        try:
            for device, host_ptr, _, _ in self._buffers.values():
                self._cuda.free(device)
                self._cuda.free_pinned(host_ptr)
            self._buffers.clear()
            self._context = self._engine = self._runtime = None
        finally:
            self._cuda.deactivate()
        self._cuda.close()
