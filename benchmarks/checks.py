"""Self-checks that can fail: whether a run's numbers can be compared, said in plain words.

A benchmark on a shared machine (a robot's computer runs the rest of its stack) can produce a
table that looks fine and is wrong. These checks measure the conditions of the run and refuse
results that cannot be true; a report whose checks fail keeps its numbers, says why at the top,
and names no winner (``--strict`` turns that into an error exit).
"""

from __future__ import annotations

from .cpu import FORMAT_NAMES
from .runner import STATUS_OK, STATUS_REFUSED

# Other programs may take this share of the machine's CPU time while rows are timed.
BUSY_LIMIT = 0.20
# ... and this share in any one round: a burst that slows the rows timed in that round only.
BURST_LIMIT = 0.50
# The hypervisor may give this share of this virtual machine's CPU time to other machines.
STEAL_LIMIT = 0.10
# A row is unsteady when its p90 exceeds its p50 by this factor, and by more than the jitter
# floor: a quiet machine's scheduler and memory management add up to about 15 ms to a single
# call now and then (measured on a quiet 2-core VM with calls of 1-10 ms). The floor only matters
# for tiny models; for a real one (100 ms and more) 1.5x is already more than the floor.
SPREAD_LIMIT = 1.5
JITTER_FLOOR_S = 0.025
# A format's best round may exceed its median round by this factor within one run. On this
# project's 2-core VM the matrix units' throughput dips with the host's load now and then, in a
# way no counter inside the VM shows: quiet runs had single rounds at half speed (which the
# median ignores) and best/median up to 1.3x; a busy machine is caught by the CPU shares above.
CEILING_SPREAD_LIMIT = 1.5
# A row may reach this multiple of its format's ceiling before it is refused: the ceiling is one
# matrix shape measured with one library, and another library's kernels can beat it a little.
CEILING_TOLERANCE = 1.2
# The model call may exceed the end-to-end call containing it by this factor, by less than the
# jitter floor, or by less than the end-to-end call's own p90 (timing noise: a --quick run has
# five pairs per row, and on a 16-core H200 host one CPU row's model median came out 11 % above
# its e2e median while under its e2e p90). Together with the spread check (p90/p50 <= 1.5) this
# lets a model median up to 1.5x its e2e median pass only where the e2e calls spread that wide.
MODEL_E2E_TOLERANCE = 1.1


def _name(row: dict) -> str:
    variant = f" ({row['variant']})" if row.get("variant") else ""
    return f"{row['backend']}{variant} {row['precision']} {row['size'][0]}x{row['size'][1]}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.2f} ms"


def refuse_impossible(rows: list[dict]) -> list[str]:
    """Mark rows whose numbers cannot be true as refused (numbers kept) and say why."""
    problems = []
    for row in rows:
        model, e2e = row.get("model_call"), row.get("end_to_end")
        if not model or not e2e:
            continue
        reasons = []
        share = row.get("share_of_ceiling")
        if share is not None and share > CEILING_TOLERANCE:
            fmt = FORMAT_NAMES.get(row.get("computes_in", ""), row.get("computes_in", "?"))
            reasons.append(
                f"its model call ran at {share:.0%} of this CPU's {fmt} matrix-multiply ceiling "
                f"(above {CEILING_TOLERANCE:.0%} is impossible)"
            )
        excess = model["median"] - e2e["median"]
        if (
            model["median"] > e2e["median"] * MODEL_E2E_TOLERANCE
            and excess > JITTER_FLOOR_S
            and model["median"] > e2e["p90"]
        ):
            reasons.append(
                f"its model call ({_ms(model['median'])}) was slower than the end-to-end call that "
                f"contains it ({_ms(e2e['median'])})"
            )
        if reasons:
            row["status"], row["error"] = STATUS_REFUSED, "; ".join(reasons)
            problems.append(f"impossible result for {_name(row)}: {row['error']}")
    return problems


