"""Small SA-1B-format shards built from real photographs, with the faults real data has."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from runtime.io.samples import sample_images

# Held out of every shard, for measuring quantization error on unseen images.
HELD_OUT = ("astronaut", "horse")


def shard_photos() -> list[np.ndarray]:
    return [image for name, image in sample_images().items() if name not in HELD_OUT]


def held_out_photos() -> list[np.ndarray]:
    return [sample_images()[name] for name in HELD_OUT]


def _add(tar: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type, info.linkname = kind, link
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_shard(
    path: Path, count: int = 12, seed: int = 0, faults: bool = True, aspects: tuple[float, ...] = ()
) -> Path:
    """``sa_N.jpg`` + ``sa_N.json`` pairs (random crops and flips of real photos), plus a
    truncated jpeg, a ``../escape.jpg`` member, an absolute member and a symlink member.

    With ``aspects`` (width / height), image ``i`` is cropped to ``aspects[i % len(aspects)]``:
    SA-1B's mix of landscape, square and portrait photos."""
    rng = np.random.default_rng(seed)
    photos = shard_photos()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        jpeg = b""
        for i in range(count):
            photo = photos[i % len(photos)]
            h, w = photo.shape[:2]
            if aspects:
                aspect = aspects[i % len(aspects)]
                h, w = min(h, int(w / aspect)), min(w, int(h * aspect))
            y, x = (
                int(rng.integers(0, photo.shape[0] - 3 * h // 4 + 1)),
                int(rng.integers(0, photo.shape[1] - 3 * w // 4 + 1)),
            )
            crop = photo[y : y + 3 * h // 4, x : x + 3 * w // 4]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            jpeg = cv2.imencode(".jpg", np.ascontiguousarray(crop))[1].tobytes()
            _add(tar, f"sa_{i + 1}.jpg", jpeg)
            annotation = {"image": {"image_id": i + 1, "height": crop.shape[0], "width": crop.shape[1]}}
            _add(tar, f"sa_{i + 1}.json", json.dumps(annotation).encode())
        if faults:
            _add(tar, "sa_9001.jpg", jpeg[: len(jpeg) // 3])  # truncated download
            _add(tar, "../escape.jpg", jpeg)
            _add(tar, "/tmp/absolute.jpg", jpeg)
            _add(tar, "sa_link.jpg", b"", tarfile.SYMTYPE, "/etc/passwd")
    return path
