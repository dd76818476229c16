"""Video Depth Anything stream engines on TensorRT: which engine is one, what its tensors must be,
and one frame run with the cache carried by the caller (``runtime.video_state.StreamState``).

A stream engine is built from the stream ONNX (``export.video``): inputs ``image``, ``slot_pos``,
``cache0`` .. ``cache7``; outputs ``depth``, ``hidden0`` .. ``hidden7``; every shape static (no
optimisation profile). Every tensor is FP32 but ``slot_pos``, whose engine dtype follows the
release that built it (``export.trt.stream.SLOT_POS_DTYPES``: INT32 on 8.x, whose parser casts the
ONNX's INT64 inputs down; INT64 on 10.x and 11.x): the engine's own dtype is what is fed, the
positions (-1..30) being exact in both. Everything here but ``engine_tensors`` and ``run_step``
(the TensorRT and CUDA calls) is plain logic, tested without TensorRT; ``DeviceCache`` makes its
CUDA calls through ``runtime.backends.cuda`` and is tested on an emulated address space.

A ``VideoStream`` keeps its cache on the GPU (``DeviceCache``, the backend's ``stream_store``): the
eight caches, their waiting frames and the hidden states are device buffers made once per stream,
bound to the engine where they lie, and moved between frames by ``runtime.stream_plan``'s copies
run as ``cudaMemcpy2DAsync`` (pycuda: ``cuMemcpy2DUnaligned``, ``runtime.backends.cuda``); only the
image and ``slot_pos`` go in and the depth comes back (``transfers``). Caches given as numpy arrays
(``stream_check``, a caller of ``step``) are copied in and the hidden states out, as with ONNX
Runtime and OpenVINO.

Python 3.8 clean: it runs on JetPack 5.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from commands.errors import InputError, ModelFileError

from ..stream_plan import CACHE, HIDDEN, QUEUE, buffer_shapes, copy_2d, nbytes
from ..video_state import STREAM_INPUTS, STREAM_OUTPUTS

IMAGE, DEPTH, SLOT_POS = "image", "depth", STREAM_INPUTS[0]
SLOT_POS_DTYPES = ("int32", "int64")  # what a 8.x and a 10.x/11.x engine's slot_pos is
Tensor = tuple  # (name, is_input, dtype name, shape): an engine I/O tensor as plain data


def dtype_name(trt: Any, dtype: Any) -> str:
    """The numpy name of a ``trt.DataType`` this runtime binds (``DataType.INT64``: 10.0 and later)."""
    names = {trt.DataType.FLOAT: "float32", trt.DataType.INT32: "int32"}
    if hasattr(trt.DataType, "INT64"):
        names[trt.DataType.INT64] = "int64"
    return names.get(dtype, str(dtype))


def engine_tensors(trt: Any, engine: Any) -> list:
    """Every I/O tensor of ``engine`` as ``(name, is_input, dtype, shape)`` (TensorRT 8.5-11 name API)."""
    tensors = []
    for name in (engine.get_tensor_name(i) for i in range(engine.num_io_tensors)):
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        tensors.append((name, is_input, dtype_name(trt, engine.get_tensor_dtype(name)), shape))
    return tensors


@dataclass(frozen=True)
class StreamIO:
    """A stream engine's tensors: each one's static shape, and the dtype its ``slot_pos`` takes."""

    engine: Path
    shapes: dict
    slot_pos_dtype: str

    @property
    def cache_shapes(self) -> list:
        return [self.shapes[name] for name in STREAM_INPUTS[1:]]

    @property
    def outputs(self) -> tuple:
        return (DEPTH, *STREAM_OUTPUTS)

    def feeds(self, batch: np.ndarray, slot_pos: np.ndarray, caches: Sequence[np.ndarray] | None) -> dict:
        """The engine's inputs by name, as contiguous arrays of its dtypes (no caches: ``None``, the
        caches lie on the GPU); ``InputError`` for a cache or ``slot_pos`` of another shape (a cache
        made for another frame size or model)."""
        slot_pos = np.asarray(slot_pos)
        if caches is not None and len(caches) != len(STREAM_INPUTS) - 1:
            raise InputError(f"a stream frame takes {len(STREAM_INPUTS) - 1} caches, got {len(caches)}")
        feeds = {IMAGE: np.ascontiguousarray(batch, dtype=np.float32)}
        if slot_pos.dtype.kind != "i" or slot_pos.min(initial=0) < -1:  # positions -1..30: exact in int32
            raise InputError(f"slot_pos must hold whole positions >= -1, got {slot_pos.dtype} {slot_pos[:4]}...")
        feeds[SLOT_POS] = np.ascontiguousarray(slot_pos, dtype=self.slot_pos_dtype)
        for name, cache in zip(STREAM_INPUTS[1:], caches or ()):
            feeds[name] = np.ascontiguousarray(cache, dtype=np.float32)
        for name, array in feeds.items():
            if array.shape != self.shapes[name]:
                raise InputError(
                    f"{self.engine}: stream input {name!r} is fixed at {self.shapes[name]}, got {array.shape}; "
                    "the cache belongs to another frame size or model (start the stream again)"
                )
        return feeds

    def results(self, outputs: dict) -> list:
        """``[depth, hidden0..7]``, the order ``Backend.step`` returns."""
        return [outputs[name] for name in self.outputs]


def stream_io(engine: Path, tensors: Sequence[Tensor]) -> StreamIO | None:
    """The stream engine's tensors, or ``None`` for an engine that is no stream (no ``slot_pos``
    or cache input). ``ModelFileError`` for a stream engine whose tensors are not the stream
    ONNX's: names, FP32 (``slot_pos``: INT32 or INT64), every shape static."""
    inputs = {name for name, is_input, _, _ in tensors if is_input}
    if not inputs & set(STREAM_INPUTS):
        return None
    outputs = {name for name, is_input, _, _ in tensors if not is_input}
    want_in, want_out = {IMAGE, *STREAM_INPUTS}, {DEPTH, *STREAM_OUTPUTS}
    rebuild = "rebuild it from the stream ONNX: python -m export.trt --onnx <the stream .onnx>"
    if inputs != want_in or outputs != want_out:
        missing, extra = (
            sorted((want_in | want_out) - inputs - outputs),
            sorted((inputs | outputs) - want_in - want_out),
        )
        raise ModelFileError(
            f"{engine}: a Video Depth Anything stream engine's tensors are image, slot_pos, cache0..7 in and depth, "
            f"hidden0..7 out; missing {missing or 'none'}, unexpected {extra or 'none'}: {rebuild}"
        )
    shapes, slot_dtype = {}, ""
    for name, _, dtype, shape in tensors:
        if name == SLOT_POS:
            if dtype not in SLOT_POS_DTYPES:
                raise ModelFileError(f"{engine}: slot_pos is {dtype}, not int32 or int64: {rebuild}")
            slot_dtype = dtype
        elif dtype != "float32":
            raise ModelFileError(f"{engine}: stream tensor {name!r} is {dtype}, not float32: {rebuild}")
        if any(int(d) < 0 for d in shape):
            raise ModelFileError(f"{engine}: stream tensor {name!r} has a dynamic shape {tuple(shape)}: {rebuild}")
        shapes[name] = tuple(int(d) for d in shape)
    return StreamIO(engine, shapes, slot_dtype)


