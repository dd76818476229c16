"""The frame-rate target's decisions, as plain functions: which kinds of row are worth timing on
this CPU, which input size to measure next, which measured configuration to recommend, and why
nothing met the target when nothing did. ``benchmarks.target_run`` measures; this decides.

The walk over input sizes is coarse to fine: each kind is measured at the largest size first,
then at the size its measured rate says should just meet the target (the model's work grows
with the square of the side), then halfway between the largest size known to meet it and the
smallest known to miss it, until they are neighbours on the grid of multiples of 14 or the
steps run out. A handful of measurements per kind, not a grid. Then the levers of
``benchmarks.levers`` that a deployment can take (``LEVERS``, less ``NOT_SEARCHED``) are measured
once each on the configuration the walk would recommend: a lever changes the speed, hardly the
accuracy, so it can only make that choice faster or let it meet the target.
"""

from __future__ import annotations

import math
from pathlib import Path

from runtime.io.files import atomic_write

from .cpu import CpuFeatures, why_not_worth_it
from .roofline import compute_format

SIDE_STEP = 14
MIN_SIDE = 140  # 10x10 patches: below it a DPT head has too little to fuse
# AbsRel differences below this are noise between two runs of the same model (INT8 against FP32 at
# one size on the bundled photographs moves by about 1e-3): the faster of such rows is recommended.
SAME_ACCURACY = 0.005


F32_FLOATS = "float parts in f32"
NO_FUSION = "no attention fusion"
PREPROCESS_IN_MODEL = "pre-processing in the model"
DENORMALS = "denormals flushed"
# What ``benchmarks.levers`` measures on OpenVINO: (name, the compiled model's precision or None for
# the row's own, extra DepthPredictor options).
LEVERS: list[tuple[str, str | None, dict]] = [
    (F32_FLOATS, "fp32", {}),
    (NO_FUSION, None, {"properties": {"SNIPPETS_MODE": "DISABLE"}}),
    (PREPROCESS_IN_MODEL, None, {"preprocess": "model"}),
    (DENORMALS, None, {"properties": {"CPU_DENORMALS_OPTIMIZATION": True}}),
]
NOT_SEARCHED = {
    NO_FUSION: "a diagnostic, not a deployment choice: it turns OpenVINO's fused attention kernel off to "
    "measure what the kernel gives (0.99-1.00x the model call of vits INT8 518, docs/measurements.md)",
}


# A later student times only the kinds that ran within this factor of the fastest kind for the
# benchmark's model at the largest size: kinds rank alike across students of one family (vits and
# a vitt selected from it, 2026-12-07: 0.29 and 0.35 for ONNX Runtime INT8 against OpenVINO INT8,
# 0.38 and 0.35 for PyTorch BF16 against OpenVINO BF16), and a kind at half the rate is not near.
FOLLOW_FACTOR = 2.0


def kinds_to_follow(first: list[dict], factor: float = FOLLOW_FACTOR) -> tuple[set | None, dict[str, str]]:
    """From the benchmark's model's points at the largest size: the ``(backend, precision)`` kinds
    a later student times there (None: all, when nothing was measured), and the others with the
    measurement that leaves them out."""
    if not first:
        return None, {}
    best = max(first, key=lambda p: p["fps"])
    kept, why = set(), {}
    for p in first:
        if p["fps"] * factor >= best["fps"]:
            kept.add((p["backend"], p["precision"]))
        else:
            why[f"{p['backend']} {p['precision']}"] = (
                f"for later students: {p['fps']:.2f} frames/s for {p['student']} at {p['side']}, under 1/{factor:g} of "
                f"{best['backend']} {best['precision']}'s {best['fps']:.2f}; kinds rank alike across students"
            )
    return kept, why


def levers_for(backend: str, precision: str, precision_arg: str | None) -> tuple[list[tuple], dict[str, str]]:
    """The levers the search measures on one configuration, and the others with the reason."""
    kept, why = [], {}
    for name, compiled, options in LEVERS:
        if name in NOT_SEARCHED:
            why[name] = NOT_SEARCHED[name]
        elif backend != "openvino":
            why[name] = f"an OpenVINO option; the configuration to refine runs on {backend}"
        elif name == F32_FLOATS and not (precision == "int8" and precision_arg == "bf16"):
            why[name] = f"only for an INT8 IR whose float parts run in bf16; this one is {precision}, {precision_arg}"
        else:
            kept.append((name, compiled, options))
    return kept, why


