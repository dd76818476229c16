"""A Video Depth Anything stream's cache bookkeeping as a plan of slot copies (runtime.stream_plan):
the plan run in numpy is the state the stream kept before (the old ``StreamState.update``, copied
here as the oracle) over 130 frames with a reset and a size change; the same plan as
``cudaMemcpy2DAsync`` arguments, executed on flat bytes by an emulation of ``cudaMemcpy2D``'s
documented semantics, is the numpy one byte for byte; the TensorRT backend's GPU cache
(``DeviceCache``) runs unchanged on an emulated address space and carries the same state; what
crosses the bus per frame. The real device path against the host path is the ``gpu`` test."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.backends.trt_stream import (
    DeviceCache,
    device_buffers,
    device_copies,
    resident_tensors,
    stream_io,
    transfers,
)
from runtime.stream_plan import (
    CACHE,
    HIDDEN,
    QUEUE,
    RECENT,
    SLOTS,
    WAITING,
    Copy,
    buffer_shapes,
    copy_2d,
    frame_plan,
    memcpy_2d,
    plan_bytes,
    run_plan,
    run_plan_2d,
)
from runtime.video_state import STREAM_INPUTS, STREAM_OUTPUTS, StreamState, slot_positions
from tests.test_trt_logic import gpu_ready

SHAPES = [(5, SLOTS, 3), (4, SLOTS, 2, 3)] * 4  # eight small caches, half with two channel dimensions
OTHER = [(7, SLOTS, 3), (6, SLOTS, 2, 3)] * 4  # the same stream at another frame size
SMALL_266x378 = [(513, SLOTS, 192)] * 2 + [(140, SLOTS, 384)] * 2 + [(513, SLOTS, 64)] * 2 + [(2052, SLOTS, 64)] * 2
FRAMES, RESET_AT, RESIZE_AT = 130, 50, 95  # 50, 45, 35 frames: the waiting queue turns over (frame 41 on)


class OldState:
    """The oracle: ``StreamState``'s cache bookkeeping as it was before the plan (its logic kept as it was)."""

    def __init__(self) -> None:
        self.cache, self.count = None, 0

    def inputs(self, shapes):
        if self.cache is None:
            self.cache = [np.zeros(shape, dtype=np.float32) for shape in shapes]
            self.waiting = [np.zeros((s[0], WAITING, *s[2:]), dtype=np.float32) for s in shapes]
            self.count = 0
        return slot_positions(self.count), self.cache

    def update(self, hidden):
        k = self.count
        ring, queue = 2 + k % RECENT, (k - RECENT) % WAITING
        for cache, waiting, h in zip(self.cache, self.waiting, hidden, strict=True):
            h = np.asarray(h, dtype=np.float32)
            if k == 0:
                cache[...] = h
                waiting[...] = h
                continue
            cache[:, 1] = waiting[:, queue]
            waiting[:, queue] = cache[:, ring]
            cache[:, ring] = h[:, 0]
        self.count += 1


def hidden_states(rng, shapes):
    return [rng.standard_normal(buffer_shapes(s)[HIDDEN]).astype(np.float32) for s in shapes]


def shapes_at(frame):
    return SHAPES if frame < RESIZE_AT else OTHER