def ceiling_problems(ceilings: dict[str, dict], native_bf16: bool) -> list[str]:
    problems = [
        f"the {FORMAT_NAMES.get(fmt, fmt)} ceiling's best round was {c['spread']:.2f}x its median round "
        f"(more than {CEILING_SPREAD_LIMIT:.1f}x): the machine's capacity changed during the run"
        for fmt, c in ceilings.items()
        if c.get("spread", 1.0) > CEILING_SPREAD_LIMIT
    ]
    if native_bf16 and "bf16" in ceilings and "fp32" in ceilings:
        bf16, fp32 = ceilings["bf16"]["ops_per_s"], ceilings["fp32"]["ops_per_s"]
        if bf16 < fp32:
            problems.append(
                f"the BF16 ceiling ({bf16 / 1e9:.0f} G/s) came out below the FP32 one ({fp32 / 1e9:.0f} G/s) "
                "on a CPU with BF16 units, which cannot be"
            )
    return problems


def spread(row: dict) -> float:
    """The larger p90/p50 of the row's model and end-to-end calls, ignoring scheduler jitter."""
    ratios = [1.0]
    for stats in (row.get("model_call"), row.get("end_to_end")):
        if stats and stats["median"] > 0 and stats["p90"] - stats["median"] > JITTER_FLOOR_S:
            ratios.append(stats["p90"] / stats["median"])
    return max(ratios)


def assess(rows: list[dict], ceilings: dict[str, dict], states: dict[str, dict], native_bf16: bool) -> dict:
    """Every check on a run: the rows (after ``add_throughput``), the ceilings, and the machine's
    state during each timed phase (``states``: phase name -> ``machine.machine_state``).
    Refuses impossible rows in place. ``reliable`` is False when any check failed."""
    problems = []
    for phase, state in states.items():
        if not state.get("measured"):
            continue
        burst = max(state.get("rounds_others") or [0.0])
        if state["others"] > BUSY_LIMIT:
            problems.append(
                f"the machine was busy: other programs used {state['others']:.0%} of its CPU while the {phase} "
                f"ran (more than {BUSY_LIMIT:.0%})"
            )
        elif burst > BURST_LIMIT:
            problems.append(
                f"the machine was busy in round {state['rounds_others'].index(burst) + 1} of the {phase}: other "
                f"programs used {burst:.0%} of its CPU then (more than {BURST_LIMIT:.0%} in a round)"
            )
        if state["steal"] > STEAL_LIMIT:
            problems.append(
                f"the hypervisor gave {state['steal']:.0%} of this machine's CPU time to other machines "
                f"(steal) while the {phase} ran (more than {STEAL_LIMIT:.0%})"
            )
    problems += ceiling_problems(ceilings, native_bf16)
    timed = [r for r in rows if r.get("end_to_end")]
    for row in timed:
        if spread(row) > SPREAD_LIMIT:
            problems.append(
                f"{_name(row)} was unsteady: its p90 was {spread(row):.1f}x its p50 (more than {SPREAD_LIMIT}x)"
            )
    problems += refuse_impossible(rows)
    return {
        "reliable": not problems,
        "problems": problems,
        "machine_state": states,
        "max_spread": max((spread(r) for r in timed), default=None),
        "max_cv": max((max(r["model_call"]["cv"], r["end_to_end"]["cv"]) for r in timed), default=None),
        "max_ceiling_spread": max((c.get("spread", 1.0) for c in ceilings.values()), default=None),
        "ok_rows": sum(r["status"] == STATUS_OK for r in rows),
        "limits": {
            "others": BUSY_LIMIT,
            "others_in_a_round": BURST_LIMIT,
            "steal": STEAL_LIMIT,
            "p90_over_p50": SPREAD_LIMIT,
            "ceiling_spread": CEILING_SPREAD_LIMIT,
            "share_of_ceiling": CEILING_TOLERANCE,
            "model_over_e2e": MODEL_E2E_TOLERANCE,
        },
    }
