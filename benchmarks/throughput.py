"""Frames per second for one, two and four cameras, beside the single-frame latency.

A robot with N cameras wants N depth maps per cycle. Two ways get there faster than one
``predict`` after another: one batched call of the N frames (``predict_batch``; only where the
model takes a batch of N: a dynamic batch dimension, as PyTorch's), and N calls in flight
(``stream`` over the cameras' frames, on a second predictor of the row made with ``streams``
where the backend runs several calls at once: OpenVINO streams, ONNX Runtime concurrent runs,
TensorRT execution contexts; PyTorch overlaps only pre- and post-processing with its one call).
Each row measured gets both, after its timed rounds, and the faster counts. One call after
another is the row's single-frame rate from the rounds (1 / median end-to-end latency).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np

from .runner import EXPLICIT_ATTENTION

CAMERAS = (1, 2, 4)
# Model calls a backend runs at once for the in-flight measurement; PyTorch has no such option.
STREAM_BACKENDS = ("openvino", "onnxruntime", "tensorrt")
FIXED_BATCH = "the model's batch is fixed at {batch}"


def stream_options(backend: str, cores: int) -> dict:
    """Extra predictor options for the in-flight measurement: a stream per core on a CPU (each
    call on one core), two execution contexts on a GPU (copies of one overlap another's work)."""
    if backend not in STREAM_BACKENDS:
        return {}
    return {"streams": 2 if backend == "tensorrt" else max(2, cores)}


def batch_limit(predictor) -> int | None:
    """How many frames one call of ``predictor``'s model takes: None when the batch is dynamic."""
    return predictor.input_shape[0]


def _per_second(frames: int, run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return frames / (time.perf_counter() - start)


def _each(call: Callable[[list], object], cycles: list[list]) -> None:
    for frames in cycles:
        call(frames)


def measure(predictor, in_flight, images: list[np.ndarray], cameras: tuple[int, ...], frames: int) -> dict:
    """Frames per second (all cameras together) for each camera count: ``frames`` frames through
    ``in_flight.stream`` (frames in flight do not care which camera each came from, so one
    measurement serves every count), and one batched call per cycle on ``predictor`` where its
    model takes the batch; the cameras' frames are ``images`` in turn."""
    frames = max(frames, *cameras)
    sequence = [images[i % len(images)] for i in range(frames)]
    list(in_flight.stream(sequence[:2]))  # warm-up: the streams' first calls
    in_flight_fps = _per_second(len(sequence), partial(list, in_flight.stream(sequence)))
    limit = batch_limit(predictor)
    results = {}
    for n in cameras:
        rates, entry = {"in flight": in_flight_fps}, {}
        if n > 1 and (limit is None or limit >= n):
            cycles = [sequence[i : i + n] for i in range(0, frames - n + 1, n)]
            predictor.predict_batch(cycles[0])  # warm-up at this batch size
            rates["batched"] = _per_second(n * len(cycles), partial(_each, predictor.predict_batch, cycles))
        elif n > 1:
            entry["batched"] = FIXED_BATCH.format(batch=limit)
        mode = max(rates, key=rates.get)
        entry.update({f"{m.replace(' ', '_')}_fps": fps for m, fps in rates.items()})
        entry.update(fps=rates[mode], mode=mode)
        results[str(n)] = entry
    return results


def pick_rows(configs: list, e2e_medians: dict[int, float], choice: str) -> list[int]:
    """The rows to measure: ``all`` timed rows, or (``fastest``) the fastest row by median
    end-to-end latency of each backend on each device (the official code's attention, a reference
    form, is left out)."""
    if choice == "none":
        return []
    if choice == "all":
        return sorted(e2e_medians)
    timed = [i for i in e2e_medians if configs[i].variant != EXPLICIT_ATTENTION]
    best: dict[tuple, int] = {}
    for i in timed:
        key = (configs[i].backend, configs[i].device)
        if key not in best or e2e_medians[i] < e2e_medians[best[key]]:
            best[key] = i
    return sorted(best.values())


def section(rows: list[dict], cameras: tuple[int, ...], frames: int) -> dict:
    """report.json's ``throughput``: per measured row its single-frame rate and each camera count's."""
    measured = []
    for row in rows:
        if "throughput" not in row:
            continue
        e2e = row.get("end_to_end") or {}
        measured.append(
            {
                "backend": row["backend"],
                "variant": row.get("variant"),
                "precision": row["precision"],
                "size": row["size"],
                "single_frame_fps": 1.0 / e2e["median"] if e2e.get("median") else None,
                **row["throughput"],
            }
        )
    return {"cameras": list(cameras), "frames": frames, "rows": measured}


def throughput_lines(data: dict) -> list[str]:
    """The report's table: frames per second for each camera count beside the single-frame rate."""
    block = data.get("throughput") or {}
    rows = block.get("rows") or []
    if not rows:
        return []
    cameras = block["cameras"]
    lines = [
        "",
        "## Frames per second for several cameras",
        "",
        "All cameras together, after the timed rounds: the faster of one batched call per cycle "
        "(`predict_batch`, where the model takes a batch) and the cameras' frames in flight (`stream`, "
        "with `streams` where the backend runs several calls at once); *one by one* is 1 / the median "
        f"end-to-end latency of the rounds. {block['frames']} frames per measurement; frames in flight add "
        "latency to each frame (up to the number in flight) for the throughput.",
        "",
        "| row | one by one | " + " | ".join(f"{n} camera{'s' if n > 1 else ''}" for n in cameras) + " |",
        "|" + "---|" * (2 + len(cameras)),
    ]
    for r in rows:
        name = f"{r['backend']} ({r['variant']})" if r.get("variant") else r["backend"]
        cells = []
        for n in cameras:
            entry = r.get("cameras", {}).get(str(n)) or {}
            cells.append(f"{entry['fps']:.2f} ({entry['mode']})" if "fps" in entry else "-")
        single = f"{r['single_frame_fps']:.2f}" if r.get("single_frame_fps") else "-"
        size = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(f"| {name} {r['precision']} {size} | {single} | " + " | ".join(cells) + " |")
    return lines
