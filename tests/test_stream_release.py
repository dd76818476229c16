"""Every stream cache is freed: ``DeviceCache`` (the TensorRT stream's GPU buffers) on an emulated
address space: closed, dropped unclosed (its finalizer), a failed allocation, a failing free; and
the stores a real PyTorch predictor makes for a Video Depth Anything model, each closed by
``predict``, ``predict_batch``, ``stream`` and ``DepthPredictor.close``."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from commands.errors import InputError
from runtime.backends.trt_stream import DeviceCache
from runtime.stream_plan import HostCache

from .test_stream_plan import SHAPES, ArenaCuda

BUFFERS = 3 * len(SHAPES)  # window, waiting frames, hidden state per cache


class CountingArena(ArenaCuda):
    """``ArenaCuda`` that counts frees and fails the ``fail_alloc``-th allocation or every free."""

    def __init__(self, fail_alloc: int = 0, fail_free: bool = False) -> None:
        super().__init__()
        self.allocs, self.frees, self.fail_alloc, self.fail_free = 0, 0, fail_alloc, fail_free

    def alloc(self, nbytes):
        self.allocs += 1
        if self.allocs == self.fail_alloc:
            raise MemoryError("out of device memory")
        return super().alloc(nbytes)

    def free(self, pointer):
        self.frees += 1
        if self.fail_free:
            raise RuntimeError("cudaFree failed")
        super().free(pointer)


def test_a_closed_cache_frees_every_buffer_once_and_a_dropped_one_is_freed_when_collected():
    arena = CountingArena()
    cache = DeviceCache(arena, SHAPES)
    assert len(arena.live) == BUFFERS
    cache.close()
    cache.close()
    del cache
    gc.collect()
    assert not arena.live and arena.closed and arena.frees == BUFFERS  # no second free by the finalizer
    dropped = CountingArena()
    DeviceCache(dropped, SHAPES)  # nobody closes it
    gc.collect()
    assert not dropped.live and dropped.closed and dropped.frees == BUFFERS


@pytest.mark.parametrize("fail_at", [1, 5, BUFFERS])
def test_a_failed_allocation_frees_the_buffers_made_before_it(fail_at):
    arena = CountingArena(fail_alloc=fail_at)
    with pytest.raises(MemoryError):
        DeviceCache(arena, SHAPES)
    assert not arena.live and arena.closed and arena.frees == fail_at - 1


def test_a_failing_free_still_closes_the_cuda_helper():
    arena = CountingArena()
    cache = DeviceCache(arena, SHAPES)
    arena.fail_free = True
    with pytest.raises(RuntimeError, match="cudaFree"):
        cache.close()
    assert arena.closed


def test_every_store_a_stream_model_makes_is_closed(tmp_path):
    import torch

    from runtime import DepthPredictor

    from .video_fixtures import vda_state_dict

    made, closed = [], []

    class Counted(HostCache):
        def __init__(self, shapes):
            super().__init__(shapes)
            made.append(self)

        def close(self):
            closed.append(self)

    checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), checkpoint)
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    with DepthPredictor(str(checkpoint), input_size=56) as predictor:
        predictor._backend.stream_store = Counted
        for _ in range(2):
            predictor.predict(image)
        predictor.predict_batch([image, image])
        assert len(closed) == len(made) == 4
        assert len(list(predictor.stream([image, image]))) == 2
        assert len(closed) == len(made) == 5
        frames = predictor.stream(iter([image] * 3))
        next(frames)
        frames.close()  # a consumer that stops early
        assert len(closed) == len(made) == 6
        kept = predictor.video_stream()
        kept.push(image)
        assert len(closed) == 6 and len(made) == 7
    assert len(closed) == len(made) == 7  # the predictor closed the stream it made
    with pytest.raises(InputError, match="stream was closed"):  # not a silent new stream on a closed backend
        kept.push(image)


def test_a_close_from_another_thread_waits_for_the_frame_in_flight_and_the_backend_closes_anyway(tmp_path):
    """DepthPredictor.close from another thread (the ROS node's shutdown) frees a stream's cache
    after the step that has it bound, not under it; a stream whose close fails still lets the
    predictor close its backend."""
    import threading

    import torch

    from runtime import DepthPredictor

    from .video_fixtures import vda_state_dict

    checkpoint = tmp_path / "video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), checkpoint)
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    predictor = DepthPredictor(str(checkpoint), input_size=56)
    backend, events = predictor._backend, []
    entered, release = threading.Event(), threading.Event()
    step = backend.step

    def slow_step(*args):
        entered.set()
        release.wait(10)
        events.append("step done")
        return step(*args)

    backend.step = slow_step
    video = predictor.video_stream()
    worker = threading.Thread(target=video.push, args=(image,))
    worker.start()
    entered.wait(10)
    closing = threading.Thread(target=lambda: (video.close(), events.append("closed")))
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and events == []  # waiting for the frame in flight
    release.set()
    worker.join(10)
    closing.join(10)
    assert events == ["step done", "closed"]

    other = predictor.video_stream()

    def broken_close():
        raise RuntimeError("sticky CUDA error")

    other.state.close = broken_close
    backend_closed = []
    close_backend = backend.close
    backend.close = lambda: (backend_closed.append(True), close_backend())
    with pytest.raises(RuntimeError, match="sticky CUDA error"):
        predictor.close()
    assert backend_closed == [True]