def transfers(io: StreamIO, fed: Sequence[str], resident: Sequence[str]) -> tuple:
    """``(in, out)``: the tensors a frame copies to the GPU (those ``fed`` from the host) and back (every
    output not ``resident``, i.e. not in a device buffer of the caller's), each ``(name, bytes)``."""
    sizes = {name: nbytes(shape) for name, shape in io.shapes.items()}
    sizes[SLOT_POS] = nbytes(io.shapes[SLOT_POS], np.dtype(io.slot_pos_dtype).itemsize)
    both = set(fed) & set(resident)
    if both:
        raise ValueError(f"{sorted(both)} both fed from the host and resident on the GPU")
    return (
        [(name, sizes[name]) for name in fed],
        [(name, sizes[name]) for name in io.outputs if name not in resident],
    )


def run_step(lane: Any, io: StreamIO, feeds: dict, resident: dict | None = None) -> list:
    """One frame on ``lane`` (a ``tensorrt.Lane``: its context, CUDA stream and buffers): the ``feeds``
    copied to the GPU and bound, the ``resident`` tensors (name: device address) bound where they
    lie, the other outputs bound and copied back; ``[depth, hidden0..7]`` (a resident one: its address)."""
    cuda, context, resident = lane.cuda, lane.context, dict(resident or {})
    back = transfers(io, list(feeds), list(resident))[1]
    cuda.activate()
    try:
        for name, array in feeds.items():
            device, host_ptr, host = lane._buffer(name, array.nbytes)
            host[: array.nbytes] = array.reshape(-1).view(np.uint8)
            cuda.to_device(device, host_ptr, array.nbytes)
            context.set_tensor_address(name, device)
        for name, device in resident.items():
            context.set_tensor_address(name, device)
        held = {}
        for name, size in back:
            held[name] = (*lane._buffer(name, size), size)
            context.set_tensor_address(name, held[name][0])
        if not context.execute_async_v3(cuda.stream_handle):
            raise RuntimeError("TensorRT execution failed; see the TensorRT log above")
        for device, host_ptr, _, size in held.values():
            cuda.to_host(host_ptr, device, size)
        cuda.synchronize()  # keep: DeviceCache.apply's copies (another stream) read the hidden states after it
        outputs = {
            name: host[:size].view(np.float32).reshape(io.shapes[name]).copy()
            for name, (_, _, host, size) in held.items()
        }
        return io.results({**resident, **outputs})
    finally:
        cuda.deactivate()