def test_the_plan_in_numpy_is_the_old_state_over_130_frames_with_a_reset_and_a_size_change():
    rng, old, new = np.random.default_rng(0), OldState(), StreamState(max_gap=None)
    for frame in range(FRAMES):
        if frame == RESET_AT:
            old.cache = None
            new.reset("test")
        if frame == RESIZE_AT:
            old.cache = None
            new.admit((1, 1))  # the size the tests below change from
            new.admit((2, 2))  # a size change: a reset, then caches of the new shapes
        old_pos, old_cache = old.inputs(shapes_at(frame))
        new_pos, new_cache = new.inputs(shapes_at(frame))
        np.testing.assert_array_equal(new_pos, old_pos)
        for a, b in zip(new_cache, old_cache, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(new.waiting, old.waiting, strict=True):
            np.testing.assert_array_equal(a, b)
        hidden = hidden_states(rng, shapes_at(frame))
        old.update(hidden)
        new.update(hidden)
    assert new.count == FRAMES - RESIZE_AT and new.frames == FRAMES
    assert new.resets[0][1] == "test" and "size changed" in new.resets[1][1]


def test_a_frame_moves_three_slots_each_between_two_buffers_the_first_fills_every_slot():
    first = frame_plan(0)
    assert sorted((op.dst, op.dst_slot) for op in first) == sorted(
        [(CACHE, s) for s in range(SLOTS)] + [(QUEUE, s) for s in range(WAITING)]
    )
    assert all(op.src == HIDDEN for op in first)
    for k in range(1, 200):
        plan = frame_plan(k)
        assert len(plan) == 3 and all(op.src != op.dst for op in plan)  # never within one buffer: no overlap
        assert plan[2] == Copy(HIDDEN, 0, CACHE, 2 + k % RECENT)  # the new frame into the ring
    with pytest.raises(ValueError, match="count from 0"):
        frame_plan(-1)
    with pytest.raises(ValueError, match="overlaps"):
        copy_2d(Copy(CACHE, 3, CACHE, 1), SHAPES[0])
    with pytest.raises(ValueError, match="no slot 11"):
        copy_2d(Copy(CACHE, 3, QUEUE, WAITING), SHAPES[0])


def test_memcpy_2d_follows_the_cuda_runtime_documentation():
    src = np.arange(20, dtype=np.uint8)
    dst = np.zeros(16, dtype=np.uint8)
    # height 3 rows of width 2 bytes: src rows every spitch 5 from byte 1, dst rows every dpitch 4 from byte 2
    memcpy_2d(dst, 4, src, 5, 2, 3, dst_offset=2, src_offset=1)
    assert dst.tolist() == [0, 0, 1, 2, 0, 0, 6, 7, 0, 0, 11, 12, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="exceeds"):  # "width must not exceed either dpitch or spitch"
        memcpy_2d(dst, 4, src, 5, 5, 1)
    with pytest.raises(ValueError, match="may not overlap"):  # "The memory areas may not overlap"
        memcpy_2d(src, 4, src, 4, 2, 3, dst_offset=2)
    with pytest.raises(ValueError, match="runs past"):
        memcpy_2d(dst, 8, src, 5, 2, 3)


def test_a_slot_is_tokens_rows_of_c_floats_at_the_pitch_of_its_buffer():
    cache, waiting, hidden = 192 * 4, 192 * 4 * SLOTS, 192 * 4 * WAITING
    assert copy_2d(Copy(HIDDEN, 0, CACHE, 7), (513, SLOTS, 192)) == (
        CACHE,
        7 * cache,
        waiting,
        HIDDEN,
        0,
        cache,
        cache,
        513,
    )
    assert copy_2d(Copy(CACHE, 30, QUEUE, 10), (513, SLOTS, 192)) == (
        QUEUE, 10 * cache, hidden, CACHE, 30 * cache, waiting, cache, 513,
    )  # fmt: skip
    assert device_buffers([(513, SLOTS, 192)]) == [{HIDDEN: 513 * cache, CACHE: 513 * waiting, QUEUE: 513 * hidden}]


@pytest.mark.parametrize("k", [0, 1, RECENT - 1, RECENT, RECENT + WAITING, 4 * RECENT + 3])
def test_the_plan_as_2d_copies_on_flat_bytes_is_the_numpy_plan(k):
    rng = np.random.default_rng(k)
    for shape in SHAPES[:2]:
        arrays = {name: rng.standard_normal(s).astype(np.float32) for name, s in buffer_shapes(shape).items()}
        flat = {name: a.copy().reshape(-1).view(np.uint8) for name, a in arrays.items()}
        run_plan(frame_plan(k), arrays)
        run_plan_2d(frame_plan(k), shape, flat)
        for name, array in arrays.items():
            np.testing.assert_array_equal(flat[name].view(np.float32).reshape(array.shape), array)


class ArenaCuda:
    """The CUDA helper's calls ``DeviceCache`` makes (``runtime.backends.cuda``), on one flat byte
    array as device memory: addresses are offsets (256-byte aligned, as cudaMalloc's), copies are
    ``memcpy_2d`` (cudaMemcpy2D's documented semantics). Counts what it is asked to do."""

    def __init__(self) -> None:
        self.memory, self.top, self.live, self.copies, self.closed = np.zeros(0, np.uint8), 256, {}, 0, False

    def alloc(self, nbytes):
        pointer, self.top = self.top, self.top + -(-nbytes // 256) * 256
        self.memory = np.concatenate([self.memory, np.full(self.top - self.memory.size, 0xAB, np.uint8)])
        self.live[pointer] = nbytes
        return pointer

    def free(self, pointer):
        del self.live[pointer]

    def zero(self, device, nbytes):
        assert self.live[device] >= nbytes
        self.memory[device : device + nbytes] = 0

    def copy_2d(self, dst, dpitch, src, spitch, width, height):
        memcpy_2d(self.memory, dpitch, self.memory, spitch, width, height, dst_offset=dst, src_offset=src)
        self.copies += 1

    def view(self, pointer, shape):
        return self.memory[pointer : pointer + self.live[pointer]].view(np.float32).reshape(shape)

    def activate(self):
        pass

    def deactivate(self):
        pass

    def synchronize(self):
        pass

    def close(self):
        self.closed = True


def test_the_gpu_cache_runs_the_same_plan_on_device_addresses_as_the_host_over_130_frames():
    rng, arenas = np.random.default_rng(1), []

    def store(shapes):
        arenas.append(ArenaCuda())
        return DeviceCache(arenas[-1], shapes)

    host, device = StreamState(max_gap=None), StreamState(max_gap=None, store=store)
    for frame in range(FRAMES):
        for state in (host, device):
            if frame == RESET_AT:
                state.reset("test")
            if frame == RESIZE_AT:
                state.admit((1, 1))
                state.admit((2, 2))
        host_pos, host_cache = host.inputs(shapes_at(frame))
        device_pos, gpu = device.inputs(shapes_at(frame))
        np.testing.assert_array_equal(device_pos, host_pos)
        arena, bound = arenas[-1], gpu.resident()
        assert set(bound) == set(STREAM_INPUTS[1:]) | set(STREAM_OUTPUTS)
        for name, cache in zip(STREAM_INPUTS[1:], host_cache, strict=True):  # what the engine reads where it lies
            np.testing.assert_array_equal(arena.view(bound[name], cache.shape), cache)
        hidden = hidden_states(rng, shapes_at(frame))
        for name, h in zip(STREAM_OUTPUTS, hidden, strict=True):  # what the engine writes where it lies
            arena.view(bound[name], h.shape)[...] = h
        host.update(hidden)
        device.update([bound[name] for name in STREAM_OUTPUTS])
    assert len(arenas) == 2 and arenas[0].closed and not arenas[0].live  # a size change: freed, made anew
    assert arenas[1].copies == (FRAMES - RESIZE_AT - 1) * 3 * len(OTHER) + (SLOTS + WAITING) * len(OTHER)
    with pytest.raises(ValueError, match="not in this stream's device buffers"):
        device.update(hidden)
    device.close()
    assert arenas[1].closed and not arenas[1].live


def test_device_copies_address_every_cache_at_its_own_buffers():
    pointers = [{CACHE: 1 << 20, QUEUE: 2 << 20, HIDDEN: 3 << 20}, {CACHE: 4 << 20, QUEUE: 5 << 20, HIDDEN: 6 << 20}]
    copies = device_copies(frame_plan(RECENT + 2), SHAPES[:2], pointers)
    width = 3 * 4
    assert copies[0] == ((1 << 20) + width, SLOTS * width, (2 << 20) + 2 * width, WAITING * width, width, 5)
    assert len(copies) == 6 and copies[3][0] == (4 << 20) + 2 * 3 * 4  # the second cache: 2x3 floats a row
    assert resident_tensors(pointers)["cache1"] == 4 << 20 and resident_tensors(pointers)["hidden0"] == 3 << 20


def small_io(slot_pos_dtype="int64"):
    tensors = [("image", True, "float32", (1, 3, 266, 378)), ("slot_pos", True, slot_pos_dtype, (SLOTS,))]
    tensors += [(n, True, "float32", s) for n, s in zip(STREAM_INPUTS[1:], SMALL_266x378, strict=True)]
    tensors += [("depth", False, "float32", (1, 266, 378))]
    tensors += [
        (n, False, "float32", buffer_shapes(s)[HIDDEN]) for n, s in zip(STREAM_OUTPUTS, SMALL_266x378, strict=True)
    ]
    return stream_io("vda.engine", tensors)


def test_what_crosses_the_bus_per_frame_with_the_cache_on_the_host_and_on_the_gpu():
    io = small_io()
    cache_bytes = sum(int(np.prod(s)) * 4 for s in SMALL_266x378)
    hidden_bytes = cache_bytes // SLOTS
    image, slot_pos, depth = 3 * 266 * 378 * 4, SLOTS * 8, 266 * 378 * 4
    host_in, host_out = transfers(io, ["image", "slot_pos", *STREAM_INPUTS[1:]], [])
    assert sum(n for _, n in host_in) == image + slot_pos + cache_bytes == 79_677_992
    assert sum(n for _, n in host_out) == depth + hidden_bytes == 2_933_520
    gpu_in, gpu_out = transfers(io, ["image", "slot_pos"], [*STREAM_INPUTS[1:], *STREAM_OUTPUTS])
    assert gpu_in == [("image", image), ("slot_pos", slot_pos)] and gpu_out == [("depth", depth)]
    assert image + slot_pos + depth == 1_609_016  # was 82_611_512 in all
    assert sum(n for _, n in transfers(small_io("int32"), ["slot_pos"], [])[0]) == SLOTS * 4
    assert plan_bytes(SMALL_266x378, 1) == 3 * hidden_bytes == 7_593_984  # device to device, frame 1 on
    assert plan_bytes(SMALL_266x378, 0) == (SLOTS + WAITING) * hidden_bytes
    with pytest.raises(ValueError, match="both fed"):
        transfers(io, ["cache0"], ["cache0"])


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_ready(), reason="needs TensorRT and a CUDA GPU")
def test_the_gpu_cache_gives_the_host_cache_depths_frame_by_frame(tmp_path):
    import torch

    from export.onnx import export_onnx
    from export.trt.build import TrtRequest, build_trt
    from runtime.backends.tensorrt import TensorRTBackend
    from train.models import load_model

    from .video_fixtures import vda_state_dict

    checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), checkpoint)
    onnx = tmp_path / "vda.onnx"
    export_onnx(load_model(checkpoint), onnx, 56, 84, verify=False, opset=17)
    engine = build_trt(TrtRequest(precision="fp32", onnx=onnx, output=tmp_path / "vda.fp32.engine"))
    rng = np.random.default_rng(2)
    with TensorRTBackend(engine.path) as backend:
        shapes = backend.stream_shapes(56, 84)
        host, device = StreamState(max_gap=None), StreamState(max_gap=None, store=backend.stream_store)
        for frame in range(45):  # past 41: the waiting frames reach slot 1
            if frame == 30:
                host.reset("test")
                device.reset("test")
            batch = rng.standard_normal((1, 3, 56, 84)).astype(np.float32)
            want = backend.step(batch, *host.inputs(shapes))
            got = backend.step(batch, *device.inputs(shapes))
            assert isinstance(device.store, DeviceCache) and all(isinstance(h, int) for h in got[1:])
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6, err_msg=f"frame {frame}")
            host.update(want[1:])
            device.update(got[1:])
        device.close()
