"""The report's self-checks, fed measurements that cannot be true or were taken on a busy machine."""

from __future__ import annotations

import pytest

from benchmarks.checks import BUSY_LIMIT, assess
from benchmarks.machine import Snapshot, busy_shares, machine_state, parse_proc_stat
from benchmarks.ranking import rank
from benchmarks.report import markdown

QUIET = {"measured": True, "others": 0.01, "steal": 0.0, "load_before": (0.1, 0, 0), "load_after": (1.9, 0, 0)}


def latency(median: float, p90: float | None = None) -> dict:
    p90 = median * 1.05 if p90 is None else p90
    return {
        "median": median,
        "p90": p90,
        "p99": p90,
        "mean": median,
        "min": median,
        "cv": 0.02,
        "runs": 20,
        "fps": 1 / median,
    }


def row(backend="openvino", precision="int8", model=0.25, e2e=0.26, share=0.6, computes_in="int8", **extra) -> dict:
    return {
        "backend": backend,
        "variant": None,
        "precision": precision,
        "size": [518, 518],
        "status": "ok",
        "model_call": latency(model),
        "end_to_end": latency(e2e),
        "round_medians": {"model": [model] * 5, "e2e": [e2e] * 5},
        "share_of_ceiling": share,
        "computes_in": computes_in,
        "vs_fp32": {"abs_rel": 0.001, "delta1": 1.0},
        **extra,
    }


def ceilings(fp32=190e9, bf16=400e9, int8=800e9, spread=1.05) -> dict:
    made = {"fp32": fp32, "bf16": bf16, "int8": int8}
    return {k: {"ops_per_s": v, "spread": spread, "library": "x", "shape": [1, 2, 2]} for k, v in made.items() if v}


def test_a_sound_run_passes():
    rows = [row("torch", "fp32", 0.85, 0.82 * 1.02, 0.7, "fp32"), row()]
    result = assess(rows, ceilings(), {"main rounds": QUIET}, native_bf16=True)
    assert result["reliable"] and result["problems"] == [] and all(r["status"] == "ok" for r in rows)
    assert result["max_spread"] == pytest.approx(1.05) and result["max_ceiling_spread"] == pytest.approx(1.05)


def test_a_row_above_its_ceiling_is_refused_with_the_reason():
    bf16 = row("openvino", "fp16/bf16", share=160.46, computes_in="bf16")
    result = assess([bf16], ceilings(), {"main rounds": QUIET}, native_bf16=True)
    assert not result["reliable"] and bf16["status"] == "refused"
    assert "16046% of this CPU's BF16 matrix-multiply ceiling" in bf16["error"]
    assert bf16["model_call"]["median"] == 0.25  # numbers kept
    assert result["problems"] == [f"impossible result for openvino fp16/bf16 518x518: {bf16['error']}"]


def test_a_model_call_slower_than_its_end_to_end_call_is_refused():
    torch = row("torch", "fp32", model=3.926, e2e=1.102, share=0.05, computes_in="fp32")
    result = assess([torch], ceilings(), {"main rounds": QUIET}, native_bf16=True)
    assert torch["status"] == "refused" and not result["reliable"]
    assert "model call (3926 ms) was slower than the end-to-end call that contains it (1102 ms)" in torch["error"]
    noise = row("torch", "fp32", model=0.505, e2e=0.500, share=0.5, computes_in="fp32")  # within 10 %: timing noise
    tiny = row("torch", "fp32", model=0.019, e2e=0.010, share=0.01, computes_in="fp32")  # 9 ms: scheduler jitter
    overlap = row("torch", "fp32", model=0.286, e2e=0.258, share=0.3, computes_in="fp32")
    overlap["end_to_end"] = latency(0.258, p90=0.315)  # 11 % above, but inside the e2e spread (H200 host)
    assert assess([noise, tiny, overlap], ceilings(), {"main rounds": QUIET}, native_bf16=True)["reliable"]


def test_bf16_ceiling_below_fp32_is_impossible_only_with_bf16_units():
    low = ceilings(fp32=185e9, bf16=1e9)
    result = assess([row()], low, {"main rounds": QUIET}, native_bf16=True)
    assert not result["reliable"]
    assert result["problems"] == [
        "the BF16 ceiling (1 G/s) came out below the FP32 one (185 G/s) on a CPU with BF16 units, which cannot be"
    ]
    assert assess([row()], low, {"main rounds": QUIET}, native_bf16=False)["reliable"]  # emulated BF16 is slow


def test_a_burst_in_one_round_is_named():
    burst = {**QUIET, "others": 0.12, "rounds_others": [0.01, 0.02, 0.55, 0.01, 0.01]}
    problems = assess([row()], ceilings(), {"main rounds": burst}, native_bf16=True)["problems"]
    assert problems == [
        "the machine was busy in round 3 of the main rounds: other programs used 55% of its CPU then "
        "(more than 50% in a round)"
    ]
    calm = {**QUIET, "rounds_others": [0.01, 0.3, 0.01]}
    assert assess([row()], ceilings(), {"main rounds": calm}, native_bf16=True)["reliable"]