def device_buffers(shapes: Sequence[tuple]) -> list:
    """Each cache's three device buffers and their sizes in bytes: ``[{CACHE: n, QUEUE: n, HIDDEN: n}]``."""
    return [{name: nbytes(shape) for name, shape in buffer_shapes(s).items()} for s in shapes]


def device_copies(plan: Sequence[Any], shapes: Sequence[tuple], pointers: Sequence[dict]) -> list:
    """``plan`` on buffers at ``pointers`` (one ``{CACHE, QUEUE, HIDDEN: address}`` per cache) as the
    arguments of ``cudaMemcpy2DAsync``: ``(dst, dpitch, src, spitch, width, height)``, addresses in bytes."""
    copies = []
    for shape, at in zip(shapes, pointers):
        for op in plan:
            c = copy_2d(op, shape)
            copies.append((at[c.dst] + c.dst_offset, c.dpitch, at[c.src] + c.src_offset, c.spitch, c.width, c.height))
    return copies


def resident_tensors(pointers: Sequence[dict]) -> dict:
    """The engine tensors bound to a ``DeviceCache``: ``cache<i>`` to its window, ``hidden<i>`` to its hidden state."""
    names = zip(STREAM_INPUTS[1:], STREAM_OUTPUTS, pointers)
    return {k: v for cache, hidden, at in names for k, v in ((cache, at[CACHE]), (hidden, at[HIDDEN]))}


def release(cuda: Any, pointers: list) -> None:
    """Free the device buffers at ``pointers`` (``[{name: address}]``, emptied as they go) and close
    ``cuda``, closed even when a free fails. ``DeviceCache.close``, and its finalizer when a stream
    is dropped unclosed (cuda-python's addresses are plain ints: nothing else would free them)."""
    try:
        cuda.activate()
        try:
            while pointers:
                while pointers[-1]:
                    cuda.free(pointers[-1].popitem()[1])
                pointers.pop()
        finally:
            cuda.deactivate()
    finally:
        cuda.close()


class DeviceCache:
    """One stream's cache on the GPU (a ``StreamState`` store): per cache its window, waiting frames
    and hidden state, allocated once (zeros), zeroed on a reset; ``apply`` runs a frame's plan as
    device-to-device 2-D copies on a CUDA stream of its own (``cuda``), finished before it returns.
    ``close`` frees the buffers and the helper; a cache dropped unclosed is freed when collected."""

    def __init__(self, cuda: Any, shapes: Sequence[tuple]) -> None:
        self.cuda, self.shapes = cuda, [tuple(int(d) for d in s) for s in shapes]
        self.sizes, self.pointers = device_buffers(self.shapes), []
        # The backstop holds the helper and the pointer list, not self (or self would never be collected).
        self._release = weakref.finalize(self, release, cuda, self.pointers)
        self._release.atexit = False  # at exit the driver frees a process's memory itself
        try:
            cuda.activate()
            try:
                for sizes in self.sizes:  # one at a time, each recorded at once: a failure frees the rest
                    self.pointers.append({})
                    for name, n in sizes.items():
                        self.pointers[-1][name] = cuda.alloc(n)
            finally:
                cuda.deactivate()
            self.zero()
        except BaseException:
            self.close()
            raise

    def zero(self) -> None:
        self.cuda.activate()
        try:
            for at, sizes in zip(self.pointers, self.sizes):
                for name in (CACHE, QUEUE):
                    self.cuda.zero(at[name], sizes[name])
            self.cuda.synchronize()
        finally:
            self.cuda.deactivate()

    def inputs(self) -> DeviceCache:
        return self

    def resident(self) -> dict:
        return resident_tensors(self.pointers)

    def apply(self, plan: Sequence[Any], hidden: Sequence[Any]) -> None:
        ours = [at[HIDDEN] for at in self.pointers]
        if len(hidden) != len(ours) or not all(isinstance(h, int) and h == at for h, at in zip(hidden, ours)):
            raise ValueError("these hidden states are not in this stream's device buffers (another stream's step?)")
        # Ordering rests on host synchronizations, keep them: run_step synchronizes the lane's stream
        # (the engine has written hidden<i>) before this runs on another stream, and the synchronize
        # below finishes the copies before the next frame's step reads cache<i>.
        self.cuda.activate()
        try:
            for copy in device_copies(plan, self.shapes, self.pointers):
                self.cuda.copy_2d(*copy)
            self.cuda.synchronize()
        finally:
            self.cuda.deactivate()

    def close(self) -> None:
        """Free the buffers and close the helper, once (the finalizer is spent by this call)."""
        self.cuda = None
        self._release()
