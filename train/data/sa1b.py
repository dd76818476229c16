"""SA-1B on disk: ``sa_XXXXXX.tar`` shards of ``sa_N.jpg`` + ``sa_N.json``, or image folders.

Members are read straight from the tar, never extracted: a hostile member name cannot write
anywhere, and unsafe names (absolute, ``..``, links) are rejected. Shared by INT8
calibration (``export.quantize.calibration``) and pseudo-labelling (``train.pseudo_label``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from commands.errors import InputError
from runtime.io.images import ImageTooLargeError, decode_image_bytes
from runtime.preprocessing import check_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What an unreadable image raises (InputError covers undecodable and too-large images): a long
# job counts these and moves on.
UNREADABLE = (InputError, OSError, tarfile.TarError, KeyError)


@dataclass(frozen=True)
class Candidate:
    """One image: a file, or a member of a tar shard (``member`` set)."""

    container: Path  # a tar shard, an image file, or the folder of ``member``
    member: str | None
    size: int

    @property
    def name(self) -> str:
        return f"{self.container.name}:{self.member}" if self.member else str(self.container)


def safe_member_name(name: str) -> bool:
    """Relative, no ``..``: the only names a well-formed SA-1B shard has."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def containers(source: Path) -> list[Path]:
    """Shards and loose image files under ``source``, sorted (a file source is its own list)."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: does not exist (give an SA-1B folder or tar shard)")
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    return [p for p in files if p.suffix == ".tar" or (p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != ".")]


def members(container: Path) -> tuple[list[Candidate], list[str]]:
    """The images in one container, and the names of rejected (unsafe) tar members."""
    if container.suffix != ".tar":
        return [Candidate(container, None, container.stat().st_size)], []
    found, rejected = [], []
    try:
        with tarfile.open(container) as tar:
            for member in tar.getmembers():
                if not member.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                if not member.isfile() or not safe_member_name(member.name):
                    rejected.append(f"{container.name}:{member.name}")
                    continue
                found.append(Candidate(container, member.name, member.size))
    except (tarfile.TarError, OSError) as exc:
        raise ValueError(f"{container}: unreadable tar shard ({exc})") from exc
    return found, rejected


def list_candidates(source: Path) -> tuple[list[Candidate], list[str]]:
    """Every image under ``source``, sorted; and the rejected member names."""
    candidates, rejected = [], []
    for container in containers(source):
        found, bad = members(container)
        candidates += found
        rejected += bad
    candidates.sort(key=lambda c: (str(c.container), c.member or ""))
    return candidates, rejected


def read_bytes(candidate: Candidate, tars: dict[Path, tarfile.TarFile]) -> bytes:
    """The member's bytes; ``tars`` caches open shards across calls."""
    if candidate.member is None:
        return candidate.container.read_bytes()
    if candidate.container.is_dir():  # a loose image of a folder shard (train.pseudo_label)
        return (candidate.container / candidate.member).read_bytes()
    tar = tars.get(candidate.container)
    if tar is None:
        tar = tars[candidate.container] = tarfile.open(candidate.container)
    handle = tar.extractfile(candidate.member)
    if handle is None:
        raise OSError(f"{candidate.name} is not a regular file")
    return handle.read()


def decode(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """A BGR image of at least 14 px a side; ``InputError`` otherwise (``ImageTooLargeError``
    above ``max_pixels``, checked from the header before decoding: see ``runtime.io.images``)."""
    return check_image(decode_image_bytes(data, max_pixels))


def iter_images(
    candidates: list[Candidate],
    corrupt: list[str],
    too_large: list[str] | None = None,
    max_pixels: int | None = None,
) -> Iterator[tuple[Candidate, np.ndarray]]:
    """Decoded images in order; unreadable ones are appended to ``corrupt`` and skipped, as are
    those over ``max_pixels`` (to ``too_large`` when given)."""
    tars: dict[Path, tarfile.TarFile] = {}
    try:
        for candidate in candidates:
            try:
                data = read_bytes(candidate, tars)
                image = decode(data, max_pixels)
            except ImageTooLargeError:
                (corrupt if too_large is None else too_large).append(candidate.name)
                continue
            except UNREADABLE:
                corrupt.append(candidate.name)
                continue
            yield candidate, image
    finally:
        for tar in tars.values():
            tar.close()
