"""report.json (machine-readable) and report.md (the table people read); the figures are
``benchmarks.figures``' and the ranking decisions ``benchmarks.ranking``'s."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

from commands.runner import EXIT_UNRELIABLE
from runtime.io.files import atomic_write_bytes

from .cpu import FORMAT_NAMES, without_units
from .figures import figures
from .jetson import jetson_line
from .profile import profile_lines, write_profile_figure
from .ranking import is_baseline, row_name, same_rounds_ratio
from .target import target_lines, write_frontier_figure
from .throughput import throughput_lines

# 3: "reliability", "phases", "size_sweep"; rows carry "computes_in", "native", "round_medians"
# 4: rows carry "profile" (benchmarks.profile); "throughput" (benchmarks.throughput)
SCHEMA_VERSION = 4
NO_BASELINE = "no PyTorch FP32 row to compare with"
QUALITY_VS_SIZE = (
    "Accuracy here is against PyTorch FP32 at the same size, so it shows how faithfully the backend runs "
    "the model at each size, not how depth quality changes with size: that needs the real weights and "
    "real data with ground truth."
)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _pct(value: float) -> str:
    return f"{value:.0%}"


def _latency(stats: dict | None) -> str:
    return f"{_ms(stats['median'])} / {_ms(stats['p90'])} / {_ms(stats['p99'])}" if stats else "-"


def _throughput(row: dict) -> str:
    if "ops_per_s" not in row:
        return "-"
    share = row.get("share_of_ceiling")
    return f"{row['ops_per_s'] / 1e9:.0f}" + (f" ({share:.0%})" if share is not None else "")


def _runs_in(row: dict) -> str:
    """The format the row's matrix work ran in (measured for OpenVINO, else named by the row), and
    whether this CPU has units for it."""
    fmt = row.get("computes_in")
    if not fmt:
        return "-"
    text = fmt + ("" if row.get("native", True) else f" ({without_units(fmt)})")
    if row.get("int8_arithmetic"):  # an INT8 row on a CPU: the arithmetic its kernels computed
        text = f"{fmt} ({row['int8_arithmetic']})"
    layers = (row.get("execution") or {}).get("matrix_layers") or {}
    if len(layers) > 1:
        text += f" ({layers.get(fmt, 0)}/{sum(layers.values())} matrix layers)"
    return text


def ceiling_lines(data: dict) -> list[str]:
    """The machine's matrix-multiply ceilings and what they imply for the model call at each size."""
    roofline = data.get("roofline") or {}
    ceilings = roofline.get("ceilings") or {}
    if not ceilings:
        return []
    formats = list(ceilings)
    names = " / ".join(FORMAT_NAMES.get(f, f) for f in formats)
    native = (data["machine"].get("cpu_features") or {}).get("native") or {}
    measured = ", ".join(
        f"{FORMAT_NAMES.get(f, f)} {c['ops_per_s'] / 1e9:.0f} G/s ({c['library']}"
        + ("" if native.get(f, True) else f", {without_units(f)}")
        + ")"
        for f, c in ceilings.items()
    )
    no_bf16 = "bf16" not in ceilings and not native.get("bf16", True)
    skipped = "; BF16 not measured (no BF16 units on this CPU)" if no_bf16 else ""
    rounds = len(next(iter(ceilings.values())).get("rounds", []))
    lines = [
        f"- **Ceilings**: dense matrix multiply measured on this CPU ({ceilings[formats[0]]['shape']} M/K/N, a "
        f"ViT-S MLP layer) once per round, best of {rounds} rounds: {measured}{skipped}; a multiply-accumulate "
        "counts as two operations."
    ]
    baselines = {
        tuple(r["size"]): r["model_call"]["median"] for r in data["rows"] if is_baseline(r) and r.get("model_call")
    }
    for key, work in roofline.get("work", {}).items():
        bounds = roofline["lower_bounds_s"][key]
        split = ", ".join(f"{op} {2 * n / 1e9:.1f}" for op, n in sorted(work["macs"].items(), key=lambda kv: -kv[1]))
        text = (
            f"- **Work at {key}**: {work['ops'] / 1e9:.1f} G operations per frame ({split}), so no model "
            f"call on this CPU can take less than {' / '.join(f'{bounds[f] * 1000:.0f}' for f in formats)} ms "
            f"in {names}"
        )
        baseline = baselines.get(tuple(int(v) for v in key.split("x")))
        if baseline:
            text += (
                f": at most {' / '.join(f'{baseline / bounds[f]:.1f}x' for f in formats)} the PyTorch FP32 "
                f"model call measured here ({baseline * 1000:.0f} ms), before any softmax, norm or resize"
            )
        lines.append(text + ".")
    return lines


