"""The model and the artefacts a benchmark measures, built once and reused while unchanged.

Every artefact's name carries a hash of what it was built from (the checkpoint's content for
the ONNX; the ONNX's sidecar records its own hash for what is derived from it), so a cache is
never reused after the inputs changed.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from runtime.metadata import artefact_digest, read_sidecar

DEFAULT_CHECKPOINT = Path("checkpoints/depth_anything_v2_vits.pth")
# The published ViT-S checkpoint, the same file as DEFAULT_CHECKPOINT (loaded with weights_only).
HUB_REPO, HUB_FILE = "depth-anything/Depth-Anything-V2-Small", "depth_anything_v2_vits.pth"


@dataclass
class ModelSource:
    path: Path
    description: str
    notice: str | None = None

    @property
    def tag(self) -> str:
        if self.path.is_dir():  # a Depth Anything 3 snapshot folder: its files, in name order
            digest = hashlib.sha256()
            for path in sorted(p for p in self.path.iterdir() if p.is_file()):
                digest.update(path.name.encode() + b"\0" + artefact_digest(path).encode())
            return digest.hexdigest()[:12]
        return artefact_digest(self.path)[:12]


def hub_address() -> tuple[str, int]:
    """Host and port of the hub ``huggingface_hub`` talks to (``HF_ENDPOINT`` moves it)."""
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(address: tuple[str, int], timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def from_hub() -> tuple[Path | None, str]:
    """The published checkpoint from the hub (or the hub's local cache when offline), or why not."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, "huggingface_hub is not installed (pip install 'dav2-edge[bench]')"
    host, port = address = hub_address()
    online = hub_reachable(address)
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE, local_files_only=not online)), ""
    except Exception as exc:  # whatever the hub raises, the notice carries it
        if not online:
            return None, f"{host}:{port} is unreachable and the hub's local cache has no copy"
        return None, f"the download failed ({exc.__class__.__name__}: {str(exc).strip().splitlines()[0]})"


def resolve_model(checkpoint: Path | None, workdir: Path, use_hub: bool = True) -> ModelSource:
    """--checkpoint, else the default location, else the hub (or its cache), else random weights,
    with a notice that says which sources were tried and why each gave nothing."""
    if checkpoint is not None:
        if checkpoint.is_dir() and not (checkpoint / "config.json").is_file():
            raise FileNotFoundError(
                f"{checkpoint} is a folder without config.json: pass a checkpoint file, or a Depth Anything 3 "
                "snapshot folder (config.json + model.safetensors)"
            )
        if not checkpoint.exists():
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint file")
        return ModelSource(checkpoint, f"{checkpoint}")
    if DEFAULT_CHECKPOINT.is_file():
        return ModelSource(DEFAULT_CHECKPOINT, f"{DEFAULT_CHECKPOINT} (default location)")
    tried = ["--checkpoint (not given)", f"{DEFAULT_CHECKPOINT} (no such file)"]
    hub = f"the Hugging Face hub, {HUB_REPO}/{HUB_FILE}"
    if use_hub:
        path, reason = from_hub()
        if path is not None:
            return ModelSource(path, f"{HUB_REPO}/{HUB_FILE} from the Hugging Face hub")
        tried.append(f"{hub} ({reason})")
    else:
        tried.append(f"{hub} (not tried: --no-hub)")
    import torch

    from train.models import DepthAnythingV2, save_model

    path = workdir / "random_vits_seed0.safetensors"
    if not path.is_file():
        torch.manual_seed(0)
        save_model(DepthAnythingV2("vits"), path, metadata={"weights": "random, torch seed 0"})
    notice = (
        "NO CHECKPOINT: these are deterministic RANDOM vits weights. The accuracy columns only measure how "
        f"closely the backends agree with each other, not depth quality. Tried: {'; '.join(tried)}. Put the "
        f"published weights at {DEFAULT_CHECKPOINT} or pass --checkpoint."
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
    from runtime.io.samples import sample_dir, sample_images

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
    from runtime.io.samples import sample_images

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
    return bool(meta) and meta.get("source_sha256") == artefact_digest(source)
