"""What an export starts from: the source model, the sizes and precisions it may be asked for,
and the names its outputs take by default."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from commands.errors import InputError
from runtime.io.files import check_writable_folder
from runtime.preprocessing import PATCH_SIZE

from .errors import ExportRequestError

PRECISIONS = ("fp16", "int8", "fp32")  # what export.openvino and export.trt build


def check_hw(height: int, width: int, what: str = "input") -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if value < PATCH_SIZE or value % PATCH_SIZE:
            near = max(PATCH_SIZE, round(value / PATCH_SIZE) * PATCH_SIZE)
            raise ExportRequestError(f"{what} {name} {value} must be a positive multiple of {PATCH_SIZE} (try {near})")
    return height, width


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ExportRequestError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def load_source_model(checkpoint: str | Path | None, encoder: str | None, variant: str | None = None) -> Any:
    """The PyTorch model to export: a checkpoint, or random weights of ``encoder`` (with a warning)."""
    from train.models import CheckpointError, DepthAnythingV2, load_model

    if checkpoint is not None:
        try:
            model = load_model(checkpoint, encoder=encoder, variant=variant)
        except CheckpointError as exc:
            raise ExportRequestError(str(exc)) from exc
        # A Depth Anything 3 network as loaded: export_onnx traces its depth with its sky map or
        # depth confidence (``deployable(extras=True)``); its deployable form would drop them.
        return model
    if encoder is None:
        raise ExportRequestError("give `checkpoint` (a .pth/.safetensors file) or `encoder` for random weights")
    print(
        f"WARNING: exporting RANDOM {encoder} weights (no --checkpoint): for testing the pipeline only", file=sys.stderr
    )
    model = DepthAnythingV2(encoder).eval()
    model.licence = RANDOM_WEIGHTS
    return model


RANDOM_WEIGHTS = "none (random weights)"
NON_COMMERCIAL = ("CC-BY-NC",)


def model_licence(model: Any) -> str:
    """The licence ``train.models.load_model`` found for the weights; ``unknown`` for a module built
    elsewhere."""
    return getattr(model, "licence", None) or "unknown"


def model_identity(model: Any) -> dict[str, str]:
    """The model's family and variant, as every artefact made from it carries them."""
    return {
        "family": getattr(model, "family", None) or "unknown",
        "variant": getattr(model, "variant", None) or getattr(getattr(model, "spec", None), "name", None) or "unknown",
    }


def licence_note(licence: str | None, artefact: str | Path) -> None:
    """One line on stderr when the weights behind ``artefact`` may not be used commercially."""
    if licence and licence.upper().startswith(NON_COMMERCIAL):
        print(f"note: {artefact} carries {licence} weights: non-commercial use only", file=sys.stderr)


def source_stem(onnx: Path | None, checkpoint: Path | None, encoder: str | None) -> str:
    """The name outputs are derived from: the given ONNX or checkpoint, else ``random_<encoder>``."""
    given = onnx or checkpoint
    return given.stem if given else f"random_{encoder}"


def default_output(stem: str, suffix: str) -> Path:
    """``artifacts/<stem><suffix>``: where an export writes when no --output is given."""
    return Path("artifacts") / f"{stem}{suffix}"


def check_output_folder(output: Path) -> Path:
    """``output``, or ``ExportRequestError`` (exit 2) in one line when its folder cannot be written:
    a file where a folder should be, or a folder that takes no new file (read-only, /proc). Every
    export command checks this before any work (``runtime.io.files.check_writable_folder``); nothing
    is created (a missing folder is made when the work succeeds, see :func:`output_folder`)."""
    output = Path(output)
    try:
        check_writable_folder(output.absolute().parent, "--output", named=output)
    except InputError as exc:
        raise ExportRequestError(str(exc)) from None
    return output


@contextmanager
def output_folder(output: Path) -> Iterator[Path]:
    """``output``'s folder, made if missing and removed again when the body raises, each folder this
    call made from the innermost out while it is empty: a refused or failed export leaves no empty
    folder behind, and never removes a file (another export's, started beside it) it finds there."""
    check_output_folder(output)
    folder = Path(output).absolute().parent
    created = folder
    while not created.parent.exists():
        created = created.parent
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            current = folder
            while True:
                try:
                    current.rmdir()  # only an empty folder
                except OSError:
                    break
                if current == created:
                    break
                current = current.parent
        raise


CALIBRATION_CACHE = ".calib_cache"  # beside the output: calibration images by content hash


@contextmanager
def intermediates(folder: Path, fresh: bool = False) -> Iterator[list[Path]]:
    """The files an export writes on its way to its output (the FP32 ONNX a checkpoint is exported
    to first): the body lists each artefact in the yielded list. When the body raises, each listed
    artefact, its record, reference and external data, is removed where it was not in ``folder``
    before: a failed export leaves nothing it half-made (a complete ONNX it replaced stays). With
    ``fresh`` (the run made ``folder``: no other export shares it), a calibration cache it made
    goes too, so that :func:`output_folder` can remove the folder."""
    folder = Path(folder)
    before = {item.name for item in folder.iterdir()} if folder.is_dir() else set()
    made: list[Path] = []
    try:
        yield made
    except BaseException:
        from runtime.metadata import sidecar_path
        from runtime.reference import reference_path

        for path in made:
            path = Path(path)
            for item in (path, sidecar_path(path), reference_path(path), path.with_name(path.name + ".data")):
                if item.parent.absolute() == folder.absolute() and item.name not in before:
                    item.unlink(missing_ok=True)
        cache = folder / CALIBRATION_CACHE
        if fresh and CALIBRATION_CACHE not in before and cache.is_dir():
            shutil.rmtree(cache, ignore_errors=True)
        raise