def reliability_line(data: dict) -> str:
    """One line that says whether the run's self-checks passed, with what they measured."""
    rel = data["reliability"]
    limits = rel["limits"]
    parts = []
    for phase, state in rel["machine_state"].items():
        if state.get("measured"):
            burst = max(state.get("rounds_others") or [state["others"]])
            parts.append(
                f"while the {phase} ran other programs took {_pct(state['others'])} of the CPU (at most "
                f"{_pct(burst)} in one round) and the hypervisor {_pct(state['steal'])} (steal; limits "
                f"{_pct(limits['others'])}, {_pct(limits['others_in_a_round'])} in a round, {_pct(limits['steal'])}); "
                f"load average {state['load_before'][0]:.1f} before, {state['load_after'][0]:.1f} after (this run "
                "included)"
            )
        else:
            parts.append(f"the machine's load during the {phase} could not be read (no /proc)")
    if rel["max_spread"] is not None:
        parts.append(
            f"rows' p90/p50 at most {rel['max_spread']:.2f} (limit {limits['p90_over_p50']}), "
            f"coefficient of variation at most {_pct(rel['max_cv'])}"
        )
    if rel["max_ceiling_spread"] is not None:
        parts.append(
            f"ceilings' best round at most {rel['max_ceiling_spread']:.2f}x their median round "
            f"(limit {limits['ceiling_spread']:.1f}x)"
        )
    verdict = "passed" if rel["reliable"] else f"FAILED ({len(rel['problems'])} problems, listed at the top)"
    return f"- **Reliability**: {verdict}; " + "; ".join(parts) + "."


def warning_lines(data: dict) -> list[str]:
    rel = data["reliability"]
    if rel["reliable"]:
        return []
    problems = rel["problems"]
    if any(p.startswith(("the machine was busy", "the hypervisor")) for p in problems):
        lead = "the machine was busy: results are not comparable"
    elif all(" was unsteady: " in p or "capacity changed" in p for p in problems):
        lead = "timings were unsteady (something else ran at times): results are not comparable"
    else:
        lead = "some results cannot be true"
    return [
        f"> **Results not reliable: {lead}.** The numbers are kept below, but no row is named fastest. "
        "Rerun on a quiet machine (`--strict` makes this an error exit). What failed:",
        ">",
        *(f"> - {problem}" for problem in rel["problems"]),
        "",
    ]


def phase_line(data: dict) -> str:
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in data["phases"].items())
    return f"- **Phases** (wall time): {phases}; whole run {data['wall_seconds']:.0f} s."


def headline(best: dict | None, rows: list[dict]) -> list[str]:
    if not best:
        return []
    speedup = best.get("speedup_vs_torch_fp32")
    if speedup is None:
        versus = NO_BASELINE
    else:
        versus = f"{speedup:.1f}x PyTorch FP32, same rounds"
        reference = next(
            (
                r
                for r in rows
                if r["backend"] == "torch"
                and (r.get("info") or {}).get("attention") == "explicit"
                and r["size"] == best["size"]
            ),
            None,
        )
        if reference and reference.get("round_medians"):
            versus += f"; {same_rounds_ratio(reference, best, 'e2e'):.1f}x PyTorch FP32 with {reference['variant']}"
    return [
        f"**Fastest within the accuracy budget: {row_name(best)} {best['precision']} at "
        f"{best['size'][0]}x{best['size'][1]}**, {_ms(best['end_to_end']['median'])} ms end-to-end "
        f"({versus}), AbsRel vs FP32 {best['vs_fp32']['abs_rel']:.4f}.",
        "",
    ]


def _status(row: dict) -> str:
    if not row.get("error"):
        return row["status"]
    return f"{row['status']} ({row['error']})" if row["status"] == "unavailable" else f"{row['status']}: {row['error']}"


