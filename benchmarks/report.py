"""report.json (machine-readable), report.md (the table people read) and two figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from runtime.fileio import atomic_write, atomic_write_bytes

SCHEMA_VERSION = 2  # 2: rows may repeat backend+precision with a "variant"; "roofline" section


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _latency(stats: dict | None) -> str:
    return f"{_ms(stats['median'])} / {_ms(stats['p90'])} / {_ms(stats['p99'])}" if stats else "-"


def is_baseline(row: dict) -> bool:
    """The row every speedup is relative to: this toolkit's PyTorch FP32 eager."""
    return row["backend"] == "torch" and row["precision"] == "fp32" and not row.get("variant")


def row_name(row: dict) -> str:
    return f"{row['backend']} ({row['variant']})" if row.get("variant") else row["backend"]


def _throughput(row: dict) -> str:
    if "ops_per_s" not in row:
        return "-"
    share = row.get("share_of_ceiling")
    return f"{row['ops_per_s'] / 1e9:.0f}" + (f" ({share:.0%})" if share is not None else "")


FORMAT_NAMES = {"fp32": "FP32", "bf16": "BF16", "int8": "INT8", "fp16": "FP16"}


def ceiling_lines(data: dict) -> list[str]:
    """The machine's matrix-multiply ceilings and what they imply for the model call at each size."""
    roofline = data.get("roofline") or {}
    ceilings = roofline.get("ceilings") or {}
    if not ceilings:
        return []
    formats = list(ceilings)
    names = " / ".join(FORMAT_NAMES.get(f, f) for f in formats)
    measured = ", ".join(
        f"{FORMAT_NAMES.get(f, f)} {c['ops_per_s'] / 1e9:.0f} G/s ({c['library']})" for f, c in ceilings.items()
    )
    lines = [
        f"- **Ceilings**: dense matrix multiply measured on this CPU ({ceilings[formats[0]]['shape']} "
        f"M/K/N, a ViT-S MLP layer): {measured}; a multiply-accumulate counts as two operations."
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


def rank(rows: list[dict], budget: float) -> tuple[list[dict], dict | None]:
    """Rows sorted by end-to-end median latency (failed rows last), and the fastest row whose
    AbsRel against PyTorch FP32 is within ``budget``."""
    ok = sorted((r for r in rows if r.get("end_to_end")), key=lambda r: r["end_to_end"]["median"])
    rest = [r for r in rows if not r.get("end_to_end")]
    best = next((r for r in ok if r["status"] == "ok" and r["vs_fp32"]["abs_rel"] <= budget), None)
    baseline = next((r for r in ok if is_baseline(r)), None)
    for r in ok:
        if baseline and r["size"] == baseline["size"]:
            r["speedup_vs_torch_fp32"] = baseline["end_to_end"]["median"] / r["end_to_end"]["median"]
            r["model_speedup_vs_torch_fp32"] = baseline["model_call"]["median"] / r["model_call"]["median"]
    return ok + rest, best


def markdown(data: dict) -> str:
    rows, best = data["rows"], data["fastest_within_budget"]
    machine = data["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    lines = [
        "# Depth Anything V2 edge benchmark",
        "",
        f"- **Machine**: {machine['cpu']}, {machine['usable_cores']} usable cores"
        + (f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU"),
        f"- **Software**: Python {machine['python']}, {libs}",
        f"- **Model**: {data['model']}",
        f"- **Images**: {data['images']}; calibration: {data['calibration']}",
        f"- **Timing**: {data['settings']['warmup']} warm-up + {data['settings']['runs']} timed runs per row, "
        "one process per row; *model* = the backend call on a prepared tensor, *e2e* = `predict()` on a "
        "BGR image including pre- and post-processing.",
        f"- **Accuracy**: AbsRel and δ1 after least-squares scale-and-shift alignment (disparity space) "
        f"against PyTorch FP32 on the same input; budget AbsRel ≤ {data['accuracy_budget']}.",
        *ceiling_lines(data),
        "",
    ]
    if data.get("notice"):
        lines += [f"> **{data['notice']}**", ""]
    if best:
        reference = next(
            (
                r
                for r in rows
                if r.get("variant") and r["backend"] == "torch" and r["size"] == best["size"] and r.get("end_to_end")
            ),
            None,
        )
        versus = (
            f"; {reference['end_to_end']['median'] / best['end_to_end']['median']:.1f}x PyTorch FP32 with "
            f"{reference['variant']}"
            if reference
            else ""
        )
        lines += [
            f"**Fastest within the accuracy budget: {row_name(best)} {best['precision']} at "
            f"{best['size'][0]}x{best['size'][1]}**, {_ms(best['end_to_end']['median'])} ms end-to-end "
            f"({best.get('speedup_vs_torch_fp32', float('nan')):.1f}x PyTorch FP32{versus}), AbsRel vs FP32 "
            f"{best['vs_fp32']['abs_rel']:.4f}.",
            "",
        ]
    header = (
        "| backend | precision | size | artefact MiB | AbsRel vs FP32 | δ1 vs FP32 | AbsRel vs GT "
        "| model p50/p90/p99 ms | model GOP/s (% of ceiling) | e2e p50/p90/p99 ms | FPS | speedup e2e (model) "
        "| cold start s | peak RSS MiB | status |"
    )
    lines += [header, "|" + "---|" * 15]
    for r in rows:
        mark = "**" if r is best else ""
        gt = r.get("vs_gt") or {}
        gt_abs_rel = np.mean([m["abs_rel"] for m in gt.values()]) if gt else None
        model, e2e = r.get("model_call"), r.get("end_to_end")
        speed = (
            f"{r['speedup_vs_torch_fp32']:.2f}x ({r['model_speedup_vs_torch_fp32']:.2f}x)"
            if "speedup_vs_torch_fp32" in r
            else "-"
        )
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        lines.append(
            f"| {mark}{row_name(r)}{mark} | {mark}{r['precision']}{mark} | {r['size'][0]}x{r['size'][1]} "
            f"| {_num(r.get('artefact_mib'), '.1f')} | {_num((r.get('vs_fp32') or {}).get('abs_rel'))} "
            f"| {_num((r.get('vs_fp32') or {}).get('delta1'))} | {_num(gt_abs_rel)} "
            f"| {_latency(model)} | {_throughput(r)} | {_latency(e2e)} "
            f"| {_num(e2e and e2e['fps'], '.2f')} | {speed} | {_num(r.get('cold_start_s'), '.2f')} "
            f"| {_num(r.get('peak_rss_mib'), '.0f')} | {status} |"
        )
    lines += ["", "Figures: `latency_vs_accuracy.png`, `depth_grid.png`. Machine-readable: `report.json`.", ""]
    return "\n".join(lines)


def figures(data: dict, images: dict[str, np.ndarray], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime import colorize

    rows = [r for r in data["rows"] if r.get("end_to_end") and r.get("vs_fp32")]
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        x, y = r["end_to_end"]["median"] * 1000, max(r["vs_fp32"]["abs_rel"], 1e-7)
        ax.scatter(x, y, s=40)
        ax.annotate(
            f"{row_name(r)} {r['precision']} {r['size'][0]}",
            (x, y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("end-to-end latency, median (ms)")
    ax.set_ylabel("AbsRel vs PyTorch FP32 (log)")
    ax.set_yscale("log")
    ax.axhline(data["accuracy_budget"], color="grey", linestyle="--", linewidth=0.8, label="accuracy budget")
    ax.legend(fontsize=8)
    ax.set_title("Latency vs accuracy")
    fig.tight_layout()
    path = folder / "latency_vs_accuracy.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    written.append(path)

    name = data["timing_image"]
    panels = [("input", images[name][:, :, ::-1])]
    for r in rows:
        depth = np.load(r["outputs"])[name]
        panels.append((f"{row_name(r)} {r['precision']} {r['size'][0]}", colorize(depth)[:, :, ::-1]))
    cols = min(4, len(panels))
    grid_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(3.2 * cols, 2.6 * grid_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, picture) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = folder / "depth_grid.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    written.append(path)
    return written


def write_report(data: dict, images: dict[str, np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"schema_version": SCHEMA_VERSION, **data}
    paths = [
        atomic_write_bytes(folder / "report.json", (json.dumps(data, indent=2, default=str) + "\n").encode()),
        atomic_write_bytes(folder / "report.md", markdown(data).encode()),
    ]
    return paths + figures(data, images, folder)
