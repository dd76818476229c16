"""References that travel with every artefact: ``<artefact>.reference.npz``.

Every export writes one beside what it writes: a few network inputs at the artefact's input size
(bundled photographs and, for INT8, images held out of calibration), their FP32 outputs, and the
metric and tolerance the artefact's precision is held to (FP32/FP16: ``MAX_REL_STD``, the worst
input counts; INT8: the metric of the model's output kind (``runtime.accuracy.int8_metric``:
``ABS_REL_ALIGNED`` for relative models, ``ABS_REL_SCALED`` for depth up to scale, ``ABS_REL_DEPTH``
for metres), the mean over the inputs the budget was measured on against the accuracy budget,
``runtime.verify_result``). The device that builds or loads the artefact checks it against them
(``runtime.verify``) with numpy and the backend library alone.

The file is a plain ``.npz`` read with ``allow_pickle=False``: ``image_<i>`` holds input i as an
``H x W x 3`` uint8 RGB image at the network size (the network input is its ImageNet
normalisation, exact float32 arithmetic on any machine, so the file stays small), ``output_<i>``
its FP32 output (``H x W`` float32), and ``meta`` a JSON string.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import InputError
from commands.runner import CommandError

from .accuracy import INT8_METRICS, MAX_REL_STD, compare, int8_metric, kind_metrics
from .io.files import atomic_write
from .metadata import artefact_digest
from .preprocessing import MEAN, STD
from .verify_result import InputCheck as InputCheck  # re-exported: the result types live there
from .verify_result import VerifyResult as VerifyResult
from .verify_result import judged_value, unmeasured_note
from .verify_result import worst_input as worst_input

FORMAT = "dav2-edge reference"
VERSION = 1
SUFFIX = ".reference.npz"
METRICS = (MAX_REL_STD, *INT8_METRICS)
# A run in bf16 (OpenVINO's default on CPUs with bf16 units, kept for FP16 IRs; precision="bf16"
# elsewhere) rounds every matrix input to an 8-bit mantissa. On vits at 518x518 with the parity
# weights, against FP32 on the two reference photographs: FP16 IR in bf16 max|a-b|/std 0.31 and
# 0.16, FP32 IR in bf16 0.26 and 0.15, where the largest weight sign-flipped gives 14 and 7. Such a
# run is held to this bound instead of its artefact's, and the result says so.
BF16_TOLERANCE = 1.0


class ReferenceFileError(InputError):
    """A reference that is missing, unreadable or made for another input size (exit code 2)."""


def reference_path(artefact: str | Path) -> Path:
    """``<artefact>.reference.npz`` beside the artefact."""
    artefact = Path(artefact)
    return artefact.with_name(artefact.name + SUFFIX)


def find_reference(artefact: str | Path) -> Path | None:
    """The reference beside ``artefact``, or ``None``."""
    path = reference_path(artefact)
    return path if path.is_file() else None


def network_input(image: np.ndarray) -> np.ndarray:
    """The ``(1, 3, H, W)`` float32 network input of an ``H x W x 3`` uint8 RGB image already at the
    network size: the arithmetic of ``runtime.preprocessing`` after its resize."""
    rgb = image.astype(np.float32)
    rgb *= np.float32(1.0 / 255.0)
    rgb -= MEAN
    rgb /= STD
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]


def image_of(batch: np.ndarray) -> np.ndarray:
    """The uint8 RGB image nearest to a normalised ``(1, 3, H, W)`` network input (for calibration
    images, which are kept normalised); the reference then holds the input this image gives."""
    rgb = batch[0].transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Reference:
    """Inputs (as uint8 RGB images at the network size), their FP32 outputs and what holds them."""

    images: list[np.ndarray]
    outputs: list[np.ndarray]
    meta: dict[str, Any]
    path: Path | None = None
    other_file: str = ""  # set by reference_for: the model is not the file this reference was written for

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def tolerance(self) -> float:
        return float(self.meta["tolerance"])

    @property
    def abs_rel_metric(self) -> str:
        """The AbsRel every check reports: the reference's own metric for INT8, else the one of the
        model's output kind (relative where the reference does not say)."""
        return self.metric if self.metric in INT8_METRICS else int8_metric(self.meta.get("output_kind"))

    @property
    def names(self) -> list[str]:
        return [item["name"] for item in self.meta["inputs"]]

    @property
    def in_budget(self) -> list[bool]:
        """Per input: whether the INT8 budget was measured on it (``runtime.verify_result``)."""
        return [item.get("budget") is True for item in self.meta["inputs"]]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(int(i.shape[0]), int(i.shape[1])) for i in self.images]

    def tolerance_for(self, ran: str | None) -> float:
        """The bound for a run in ``ran``: the artefact's, or the bf16 one for a bf16 run of a
        finer artefact."""
        if self.metric == MAX_REL_STD and ran == "bf16" and "bf16" not in str(self.meta.get("precision")):
            return max(self.tolerance, BF16_TOLERANCE)
        return self.tolerance

    def inputs(self) -> list[np.ndarray]:
        return [network_input(image) for image in self.images]

    def fits(self, fixed_hw: tuple[int, int] | None) -> None:
        """Raise ``ReferenceFileError`` when a fixed-shape model cannot take these inputs."""
        wrong = sorted({s for s in self.sizes if fixed_hw is not None and s != tuple(fixed_hw)})
        if wrong:
            sizes = ", ".join(f"{h}x{w}" for h, w in wrong)
            raise ReferenceFileError(
                f"{self.path or 'the reference'} holds inputs at {sizes} but the model takes "
                f"{fixed_hw[0]}x{fixed_hw[1]}: it belongs to another artefact; pass the model's own with --reference"
            )