def sweep_lines(data: dict) -> list[str]:
    rows = data.get("size_sweep") or []
    if not rows:
        return []
    first = rows[0]
    lines = [
        "",
        f"## Input size: {row_name(first)} {first['precision']}, the fastest CPU row, at {len(rows)} sizes",
        "",
        f"Timed in interleaved rounds of their own; speedups are against {first['size'][0]}x{first['size'][1]} "
        f"in the same rounds. {QUALITY_VS_SIZE}",
        "",
        "| size | model p50/p90/p99 ms | e2e p50/p90/p99 ms | FPS | speedup e2e | AbsRel vs FP32 at this size "
        "| model GOP/s (% of ceiling) | status |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        e2e = r.get("end_to_end")
        speed = f"{r['speedup_vs_first']:.2f}x" if r.get("speedup_vs_first") else "-"
        lines.append(
            f"| {r['size'][0]}x{r['size'][1]} | {_latency(r.get('model_call'))} | {_latency(e2e)} "
            f"| {_num(e2e and e2e['fps'], '.2f')} | {speed} | {_num((r.get('vs_fp32') or {}).get('abs_rel'))} "
            f"| {_throughput(r)} | {_cell(_status(r))} |"
        )
    return lines


def accuracy_line(data: dict) -> str:
    if data.get("mode") == "artefacts":
        against = (
            "each artefact's reference (the FP32 outputs its export wrote beside it, `<artefact>.reference.npz`), on "
            "its inputs; *status* is the reference's own check (its metric within its tolerance)"
        )
    else:
        against = "PyTorch FP32 on the same input"
    return (
        f"- **Accuracy**: AbsRel and δ1 against {against}, as each model's output kind means its numbers: relative "
        "inverse depth after a least-squares scale and shift in disparity, depth up to scale after a least-squares "
        f"scale alone in depth, metres as they are; budget AbsRel ≤ {data['accuracy_budget']}."
    )


# What an output kind's numbers are (``runtime.metric``), as the report says it.
KIND_TEXT = {
    "relative": "relative inverse depth (larger = nearer)",
    "depth_up_to_scale": "depth up to scale",
    "metric": "metres",
    "metres_per_focal": "metres per focal length (needs the camera's focal length)",
}


def model_cells(fact: dict) -> str:
    """The model's family, variant, output kind, extra outputs and licence as table cells."""
    kind = fact.get("output_kind")
    extra = fact.get("extra_outputs")
    family = (fact.get("family") or "unknown") + (" (stream)" if fact.get("stream") else "")
    cells = [
        family,
        fact.get("variant") or "unknown",
        KIND_TEXT.get(kind, kind or "unknown"),
        ", ".join(extra) if extra else ("none" if extra is not None else "unknown"),
        fact.get("licence") or "none stated",
    ]
    return " | ".join(_cell(c) for c in cells)


def model_line(data: dict) -> list[str]:
    """A checkpoint run's model: what it is, what its numbers are, its extra outputs and licence."""
    fact = data.get("model_facts")
    if not fact:
        return []
    family, variant, kind, extra, licence = model_cells(fact).split(" | ")
    return [
        f"- **Model outputs**: family {family}, variant {variant}; its numbers are {kind}; extra outputs: {extra}; "
        f"licence: {licence}"
    ]


def artefact_lines(data: dict) -> list[str]:
    """The artefacts of a ``--model`` run: file, the model it holds (family, variant, what its
    numbers are, its extra outputs, licence), sidecar facts, reference and its check."""
    facts = data.get("artefacts") or []
    if not facts:
        return []
    lines = [
        "| artefact | backend | precision | family | variant | output kind | extra outputs | licence | calibration "
        "| TensorRT | verify against its reference |",
        "|" + "---|" * 11,
    ]
    for fact in facts:
        check = fact.get("verification")
        exported = fact.get("export_check") or {}
        if fact["backend"] == "torch":
            verdict = "the FP32 network itself: not checked"
        elif not fact.get("reference") and fact.get("stream") and exported.get("metric"):
            verdict = (
                "no stream reference beside it (an older export); its export's streamed check: "
                f"{_cell(exported['metric'])} within {exported.get('tolerance')}"
            )
        elif not fact.get("reference"):
            verdict = "no reference beside it: not checked"
        elif not check:
            verdict = "not run"
        else:
            verdict = (
                f"{'passed' if check['passed'] else 'FAILED'}: {_cell(check['metric'])} {check['value']:.3g} "
                f"(tolerance {check['tolerance']:g}, {len(check['inputs'])} inputs, "
                f"ran {check['ran'].get('precision')})"
            )
        built = f" (built on {fact['built_on']})" if fact.get("built_on") else ""
        lines.append(
            f"| `{fact['artefact']}` | {fact['backend']} | {fact['precision']} | {model_cells(fact)} "
            f"| {fact.get('calibration') or '-'} | {(fact.get('tensorrt') or '-') + built} | {verdict} |"
        )
    return ["", "## Artefacts", "", *lines, ""]


def _cell(text: str) -> str:
    """``text`` inside a markdown table cell, where a bare ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _energy(row: dict) -> str:
    energy = row.get("energy")
    return f"{energy['mj_per_frame']:.0f} ({energy['mean_w']:.1f} W)" if energy else "-"


def will_draw(data: dict) -> bool:
    """Figures need matplotlib (absent on a lean device) and one image every row ran on."""
    return bool(data.get("timing_image")) and importlib.util.find_spec("matplotlib") is not None


def markdown(data: dict) -> str:
    rows, best = data["rows"], data["fastest_within_budget"]
    machine = data["machine"]
    settings = data["settings"]
    energy = any(r.get("energy") for r in rows)
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    features = (machine.get("cpu_features") or {}).get("summary", "not read")
    lines = [
        "# Depth Anything edge benchmark",
        "",
        *warning_lines(data),
        f"- **Machine**: {machine['cpu']}, {machine['usable_cores']} usable cores"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU"),
        f"- **CPU features**: {features}",
        f"- **Software**: Python {machine['python']}, {libs}",
        *[line for line in [jetson_line(machine.get("jetson"))] if line],
        f"- **Model**: {data['model']}",
        f"- **Images**: {data['images']}; calibration: {data['calibration']}",
        f"- **Timing**: each row in a worker process of its own, all alive at once and timed in "
        f"{settings['rounds']} interleaved rounds (A, B, C, ..., A, B, C, ...), after {settings['warmup']} "
        f"warm-up calls; a turn starts once the previous row's threads are idle; per round and row one "
        f"untimed call, then {settings['calls_per_round']} timed "
        f"pair{'s' if settings['calls_per_round'] > 1 else ''} of a model and an e2e call. *model* = the "
        "backend call on a prepared tensor, *e2e* = `predict()` on a BGR image including pre- and "
        "post-processing; speedups are medians of per-round ratios.",
        reliability_line(data),
        phase_line(data),
        accuracy_line(data),
        *model_line(data),
        *ceiling_lines(data),
        *artefact_lines(data),
        "",
    ]
    if data.get("notice"):
        lines += [f"> **{data['notice']}**", ""]
    lines += headline(best, rows)
    header = (
        "| backend | precision | runs in | size | artefact MiB | AbsRel vs FP32 | δ1 vs FP32 | AbsRel vs GT "
        "| model p50/p90/p99 ms | model GOP/s (% of ceiling) | e2e p50/p90/p99 ms | FPS | speedup e2e (model) "
        "| cold start s | peak RSS MiB | status |"
    )
    if energy:  # board power monitors (a Jetson): energy of the row's turns per frame computed
        header = header.replace("| status |", "| energy mJ/frame (mean power) | status |")
    lines += [header, "|" + "---|" * (17 if energy else 16)]
    for r in rows:
        mark = "**" if r is best else ""
        gt = r.get("vs_gt") or {}
        gt_abs_rel = np.mean([m["abs_rel"] for m in gt.values()]) if gt else None
        model, e2e = r.get("model_call"), r.get("end_to_end")
        speed = (
            f"{r['speedup_vs_torch_fp32']:.2f}x ({r['model_speedup_vs_torch_fp32']:.2f}x)"
            if r.get("speedup_vs_torch_fp32") is not None
            else "-"
        )
        lines.append(
            f"| {mark}{row_name(r)}{mark} | {mark}{r['precision']}{mark} | {_runs_in(r)} "
            f"| {r['size'][0]}x{r['size'][1]} "
            f"| {_num(r.get('artefact_mib'), '.1f')} | {_num((r.get('vs_fp32') or {}).get('abs_rel'))} "
            f"| {_num((r.get('vs_fp32') or {}).get('delta1'))} | {_num(gt_abs_rel)} "
            f"| {_latency(model)} | {_throughput(r)} | {_latency(e2e)} "
            f"| {_num(e2e and e2e['fps'], '.2f')} | {speed} | {_num(r.get('cold_start_s'), '.2f')} "
            f"| {_num(r.get('peak_rss_mib'), '.0f')} |{f' {_energy(r)} |' if energy else ''} {_cell(_status(r))} |"
        )
    lines += sweep_lines(data)
    lines += throughput_lines(data)
    lines += target_lines(data)
    lines += profile_lines(data)
    shown = "Figures: `latency_vs_accuracy.png`, `depth_grid.png`. " if will_draw(data) else ""
    lines += ["", f"{shown}Machine-readable: `report.json`.", ""]
    return "\n".join(lines)


def write_report(data: dict, images: dict[str, np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema_version": SCHEMA_VERSION, **data}
    paths = [
        atomic_write_bytes(folder / "report.json", (json.dumps(data, indent=2, default=str) + "\n").encode()),
        atomic_write_bytes(folder / "report.md", markdown(data).encode()),
    ]
    paths += figures(data, images, folder) if will_draw(data) else []
    paths += write_profile_figure(data, folder)
    paths += write_frontier_figure(data, folder) if will_draw(data) else []
    return paths


def publish(data: dict, images: dict, folder: Path, reliability: dict, strict: bool) -> int:
    """Write the report, print it and what was written; the command's exit code: 0, or
    ``EXIT_UNRELIABLE`` when its self-checks failed and ``strict`` asks for that."""
    paths = write_report(data, images, folder)
    print((folder / "report.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths) + f" in {data['wall_seconds']:.0f} s")
    if reliability["reliable"]:
        return 0
    print("warning: the report's self-checks failed: " + "; ".join(reliability["problems"]), file=sys.stderr)
    return EXIT_UNRELIABLE if strict else 0
