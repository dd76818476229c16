"""Checkpoint formats load exactly; wrong or unsafe files fail with a clear message."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from train.models import CheckpointError, DepthAnythingV2, load_model, save_model


def official_to_hf(state: dict) -> dict:
    """The Hugging Face ``Depth-Anything-V2-*-hf`` layout, written from the transformers conversion table."""
    out = {}
    dim = state["pretrained.pos_embed"].shape[-1]
    simple = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.norm.weight": "backbone.layernorm.weight",
        "pretrained.norm.bias": "backbone.layernorm.bias",
        "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
        "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
        "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
        "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
        "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
        "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
    }
    for key, value in state.items():
        parts = key.split(".")
        if key in simple:
            out[simple[key]] = value
        elif key.startswith("pretrained.patch_embed.proj."):
            out[f"backbone.embeddings.patch_embeddings.projection.{parts[-1]}"] = value
        elif key.startswith("pretrained.blocks."):
            i, rest = parts[2], ".".join(parts[3:])
            prefix = f"backbone.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                for name, chunk in zip(("query", "key", "value"), value.split(dim), strict=True):
                    out[f"{prefix}attention.attention.{name}.{parts[-1]}"] = chunk
                continue
            rest = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}.get(rest, rest)
            rest = rest.replace("attn.proj.", "attention.output.dense.")
            out[prefix + rest] = value
        elif key.startswith("depth_head.projects."):
            out[f"neck.reassemble_stage.layers.{parts[2]}.projection.{parts[-1]}"] = value
        elif key.startswith("depth_head.resize_layers."):
            out[f"neck.reassemble_stage.layers.{parts[2]}.resize.{parts[-1]}"] = value
        elif key.startswith("depth_head.scratch.layer"):
            out[f"neck.convs.{int(parts[2][5]) - 1}.weight"] = value
        elif key.startswith("depth_head.scratch.refinenet"):
            j = 4 - int(parts[2][-1])
            rest = ".".join(parts[3:]).replace("out_conv.", "projection.")
            rest = rest.replace("resConfUnit", "residual_layer").replace(".conv", ".convolution")
            out[f"neck.fusion_stage.layers.{j}.{rest}"] = value
        else:
            raise AssertionError(f"unmapped key {key}")
    return out


def assert_same_weights(model, state):
    ours = model.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_official_pth_loads_and_infers_the_encoder(tmp_path, vits_state_dict):
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(vits_state_dict, path)
    model = load_model(path)
    assert model.encoder == "vits" and not model.training and model.max_depth is None
    assert_same_weights(model, vits_state_dict)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "ddp"])
def test_wrapped_and_ddp_prefixed_state_dicts_load(tmp_path, tiny_model, tiny_spec, wrap):
    state = tiny_model.state_dict()
    obj = {f"module.{k}": v for k, v in state.items()} if wrap == "ddp" else {wrap: state, "epoch": 3}
    torch.save(obj, tmp_path / "ckpt.pth")
    assert_same_weights(load_model(tmp_path / "ckpt.pth", encoder=tiny_spec), state)


def test_hugging_face_safetensors_load_to_the_same_model(tmp_path, vits_state_dict, vits_model):
    folder = tmp_path / "Depth-Anything-V2-Small-hf"
    folder.mkdir()
    save_file(official_to_hf(vits_state_dict), str(folder / "model.safetensors"))
    model = load_model(folder / "model.safetensors")
    assert_same_weights(model, vits_state_dict)
    x = torch.randn(1, 3, 56, 70)
    with torch.inference_mode():
        assert torch.equal(model(x), vits_model(x))


def test_hugging_face_metric_config_selects_the_metric_head(tmp_path, vits_state_dict):
    save_file(official_to_hf(vits_state_dict), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"depth_estimation_type": "metric", "max_depth": 20}')
    assert load_model(tmp_path / "model.safetensors").max_depth == 20.0


def test_save_then_load_round_trips_bit_exactly(tmp_path, tiny_spec):
    torch.manual_seed(1)
    model = DepthAnythingV2(tiny_spec, max_depth=80.0)
    path = save_model(model, tmp_path / "out" / "student.safetensors", metadata={"step": 12})
    loaded = load_model(path)
    assert loaded.spec == tiny_spec and loaded.max_depth == 80.0
    assert_same_weights(loaded, model.state_dict())
    assert [p.name for p in path.parent.iterdir()] == ["student.safetensors"]  # no temp files left


def test_save_is_atomic_when_writing_fails(tmp_path, tiny_model, monkeypatch):
    import safetensors.torch

    def fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_wrong_encoder_lists_the_mismatched_shapes(tmp_path, vits_state_dict):
    torch.save(vits_state_dict, tmp_path / "vits.pth")
    with pytest.raises(CheckpointError, match=r"does not fit DepthAnythingV2\('vitb'\).*wrong shapes: pretrained\."):
        load_model(tmp_path / "vits.pth", encoder="vitb")


def test_partial_checkpoint_lists_missing_and_unexpected_keys(tmp_path, vits_state_dict):
    state = dict(vits_state_dict)
    del state["depth_head.scratch.output_conv1.weight"]
    state["depth_head.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "partial.pth")
    message = str(info.value)
    assert "missing keys: depth_head.scratch.output_conv1.weight" in message
    assert "unexpected keys: depth_head.extra.weight" in message


def test_checkpoint_of_another_model_is_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a Depth Anything V2 checkpoint"):
        load_model(tmp_path / "resnet.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"pretrained.pos_embed": _Exploit(str(marker))}, f)
    torch.save({"state_dict": _Exploit(str(marker))}, tmp_path / "evil2.pth", _use_new_zipfile_serialization=True)
    for candidate in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="could run code"):
            load_model(candidate)
    assert not marker.exists()


@pytest.mark.parametrize("content,suffix", [(b"\xff\xd8 not a checkpoint", ".pth"), (b"garbage", ".safetensors")])
def test_non_checkpoint_files_are_clear_errors(tmp_path, content, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_model(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "nope.pth")


def test_safetensors_whose_header_length_starts_like_a_pickle_still_load(tmp_path, tiny_model):
    """The first byte of a safetensors file is its header length's low byte: 0x80 (pickle's
    first byte) for one header in 256, as happened on a GPU machine with safetensors 0.8."""
    import struct

    from train.models.checkpoint import read_checkpoint, sniff

    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    for pad in range(256):
        path = tmp_path / f"model{pad}.safetensors"
        save_file(state, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    assert sniff(path) == "safetensors"
    loaded, metadata = read_checkpoint(path)
    assert metadata["pad"] == "x" * pad and all(torch.equal(loaded[k], v) for k, v in state.items())