def stamp_reference(artefact: str | Path, reference: Reference | None = None) -> None:
    """Record in the reference beside ``artefact`` the digest of the artefact as it is now (for
    artefacts written after their reference: a TensorRT engine). ``reference``: that reference as
    its writer holds it, so the file is not read back."""
    path = reference_path(artefact)
    reference = reference if reference is not None else load_reference(path)
    reference.meta["artefact_sha256"] = artefact_digest(artefact)
    save_reference(path, reference)


def make_meta(
    artefact: str | Path,
    precision: str,
    metric: str,
    tolerance: float,
    inputs: list[dict[str, Any]],
    against: str,
    **extra: Any,
) -> dict[str, Any]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return {
        "format": FORMAT,
        "version": VERSION,
        "artefact": Path(artefact).name,
        "precision": precision,
        "metric": metric,
        "tolerance": float(tolerance),
        "inputs": inputs,
        "outputs_from": against,
        **extra,
    }


def save_reference(path: str | Path, reference: Reference) -> Path:
    """Write ``reference`` to ``path`` atomically (temporary name, then rename)."""
    if len(reference.images) != len(reference.outputs) or not reference.images:
        raise ValueError(f"{len(reference.images)} inputs for {len(reference.outputs)} outputs")
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(reference.meta, sort_keys=True))}
    for index, (image, output) in enumerate(zip(reference.images, reference.outputs)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"input {index}: expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        if output.shape != image.shape[:2]:
            raise ValueError(f"output {index} has shape {output.shape}, its input {image.shape[:2]}")
        arrays[f"image_{index}"] = image
        arrays[f"output_{index}"] = np.asarray(output, dtype=np.float32)

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()  # np.savez adds ".npz" to names without it: write through a buffer
        np.savez_compressed(buffer, **arrays)
        tmp.write_bytes(buffer.getvalue())

    return atomic_write(path, write)


# What reading a damaged .npz raises: a truncated or empty file (BadZipFile, EOFError), flipped bits
# (zlib.error, BadZipFile's CRC check), arrays of the wrong kind (ValueError), missing ones (KeyError).
UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)


def _damaged(path: Path, what: str) -> ReferenceFileError:
    return ReferenceFileError(
        f"{path}: damaged reference: {what}; copy it again with its artefact, or re-export the model"
    )


