"""The model and the artefacts a benchmark measures, built once and reused while unchanged.

Every artefact's name carries a hash of what it was built from (the checkpoint's content for
the ONNX; the ONNX's sidecar records its own hash for what is derived from it), so a cache is
never reused after the inputs changed.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.metadata import read_sidecar, sha256_file

DEFAULT_CHECKPOINT = Path("checkpoints/depth_anything_v2_vits.pth")
HUB_REPO, HUB_FILE = "depth-anything/Depth-Anything-V2-Small", "model.safetensors"


@dataclass
class ModelSource:
    path: Path
    description: str
    notice: str | None = None

    @property
    def tag(self) -> str:
        return sha256_file(self.path)[:12]


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(checkpoint: Path | None, workdir: Path, use_hub: bool = True) -> ModelSource:
    """--checkpoint, else the default location, else the hub when reachable, else random weights."""
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
        return ModelSource(checkpoint, f"{checkpoint}")
    if DEFAULT_CHECKPOINT.is_file():
        return ModelSource(DEFAULT_CHECKPOINT, f"{DEFAULT_CHECKPOINT} (default location)")
    if use_hub and hub_reachable():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(HUB_REPO, HUB_FILE))
            return ModelSource(path, f"{HUB_REPO} from the Hugging Face hub")
        except Exception as exc:  # any hub failure falls through to random weights, said aloud
            print(f"note: could not fetch {HUB_REPO} ({exc.__class__.__name__}); using random weights", file=sys.stderr)
    import torch

    from train.models import DepthAnythingV2, save_model

    path = workdir / "random_vits_seed0.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        save_model(DepthAnythingV2("vits"), path, metadata={"weights": "random, torch seed 0"})
    notice = (
        "NO CHECKPOINT: these are deterministic RANDOM vits weights. The accuracy columns only measure how "
        f"closely the backends agree with each other, not depth quality. Put the published weights at "
        f"{DEFAULT_CHECKPOINT} or pass --checkpoint."
    )
    return ModelSource(path, "random vits weights (torch seed 0)", notice)


def load_images(folder: Path | None, limit: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Evaluation images (name -> BGR), ground-truth disparities where known, and a description."""
    ground_truth: dict[str, np.ndarray] = {}
    if folder is not None:
        suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
        images = {}
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                images[path.stem] = image
            if len(images) == limit:
                break
        if not images:
            raise FileNotFoundError(f"{folder}: no readable images")
        return images, ground_truth, f"{len(images)} images from {folder}"
    from runtime.samples import sample_dir, sample_images

    images = dict(list(sample_images().items())[:limit])
    disparity = np.load(sample_dir() / "motorcycle_disp.npz")
    gt = disparity[disparity.files[0]].astype(np.float32)
    gt[~np.isfinite(gt) | (gt <= 0)] = np.nan
    ground_truth["motorcycle_left"] = gt
    return images, ground_truth, f"{len(images)} bundled sample photographs (scikit-image); stereo GT for 1"


def calibration_folder(calib_dir: Path | None, workdir: Path, count: int) -> tuple[Path, str]:
    """--calib-dir, or crops and flips of the bundled photos written once into the work dir."""
    if calib_dir is not None:
        return calib_dir, f"{calib_dir}"
    from runtime.samples import sample_images

    folder = workdir / "calib_from_samples"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photos = list(sample_images().values())
    for i in range(count):
        target = folder / f"crop_{i:03d}.jpg"
        if target.is_file():
            continue
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        y, x = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
        crop = photo[y : y + 3 * h // 4, x : x + 3 * w // 4]
        cv2.imwrite(str(target), np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop))
    return folder, f"{count} crops of the bundled photographs (no --calib-dir given: not SA-1B)"


def fresh(artefact: Path, source: Path) -> bool:
    """The artefact exists and was built from ``source`` as it is now."""
    meta = read_sidecar(artefact) if artefact.is_file() else None
    return bool(meta) and meta.get("source_sha256") == sha256_file(source)


def digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:10]
