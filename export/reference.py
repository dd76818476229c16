"""The reference every export writes beside its artefact (the file format is ``runtime.reference``'s).

A reference holds a few network inputs at the artefact's input size (bundled photographs, and for
INT8 the images held out of calibration), their FP32 outputs, and the metric and tolerance of the
artefact's precision. ``make_reference`` makes one from an FP32 runner (PyTorch for
``export.onnx``, ONNX Runtime on the FP32 source ONNX for the others), reusing the source's own
reference where it has inputs at the wanted sizes: so an engine built on a Jetson from a Q/DQ ONNX
(where neither PyTorch nor the FP32 model exist) inherits the reference that travelled with it.

Python 3.8 clean: ``export.trt`` writes references on JetPack 5.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from runtime.accuracy import FP16_TOLERANCE as FP16_TOLERANCE  # where export.openvino and the tests look
from runtime.accuracy import precision_rule
from runtime.inherited_reference import carried_inputs
from runtime.metadata import artefact_digest
from runtime.reference import (
    Reference,
    find_reference,
    image_of,
    load_reference,
    make_meta,
    network_input,
    reference_path,
    save_reference,
)
from runtime.verify_result import BROKEN_INT8_TOLERANCE

from .artefact import Artefact
from .metrics import verification_photos

PHOTOS = ("motorcycle_left.png", "chelsea.png")
# An INT8 export made with --accuracy-budget off has no measured accuracy: its reference holds it to
# this loose bound (aligned AbsRel on the photographs), which tells a broken artefact from a working
# one and says nothing of how precise it is; the reference records "measured": false.
UNMEASURED_INT8_TOLERANCE = BROKEN_INT8_TOLERANCE

Runner = Callable[[np.ndarray], np.ndarray]  # (1, 3, H, W) float32 -> (1, H, W) FP32 output


def other_size(height: int, width: int) -> tuple[int, int]:
    """The second size of a dynamic artefact's reference: 3/4 the height, 5/4 the width (another
    aspect ratio, about the same work), in multiples of 14."""
    return max(14, round(height * 0.75 / 14) * 14), max(14, round(width * 1.25 / 14) * 14)


def _photos_at(size: tuple[int, int], names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    photos = verification_photos(names)
    height, width = size
    return [
        (name, cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (width, height), interpolation=cv2.INTER_CUBIC))
        for name, bgr in photos.items()
    ]


def make_reference(
    artefact: str | Path,
    precision: str,
    sizes: Sequence[tuple[int, int]] | None,
    runner: Runner | None = None,
    against: str = "",
    source: str | Path | Artefact | None = None,
    held_out: Sequence[np.ndarray] = (),
    budget: float | None = None,
    default_sizes: Sequence[tuple[int, int]] = (),
    sha256: str | None = None,
    **extra,
) -> Reference | None:
    """Write ``<artefact>.reference.npz`` and return it as written (its ``path`` set), or ``None``
    (with a note) when neither the source's reference nor an FP32 runner can give one.

    ``sizes``: the artefact's input size, or for a dynamic artefact its main size and one other;
    ``None``: the sizes of the source's reference, else ``default_sizes``.
    Inputs come from the reference of ``source`` (a record, or a file given from outside the run)
    at those sizes; sizes it lacks get bundled photographs (two for a static artefact, one per size
    for a dynamic one) and ``held_out`` calibration batches (normalised ``(1, 3, H, W)``) are
    added, both run through ``runner``: all of them, each marked as an input the budget was
    measured on (where a budget was measured), so the reference judges exactly what the export
    did. ``sha256``: the artefact's digest where its step has taken
    it already (for its record: the same bytes are not hashed twice); else taken here.
    """
    base_ref = source_reference(source)
    if sizes is None:
        sizes = list(dict.fromkeys(base_ref.sizes)) if base_ref is not None else default_sizes
    sizes = [tuple(int(v) for v in s) for s in sizes]
    images, outputs, inputs, carried = carried_inputs(base_ref, sizes) if base_ref is not None else ([], [], [], {})
    if budget is None and "budget" in carried:
        budget = carried["budget"]  # an INT8 source's budget carries over to what is built from it
        if carried.get("measured", True) is False:
            extra = {"measured": False, **extra}  # and so does an unmeasured one's loose bound
    # A static artefact gets two photographs; a dynamic one a photograph per size.
    names = {sizes[0]: PHOTOS} if len(sizes) == 1 else {s: (PHOTOS[i % len(PHOTOS)],) for i, s in enumerate(sizes)}
    new: list[tuple[str, str, np.ndarray, dict]] = []
    for size in sizes:
        if all(tuple(i.shape[:2]) != size for i in images):
            new += [(name, "bundled photograph", image, {}) for name, image in _photos_at(size, names[size])]
    # Every image the budget was measured on, marked so (``runtime.verify_result``): the reference's
    # check then takes the budget's number over exactly those, as the export did.
    measured = budget is not None and extra.get("measured", True) is not False
    for index, batch in enumerate(held_out):
        image = image_of(batch)
        same = tuple(image.shape[:2]) in sizes
        if not same:
            image = cv2.resize(image, (sizes[0][1], sizes[0][0]), interpolation=cv2.INTER_CUBIC)
        marks = {"budget": True} if measured and same else {}
        new.append((f"held_out_{index}", "calibration image held out of calibration", image, marks))
    if new and runner is None:
        print(
            f"note: no FP32 model here to compute reference outputs for {len(new)} inputs of {Path(artefact).name}; "
            "its reference keeps what its source's reference holds",
            file=sys.stderr,
        )
        new = []
    for name, origin, image, marks in new:
        images.append(image)
        outputs.append(np.asarray(runner(network_input(image)), dtype=np.float32).reshape(image.shape[:2]))
        inputs.append({"name": name, "source": origin, "size": list(image.shape[:2]), "outputs_from": against, **marks})
    if not images:
        print(f"note: {Path(artefact).name} has no reference (no source reference, no FP32 model)", file=sys.stderr)
        return None
    kind = source_kind(source, base_ref)
    metric, tolerance = precision_rule(precision, budget, kind)
    if carried.get("metric") and "int8" in precision:
        metric = carried["metric"]  # an INT8 source's metric carries over with its budget
    if kind is not None:
        extra = {"output_kind": kind, **extra}
    origins = "; ".join(dict.fromkeys(item["outputs_from"] for item in inputs))
    meta = make_meta(artefact, precision, metric, tolerance, inputs, origins, **extra)
    if sha256 is None and Path(artefact).is_file():
        sha256 = artefact_digest(artefact)
    if sha256 is not None:  # which artefact this is the reference of (an engine: stamped once built)
        meta["artefact_sha256"] = sha256
    made = Reference(images, outputs, meta)
    made.path = save_reference(reference_path(artefact), made)
    return made


def source_kind(source: str | Path | Artefact | None, base: Reference | None) -> str | None:
    """The output kind of ``source`` (its record, its ONNX metadata, or its reference), or ``None``."""
    if isinstance(source, Artefact):
        return source.output_kind().kind
    if source is not None and Path(source).suffix == ".onnx" and Path(source).is_file():
        from .graph import onnx_output_kind

        return onnx_output_kind(source).kind
    return base.meta.get("output_kind") if base is not None else None


def source_reference(source: str | Path | Artefact | None) -> Reference | None:
    """The reference of ``source``: as its record holds it, or read from beside a file given from
    outside the run."""
    if isinstance(source, Artefact):
        if source.reference is not None and source.reference_data is None:
            raise ValueError(f"the record of {source.path} names its reference without holding it (with_reference)")
        return source.reference_data
    found = find_reference(source) if source is not None else None
    return load_reference(found) if found is not None else None


def torch_runner(model) -> Runner:
    """An FP32 runner of a ``DepthAnythingV2`` on the CPU."""
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    return run


def onnx_runner(path: str | Path) -> Runner | None:
    """ONNX Runtime FP32 on ``path``, or ``None`` where ONNX Runtime is not installed (a Jetson)."""
    from commands.errors import MissingDependencyError

    from .metrics import OnnxRuntimeRunner

    try:
        return OnnxRuntimeRunner(path)
    except MissingDependencyError:
        return None


def write_int8_reference(
    output: Path | Artefact,
    source: Path | Artefact,
    shape: tuple[int, int],
    held_out: Sequence[np.ndarray],
    budget: float | None,
) -> Reference | None:
    """The reference of ``output``, an INT8 Q/DQ ONNX (or its record, whose hash it reuses)
    quantized from the FP32 ``source`` at ``shape``: FP32
    outputs of the source on photographs and the held-out calibration images, held to ``budget``.
    ``budget=None`` (``--accuracy-budget off``, nothing measured): the reference says it is
    unmeasured and holds the artefact only to ``UNMEASURED_INT8_TOLERANCE``, a broken-artefact bound."""
    from .graph import input_hw, load_onnx

    source = Artefact.of(source)
    dynamic = input_hw(load_onnx(source.path, load_external_data=False)) is None
    sizes = [shape, other_size(*shape)] if dynamic else [shape]
    against = "ONNX Runtime FP32 on the source ONNX"
    extra = {} if budget is not None else {"measured": False}
    budget = budget if budget is not None else UNMEASURED_INT8_TOLERANCE
    runner = onnx_runner(source.path)
    path, sha256 = _path_and_hash(output)
    return make_reference(path, "int8", sizes, runner, against, source, held_out, budget, sha256=sha256, **extra)


def write_typed_reference(
    output: Path | Artefact,
    source: Path | Artefact,
    sizes: Sequence[tuple[int, int]] | None = None,
    precision: str = "fp16",
) -> Reference | None:
    """The reference of ``output``, a copy of ``source`` (FP32 or Q/DQ INT8; a path or its record)
    typed to ``precision`` (``fp32``: the source itself, as a TensorRT build reads it): the
    source's inputs and FP32 outputs (ONNX Runtime on an FP32 source where the source has none),
    held to that precision's bound, or to the INT8 budget for a Q/DQ source. ``sizes``: default
    the source's input size. ``output`` as a record: its hash is reused, not taken again."""
    from .graph import input_hw, is_quantized, load_onnx

    path = source.path if isinstance(source, Artefact) else source
    model = load_onnx(path, load_external_data=False)
    hw = input_hw(model)
    own = [hw] if hw else [(518, 518), other_size(518, 518)]
    quantized = is_quantized(model)
    runner = None if quantized else onnx_runner(path)  # a Q/DQ model's outputs are not FP32 outputs
    against = "ONNX Runtime FP32 on the source ONNX"
    precision = "int8" if quantized else precision
    path, sha256 = _path_and_hash(output)
    return make_reference(path, precision, sizes, runner, against, source, default_sizes=own, sha256=sha256)


def _path_and_hash(output: Path | Artefact) -> tuple[Path, str | None]:
    """An artefact's path and, given its record, the hash its step took."""
    return (output.path, output.get("sha256")) if isinstance(output, Artefact) else (Path(output), None)
