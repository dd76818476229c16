"""The report's two figures: latency against accuracy, and the depth maps side by side."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.io.files import atomic_write

from .ranking import short_name

# The figure's lowest AbsRel: differences below it are float32 rounding, and 0 has no place on a log axis.
ABS_REL_FLOOR = 1e-6


def place_labels(ax, points: list[tuple[float, float]], labels: list[str], obstacles: list, fontsize: int = 7) -> list:
    """Annotate each data point where its label overlaps no other label, no point and none of
    ``obstacles`` (display-space boxes): the nearest free spot among offsets to the right, left,
    above and below, inside the axes if possible, else anywhere in the figure; a label set away
    from its point gets a leader line. Call once the layout is final: this measures in display space."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    taken = list(obstacles)
    for x, y in ax.transData.transform(points):
        taken.append(Bbox.from_bounds(x - 4, y - 4, 8, 8))
    # Offsets in points, nearest first: labels are wide and short, so rows of them stack vertically.
    offsets = sorted(
        ((dx, dy) for dx in (5, -5, 15, -15, 45, -45, 90, -90) for dy in range(-150, 151, 9)),
        key=lambda o: (abs(o[0]) + 2 * abs(o[1]), o[0] < 0),
    )
    annotations = []
    for point, label in zip(points, labels):
        chosen = None
        for area in (ax.bbox, ax.figure.bbox):
            for dx, dy in offsets:
                annotation = ax.annotate(
                    label,
                    point,
                    xytext=(dx, dy),
                    textcoords="offset points",
                    fontsize=fontsize,
                    ha="left" if dx > 0 else "right",
                    va="center",
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if abs(dy) > 5 or abs(dx) > 5 else None,
                )
                annotation.update_positions(renderer)
                box = Text.get_window_extent(annotation, renderer)  # the text alone, not its leader line
                inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
                if inside and not any(box.overlaps(other) for other in taken):
                    chosen = annotation
                    break
                annotation.remove()
            if chosen:
                break
        if chosen is None:  # nowhere free: the last spot tried, with its leader line
            chosen = ax.annotate(
                label, point, xytext=offsets[-1], textcoords="offset points", fontsize=fontsize, ha="right"
            )
            chosen.update_positions(renderer)
        taken.append(Text.get_window_extent(chosen, renderer))
        annotations.append(chosen)
    return annotations


def latency_accuracy_figure(data: dict):
    """End-to-end latency against AbsRel vs PyTorch FP32 (log axis), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r.get("end_to_end") and r.get("vs_fp32")]
    fig, ax = plt.subplots(figsize=(8, 5))
    values = [r["vs_fp32"]["abs_rel"] for r in rows]
    # A log axis has no zero, and below float32 rounding the differences mean nothing: such rows
    # (the reference itself, exactly 0) sit on a floor line that the figure explains.
    points = [(r["end_to_end"]["median"] * 1000, max(v, ABS_REL_FLOOR)) for r, v in zip(rows, values)]
    for (x, y), value in zip(points, values):
        low = value <= ABS_REL_FLOOR
        ax.scatter(x, y, s=36, marker="v" if low else "o", color="tab:grey" if low else "tab:blue")
    ax.set_yscale("log")
    ax.axhline(data["accuracy_budget"], color="grey", linestyle="--", linewidth=0.8, label="accuracy budget")
    floor_label = f"AbsRel ≤ {ABS_REL_FLOOR:.0e} (see note)"
    ax.axhline(ABS_REL_FLOOR, color="grey", linestyle=":", linewidth=0.8, label=floor_label)
    top = max([data["accuracy_budget"], *(y for _, y in points)])
    ax.set_ylim(ABS_REL_FLOOR / 5, top * 10)
    ax.set_xlim(0, 1.25 * max([x for x, _ in points], default=1.0))
    ax.set_xlabel("end-to-end latency, median (ms)")
    ax.set_ylabel("AbsRel vs PyTorch FP32 (log)")
    ax.set_title("Latency vs accuracy")
    legend = ax.legend(fontsize=8, loc="upper right")
    note = fig.text(
        0.01,
        0.01,
        f"Triangles on the dotted line: AbsRel ≤ {ABS_REL_FLOOR:.0e}, float32 rounding: the same output as\n"
        "PyTorch FP32 (the reference itself is exactly 0, which a log axis cannot show).",
        fontsize=7,
        color="dimgrey",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    renderer = fig.canvas.get_renderer()
    place_labels(
        ax,
        points,
        [f"{short_name(r)} {r['precision']} {r['size'][0]}" for r in rows],
        [legend.get_window_extent(renderer), note.get_window_extent(renderer)],
    )
    return fig


def figures(data: dict, images: dict[str, np.ndarray], folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from runtime import colorize

    written = []
    fig = latency_accuracy_figure(data)
    path = folder / "latency_vs_accuracy.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    written.append(path)

    name = data["timing_image"]
    rows = [r for r in data["rows"] if r.get("outputs")]
    panels = [("input", images[name][:, :, ::-1])]
    for r in rows:
        depth = np.load(r["outputs"])[name]
        panels.append((f"{short_name(r)} {r['precision']} {r['size'][0]}", colorize(depth)[:, :, ::-1]))
    cols = min(4, len(panels))
    grid_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(3.2 * cols, 2.6 * grid_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, picture) in zip(axes.ravel(), panels):
        ax.imshow(picture)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = folder / "depth_grid.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    written.append(path)
    return written