def test_a_busy_or_stolen_machine_is_named():
    busy = {**QUIET, "others": 0.48}
    problems = assess([row()], ceilings(), {"main rounds": busy}, native_bf16=True)["problems"]
    assert problems == [
        "the machine was busy: other programs used 48% of its CPU while the main rounds ran (more than 20%)"
    ]
    stolen = {**QUIET, "steal": 0.15}
    problems = assess([row()], ceilings(), {"size sweep rounds": stolen}, native_bf16=True)["problems"]
    assert problems[0].startswith("the hypervisor gave 15% of this machine's CPU time to other machines (steal)")
    assert "size sweep rounds" in problems[0]


def test_unsteady_rows_and_ceilings_are_named_but_scheduler_jitter_is_not():
    unsteady = row()
    unsteady["end_to_end"] = latency(0.26, p90=0.52)
    jitter = row("onnxruntime", model=0.001, e2e=0.011)
    jitter["end_to_end"] = latency(0.011, p90=0.023)  # 2x, but 12 ms: a quiet machine's hiccup
    result = assess([unsteady, jitter], ceilings(spread=2.4), {"main rounds": QUIET}, native_bf16=True)
    assert result["problems"] == [
        "the FP32 ceiling's best round was 2.40x its median round (more than 1.5x): the machine's capacity changed "
        "during the run",
        "the BF16 ceiling's best round was 2.40x its median round (more than 1.5x): the machine's capacity changed "
        "during the run",
        "the INT8 ceiling's best round was 2.40x its median round (more than 1.5x): the machine's capacity changed "
        "during the run",
        "openvino int8 518x518 was unsteady: its p90 was 2.0x its p50 (more than 1.5x)",
    ]


@pytest.mark.parametrize(
    "state,spread,lead",
    [
        ({**QUIET, "others": 0.6}, None, "the machine was busy: results are not comparable"),
        (QUIET, 0.52, "timings were unsteady (something else ran at times): results are not comparable"),
    ],
)
def test_a_failed_check_puts_a_warning_on_top_and_names_no_winner(state, spread, lead):
    rows = [row("torch", "fp32", 0.85, 0.9, 0.7, "fp32"), row()]
    if spread:
        rows[1]["end_to_end"] = latency(0.26, p90=spread)
    reliability = assess(rows, ceilings(), {"main rounds": state}, native_bf16=True)
    ranked, best = rank(rows, 0.02, reliability["reliable"])
    assert best is None
    data = {
        "rows": ranked,
        "fastest_within_budget": best,
        "reliability": reliability,
        "machine": {"cpu": "x", "usable_cores": 2, "gpu": None, "python": "3", "libraries": {}},
        "settings": {"rounds": 5, "warmup": 5, "calls_per_round": 4},
        "phases": {"rows": 10.0},
        "wall_seconds": 12.0,
        "model": "m",
        "images": "i",
        "calibration": "c",
        "accuracy_budget": 0.02,
    }
    text = markdown(data)
    warning = f"> **Results not reliable: {lead}.**"
    assert text.splitlines()[2].startswith(warning)
    assert text.splitlines()[4] == f"> - {reliability['problems'][0]}"
    assert "Fastest within" not in text and "**Reliability**: FAILED (1 problems" in text
    assert "| openvino | int8 |" in text  # the numbers stay


def test_cpu_shares_from_proc_counters():
    text = "cpu  1000 0 200 5000 10 0 5 40 0 0\ncpu0 500 0 100 2500 5 0 2 20 0 0\nintr 1 2\n"
    ticks = parse_proc_stat(text)
    assert ticks == dict(user=1000, nice=0, system=200, idle=5000, iowait=10, irq=0, softirq=5, steal=40)
    before = Snapshot(ticks, own=100, load=(0.5, 0, 0))
    later = {**ticks, "user": 1300, "system": 300, "idle": 5500, "steal": 140}  # 1000 ticks pass
    after = Snapshot(later, own=250, load=(2.0, 0, 0))
    shares = busy_shares(before, after)
    # 400 busy ticks, 150 of them ours: 250 others; 100 stolen
    assert shares == {"others": pytest.approx(0.25), "steal": pytest.approx(0.1), "own": pytest.approx(0.15)}
    middle = Snapshot({**ticks, "user": 1100, "system": 250, "idle": 5300, "steal": 90}, own=240, load=(1, 0, 0))
    state = machine_state([before, middle, after])
    assert state["measured"] and state["load_before"] == (0.5, 0, 0) and state["load_after"] == (2.0, 0, 0)
    assert state["others"] == pytest.approx(0.25)
    # round 1: 150 busy ticks of 500, 140 ours; round 2: 250 of 500, 10 ours
    assert state["rounds_others"] == [pytest.approx(0.02), pytest.approx(0.48)]
    assert state["rounds_steal"] == [pytest.approx(0.1), pytest.approx(0.1)]
    assert machine_state([None, after]) == {"measured": False} == machine_state([after])
    assert BUSY_LIMIT < 0.25
