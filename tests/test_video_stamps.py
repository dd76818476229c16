"""A Video Depth Anything stream's time stamps: a repeated stamp and a late frame are refused with
lines of their own, a clock that jumps back by more than ``max_gap`` starts the stream again (as
tf2_ros's buffer clears itself on a jump back), ``reset()`` takes any stamp next; and a closed
PyTorch predictor refuses its streams in one line, as ONNX Runtime's does."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.video_state import StreamState

from .video_fixtures import frames_bgr, official_stream, vda_state_dict, worst_rel_std

SIZE = (240, 320)


@pytest.fixture(scope="module")
def vda_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("vda") / "video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), path)
    return path


def test_a_repeated_stamp_is_refused_in_a_line_of_its_own():
    state = StreamState(max_gap=1.0, name="front")
    state.admit(SIZE, 0.1)
    with pytest.raises(InputError) as refused:
        state.admit(SIZE, 0.1)
    assert str(refused.value).startswith("front: a second frame at t=0.100000 s (the same stamp as the last)")
    assert "arrives after" not in str(refused.value)
    state.admit(SIZE, 0.2)  # the stream goes on
    assert state.resets == []


def test_a_jump_back_beyond_max_gap_starts_again_a_late_frame_is_left_out(caplog):
    state = StreamState(max_gap=1.0, name="front")
    for t in (100.0, 100.1, 100.2):
        state.admit(SIZE, t)
        state.count += 1  # as update() counts a frame that ran
        state.frames += 1
    with pytest.raises(InputError, match=r"front: frame at t=99\.500000 s is 0\.700000 s older than the last"):
        state.admit(SIZE, 99.5)  # one late frame: within max_gap
    assert state.resets == [] and state.stamp == 100.2
    with caplog.at_level(logging.WARNING, logger="runtime.video"):
        state.admit(SIZE, 3.0)  # a bag played in a loop, a restarted driver, a sim clock reset
    assert state.resets == [(3, "time jumped back 97.200 s (more than max_gap=1 s)")]
    assert state.count == 0 and state.stamp == 3.0
    assert "front: Video Depth Anything state reset at frame 3: time jumped back" in caplog.text
    state.admit(SIZE, 3.1)  # and goes on from the new time
    assert len(state.resets) == 1


def test_without_max_gap_a_frame_back_in_time_says_how_to_recover_and_reset_does():
    state = StreamState(max_gap=None, name="cam")
    state.admit(SIZE, 5.0)
    with pytest.raises(InputError, match=r"no max_gap: call reset\(\) to start it again from this frame"):
        state.admit(SIZE, 1.0)
    state.reset()
    state.admit(SIZE, 1.0)  # the last stamp went with the reset
    assert state.stamp == 1.0 and state.count == 0


def test_reset_clears_the_last_stamp_and_a_jump_back_runs_as_a_first_frame(vda_checkpoint):
    frames, reference = frames_bgr(), official_stream()
    with DepthPredictor(vda_checkpoint, input_size=266) as predictor:
        video = predictor.video_stream(max_gap=None, name="front")
        video.push(frames[0], stamp=5.0)
        video.push(frames[1], stamp=5.1)
        video.reset()
        restarted = video.push(frames[0], stamp=1.0)  # refused before the fix: "arrives after t=5.1"
        assert worst_rel_std(restarted, reference[0]) <= 1e-4  # a first frame again
        jumping = predictor.video_stream(max_gap=1.0, name="loop")
        for i in range(3):
            jumping.push(frames[i], stamp=50.0 + 0.1 * i)
        looped = jumping.push(frames[0], stamp=0.5)  # the bag started over
        assert worst_rel_std(looped, reference[0]) <= 1e-4
        assert jumping.resets == [(3, "time jumped back 49.700 s (more than max_gap=1 s)")]
        # each goes on from its new first frame alike
        np.testing.assert_allclose(jumping.push(frames[1], 0.6), video.push(frames[1], 1.1), rtol=0, atol=1e-5)


def test_a_closed_torch_predictor_refuses_its_streams_in_one_line(vda_checkpoint):
    frame = frames_bgr()[0]
    predictor = DepthPredictor(vda_checkpoint, input_size=140)
    predictor.predict(frame)
    predictor.close()
    for call in (
        lambda: predictor.predict(frame),
        lambda: predictor.stream([frame]),  # at the call, not at the first frame
        lambda: predictor.video_stream(),
    ):
        with pytest.raises(RuntimeError, match=r"^the torch backend was closed$"):
            call()
    backend = DepthPredictor(vda_checkpoint, input_size=140)
    video = backend.video_stream()
    backend._backend.close()  # the backend alone: the stream's next frame finds its model gone
    with pytest.raises(RuntimeError, match=r"^the torch backend was closed$"):
        video.push(frame)
    backend.close()
