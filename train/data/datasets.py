"""Training datasets: ``sample(index, rng) -> (image CHW, target HW, mask HW)`` numpy arrays.

Unreadable items are skipped (the next one is used) and counted, never crash a long run.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

from runtime.preprocessing import dynamic_size

from . import sa1b
from .labels import LabelReader
from .synthetic import Scene
from .transforms import to_disparity, training_sample


class SceneDataset:
    """Images with metric ground truth (procedural scenes or Hypersim), trained on inverse depth."""

    def __init__(self, source, crop: int, jitter: bool = False) -> None:
        self.source, self.crop, self.jitter = source, crop, jitter
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.source)

    def _scene(self, index: int) -> Scene:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            scene = self.source.load(i) if hasattr(self.source, "load") else self.source[i]
            if scene is not None:
                return scene
            self.skipped += 1
        raise RuntimeError("no readable sample in the whole dataset")

    def sample(self, index: int, rng: np.random.Generator):
        scene = self._scene(index)
        target = to_disparity(scene.depth, scene.mask)
        return training_sample(scene.image, target, scene.mask & (target > 0), self.crop, rng, jitter=self.jitter)


def read_label_index(labels: Path) -> list[dict]:
    """All pseudo-label entries under ``labels`` (one ``<shard>.json`` per finished shard, in the
    folders of the source's layout)."""
    entries = []
    for index_path in sorted(labels.rglob("*.json")):
        index = json.loads(index_path.read_text())
        teacher = index.get("teacher") or {}
        for entry in index["entries"]:
            entries.append(
                {
                    **entry,
                    "container": index["container"],
                    "labels": str(labels / index["labels"]),
                    "format": index.get("format", "float16"),
                    # labels made before teachers of other kinds: relative inverse depth
                    "output_kind": teacher.get("output_kind") or "relative",
                    "max_depth": teacher.get("max_depth"),
                }
            )
    return entries


def label_kind(entries: list[dict], labels: Path) -> tuple[str, float | None]:
    """The one output kind (and metric range) of a label set; ``ValueError`` for a mix of teachers' kinds."""
    kinds = sorted({(e["output_kind"], e["max_depth"]) for e in entries}, key=str)
    if len(kinds) > 1:
        found = ", ".join(k if d is None else f"{k} (max_depth {d:g})" for k, d in kinds)
        raise ValueError(f"{labels} mixes labels of teachers with different outputs ({found}); distil from one")
    return kinds[0] if kinds else ("relative", None)


def focal_scale(label_hw: tuple[int, int], crop: int) -> float:
    """How much ``training_sample`` scales an image of ``label_hw`` (its focal length in pixels scales
    the same), averaged over the axes as ``runtime.metric.network_focal`` averages fx and fy."""
    height, width = dynamic_size(label_hw[0], label_hw[1], crop)
    return 0.5 * (height / label_hw[0] + width / label_hw[1])


class PseudoLabelDataset:
    """SA-1B images with the teacher's pseudo-labels (stage 3); colour jitter for the student.

    ``output_kind``: what the labels are (the teacher's kind). A ``metres_per_focal`` label is per
    focal length in pixels of the image at the label's size; a crop resized by ``s`` has ``s`` times
    that focal, so its target is divided by ``s`` (the same number of metres at the new focal).
    """

    def __init__(self, labels: str | Path, crop: int, jitter: bool = True) -> None:
        self.entries = read_label_index(Path(labels))
        if not self.entries:
            raise FileNotFoundError(f"{labels}: no pseudo-labels found (run python -m train.pseudo_label first)")
        self.crop, self.jitter = crop, jitter
        self.output_kind, self.max_depth = label_kind(self.entries, Path(labels))
        self.skipped = 0
        self._tars: dict[Path, tarfile.TarFile] = {}
        self._labels = LabelReader()

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, entry: dict) -> tuple[np.ndarray, np.ndarray] | None:
        candidate = sa1b.Candidate(Path(entry["container"]), entry["member"], 0)
        try:
            image = sa1b.decode(sa1b.read_bytes(candidate, self._tars))
            label = self._labels.read(entry)
        except (OSError, KeyError, ValueError, tarfile.TarError, zipfile.BadZipFile):  # InputError: ValueError
            return None
        height, width = label.shape
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), label

    def sample(self, index: int, rng: np.random.Generator):
        for attempt in range(len(self)):
            loaded = self._load(self.entries[(index + attempt) % len(self)])
            if loaded is not None:
                image, label = loaded
                image, target, mask = training_sample(
                    image, label, np.isfinite(label), self.crop, rng, jitter=self.jitter
                )
                if self.output_kind == "metres_per_focal":
                    target = target / np.float32(focal_scale(label.shape, self.crop))
                return image, target, mask
            self.skipped += 1
        raise RuntimeError("no readable pseudo-labelled image")
