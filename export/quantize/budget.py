"""INT8 held to an accuracy budget: measure on held-out images, find the harmful layers, repair.

After calibration the INT8 model is compared with the FP32 model on images held out of the
calibration set (AbsRel after least-squares scale-and-shift alignment, the benchmark's metric).
Over budget, in this order:

1. LayerNorm-fed linears against the rest: when quantizing only the former costs more, the
   outliers are migrated into the weights (``export.quantize.smooth``) and the model is quantized again.
2. Sensitivity: each group of quantized layers (a transformer block, a DPT stage) is quantized
   alone and measured; in the worst group first, its worst layers (measured alone in turn) go
   back to float one at a time, then the next group's, until the budget holds.
3. If even that fails, the export stops with the numbers.

Everything is written to ``<artefact>.quant.json`` and summarised in the artefact's sidecar. The
TensorRT target's Q/DQ model is measured with ONNX Runtime's graph optimisations off, so the Q/DQ
pairs run as written (float simulation of the INT8 arithmetic, the same on every CPU) instead of
through this CPU's INT8 kernels; the ``cpu`` target is measured as ONNX Runtime runs it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.commands import stage
from runtime.io.files import atomic_write_bytes
from runtime.metadata import read_sidecar, write_sidecar

from ..errors import ExportError, ExportRequestError
from ..graph import load_onnx
from ..reference import write_int8_reference
from ..verify import ABS_REL_ALIGNED, OnnxRuntimeRunner, abs_rel
from .calibration import CalibrationSet
from .options import DEFAULT_ACCURACY_BUDGET, DEFAULT_METHOD, DEFAULT_PERCENTILE, SMOOTH_MODES, Int8Options
from .qdq import quantize_int8, select_nodes
from .smooth import find_sites, smooth


class HeldOutSplit:
    """A calibration set whose last ``held_out`` images are kept out of calibration, for measuring."""

    def __init__(self, calibration: CalibrationSet, held_out: int) -> None:
        if len(calibration) <= held_out:
            raise ExportRequestError(
                f"{len(calibration)} images cannot give {held_out} held-out images and calibration data: "
                "add images or lower --accuracy-images"
            )
        self.base, self.held_out = calibration, held_out
        self.key = f"{calibration.key}-h{held_out}"

    def __len__(self) -> int:
        return len(self.base) - self.held_out

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, sample in enumerate(self.base):
            if index == len(self):
                return
            yield sample

    def held_out_batches(self) -> list[np.ndarray]:
        return list(self.base)[len(self) :]

    def describe(self) -> dict:
        return {**self.base.describe(), "count": len(self), "held_out": self.held_out}

    @property
    def report(self):
        return self.base.report


def group_of(node: str) -> str:
    """``/pretrained/blocks.3/attn/qkv/MatMul`` -> ``pretrained/blocks.3``; DPT fusion stages by refinenet."""
    parts = node.strip("/").split("/")
    return "/".join(parts[:3] if len(parts) > 3 and parts[1] == "scratch" else parts[:2])


@dataclass
class BudgetResult:
    path: Path
    error: float
    plain_error: float
    smoothed: bool
    reverted: list[str] = field(default_factory=list)  # node names back in float
    quantized: list[str] = field(default_factory=list)
    seconds: float = 0.0


def quantize_with_budget(
    source: Path,
    split: HeldOutSplit,
    output: Path,
    budget: float = DEFAULT_ACCURACY_BUDGET,
    smooth_mode: str = "auto",
    method: str | None = None,
    target: str = "tensorrt",
    keep_fp: tuple[str, ...] = (),
    cache_dir: Path | None = None,
    log=print,
    percentile: float | None = None,
) -> BudgetResult:
    """Calibrated INT8 of ``source`` at ``output`` whose held-out error stays within ``budget``."""
    if smooth_mode not in SMOOTH_MODES:
        raise ExportRequestError(f"--smooth must be one of {', '.join(SMOOTH_MODES)}, got {smooth_mode!r}")
    method = method or DEFAULT_METHOD
    percentile = percentile or DEFAULT_PERCENTILE
    started = time.perf_counter()
    held = split.held_out_batches()
    references = OnnxRuntimeRunner(source).run_all(held)
    as_written = target == "tensorrt"
    source_model = load_onnx(source)
    workdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.budget.", dir=output.parent))
    cache_dir = cache_dir or workdir  # every attempt reuses one calibration pass per model
    try:
        record: dict = {"budget": budget, "metric": ABS_REL_ALIGNED, "held_out_images": len(held), "target": target}

        def attempt(model: Path, keep: tuple[str, ...], path: Path = workdir / "probe.onnx") -> tuple[float, list]:
            result = quantize_int8(model, split, path, method, target, keep, percentile, cache_dir)
            return abs_rel(OnnxRuntimeRunner(path, as_written).run_all(held), references), result.quantized

        candidates, _ = select_nodes(source_model, ())
        model = source
        smoothed = smooth_mode == "on"

        def smooth_source() -> int:
            sites = smooth(source_model, source, workdir / "smoothed.onnx", split)
            write_sidecar(workdir / "smoothed.onnx", {**(read_sidecar(source) or {}), "smoothed": sites})
            return sites

        if smoothed:
            sites = smooth_source()
            model = workdir / "smoothed.onnx"
            record["smoothing"] = {"used": True, "why": "asked (--smooth on)", "sites": sites}
        error, quantized = attempt(model, keep_fp)
        record["plain_error"] = plain = error
        log(f"INT8 error on {len(held)} held-out images: AbsRel {error:.4f} (budget {budget})")

        if error > budget and smooth_mode == "auto":
            ln_fed = {m.name for s in find_sites(source_model) for m in s.matmuls} & set(quantized)
            if ln_fed:
                others = tuple(n for n in candidates if n not in ln_fed)
                ln_error, _ = attempt(source, keep_fp + others)
                rest_error, _ = attempt(source, keep_fp + tuple(ln_fed))
                record["smoothing"] = {"ln_fed_only_error": ln_error, "others_only_error": rest_error}
                if ln_error > rest_error:
                    sites = smooth_source()
                    smooth_error, smooth_quantized = attempt(workdir / "smoothed.onnx", keep_fp)
                    record["smoothing"].update(sites=sites, error=smooth_error)
                    log(
                        f"LayerNorm-fed linears dominate (alone {ln_error:.4f} vs the rest {rest_error:.4f}): "
                        f"outliers migrated at {sites} LayerNorms -> AbsRel {smooth_error:.4f}"
                    )
                    if smooth_error < error:
                        model, smoothed, error, quantized = (
                            workdir / "smoothed.onnx",
                            True,
                            smooth_error,
                            smooth_quantized,
                        )
                record["smoothing"]["used"] = smoothed

        reverted: list[str] = []
        if error > budget:
            groups: dict[str, list[str]] = {}
            for name in quantized:
                groups.setdefault(group_of(name), []).append(name)
            log(f"over budget: measuring {len(groups)} groups of quantized layers one at a time ...")
            sensitivity = {}
            for group, names in groups.items():
                alone = tuple(n for n in candidates if n not in names)
                sensitivity[group], _ = attempt(model, keep_fp + alone)
            ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
            record["sensitivity"] = [
                {"group": g, "layers": len(groups[g]), "error_alone": sensitivity[g]} for g in ranked
            ]
            log(_table(record["sensitivity"]))
            steps = []
            in_int8 = len(quantized)
            for group in ranked:
                # Within the group, the layers that hurt most alone go back first, and only those
                # that hurt at least half as much as its worst: the others cost speed for nothing.
                order = groups[group]
                if len(order) > 1:
                    alone = {n: attempt(model, keep_fp + tuple(c for c in candidates if c != n))[0] for n in order}
                    worst = max(alone.values())
                    order = sorted((n for n in order if alone[n] >= worst / 2), key=alone.get, reverse=True)
                for name in order:
                    if len(reverted) + 1 >= in_int8:  # nothing would be left in INT8
                        break
                    reverted.append(name)
                    error, quantized = attempt(model, keep_fp + tuple(reverted))
                    steps.append({"reverted": name, "error": error})
                    log(f"  {name} back to float: AbsRel {error:.4f}")
                    if error <= budget:
                        break
                if error <= budget:
                    break
            record["reverts"] = steps
            if error > budget:
                raise ExportError(
                    f"INT8 misses the accuracy budget even with the harmful layers of every group back in float: "
                    f"AbsRel {error:.4f} with {len(reverted)} layers in float > {budget} (plain INT8 {plain:.4f}); "
                    "raise --accuracy-budget or use FP16"
                )
        final = quantize_int8(model, split, output, method, target, keep_fp + tuple(reverted), percentile, cache_dir)
        record.update(
            error=error,
            int8_layers=len(final.quantized),
            float_layers=len(reverted),
            reverted=reverted,
            smoothed=smoothed,
            seconds=round(time.perf_counter() - started, 1),
        )
        atomic_write_bytes(quant_report_path(output), (json.dumps(record, indent=2) + "\n").encode())
        meta = read_sidecar(output) or {}
        meta["accuracy"] = {
            k: record[k]
            for k in ("budget", "metric", "error", "plain_error", "int8_layers", "float_layers", "smoothed")
        }
        meta.pop("artefact", None)
        meta.pop("schema_version", None)
        write_sidecar(output, meta)
        return BudgetResult(output, error, plain, smoothed, reverted, final.quantized, record["seconds"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def quant_report_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + ".quant.json")


def _table(rows: list[dict]) -> str:
    lines = ["  | layer group | INT8 layers | AbsRel with only it in INT8 |", "  |---|---|---|"]
    lines += [f"  | {r['group']} | {r['layers']} | {r['error_alone']:.4f} |" for r in rows]
    return "\n".join(lines)


def export_int8(source: Path, output: Path, options: Int8Options, shape: tuple[int, int], target: str) -> dict:
    """The INT8 step of export.trt and export.quantize: calibrate on ``options.samples`` images
    (plus ``options.held_out`` more to measure on, when a budget is set) at ``shape`` and
    quantize for ``target``; returns the calibration record."""
    cache = output.parent / ".calib_cache"
    budget = options.budget
    extra = options.held_out if budget is not None else 0
    with stage("reading calibration images"):
        calibration = CalibrationSet(
            options.calib_dir, options.samples + extra, shape, options.seed, cache, options.allow_fewer
        )
    print(calibration.report.summary())
    with stage("calibrating and quantizing"):
        if budget is None:
            result = quantize_int8(
                source, calibration, output, options.method, target, options.keep_fp, options.percentile, cache
            )
            print(f"INT8 Q/DQ: {len(result.quantized)} layers INT8, no accuracy check (--accuracy-budget off)")
            write_int8_reference(output, source, shape, (), None)
            return calibration.describe()
        split = HeldOutSplit(calibration, extra)
        checked = quantize_with_budget(
            source,
            split,
            output,
            budget,
            options.smooth,
            options.method,
            target,
            options.keep_fp,
            cache,
            percentile=options.percentile,
        )
    notes = f", {len(checked.reverted)} back in float" if checked.reverted else ""
    notes += ", outliers migrated" if checked.smoothed else ""
    print(
        f"INT8 Q/DQ: {len(checked.quantized)} layers INT8{notes}; AbsRel vs FP32 {checked.error:.4f} on {extra} "
        f"held-out images (budget {budget}; report {quant_report_path(output)})"
    )
    write_int8_reference(output, source, shape, split.held_out_batches(), budget)
    return split.describe()
