"""INT8 held to an accuracy budget: the images, the ONNX Q/DQ path of the method, and its report.

After calibration the INT8 model is compared with the FP32 model on images held out of the
calibration set (AbsRel by the metric of its output kind, ``export.metrics.int8_measure``: after a
scale-and-shift fit in disparity for relative models, after a scale fit in depth for depth up to
scale, unaligned for metres; a DA3 network's sky mask and depth confidence within the same budget);
over budget, ``export.quantize.search`` decides on outlier migration (``export.quantize.smooth``)
and which layers go back to float, measuring each choice by removing Q/DQ pairs from one
quantized graph (``export.quantize.probes``). The last probe's model is the artefact: nothing is
quantized again at the end.

Everything is written to ``<artefact>.quant.json``, also when the export is refused, and
summarised in the artefact's sidecar. The TensorRT target's Q/DQ model is measured with ONNX
Runtime running the Q/DQ pairs as written (float simulation of the INT8 arithmetic, the same on
every CPU) instead of through this CPU's INT8 kernels; the ``cpu`` target with the arithmetic of the
CPUs it is for (``export.quantize.arithmetic``): ONNX Runtime's kernels where this CPU is of that
class, else as written.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from commands.runner import stage
from runtime.io.files import atomic_write, atomic_write_bytes, staging_dir
from runtime.metadata import artefact_digest, sidecar_path
from runtime.reference import image_of, network_input

from ..artefact import Artefact
from ..errors import ExportError, ExportRequestError
from ..graph import load_onnx, save_onnx
from ..metrics import OnnxRuntimeRunner, int8_measure
from ..reference import write_int8_reference
from .arithmetic import CpuPlan
from .calibration import MIN_IMAGES, CalibrationError, CalibrationSet
from .options import BUDGET_DEFAULTS, Int8Options
from .probes import QdqProbes
from .qdq import quantize_int8, select_nodes
from .search import Search, suggestion
from .smooth import DEFAULT_ALPHA, find_sites, smooth

# With --allow-fewer, the held-out share shrinks first, to no fewer than this many images.
MIN_HELD_OUT = 2


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
        """The held-out images as the reference beside the artefact will hold them (8-bit RGB,
        ``runtime.reference.image_of``, normalised again): the budget is measured on exactly the
        inputs ``runtime.verify`` runs, not on float resizes an 8-bit image cannot give."""
        return [network_input(image_of(batch)) for batch in list(self.base)[len(self) :]]

    def describe(self) -> dict:
        return {**self.base.describe(), "count": len(self), "held_out": self.held_out}

    @property
    def report(self):
        return self.base.report

    def summary(self) -> str:
        return self.report.summary(f"{len(self)} calibration + {self.held_out} held-out accuracy images")


def read_int8_images(
    options: Int8Options, shape: tuple[int, int], cache_dir: Path | None, progress: bool = True
) -> CalibrationSet | HeldOutSplit:
    """``options.samples`` calibration images from ``options.calib_dir`` at ``shape``, and with a
    budget ``options.held_out`` more to measure on (a ``HeldOutSplit``).

    Short of usable images the request is refused, saying what was asked and found; with
    ``allow_fewer`` the held-out share shrinks first (to ``MIN_HELD_OUT``), then the calibration
    share (to ``min(samples, MIN_IMAGES)``), and below that it is refused too.
    """
    held = options.held_out if options.budget is not None else 0
    calibration, wanted = options.samples, options.samples + held
    images = CalibrationSet(options.calib_dir, wanted, shape, options.seed, cache_dir, progress=progress, minimum=0)
    found = len(images)
    asked = f"{calibration} calibration" + (f" + {held} held-out accuracy" if held else "") + " images"
    if found < wanted:
        if not options.allow_fewer:
            lower = "`int8.samples` or `int8.held_out`" if held else "`int8.samples`"
            raise CalibrationError(
                f"{options.calib_dir}: asked for {asked}, {found} found usable ({images.report.summary()}); "
                f"add images, lower {lower}, or pass `int8.allow_fewer`"
            )
        held = min(held, max(MIN_HELD_OUT, found - calibration))
        floor = min(calibration, MIN_IMAGES)
        if found - held < floor:
            least = f"{floor} calibration" + (f" + {held} held-out accuracy" if held else "") + " images"
            raise CalibrationError(
                f"{options.calib_dir}: asked for {asked}, {found} found usable ({images.report.summary()}); "
                f"`int8.allow_fewer` accepts no fewer than {least}: add images"
            )
        print(f"--allow-fewer: asked for {asked}, {found} found usable; using {found - held} + {held}")
    if not held:
        print(images.report.summary())
        return images
    split = HeldOutSplit(images, held)
    print(split.summary())
    return split


def check_float_layers(names: tuple[str, ...], known: list[str], what: str) -> None:
    """Every name of ``--float-layers`` must be one of ``known`` (the layers INT8 would quantize)."""
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(known)} such layers in this model)"
            raise ExportRequestError(f"`int8.float_layers`: {name!r} is not a layer {what} quantizes{hint}")


@dataclass
class BudgetResult:
    path: Path
    error: float
    plain_error: float
    smoothed: bool
    reverted: list[str] = field(default_factory=list)  # node names the search put back in float
    quantized: list[str] = field(default_factory=list)
    seconds: float = 0.0
    artefact: Artefact | None = None
    metric: str = "AbsRel"  # the metric's short name, with the extra outputs it also holds


def quantize_with_budget(
    source: Path | Artefact,
    split: HeldOutSplit,
    output: Path,
    options: Int8Options = BUDGET_DEFAULTS,
    target: str = "tensorrt",
    cache_dir: Path | None = None,
    log=print,
) -> BudgetResult:
    """Calibrated INT8 of ``source`` (a path, or its record) at ``output`` whose held-out error
    stays within ``options.budget``, with ``options.float_layers`` (node names) in float from the
    start; for the ``cpu`` target, for the CPUs of ``options.int8_arithmetic`` and measured with
    it. The result carries the artefact's record, written to its sidecar once, at the end."""
    source = Artefact.of(source)
    budget, method, percentile, float_layers = options.budget, options.method, options.percentile, options.float_layers
    arithmetic = options.int8_arithmetic if target == "cpu" else "auto"
    source_model = load_onnx(source.path)
    check_float_layers(float_layers, select_nodes(source_model, ())[0], "ONNX Q/DQ")
    # Exact names as patterns: glob.escape keeps a name with [ or * meaning itself.
    keep = tuple(options.keep_fp) + tuple(glob.escape(name) for name in float_layers)
    held = split.held_out_batches()
    measure = int8_measure(source.path)
    with stage("running the FP32 model on the held-out images"):
        runner = OnnxRuntimeRunner(source.path)
        references = [runner.outputs(batch) for batch in held]
    workdir = staging_dir(output)  # .<name>.<pid>-<host>.<random>: the next run removes it if this one is killed
    cache_dir = cache_dir or workdir  # every base model is calibrated once
    bases: dict[bool, tuple[Path, list[str]]] = {}

    def make(smoothed: bool) -> QdqProbes:
        model, key = source, None
        if smoothed:  # a function of the source, the calibration images and alpha: keyed by them
            model = replace(source.without("sha256"), path=workdir / "smoothed.onnx")
            smooth(source_model, model.path, split)
            key = hashlib.sha256(f"{source.sha256} smoothed {DEFAULT_ALPHA}".encode()).hexdigest()
        base = workdir / ("smoothed" if smoothed else "plain") / output.name
        base.parent.mkdir()
        with stage("calibrating and quantizing"):
            result = quantize_int8(
                model,
                split,
                base,
                method=method,
                target=target,
                keep_fp=keep,
                percentile=percentile,
                cache_dir=cache_dir,
                arithmetic=arithmetic,
                write=False,
                model_key=key,
            )
        bases[smoothed] = (base, result.quantized, result.artefact)
        as_written = target == "tensorrt" or not CpuPlan.of(arithmetic).native
        return QdqProbes(base, model.path, result.quantized, target, held, references, workdir, as_written, measure)

    try:
        search = Search(make, budget, log, float_layers)
        with stage("measuring INT8 layers against the held-out images"):
            outcome = search.run(options.smooth, {m.name for s in find_sites(source_model) for m in s.matmuls})
        base, quantized, based = bases[outcome.smoothed]
        record = {
            "budget": budget,
            "metric": measure.metric,
            **({"extra_outputs": list(measure.extras)} if measure.extras else {}),
            "method": "sensitivity",
            "target": target,
            "calibration_images": len(split),
            "held_out_images": len(held),
            **search.report(outcome),
            "error": outcome.error,
            "int8_layers": len(quantized) - len(outcome.floats),
            "float_layers": [*float_layers, *outcome.floats],
            "reverted": outcome.floats,
            "smoothed": outcome.smoothed,
            "accepted": outcome.met,
        }
        record["errors"] = outcome.prober.parts(frozenset(outcome.floats))  # depth and each extra output
        report = quant_report_path(output)
        if not outcome.met:
            write_report(report, record)
            raise ExportError(
                f"INT8 misses the accuracy budget: {measure.label()} {outcome.error:.4f} > {budget} with "
                f"{len(outcome.floats)} layers back in float (plain INT8 {outcome.plain_error:.4f}); "
                f"{suggestion(record['would_meet_budget'], str(report))}; nothing was written. "
                "Raise --accuracy-budget, or use FP16"
            )
        if outcome.floats:  # the last probe's model is the artefact
            probe = outcome.prober.build(frozenset(outcome.floats))
            atomic_write(output, lambda tmp: save_onnx(probe, tmp, location=output.name + ".data"))
        else:  # the calibrated model as quantize_int8 wrote it (with its external data, if any)
            for item in sorted(base.parent.glob(base.name + "*"), key=lambda p: p.name == base.name):
                if item != sidecar_path(base):
                    item.replace(output.parent / item.name)
        write_report(report, record)
        quantization = {
            **based.get("quantization"),
            "quantized_nodes": record["int8_layers"],
            "float_layers": record["float_layers"],
        }
        accuracy = {
            k: record[k]
            for k in ("budget", "metric", "method", "error", "errors", "plain_error", "int8_layers", "float_layers")
        }
        accuracy["smoothed"] = record["smoothed"]
        # The calibrated model moved here is the bytes quantize_int8 hashed; a probe's model is new.
        digest = artefact_digest(output) if outcome.floats else based.sha256
        made = replace(based, path=output).updated(
            quantization=quantization, **source.source_facts(), sha256=digest, accuracy=accuracy
        )
        made.write()
        quantized_now = [n for n in quantized if n not in outcome.floats]
        return BudgetResult(
            output,
            outcome.error,
            outcome.plain_error,
            outcome.smoothed,
            outcome.floats,
            quantized_now,
            record["seconds"],
            made,
            measure.label(),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def quant_report_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + ".quant.json")