def _check_meta(path: Path, meta: Any) -> int:
    """The number of inputs ``meta`` lists; ``ReferenceFileError`` for a meta this toolkit did not write."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ReferenceFileError(f"{path}: not a {FORMAT} file (write one by exporting the model again)")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _damaged(path, f"its format version is {version!r}, not a whole number")
    if version > VERSION:
        raise ReferenceFileError(f"{path}: reference format {version} is newer than this toolkit reads ({VERSION})")
    if meta.get("metric") not in METRICS:
        raise _damaged(path, f"unknown metric {meta.get('metric')!r}")
    tolerance = meta.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < float("inf"):
        raise _damaged(path, f"its tolerance {tolerance!r} is not a number >= 0")
    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _damaged(path, "it lists no inputs")
    if not all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in inputs):
        raise _damaged(path, "its inputs are not a list of named entries")
    return len(inputs)


def load_reference(path: str | Path) -> Reference:
    """Read a reference; ``ReferenceFileError`` (a usage error, exit code 2), one line naming the file
    and what is wrong, for anything missing, unreadable or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceFileError(f"{path}: no such reference file")
    if path.stat().st_size == 0:
        raise _damaged(path, "the file is empty")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            count = _check_meta(path, meta)
            images = [np.asarray(data[f"image_{i}"]) for i in range(count)]
            outputs = [np.asarray(data[f"output_{i}"]) for i in range(count)]
    except ReferenceFileError:
        raise
    except UNREADABLE as exc:  # not an npz, truncated, flipped bits, pickled data, missing arrays
        what = f"{exc.__class__.__name__}: {exc}".strip().splitlines()[0][:200]
        raise _damaged(path, f"it cannot be read ({what})") from None
    for index, (image, output) in enumerate(zip(images, outputs)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise _damaged(path, f"image_{index} is {image.dtype} {image.shape}, not an HxWx3 uint8 image")
        if output.shape != image.shape[:2] or output.dtype.kind != "f":
            want = f"the {image.shape[:2]} float map of its input"
            raise _damaged(path, f"output_{index} is {output.dtype} {output.shape}, not {want}")
        if not np.isfinite(output).all():
            raise _damaged(path, f"output_{index} holds values that are not finite")
    return Reference(images, [o.astype(np.float32) for o in outputs], meta, path)


def score(reference: Reference, outputs: list[np.ndarray], ran: str | None = None) -> VerifyResult:
    """How far ``outputs`` (one ``H x W`` or ``1 x H x W`` map per reference input, computed in the
    format ``ran``) are from the reference, in both metrics, judged by the reference's own."""
    checks = []
    for name, in_budget, got, want in zip(reference.names, reference.in_budget, outputs, reference.outputs):
        got = np.asarray(got, dtype=np.float32).reshape(want.shape)
        finite = bool(np.isfinite(got).all())
        max_rel_std = compare(got, want).max_rel_std if finite else float("nan")
        aligned = kind_metrics(got, want, reference.abs_rel_metric) if finite else {"abs_rel": np.nan, "delta1": np.nan}
        value = max_rel_std if reference.metric == MAX_REL_STD else aligned["abs_rel"]
        size = (int(want.shape[0]), int(want.shape[1]))
        checks.append(InputCheck(name, size, value, max_rel_std, aligned["abs_rel"], aligned["delta1"], in_budget))
    value, others_tolerance = judged_value(checks, reference.metric in INT8_METRICS)
    tolerance = reference.tolerance_for(ran)
    notes = [unmeasured_note(reference.meta), reference.other_file]
    if tolerance != reference.tolerance:
        notes.append(
            f"ran in {ran}, coarser than the {reference.meta.get('precision')} artefact: held to the {ran} bound "
            f"{tolerance:g} instead of {reference.tolerance:g}"
        )
    note = "; ".join(n for n in notes if n)
    result = VerifyResult(reference.metric, tolerance, checks, value, str(reference.path or ""), note=note)
    result.others_tolerance = others_tolerance
    result.abs_rel_metric = reference.abs_rel_metric
    result.other_file = reference.other_file
    return result


class ReferenceMismatch(CommandError):
    """An artefact whose outputs are over its reference's tolerance (exit code 1)."""

    def __init__(self, message: str, result: VerifyResult) -> None:
        super().__init__(message)
        self.result = result


def check_belongs(reference: Reference, model: Any) -> Reference:
    """``reference``, with ``other_file`` set where it records the digest of another file than
    ``model``: another artefact's reference, or the artefact changed since its export (the file
    alone cannot tell which); the check then says so instead of calling the artefact damaged."""
    recorded = reference.meta.get("artefact_sha256")
    if not isinstance(recorded, str) or not isinstance(model, (str, Path)) or not Path(model).is_file():
        return reference
    digest = artefact_digest(model)
    if digest != recorded:
        reference.other_file = (
            f"{reference.path} was written for {reference.meta.get('artefact')} (sha256 {recorded[:12]}) and "
            f"{model} is another file (sha256 {digest[:12]}): another artefact's reference, or a file changed since "
            "its export"
        )
    return reference


def reference_for(model: Any, reference: str | Path | None = None) -> Reference:
    """``reference`` when given, else the one beside the model file; ``ReferenceFileError`` when none,
    or when it belongs to another artefact (``check_belongs``)."""
    if reference is not None:
        return check_belongs(load_reference(reference), model)
    if not isinstance(model, (str, Path)):
        raise ReferenceFileError(f"a {type(model).__name__} has no reference beside it: pass one (--reference FILE)")
    found = find_reference(model)
    if found is None:
        raise ReferenceFileError(
            f"{model}: no reference beside it ({reference_path(model).name}); every export writes one "
            "(re-export the model, copy the .reference.npz along with it) or pass --reference FILE"
        )
    return check_belongs(load_reference(found), model)


def verify_backend(backend: Any, reference: Reference) -> VerifyResult:
    """Run every reference input through ``backend`` (a ``runtime.backends`` backend) and score it."""
    reference.fits(backend.input_spec.fixed_hw)
    own = getattr(backend, "output_kind", None)
    if not reference.meta.get("output_kind") and own is not None:  # a reference from before it was written
        reference.meta["output_kind"] = own.kind  # the artefact's own: its AbsRel in the kind's metric
    started = time.perf_counter()
    run = backend.infer_outputs if backend.extra_outputs else lambda b: {"depth": backend.infer(b)}
    runs = [run(batch) for batch in reference.inputs()]
    info = backend.info()
    result = score(reference, [run["depth"][0] for run in runs], info.get("precision"))
    broken = sorted({k for run in runs for k, v in run.items() if k != "depth" and not np.isfinite(v).all()})
    if broken:  # the reference holds depth; a sky map or confidence must at least be numbers (inf: FP16 overflow)
        result.value, result.note = float("nan"), "; ".join(filter(None, [result.note, f"non-finite {broken}"]))
    result.seconds = time.perf_counter() - started
    result.ran = {k: info.get(k) for k in ("backend", "device", "precision")}
    result.ran.update({k: info[k] for k in ("int8_arithmetic", "int8_made_for") if k in info})
    return result


def require_within(result: VerifyResult, model: Any) -> VerifyResult:
    """``result``, or ``ReferenceMismatch`` with the numbers when it is over its tolerance."""
    if result.passed:
        return result
    ran = result.ran
    if ran.get("int8_arithmetic") and not result.other_file:  # this CPU's INT8 kernels: name the arithmetic
        from .int8_cpu import budget_breach

        raise ReferenceMismatch(budget_breach(model, ran, result.summary()), result)
    why = (
        "The artefact is damaged or runs in another precision than it was exported for: re-export it, or check "
        "the precision= it runs with"
    )
    if result.other_file:
        why = f"{result.other_file}: pass the model's own reference (--reference FILE), or re-export the model"
    notes = "; ".join(n for n in result.note.split("; ") if n and n != result.other_file)
    raise ReferenceMismatch(
        f"{model} is over its reference's tolerance: {result.summary()} running on {ran.get('backend')} "
        f"({ran.get('device')}, {ran.get('precision')}); worst input {worst_input(result)}. {why}"
        f"{'; note: ' + notes if notes else ''}",
        result,
    )
