"""The few CUDA calls the TensorRT backend needs, through pycuda (JetPack) or cuda-python.

Both expose the same small surface: device facts, device buffers, pinned host buffers, one
stream, async copies. Kept thin on purpose; everything it decides is in ``parse_device``.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from commands.errors import MissingDependencyError

CUDA_NOTE = "on Jetson use JetPack's python3-libnvinfer and pycuda; elsewhere pip install cuda-python"


def parse_device(device: str) -> int:
    """CUDA device index from ``auto``, ``cuda`` or ``cuda:N``."""
    if device in ("auto", "cuda", "gpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"TensorRT runs on a CUDA GPU: device must be 'auto', 'cuda' or 'cuda:N', not {device!r}")


class CudaPython:
    """cuda-python's runtime API (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""

    def __init__(self, index: int) -> None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            from cuda import cudart as rt
        self.rt, self.index = rt, index
        self.activate()
        self.stream = self._ok(rt.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, text = self.rt.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA error {int(err)}: {text.decode() if isinstance(text, bytes) else text}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def activate(self) -> None:
        self._ok(self.rt.cudaSetDevice(self.index))

    def deactivate(self) -> None:
        pass

    def device_info(self) -> tuple[str, tuple[int, int]]:
        props = self._ok(self.rt.cudaGetDeviceProperties(self.index))
        name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else props.name
        return name, (props.major, props.minor)

    def alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(nbytes)))

    def free(self, pointer: int) -> None:
        self._ok(self.rt.cudaFree(pointer))

    def pinned(self, nbytes: int) -> tuple[int, np.ndarray]:
        pointer = int(self._ok(self.rt.cudaMallocHost(nbytes)))
        return pointer, np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(pointer))

    def free_pinned(self, pointer: int) -> None:
        self._ok(self.rt.cudaFreeHost(pointer))

    def to_device(self, device: int, host: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(device, host, nbytes, kind, self.stream))

    def to_host(self, host: int, device: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(host, device, nbytes, kind, self.stream))

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        """``height`` rows of ``width`` bytes, device to device, at the pitches given (``cudaMemcpy2DAsync``)."""
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._ok(self.rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, self.stream))

    def zero(self, device: int, nbytes: int) -> None:
        self._ok(self.rt.cudaMemsetAsync(device, 0, nbytes, self.stream))

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self._ok(self.rt.cudaStreamDestroy(self.stream))


class PyCuda:
    """pycuda's driver API, with the device's primary context pushed around each call."""

    def __init__(self, index: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self.cuda, self.index = cuda, index
        self.device = cuda.Device(index)
        self.context = self.device.retain_primary_context()
        self.activate()
        try:
            self.stream = cuda.Stream()
        finally:
            self.deactivate()
        self._pinned: dict[int, Any] = {}
        self._device_buffers: dict[int, Any] = {}

    def activate(self) -> None:
        self.context.push()

    def deactivate(self) -> None:
        self.cuda.Context.pop()

    def device_info(self) -> tuple[str, tuple[int, int]]:
        return self.device.name(), tuple(self.device.compute_capability())

    def alloc(self, nbytes: int) -> int:
        buffer = self.cuda.mem_alloc(nbytes)
        self._device_buffers[int(buffer)] = buffer
        return int(buffer)

    def free(self, pointer: int) -> None:
        self._device_buffers.pop(pointer).free()

    def pinned(self, nbytes: int) -> tuple[int, np.ndarray]:
        array = self.cuda.pagelocked_empty(nbytes, np.uint8)
        pointer = array.ctypes.data
        self._pinned[pointer] = array
        return pointer, array

    def free_pinned(self, pointer: int) -> None:
        self._pinned.pop(pointer)

    def to_device(self, device: int, host: int, nbytes: int) -> None:
        self.cuda.memcpy_htod_async(device, self._pinned[host][:nbytes], self.stream)

    def to_host(self, host: int, device: int, nbytes: int) -> None:
        self.cuda.memcpy_dtoh_async(self._pinned[host][:nbytes], device, self.stream)

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int) -> None:
        """``height`` rows of ``width`` bytes, device to device, at the pitches given, synchronously
        with ``cuMemcpy2DUnaligned`` once this stream's work is done. Not ``cuMemcpy2DAsync``: the
        driver API documents that cuMemcpy2D/cuMemcpy2DAsync "may fail for pitches not computed by
        cuMemAllocPitch()" on device-to-device copies (CUDA Driver API, Memory Management,
        cuMemcpy2D), and a cache slot's pitch and offset are not (multiples of 256 bytes, not of
        the pitch alignment); pycuda's ``Memcpy2D()(aligned=False)`` is the unaligned call."""
        copy = self.cuda.Memcpy2D()
        copy.set_src_device(src)
        copy.set_dst_device(dst)
        copy.src_pitch, copy.dst_pitch, copy.width_in_bytes, copy.height = spitch, dpitch, width, height
        self.stream.synchronize()  # the zeroing queued on this stream first (a no-op when idle)
        copy(aligned=False)
        # A device-to-device copy returns before it is done even from this synchronous call (CUDA
        # Runtime API, "API synchronization behavior"): wait for it in the context before the next
        # frame's step reads the slot (the copy ran on the legacy default stream, not this one).
        self.cuda.Context.synchronize()

    def zero(self, device: int, nbytes: int) -> None:
        self.cuda.memset_d8_async(device, 0, nbytes, self.stream)  # pycuda 2022.2 and later

    @property
    def stream_handle(self) -> int:
        return self.stream.handle

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context.detach()


def open_cuda(index: int) -> CudaPython | PyCuda:
    """pycuda when installed (JetPack users have it), else cuda-python."""
    try:
        import pycuda.driver  # noqa: F401

        return PyCuda(index)
    except ImportError:
        pass
    try:
        return CudaPython(index)
    except ImportError as exc:
        raise MissingDependencyError(
            f"neither pycuda nor cuda-python is installed: pip install 'dav2-edge[tensorrt]' ({CUDA_NOTE})"
        ) from exc
