"""Depth losses: hand-computed values and the properties training relies on."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import DistillationLoss, gradient_matching_loss, silog_loss, ssi_loss


def test_silog_matches_the_formula_on_random_inputs():
    torch.manual_seed(0)
    pred, target = torch.rand(3, 8, 9) + 0.1, torch.rand(3, 8, 9) + 0.1
    expected = []
    for p, t in zip(pred, target, strict=True):
        d = torch.log(p) - torch.log(t)
        expected.append(torch.sqrt((d**2).mean() - 0.5 * d.mean() ** 2))
    assert silog_loss(pred, target).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_silog_by_hand_and_with_a_mask():
    pred = torch.tensor([[[math.e, 1.0]]])
    target = torch.ones(1, 1, 2)
    # d = [1, 0]: mean(d^2) = 0.5, mean(d)^2 = 0.25 -> sqrt(0.5 - 0.5 * 0.25) = sqrt(0.375)
    assert silog_loss(pred, target).item() == pytest.approx(math.sqrt(0.375), rel=1e-5)
    mask = torch.tensor([[[False, True]]])
    assert silog_loss(pred, target, mask).item() == pytest.approx(math.sqrt(1e-6), rel=1e-3)  # d = 0 -> floor


def test_ssi_by_hand():
    # target [0, 1, 2, 3, 10]: median 2, MAD mean(|.-2|) = (2+1+0+1+8)/5 = 2.4
    target = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 10.0]]])
    pred = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0]]])  # median 2, MAD 1.2
    p = (pred - 2) / 1.2
    t = (target - 2) / 2.4
    residual = (p - t).abs().flatten()
    assert ssi_loss(pred, target, trim=0.0).item() == pytest.approx(residual.mean().item(), rel=1e-6)
    # trimming 20% of 5 pixels drops exactly the largest residual
    expected = torch.sort(residual).values[:4].mean()
    assert ssi_loss(pred, target, trim=0.2).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ssi_is_invariant_to_positive_scale_and_shift_of_the_prediction():
    torch.manual_seed(1)
    pred, target = torch.rand(2, 16, 16), torch.rand(2, 16, 16)
    base = ssi_loss(pred, target)
    assert ssi_loss(3.7 * pred + 11.0, target).item() == pytest.approx(base.item(), rel=1e-4)
    assert ssi_loss(pred, target).item() > 0.1
    assert ssi_loss(target * 2 + 1, target).item() == pytest.approx(0.0, abs=1e-5)


def test_trimming_ignores_exactly_the_worst_ten_percent():
    target = torch.linspace(0, 1, 100)

    def swapped(pairs: int) -> torch.Tensor:
        # Swapping values keeps the median and MAD, so exactly 2 * pairs pixels are wrong.
        pred = target.clone()
        for k in range(pairs):
            i, j = k, 99 - k
            pred[i], pred[j] = target[j], target[i]
        return pred.reshape(1, 10, 10)

    t = target.reshape(1, 10, 10)
    assert ssi_loss(swapped(5), t, trim=0.1).item() == pytest.approx(0.0, abs=1e-6)  # 10 % wrong: all trimmed
    assert ssi_loss(swapped(5), t, trim=0.0).item() > 0.1
    assert ssi_loss(swapped(6), t, trim=0.1).item() > 0.01  # 12 % wrong: two pixels remain


def test_gradient_matching_zero_for_identical_and_positive_for_shifted_edges():
    target = torch.zeros(1, 32, 32)
    target[:, :, 16:] = 1.0
    assert gradient_matching_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)
    assert gradient_matching_loss(5 * target + 2, target).item() == pytest.approx(0.0, abs=1e-6)
    shifted = torch.zeros(1, 32, 32)
    shifted[:, :, 20:] = 1.0
    assert gradient_matching_loss(shifted, target).item() > 0.1


def test_masks_are_respected_everywhere():
    torch.manual_seed(2)
    target = torch.rand(1, 16, 16)
    pred = target.clone()
    pred[:, :, :4] = torch.rand(1, 16, 4) * 50  # garbage only where the mask is off
    mask = torch.ones(1, 16, 16, dtype=torch.bool)
    mask[:, :, :5] = False
    for loss in (ssi_loss, gradient_matching_loss, DistillationLoss()):
        assert loss(pred, target, mask).item() == pytest.approx(0.0, abs=1e-5)
        assert loss(pred, target).item() > 1e-3
    assert silog_loss(pred + 1, target + 1, mask).item() == pytest.approx(1e-3, abs=1e-3)


@pytest.mark.parametrize("loss", [silog_loss, ssi_loss, gradient_matching_loss, DistillationLoss()])
def test_no_nan_on_constant_or_empty_inputs(loss):
    constant = torch.ones(2, 8, 8, requires_grad=True)
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    for value in (loss(constant, torch.ones(2, 8, 8)), loss(constant, torch.rand(2, 8, 8) + 0.1, empty)):
        assert torch.isfinite(value) and value.ndim == 0
        value.backward()
        assert torch.isfinite(constant.grad).all()


def test_shapes_with_channel_dimension_and_errors():
    pred, target = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    assert ssi_loss(pred, target).shape == ()
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        ssi_loss(torch.rand(2, 8, 8), torch.rand(2, 8, 9))


def test_distillation_loss_combines_with_alpha():
    torch.manual_seed(3)
    pred, target = torch.rand(2, 16, 16), torch.rand(2, 16, 16)
    loss = DistillationLoss(alpha=2.0)
    value = loss(pred, target)
    assert value.item() == pytest.approx(loss.last["ssi"] + 2.0 * loss.last["gm"], rel=1e-5)
    assert loss.last["gm"] == pytest.approx(gradient_matching_loss(pred, target).item(), rel=1e-5)


def test_feature_alignment_pulls_only_far_tokens():
    from tests.conftest import make_tiny_spec
    from train.losses import FeatureAlignedLoss
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    student, frozen = DepthAnythingV2(make_tiny_spec()), DepthAnythingV2(make_tiny_spec())
    base = DistillationLoss()
    x, target = torch.randn(2, 3, 56, 56), torch.rand(2, 56, 56)
    aligned = FeatureAlignedLoss(base, student.pretrained, frozen.pretrained, weight=1.0)
    value = aligned(student(x), target)
    assert value.item() == pytest.approx(base.last["ssi"] + 2 * base.last["gm"] + aligned.last["align"], rel=1e-5)
    assert aligned.last["align"] > 0.1  # two random encoders disagree
    value.backward()
    assert student.pretrained.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.parameters())
    same = FeatureAlignedLoss(DistillationLoss(), student.pretrained, student.pretrained)
    same(student(x), target)
    assert same.last["align"] == 0.0  # identical features are within the margin
