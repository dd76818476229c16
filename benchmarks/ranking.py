"""Which rows win: speedups from the same rounds, the ranking, and the fastest row within the
accuracy budget. Decisions only; ``benchmarks.report`` lays them out and ``benchmarks.figures`` draws."""

from __future__ import annotations

import numpy as np

from .roofline import on_cpu


def is_baseline(row: dict) -> bool:
    """The row every speedup is relative to: this toolkit's PyTorch FP32 eager."""
    return row["backend"] == "torch" and row["precision"] == "fp32" and not row.get("variant")


def same_rounds_ratio(base: dict, row: dict, kind: str) -> float | None:
    """How many times faster ``row`` ran than ``base``: the median over rounds of the ratio of their
    round medians, so both sides of each ratio were measured at the same moments."""
    ratios = [b / r for b, r in zip(base["round_medians"][kind], row["round_medians"][kind]) if b > 0 and r > 0]
    return float(np.median(ratios)) if ratios else None


def rank(rows: list[dict], budget: float, reliable: bool = True) -> tuple[list[dict], dict | None]:
    """Rows sorted by end-to-end median latency (failed rows last), each timed row's speedup over
    PyTorch FP32 at its size from the same rounds, and the fastest row whose AbsRel against
    PyTorch FP32 is within ``budget``: none when the run's self-checks failed."""
    timed = sorted((r for r in rows if r.get("end_to_end")), key=lambda r: r["end_to_end"]["median"])
    rest = [r for r in rows if not r.get("end_to_end")]
    baselines = {tuple(r["size"]): r for r in timed if is_baseline(r)}
    for row in timed:
        base = baselines.get(tuple(row["size"]))
        if base is not None:
            row["speedup_vs_torch_fp32"] = same_rounds_ratio(base, row, "e2e")
            row["model_speedup_vs_torch_fp32"] = same_rounds_ratio(base, row, "model")
    within = (r for r in timed if r["status"] == "ok" and (r.get("vs_fp32") or {}).get("abs_rel", budget + 1) <= budget)
    return timed + rest, next(within, None) if reliable else None


def fastest_cpu_path(rows: list[dict], budget: float, size: tuple[int, int]) -> dict | None:
    """The fastest CPU row at ``size`` within the accuracy budget: the one the size sweep times again."""
    candidates = [
        r
        for r in rows
        if r["status"] == "ok" and tuple(r["size"]) == tuple(size) and on_cpu(r) and r["vs_fp32"]["abs_rel"] <= budget
    ]
    return min(candidates, key=lambda r: r["end_to_end"]["median"], default=None)


def relative_to_first(rows: list[dict]) -> list[dict]:
    """The size sweep's rows, each with its speedup over the first (the main size) from the same rounds."""
    if rows and rows[0].get("end_to_end"):
        for row in rows:
            if row.get("end_to_end"):
                row["speedup_vs_first"] = same_rounds_ratio(rows[0], row, "e2e")
    return rows


def row_name(row: dict) -> str:
    return f"{row['backend']} ({row['variant']})" if row.get("variant") else row["backend"]


def short_name(row: dict) -> str:
    """A figure label: the variant cut to its first clause."""
    return f"{row['backend']} ({row['variant'].split(',')[0]})" if row.get("variant") else row["backend"]
