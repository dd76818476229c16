"""The frame-rate target: the size walk, the choice and the CPU class as plain logic, and one small
real search with tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.artifacts import ModelSource
from benchmarks.cpu import why_not_worth_it
from benchmarks.runner import Settings
from benchmarks.target import (
    DENORMALS,
    F32_FLOATS,
    LEVERS,
    NO_FUSION,
    PREPROCESS_IN_MODEL,
    choose,
    kinds_to_follow,
    kinds_worth_timing,
    levers_for,
    next_side,
    side_grid,
    target_lines,
    why_not_met,
)
from runtime.io.samples import sample_images
from tests.test_bench_cpu import EPYC_AVX2, GRAVITON3, ORIN, SAPPHIRE_RAPIDS, ZEN4, arm, x86
from train.models import DepthAnythingV2, ModelSpec, save_model

GRID = side_grid(518)


def walk(fps_at_518: float, need: float, steps: int = 8) -> dict[int, float]:
    """The sides the walk measures for a kind whose rate falls with the square of the side."""
    measured: dict[int, float] = {}
    for _ in range(steps):
        side = next_side(measured, need, GRID)
        if side is None:
            break
        assert side not in measured and side in GRID
        measured[side] = fps_at_518 * (518 / side) ** 2
    return measured


def test_grid_is_multiples_of_14_up_to_the_largest_side():
    assert GRID[0] == 140 and GRID[-1] == 518 and all(s % 14 == 0 for s in GRID)
    assert side_grid(98) == [98]


def test_the_walk_finds_the_largest_side_that_meets_the_target_in_few_steps():
    measured = walk(4.0, 10.0)
    meeting = [s for s, fps in measured.items() if fps >= 10.0]
    # 518 * sqrt(0.4) = 327.6: 322 is the largest multiple of 14 that meets 10 frames/s.
    assert max(meeting) == 322 and len(measured) <= 3
    assert walk(12.0, 10.0) == {518: 12.0}  # the largest size meets it: nothing more to measure
    missed = walk(0.05, 10.0)  # nothing on the grid meets it: the walk ends at the smallest side
    assert min(missed) == 140 and all(fps < 10.0 for fps in missed.values()) and len(missed) <= 3


def test_the_walk_steps_up_when_a_guess_undershoots():
    # The first guess met the target easily: the next one lies between it and the failing side.
    measured = {518: 4.0, 322: 14.0}
    side = next_side(measured, 10.0, GRID)
    assert 322 < side < 518
    assert next_side({518: 4.0, 322: 10.5, 336: 9.0}, 10.0, GRID) is None  # neighbours: done


def point(student, backend, precision, side, fps, abs_rel):
    return {"student": student, "backend": backend, "precision": precision, "side": side, "size": [side, side]} | {
        "fps": fps,
        "abs_rel": abs_rel,
        "frames_in_flight": 1,
        "ops": 30e9,
    }


def test_choice_is_the_most_accurate_that_meets_then_the_fastest_whatever_its_label():
    points = [
        point("vits", "openvino", "int8", 322, 10.5, 0.051),
        point("vits", "onnxruntime", "fp32", 322, 11.0, 0.050),  # as accurate and faster than INT8: chosen
        point("vitt", "openvino", "int8", 518, 25.0, 0.090),
        point("vits", "onnxruntime", "fp32", 518, 4.0, 0.0),
    ]
    chosen, status = choose(points, 10.0, 0.1)
    assert status == "met" and (chosen["backend"], chosen["precision"], chosen["side"]) == ("onnxruntime", "fp32", 322)
    chosen, status = choose(points, 10.0, 0.01)  # only the reference itself is within the budget
    assert status == "not met" and chosen["side"] == 518 and chosen["student"] == "vits"
    chosen, status = choose(points, 100.0, 0.1)
    assert status == "not met" and chosen["student"] == "vitt"  # the closest within the budget
    text = why_not_met(chosen, 100.0, {"int8": {"ops_per_s": 1.5e12}, "fp32": {"ops_per_s": 4e11}}, 1)
    assert "30.0 G operations per frame" in text and "1500 G/s (int8)" in text and "50.0 frames/s" in text


def test_levers_are_searched_on_openvino_only_and_f32_floats_only_on_a_bf16_int8_row():
    names = {name for name, _, _ in LEVERS}
    kept, why = levers_for("openvino", "int8", "bf16")  # the INT8 row on a CPU with BF16 units
    assert {name for name, _, _ in kept} == names - {NO_FUSION} and set(why) == {NO_FUSION}
    assert dict((n, c) for n, c, _ in kept)[F32_FLOATS] == "fp32"  # f32 floats: the compiled precision
    kept, why = levers_for("openvino", "int8", None)  # no BF16 units: its floats already run in f32
    assert F32_FLOATS not in {n for n, _, _ in kept} and "bf16" in why[F32_FLOATS]
    kept, why = levers_for("openvino", "fp16/f32", "fp32")
    assert F32_FLOATS in why and len(kept) == 2
    for backend in ("onnxruntime", "torch"):
        kept, why = levers_for(backend, "fp32", None)
        assert kept == [] and set(why) == names and "OpenVINO option" in why[F32_FLOATS]


def test_a_lever_point_is_chosen_when_faster_at_the_same_accuracy_and_named_in_the_report():
    plain = point("vits", "openvino", "int8", 462, 11.0, 0.006)
    lever = point("vits", "openvino", "int8", 462, 11.8, 0.0062) | {"lever": "pre-processing in the model"}
    chosen, status = choose([plain, lever], 10.0, 0.1)
    assert status == "met" and chosen is lever
    target = {"fps": 10.0, "cameras": 1, "budget": 0.1, "reference": "vits", "status": status, "chosen": chosen}
    target |= {"points": [plain, lever], "levers": {NO_FUSION: "a diagnostic"}}
    text = "\n".join(target_lines({"target": target}))
    assert "int8, pre-processing in the model at 462x462" in text and f"lever {NO_FUSION}: a diagnostic" in text


def test_later_students_time_only_the_kinds_near_the_fastest_for_the_first():
    first = [
        point("vits", "openvino", "int8", 518, 8.19, 0.0004),
        point("vits", "openvino", "fp16/bf16", 518, 7.63, 0.0001),
        point("vits", "torch", "bf16", 518, 2.88, 0.0013),
        point("vits", "onnxruntime", "fp32", 518, 4.10, 0.0),  # exactly half: still followed
    ]
    kept, why = kinds_to_follow(first)
    assert kept == {("openvino", "int8"), ("openvino", "fp16/bf16"), ("onnxruntime", "fp32")}
    assert set(why) == {"torch bf16"} and "2.88 frames/s for vits at 518" in why["torch bf16"]
    assert "openvino int8's 8.19" in why["torch bf16"]
    assert kinds_to_follow([]) == (None, {})  # nothing measured: a later student times every kind


@pytest.mark.parametrize(
    "cpu,int8,bf16",
    [
        (x86(EPYC_AVX2), False, False),  # Zen 3: neither pays
        (x86(ZEN4), True, True),
        (x86(SAPPHIRE_RAPIDS, "Intel Xeon"), True, True),
        (arm(ORIN), True, False),  # dot product, no BF16
        (arm(GRAVITON3), True, True),
    ],
)
def test_int8_and_bf16_are_timed_only_where_the_cpu_has_their_units(cpu, int8, bf16):
    kinds = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp16/f32"), ("openvino", "fp16/bf16")]
    kinds += [("torch", "fp32"), ("torch", "bf16")]
    kept, skipped = kinds_worth_timing(kinds, cpu)
    assert (("onnxruntime", "int8") in kept) == int8 and (("openvino", "fp16/bf16") in kept) == bf16
    assert (("torch", "bf16") in kept) == bf16
    assert ("onnxruntime", "fp32") in kept and ("openvino", "fp16/f32") in kept and ("torch", "fp32") in kept
    if not int8:
        assert "dot-product" in skipped["onnxruntime int8"] and "dot-product" in why_not_worth_it(cpu, "int8")
    if not bf16:
        assert "emulated" in skipped["openvino fp16/bf16"] and "emulated" in skipped["torch bf16"]


def test_a_small_real_search_writes_its_section(tmp_path):
    """Two tiny models, searched for the impossible at 168x168 with alignment and points: every
    worthwhile kind timed at 168, the fastest walked down to the smallest side, status not met,
    and the reason in terms of the work per frame."""
    from benchmarks.cpu import detect
    from benchmarks.target_run import search

    spec = ModelSpec("tiny", 4, 64, 2, 32, (16, 32, 64, 64), (0, 1, 2, 3))
    small = ModelSpec("tiny", 4, 64, 2, 16, (8, 16, 32, 64), (0, 1, 2, 3))
    torch.manual_seed(0)
    big = save_model(DepthAnythingV2(spec).eval(), tmp_path / "big.safetensors")
    student = save_model(DepthAnythingV2(small).eval(), tmp_path / "student.safetensors")
    cpu = detect()
    settings = Settings(tmp_path / "work", 1, 2, 1, None, 4, 0.1, cpu)
    settings.throughput_frames = 4
    images = dict(list(sample_images().items())[:2])
    target = search(
        ModelSource(big, "big"), [ModelSource(student, "student")], (168, 168), settings, images, 1e6, 2, 0.5,
        True, {"fp32": {"ops_per_s": 1e11}}, steps=2, walked=1,
    )  # fmt: skip
    json.dumps(target)  # report.json takes it as it is
    assert target["status"] == "not met" and "G operations per frame" in target["why"]
    sides = {(p["student"], p["side"]) for p in target["points"]}
    assert {("tiny", 168), ("tiny student", 168), ("tiny", 140), ("tiny student", 140)} <= sides
    kinds = {(p["backend"], p["precision"]) for p in target["points"] if p["side"] == 168}
    assert ("onnxruntime", "fp32") in kinds and ("openvino", "fp16/f32") in kinds and ("torch", "fp32") in kinds
    assert (("onnxruntime", "int8") in kinds) == cpu.native("int8")
    assert (("torch", "bf16") in kinds) == cpu.native("bf16")
    # The levers: each measured on the closest configuration or said why not, never left out.
    assert set(target["levers"]) == {name for name, _, _ in LEVERS}
    lever_points = [p for p in target["points"] if p["lever"]]
    measured = {n for n, v in target["levers"].items() if v.startswith("measured")}
    assert {p["lever"] for p in lever_points} == measured
    walked, _ = choose([p for p in target["points"] if not p["lever"]], 1e6, 0.5)
    if walked["backend"] == "openvino":  # the levers refine what the walk would recommend
        assert measured >= {PREPROCESS_IN_MODEL, DENORMALS}
        assert all((p["student"], p["precision"], p["side"]) == (walked["student"], walked["precision"], walked["side"])
                   for p in lever_points)  # fmt: skip
    else:
        assert not measured and "OpenVINO option" in target["levers"][DENORMALS]
    reference = next(
        p for p in target["points"] if (p["student"], p["backend"], p["side"]) == ("tiny", "onnxruntime", 168)
    )
    assert reference["abs_rel"] < 1e-3  # the largest model against itself
    assert all(p["fps"] > 0 and p["ops"] > 0 for p in target["points"])
    assert "## Frame-rate target" in "\n".join(target_lines({"target": target}))
