"""Sidecar metadata: every exported artefact gets ``<artefact>.json`` beside it.

The artefact itself stays a plain file that trtexec, Triton or ``ov.Core`` can read; what
built it (source hash, precision, shapes, library versions, GPU, calibration) lives here.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from .io.files import atomic_write_bytes

SCHEMA_VERSION = 1


def sidecar_path(artefact: str | Path) -> Path:
    artefact = Path(artefact)
    return artefact.with_name(artefact.name + ".json")


def write_sidecar(artefact: str | Path, info: dict[str, Any]) -> Path:
    data = {"schema_version": SCHEMA_VERSION, "artefact": Path(artefact).name, **info}
    return atomic_write_bytes(sidecar_path(artefact), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_sidecar(artefact: str | Path) -> dict[str, Any] | None:
    """The sidecar's content, or ``None`` when the artefact has none (a file built elsewhere)."""
    path = sidecar_path(artefact)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable metadata ({exc}); delete it or re-export the model") from exc


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    found = {}
    for name in distributions:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found
