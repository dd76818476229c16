"""INT8 calibration samples from SA-1B: tar shards of ``sa_N.jpg`` + ``sa_N.json``, or image folders.

Members are read straight from the tars (never extracted, so a hostile member name cannot
write anywhere); unsafe names are rejected, corrupt images skipped and counted, and so are
images over a pixel limit (read from the header, so a decompression bomb is never decoded:
``runtime.io.images``). Sampling is deterministic for a seed, and the preprocessing is the
runtime's own fixed-shape path, so the calibrator sees exactly what the predictor will feed
the engine. Preprocessed samples
are cached on disk under a key made from the sample list and the shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.io.files import atomic_write, atomic_write_bytes
from runtime.io.images import DEFAULT_MAX_PIXELS
from runtime.preprocessing import prepare_fixed
from train.data import sa1b

from ..errors import ExportRequestError
from ..source import check_hw

# Bump when the preprocessing changes, so old caches are not reused.
CACHE_VERSION = 1
# The fewest usable images ``allow_fewer`` accepts (or ``num_samples`` when that is smaller):
# scales from a handful of images are noise, and from none they are silent defaults.
MIN_IMAGES = 10


class CalibrationError(ExportRequestError):
    """Not enough usable calibration images, or an unusable source."""


@dataclass
class CalibrationReport:
    requested: int
    used: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    rejected_members: list[str] = field(default_factory=list)

    def summary(self, what: str | None = None) -> str:
        """``what`` (default: "N calibration images"), then what was skipped and why."""
        text = what or f"{len(self.used)} calibration images"
        if self.corrupt:
            text += f", {len(self.corrupt)} corrupt skipped ({_first(self.corrupt)})"
        if self.too_large:
            text += f", {len(self.too_large)} over the pixel limit skipped ({_first(self.too_large)})"
        if self.rejected_members:
            text += f", {len(self.rejected_members)} unsafe tar member names rejected ({_first(self.rejected_members)})"
        return text


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _save_npy(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, data)


class CalibrationSet:
    """``num_samples`` preprocessed ``(1, 3, H, W)`` float32 inputs drawn from ``source``."""

    def __init__(
        self,
        source: str | Path,
        num_samples: int = 500,
        input_shape: tuple[int, int] = (518, 518),
        seed: int = 0,
        cache_dir: str | Path | None = None,
        allow_fewer: bool = False,
        progress: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        minimum: int | None = None,
    ) -> None:
        """``minimum``: the fewest usable images accepted (default ``num_samples``, with ``allow_fewer``
        ``min(num_samples, MIN_IMAGES)``); a caller that splits the images checks the counts itself."""
        if num_samples < 1:
            raise CalibrationError(f"num_samples must be at least 1, got {num_samples}")
        self.source = Path(source)
        self.input_shape = check_hw(*input_shape, what="calibration")
        self.num_samples = num_samples
        self.seed = seed
        self.max_pixels = max_pixels
        self.report = CalibrationReport(num_samples)
        self._order: list = []
        # No default cache location: the source may be read-only, and an export writes only
        # under its own output folder (the CLIs pass one there).
        self._data = self._load_or_build(None if cache_dir is None else Path(cache_dir), progress)
        found = len(self.report.used)
        floor = min(num_samples, MIN_IMAGES) if allow_fewer else num_samples
        floor = floor if minimum is None else minimum
        if found < floor:
            hint = (
                f"`allow_fewer` accepts no fewer than {floor}; add images"
                if allow_fewer
                else "add images, lower `num_samples`, or pass `allow_fewer`"
            )
            raise CalibrationError(
                f"{self.source}: asked for {num_samples} calibration images but found only {found} usable "
                f"({self.report.summary()}); {hint}"
            )

    @property
    def key(self) -> str:
        """Hash of everything the cached tensors depend on: samples in order, shape, preprocessing."""
        digest = hashlib.sha256()
        key = [CACHE_VERSION, self.input_shape, self.num_samples, self.seed, self.max_pixels]
        digest.update(json.dumps(key).encode())
        for candidate in self._order:
            digest.update(f"{candidate.container.resolve()}|{candidate.member}|{candidate.size}\n".encode())
        return digest.hexdigest()[:20]

    def _load_or_build(self, cache_dir: Path | None, progress: bool) -> np.ndarray:
        """The source listed and put in the seed's order, then its preprocessed samples: from the
        cache when it holds this order's, else read (and cached)."""
        try:
            candidates, self.report.rejected_members = sa1b.list_candidates(self.source)
        except (FileNotFoundError, ValueError) as exc:
            raise CalibrationError(str(exc)) from exc
        if not candidates:
            raise CalibrationError(
                f"{self.source}: no images found (give SA-1B .tar shards or .jpg/.jpeg/.png files); "
                "INT8 is never calibrated on nothing"
            )
        order = np.random.default_rng(self.seed).permutation(len(candidates))
        self._order = [candidates[i] for i in order]
        self.cache_path = cache_dir / f"calib-{self.key}.npy" if cache_dir is not None else None
        report_path = self.cache_path.with_suffix(".json") if self.cache_path else None
        if self.cache_path is not None and self.cache_path.is_file() and report_path.is_file():
            cached = json.loads(report_path.read_text())
            self.report.used, self.report.corrupt = cached["used"], cached["corrupt"]
            self.report.too_large = cached["too_large"]
            return np.load(self.cache_path, mmap_mode="r")
        from tqdm import tqdm

        height, width = self.input_shape
        data = np.empty((self.num_samples, 3, height, width), np.float32)
        bar = tqdm(total=self.num_samples, desc="calibration images", unit="img", disable=not progress)
        try:
            for candidate, image in sa1b.iter_images(
                self._order, self.report.corrupt, self.report.too_large, self.max_pixels
            ):
                data[len(self.report.used)] = prepare_fixed(image, (height, width))[0]
                self.report.used.append(candidate.name)
                bar.set_postfix(skipped=len(self.report.corrupt) + len(self.report.too_large))
                bar.update()
                if len(self.report.used) == self.num_samples:
                    break
        finally:
            bar.close()
        data = data[: len(self.report.used)]
        if len(data) and self.cache_path is not None:
            atomic_write(self.cache_path, lambda tmp: _save_npy(tmp, data))
            atomic_write_bytes(report_path, json.dumps(vars(self.report)).encode())
        return data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self._data)):
            yield np.ascontiguousarray(self._data[i : i + 1])

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        for start in range(0, len(self._data), batch_size):
            yield np.ascontiguousarray(self._data[start : start + batch_size])

    def describe(self) -> dict:
        return {
            "source": str(self.source),
            "count": len(self),
            "requested": self.num_samples,
            "seed": self.seed,
            "input_shape": list(self.input_shape),
            "corrupt_skipped": len(self.report.corrupt),
            "too_large_skipped": len(self.report.too_large),
            "max_pixels": self.max_pixels,
            "rejected_members": len(self.report.rejected_members),
        }
