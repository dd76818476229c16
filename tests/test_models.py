"""The model reproduces the official Depth Anything V2 checkpoints: names, shapes, numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import official_state_dict
from tests.parity import deterministic_input, official_keys, reference_output
from train.models import VARIANTS, DepthAnythingV2, build_student, build_teacher


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl", "vitg"])
def test_state_dict_names_and_shapes_equal_the_official(encoder):
    with torch.device("meta"):  # ViT-G has 1.3 B parameters: check names and shapes without memory
        model = DepthAnythingV2(encoder)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert sorted(ours) == sorted(map(tuple, official_keys(encoder)))


@pytest.mark.parametrize("encoder", ["vits", "vitb"])
def test_deterministic_official_weights_load_strictly_and_run(encoder):
    model = DepthAnythingV2(encoder)
    assert model.load_state_dict(official_state_dict(encoder), strict=True)
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, 70, 98))
    assert out.shape == (1, 70, 98)


@pytest.mark.parametrize("height,width", [(518, 518), (364, 644)])
def test_parity_with_the_official_implementation(vits_model, height, width):
    reference = reference_output(height, width)
    x = torch.from_numpy(deterministic_input(height, width))
    with torch.inference_mode():
        ours = vits_model(x).numpy()
    assert ours.shape == reference.shape == (1, height, width)
    error = np.abs(ours - reference).max() / reference.std()
    assert error <= 1e-4, f"max|ours - ref| / std(ref) = {error:.2e}"


def test_position_embedding_offset_matters(vits_model, monkeypatch):
    """Guards the +0.1: a plain size-based resize misses the reference by percents."""
    from train.models import backbone

    reference = reference_output(364, 644)
    x = torch.from_numpy(deterministic_input(364, 644))
    monkeypatch.setattr(backbone, "POS_INTERP_OFFSET", 0.0)
    with torch.inference_mode():
        wrong = vits_model(x).numpy()
    assert np.abs(wrong - reference).max() / reference.std() > 1e-2


def test_metric_head_is_bounded_by_max_depth(tiny_spec):
    torch.manual_seed(0)
    model = DepthAnythingV2(tiny_spec, max_depth=20.0).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 56, 84))
    assert out.shape == (2, 56, 84)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 20.0
    assert isinstance(model.depth_head.scratch.output_conv2[3], torch.nn.Sigmoid)


def test_relative_output_is_non_negative(tiny_model):
    with torch.inference_mode():
        out = tiny_model(torch.randn(1, 3, 42, 56) * 3)
    assert float(out.min()) >= 0.0


@pytest.mark.parametrize("shape,match", [((1, 3, 50, 56), "multiple of 14"), ((1, 4, 56, 56), r"\(B, 3, H, W\)")])
def test_bad_input_shape_is_a_clear_error(tiny_model, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(torch.zeros(shape))


def test_unknown_encoder_lists_the_known_ones():
    with pytest.raises(ValueError, match="vits, vitb, vitl, vitg"):
        DepthAnythingV2("vitx")


def test_variant_table_matches_the_design():
    assert {n: (s.depth, s.embed_dim, s.num_heads, s.features, s.layers) for n, s in VARIANTS.items()} == {
        "vitt": (12, 192, 3, 32, (2, 5, 8, 11)),
        "vits": (12, 384, 6, 64, (2, 5, 8, 11)),
        "vitb": (12, 768, 12, 128, (2, 5, 8, 11)),
        "vitl": (24, 1024, 16, 256, (4, 11, 17, 23)),
        "vitg": (40, 1536, 24, 384, (9, 19, 29, 39)),
    }
    assert VARIANTS["vitg"].mlp_hidden == 4096 and VARIANTS["vits"].mlp_hidden == 1536


def test_teacher_is_frozen_and_student_trains(tiny_spec, tmp_path):
    from train.models import save_model

    torch.manual_seed(0)
    path = save_model(DepthAnythingV2(tiny_spec), tmp_path / "teacher.safetensors")
    teacher = build_teacher(path)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = build_student(tiny_spec)
    assert student.training and all(p.requires_grad for p in student.parameters())
    with pytest.raises(ValueError, match="teacher"):
        build_student("vitg")


@pytest.mark.parametrize("n_out", [26, 37, 46, 49, 74])
def test_bicubic_matrix_equals_interpolate_with_a_scale_factor(n_out):
    import torch.nn.functional as F

    from train.models.backbone import POS_INTERP_OFFSET, bicubic_matrix

    grid = torch.randn(1, 3, 37, 37)
    scale = (n_out + POS_INTERP_OFFSET) / 37
    expected = F.interpolate(grid, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    matrix = bicubic_matrix(n_out, 37, torch.tensor(1 / scale))
    ours = torch.einsum("ia,jb,nkab->nkij", matrix, matrix, grid)
    assert ours.shape == expected.shape == (1, 3, n_out, n_out)
    assert torch.allclose(ours, expected, atol=1e-5)


FACTORIES = {"arange", "ones", "zeros", "empty", "full", "eye", "tensor", "as_tensor", "linspace", "rand", "randn"}


def test_tensors_made_while_running_are_made_on_the_models_device():
    """A tensor created in forward without ``device=`` lands on the CPU and breaks every CUDA run
    (found on an H200: the position-embedding resize). A GPU-less machine cannot run the model on
    CUDA, so the rule is checked in the source: outside ``__init__``, factories name the device."""
    import ast
    from pathlib import Path

    offenders = []
    for path in sorted((Path(__file__).resolve().parents[1] / "train" / "models").glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef) or function.name == "__init__":
                continue
            for call in ast.walk(function):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr in FACTORIES
                    and isinstance(call.func.value, ast.Name)
                    and call.func.value.id == "torch"
                    and not any(k.arg == "device" for k in call.keywords)
                ):
                    offenders.append(f"{path.name}:{call.lineno} torch.{call.func.attr} in {function.name}")
    assert not offenders, "tensors made without device=: " + ", ".join(offenders)