def side_grid(max_side: int, min_side: int = MIN_SIDE) -> list[int]:
    """Short sides the walk may measure: multiples of 14 from ``min_side`` up to ``max_side``."""
    low = max(SIDE_STEP, math.ceil(min(min_side, max_side) / SIDE_STEP) * SIDE_STEP)
    return list(range(low, max_side // SIDE_STEP * SIDE_STEP + 1, SIDE_STEP))


def kinds_worth_timing(kinds: list[tuple[str, str]], cpu: CpuFeatures) -> tuple[list[tuple[str, str]], dict]:
    """``(backend, precision)`` kinds whose compute format can pay on ``cpu``, and the others with
    the reason (``cpu.why_not_worth_it``): the search never spends time on an emulated format."""
    kept, skipped = [], {}
    for backend, precision in kinds:
        reason = why_not_worth_it(cpu, compute_format(precision))
        if reason is None:
            kept.append((backend, precision))
        else:
            skipped[f"{backend} {precision}"] = reason
    return kept, skipped


def _on_grid(side: float, grid: list[int]) -> int:
    below = [s for s in grid if s <= side]
    return below[-1] if below else grid[0]


def next_side(measured: dict[int, float], need: float, grid: list[int]) -> int | None:
    """The next short side to measure for one kind, from its frames/s so far per side (``measured``)
    and the rate it must reach (``need``); None when the walk is done: the largest side meets it,
    the smallest misses it, or the largest side known to meet it neighbours the smallest known to
    miss it on ``grid``."""
    if not measured:
        return grid[-1]
    meets = [s for s, fps in measured.items() if fps >= need]
    best = max(meets, default=None)
    misses = [s for s, fps in measured.items() if fps < need and (best is None or s > best)]
    fail = min(misses, default=None)
    if fail is None:
        return None  # the largest side measured meets the target; larger ones are beyond the grid
    between = [s for s in grid if (best is None or s > best) and s < fail]
    if not between:
        return None
    # The work per frame grows with the number of patches, the square of the side: scale from the
    # nearest measured side and land on the grid, strictly inside the open interval.
    anchor = fail if best is None else best
    guess = _on_grid(anchor * math.sqrt(measured[anchor] / need), grid)
    if best is not None and guess >= fail:
        guess = between[len(between) // 2]
    return min(max(guess, between[0]), between[-1])


def choose(points: list[dict], need: float, budget: float) -> tuple[dict | None, str]:
    """The configuration to recommend and the status: ``met`` when some measured point reaches
    ``need`` frames/s (per camera) within the accuracy ``budget``, the most accurate of those, and
    among those as accurate (within ``SAME_ACCURACY``) the fastest; else ``not met`` and the
    fastest within the budget (the closest to the target), or the fastest of all when no point is
    within it. Always by the measured rate, whatever a row's precision is called."""
    usable = [p for p in points if p.get("fps")]
    within = [p for p in usable if p.get("abs_rel") is not None and p["abs_rel"] <= budget]
    meeting = [p for p in within if p["fps"] >= need]
    if meeting:
        best = min(p["abs_rel"] for p in meeting)
        tied = [p for p in meeting if p["abs_rel"] <= best + SAME_ACCURACY]
        return max(tied, key=lambda p: p["fps"]), "met"
    closest = max(within or usable, key=lambda p: p["fps"], default=None)
    return closest, "not met"


def why_not_met(closest: dict, need: float, ceilings: dict[str, dict], cameras: int) -> str:
    """One sentence: the closest configuration's work per frame against this CPU's measured
    matrix-multiply ceiling, so the user sees whether any backend could reach the target."""
    text = f"closest: {describe(closest)}, {closest['fps']:.2f} frames/s per camera against {need:g} wanted"
    ops = closest.get("ops")
    if ops and ceilings:
        fmt, ceiling = max(ceilings.items(), key=lambda kv: kv[1]["ops_per_s"])
        bound = ceiling["ops_per_s"] / ops / cameras
        text += (
            f"; it does {ops / 1e9:.1f} G operations per frame and this CPU's best matrix ceiling is "
            f"{ceiling['ops_per_s'] / 1e9:.0f} G/s ({fmt}), so no backend exceeds {bound:.1f} frames/s per camera "
            f"with it: {'a smaller student or input size' if bound < need else 'the overheads around the model'} "
            "is what is left"
        )
    return text


def describe(point: dict) -> str:
    """A configuration in words: student, backend, precision, lever (when one), size."""
    lever = f", {point['lever']}" if point.get("lever") else ""
    return f"{point['student']} {point['backend']} {point['precision']}{lever} at {point['size'][0]}x{point['size'][1]}"


def target_lines(data: dict) -> list[str]:
    """The report's section: the target, the status, the recommendation and what was measured."""
    target = data.get("target")
    if not target:
        return []
    chosen = target.get("chosen")
    lines = [
        "",
        "## Frame-rate target",
        "",
        f"- **Target**: {target['fps']:g} frames/s per camera, {target['cameras']} camera(s)"
        + (", with metric alignment and points" if target.get("with_points") else "")
        + f"; accuracy budget AbsRel {target['budget']:g} against {target['reference']}",
        f"- **Status**: {target['status']}",
    ]
    if chosen:
        lines.append(
            f"- **{'Chosen' if target['status'] == 'met' else 'Closest'}**: {describe(chosen)}, "
            f"{chosen['frames_in_flight']} frame(s) in flight: {chosen['fps']:.2f} frames/s per camera measured "
            f"end to end, AbsRel {chosen['abs_rel']:.4f} against the largest model"
        )
    if target.get("why"):
        lines.append(f"- **Why**: {target['why']}")
    lines += [f"- not timed: {kind}: {reason}" for kind, reason in (target.get("skipped") or {}).items()]
    lines += [f"- lever {name}: {note}" for name, note in (target.get("levers") or {}).items()]
    lines += [
        "",
        "| student | backend | precision | lever | size | in flight | frames/s per camera | AbsRel vs largest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(target["points"], key=lambda p: -p["fps"]):
        lines.append(
            f"| {p['student']} | {p['backend']} | {p['precision']} | {p.get('lever') or '-'} "
            f"| {p['size'][0]}x{p['size'][1]} | {p['frames_in_flight']} | {p['fps']:.2f} | {p['abs_rel']:.4f} |"
        )
    lines += ["", "Figure: `target_frontier.png` (frames/s against accuracy)."]
    return lines


def frontier_figure(target: dict):
    """Frames/s per camera against AbsRel vs the largest model: one point per measured
    configuration, the target and the budget as lines, the recommendation circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for student, marker in (("vits", "o"), ("vitt", "s")):
        mine = [p for p in target["points"] if p["student"].startswith(student)]
        ax.scatter(
            [max(p["abs_rel"], 1e-5) for p in mine], [p["fps"] for p in mine], marker=marker, label=student, s=30
        )
    for p in target["points"]:
        label = f"{p['backend'][:4]} {p['precision']}{' +' if p.get('lever') else ''} {p['side']}"
        ax.annotate(label, (max(p["abs_rel"], 1e-5), p["fps"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    chosen = target.get("chosen")
    if chosen:
        ax.scatter([max(chosen["abs_rel"], 1e-5)], [chosen["fps"]], s=180, facecolors="none", edgecolors="red")
    ax.axhline(target["fps"], color="red", linestyle="--", linewidth=0.8, label="target")
    ax.axvline(target["budget"], color="grey", linestyle="--", linewidth=0.8, label="accuracy budget")
    ax.set_xscale("log")
    ax.set_xlabel(f"AbsRel against {target['reference']} (log)")
    ax.set_ylabel("frames/s per camera, end to end")
    ax.set_title(f"Frame-rate target: {target['status']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_frontier_figure(data: dict, folder: Path) -> list[Path]:
    """``target_frontier.png`` in ``folder`` when the run searched for a frame-rate target."""
    target = data.get("target")
    if not target or not target["points"]:
        return []
    import matplotlib.pyplot as plt

    fig = frontier_figure(target)
    path = atomic_write(folder / "target_frontier.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return [path]
