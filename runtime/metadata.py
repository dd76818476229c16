"""Sidecar metadata: every exported artefact gets ``<artefact>.json`` beside it.

The artefact itself stays a plain file that trtexec, Triton or ``ov.Core`` can read; what
built it (source hash, precision, shapes, library versions, GPU, calibration) lives here.
What the export also writes into the artefact (ONNX ``metadata_props``, an OpenVINO IR's
rt_info) is read here without loading the model: ``onnx_metadata`` and ``ir_rt_info``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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


def artefact_files(artefact: str | Path) -> list[Path]:
    """The artefact's file and the weights beside it (an IR's ``.bin``, an ONNX's ``<name>.data``)."""
    artefact = Path(artefact)
    weights = artefact.with_suffix(".bin") if artefact.suffix == ".xml" else artefact.with_name(artefact.name + ".data")
    return [artefact] + ([weights] if weights.is_file() else [])


def artefact_digest(artefact: str | Path) -> str:
    """SHA-256 over the artefact's files (``artefact_files``; the file's own SHA-256 where no
    weights lie beside it): every export record's ``sha256`` and ``source_sha256``, and which
    artefact a reference belongs to. Two ONNX files of one graph with other weights in their
    ``.data`` differ here, as they must for anything keyed by it (cached calibration ranges)."""
    digest = hashlib.sha256()
    for path in artefact_files(artefact):
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
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


ONNX_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto (key 1, value 2)
_LARGEST_ENTRY = 1 << 20  # bytes: a metadata entry larger than this is not one the toolkit wrote


def _varint(f: Any) -> int:
    value = shift = 0
    while shift < 64:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("varint too long")


def _fields(f: Any, size: int, wanted: int | tuple[int, ...]) -> dict[int, list[bytes]]:
    """The length-delimited fields numbered ``wanted`` of a protobuf message of ``size`` bytes
    read from ``f``; every other field is skipped (seeked past, never read)."""
    wanted = (wanted,) if isinstance(wanted, int) else wanted
    found: dict[int, list[bytes]] = {}
    end = f.tell() + size
    while f.tell() < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        elif wire == 2:
            length = _varint(f)
            if f.tell() + length > end:
                raise ValueError("a field runs past the end")
            if number in wanted and length <= _LARGEST_ENTRY:
                found.setdefault(number, []).append(f.read(length))
            else:
                f.seek(length, io.SEEK_CUR)
        else:
            raise ValueError(f"wire type {wire}")
    return found


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read without loading the model (its graph and weights
    are skipped); ``{}`` when it has none or is no readable ONNX file (its load says why)."""
    try:
        with open(path, "rb") as f:
            entries = _fields(f, os.fstat(f.fileno()).st_size, ONNX_METADATA_PROPS).get(ONNX_METADATA_PROPS, [])
            found = {}
            for entry in entries:
                fields = _fields(io.BytesIO(entry), len(entry), (1, 2))
                key, value = (fields.get(n, [b""])[-1].decode() for n in (1, 2))
                found[key] = value
            return found
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def ir_rt_info(path: str | Path) -> dict[str, dict[str, str]]:
    """An OpenVINO IR's rt_info as its ``.xml`` holds it (``{section: {key: value}}``: the export's
    ``dav2_edge``, the ONNX metadata OpenVINO imported as ``framework``), read without loading the
    model; ``{}`` when it has none or is no readable IR (its load says why)."""
    import xml.etree.ElementTree as ElementTree

    sections: dict[str, dict[str, str]] = {}
    tags: list[str] = []
    try:
        for event, element in ElementTree.iterparse(str(path), events=("start", "end")):
            if event == "start":
                tags.append(element.tag)
                if len(tags) == 4 and tags[:2] == ["net", "rt_info"] and "value" in element.attrib:
                    sections.setdefault(tags[2], {})[element.tag] = element.attrib["value"]
                continue
            tags.pop()
            if len(tags) == 1:  # a whole part of the network (its layers, its edges) read: let it go
                element.clear()
    except (OSError, ElementTree.ParseError):
        return {}
    return sections
