"""``export.trt.stream.checkpoint_is_stream``: whether a checkpoint exports as a Video Depth
Anything stream graph, known from its tensor names before any ONNX is exported (``python -m
export.trt --checkpoint video_depth_anything_vits.pth`` refused only after its export, found in
review). The answer is the export's own decision (``export.video.is_video_model`` on the loaded
model), for each kind of file the loader takes."""

from __future__ import annotations

import pytest
import torch

from export.errors import ExportRequestError
from export.trt.stream import checkpoint_is_stream, safetensors_shapes
from export.video import is_video_model
from tests.parity import deterministic_state_dict, official_keys
from train.models import load_model

from .video_fixtures import vda_state_dict


def test_a_video_checkpoint_is_known_as_a_stream_before_its_export(tmp_path):
    from safetensors.torch import save_file

    vda = vda_state_dict()
    dav2 = {k: torch.from_numpy(v) for k, v in deterministic_state_dict(official_keys("vits")).items()}
    files = {  # name: (state dict, a stream)
        "video_depth_anything_vits.pth": (vda, True),
        "renamed.pth": ({f"module.{k}": v for k, v in vda.items()}, True),  # saved from a DDP-wrapped model
        "vda.safetensors": (vda, True),
        "depth_anything_v2_vits.pth": (dav2, False),
    }
    for name, (state, stream) in files.items():
        path = tmp_path / name
        if path.suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
            shapes = safetensors_shapes(path)  # its header only: no weights read for a yes or no
            assert all(t.is_meta and t.shape == state[k].shape for k, t in shapes.items()) and set(shapes) == set(state)
        else:
            torch.save(state, path)
        assert checkpoint_is_stream(path) is stream, name
        assert is_video_model(load_model(path)) is stream, name  # the export's decision, after loading


def test_what_is_no_stream_checkpoint(tmp_path):
    assert checkpoint_is_stream(None) is False  # no checkpoint given (an ONNX, or random weights)
    assert checkpoint_is_stream(tmp_path) is False  # a Depth Anything 3 snapshot folder
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    with pytest.raises(ExportRequestError, match=r"notes\.pth: a text file, not a checkpoint"):
        checkpoint_is_stream(text)
    with pytest.raises(ExportRequestError, match="no such checkpoint file"):
        checkpoint_is_stream(tmp_path / "missing.pth")
