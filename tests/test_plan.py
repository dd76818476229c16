"""``python -m train.plan``: work counted on the real models, turned into hours and bytes."""

from __future__ import annotations

import pytest

from train.models import get_spec
from train.plan import BATCH_STUDENT, LABEL_SIZE, REAL_IMAGES, STEPS_STUDENT, main, work_per_image


def encoder_blocks_forward(encoder: str, height: int, width: int) -> float:
    """FLOPs of the transformer blocks' forward pass, by hand: per block, the qkv, projection and
    MLP matrix products (2 x tokens x 12 D^2) and the two attention products (4 x tokens^2 x D)."""
    spec = get_spec(encoder)
    tokens = (height // 14) * (width // 14) + 1
    return spec.depth * (24 * tokens * spec.embed_dim**2 + 4 * tokens**2 * spec.embed_dim)


def test_work_is_counted_on_the_model_and_checkpointing_recomputes_the_blocks():
    forward = work_per_image("vits", (518, 518), training=False)
    training = work_per_image("vits", (518, 518), training=True)
    recomputing = work_per_image("vits", (518, 518), training=True, checkpointing=True)
    assert 2.9 < training / forward < 3.1  # backward is about twice the forward
    assert recomputing - training == pytest.approx(encoder_blocks_forward("vits", 518, 518), rel=1e-9)
    assert forward > encoder_blocks_forward("vits", 518, 518)  # plus the patch embedding and the DPT head
    assert LABEL_SIZE == (518, 784)  # SA-1B's 1500x2250 photos at the network


def test_plan_prints_every_stage_and_label_format(capsys):
    assert main(["--teacher", "vitb", "--student", "vits", "--utilisation", "0.5", "--peak-tflops", "100"]) == 0
    out = capsys.readouterr().out
    student = next(line for line in out.splitlines() if line.startswith("| 3 student | vits"))
    work = work_per_image("vits", (518, 518), training=True)
    expected_hours = STEPS_STUDENT * BATCH_STUDENT * work / 50e12 / 3600
    assert student.split("|")[-2].strip() == f"{expected_hours:,.0f}"
    assert "| 2 pseudo-labels | vitb | 62.00M | 518x784 |" in out
    for fmt in ("float16", "float16z", "png16"):
        assert f"| {fmt} |" in out
    float16 = next(line for line in out.splitlines() if line.startswith("| float16 |"))
    assert float(float16.split("|")[-2]) == pytest.approx(2.0 * 518 * 784 * REAL_IMAGES / 1e12, rel=3e-3)