def write_report(path: Path, record: dict) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())


def export_int8(source: Artefact, output: Path, options: Int8Options, shape: tuple[int, int], target: str) -> Artefact:
    """The INT8 step of export.trt and export.quantize: calibrate on ``options.samples`` images
    (plus ``options.held_out`` more to measure on, when a budget is set) at ``shape`` and
    quantize ``source`` for ``target``; returns the record of the INT8 ONNX (its sidecar written)."""
    if options.accuracy_method != "sensitivity":
        raise ExportRequestError("`accuracy_method='nncf'` is OpenVINO's (python -m export.openvino --int8)")
    from ..video import is_stream_onnx
    from .stream_qdq import check_stream_target, export_stream_int8

    stream = is_stream_onnx(source.path)  # Video Depth Anything: calibrated and measured as a stream
    if stream:
        check_stream_target(source.path, target)
        check_float_layers(options.float_layers, select_nodes(load_onnx(source.path), ())[0], "ONNX Q/DQ")
    cache = output.parent / ".calib_cache"
    with stage("reading calibration images"):
        images = read_int8_images(options, shape, cache)
    if stream:
        return export_stream_int8(source, output, options, images, cache)
    keep = tuple(options.keep_fp) + tuple(glob.escape(name) for name in options.float_layers)
    with stage("calibrating and quantizing"):
        if options.budget is None:
            check_float_layers(options.float_layers, select_nodes(load_onnx(source.path), ())[0], "ONNX Q/DQ")
            arithmetic = options.int8_arithmetic if target == "cpu" else "auto"
            result = quantize_int8(
                source,
                images,
                output,
                method=options.method,
                target=target,
                keep_fp=keep,
                percentile=options.percentile,
                cache_dir=cache,
                arithmetic=arithmetic,
                write=False,
            )
            print(f"INT8 Q/DQ: {len(result.quantized)} layers INT8, no accuracy check (accuracy budget off)")
            reference = write_int8_reference(result.artefact, source, shape, (), None)
            return result.artefact.with_reference(reference).write()
    checked = quantize_with_budget(source, images, output, options, target, cache)
    floats = len(checked.reverted) + len(options.float_layers)
    notes = f", {floats} back in float" if floats else ""
    notes += ", outliers migrated" if checked.smoothed else ""
    print(
        f"INT8 Q/DQ: {len(checked.quantized)} layers INT8{notes}; AbsRel vs FP32 {checked.error:.4f} on "
        f"{images.held_out} held-out images (budget {options.budget}; by {checked.metric}; report "
        f"{quant_report_path(output)}, {checked.seconds:.0f} s)"
    )
    reference = write_int8_reference(checked.artefact, source, shape, images.held_out_batches(), options.budget)
    return checked.artefact.with_reference(reference)
