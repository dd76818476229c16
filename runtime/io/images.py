"""Reading images from files and bytes with a pixel limit checked before anything is decoded.

A JPEG or PNG of a few megabytes can describe a 30000x30000 image that needs gigabytes once
decoded (a decompression bomb). Every place the toolkit decodes an image from a file, an
archive or a bag goes through :func:`decode_image_bytes`, which reads the width and height
from the file's header first and refuses an image over the limit without decoding it.

Refusing, not decoding at reduced size, is the rule: OpenCV's reduced reads only save work
for JPEG (every other format is decoded whole and then shrunk), and a silent change of
resolution is not what a caller who passed a 200-megapixel file expects. Callers that collect
many images (calibration, training) count a refused image as skipped, like a corrupt one.

Only formats whose header gives the size are read: JPEG, PNG, BMP, WebP, TIFF and PNM
(PGM/PPM). Anything else is refused with a message that says to convert it.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from commands.errors import InputError

#: Largest image decoded by default: 64 megapixels (8000x8000), 192 MB once decoded to BGR
#: uint8. Above any camera a robot carries, well below what breaks an 8 GB Jetson.
DEFAULT_MAX_PIXELS = 64_000_000

FORMATS = "JPEG, PNG, BMP, WebP, TIFF or PNM"
# JPEG start-of-frame markers carry the frame size; C4 (DHT), C8 (reserved) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xD9)])


class ImageTooLargeError(InputError):
    """An image whose header declares more pixels than the limit; nothing was decoded."""


def _jpeg_size(data) -> tuple[int, int] | None:
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return height, width
        pos += 2 + length
    return None


def _png_size(data) -> tuple[int, int] | None:
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return height, width


def _bmp_size(data) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return abs(height), abs(width)


def _webp_size(data) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = bytes(data[12:16])
    if chunk == b"VP8 ":
        width, height = struct.unpack_from("<HH", data, 26)
        return height & 0x3FFF, width & 0x3FFF
    if chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(bytes(data[24:27]), "little") + 1
        height = int.from_bytes(bytes(data[27:30]), "little") + 1
        return height, width
    return None


def _tiff_size(data) -> tuple[int, int] | None:
    order = "<" if bytes(data[:2]) == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack_from(order + "H", data, ifd)
    found = {}
    for entry in range(count):
        at = ifd + 2 + 12 * entry
        if at + 12 > len(data):
            return None
        tag, kind = struct.unpack_from(order + "HH", data, at)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            found[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, at + 8)[0]
    if 256 not in found or 257 not in found:
        return None
    return found[257], found[256]


def _pnm_size(data) -> tuple[int, int] | None:
    numbers: list[int] = []
    head = bytes(data[2:4096])
    for line in head.split(b"\n"):
        for token in line.split(b"#", 1)[0].split():
            if not token.isdigit():
                return None
            numbers.append(int(token))
            if len(numbers) == 2:
                return numbers[1], numbers[0]
    return None


def image_size(data) -> tuple[int, int] | None:
    """``(height, width)`` from an image file's header, or ``None`` if it is not a format read here."""
    head = bytes(data[:12])
    try:
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png_size(data)
        if head.startswith(b"BM"):
            return _bmp_size(data)
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(data)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if len(head) > 2 and head[0] == ord("P") and head[1] in b"123456":
            return _pnm_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _describe(data) -> str:
    head = bytes(data[:512]).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "it looks like an HTML/XML page, not an image (a failed download?)"
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "it looks like a text file, not an image"
    return f"it is not a {FORMATS} file, or its header is damaged; convert it to PNG or JPEG"


def _check_limit(max_pixels: int | None) -> int:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    return limit


def decode_image_bytes(
    data, max_pixels: int | None = None, name: str = "image", exif_orientation: bool = True
) -> np.ndarray:
    """Decode an encoded image to an HxWx3 BGR uint8 array, refusing one over ``max_pixels``.

    ``data`` is anything with the buffer protocol (bytes, memoryview, mmap, uint8 array).
    ``max_pixels`` defaults to :data:`DEFAULT_MAX_PIXELS`. Raises :class:`InputError` for empty,
    undecodable or over-limit data; the size is read from the header, so an over-limit image
    costs nothing to refuse. ``name`` is used in the messages. ``exif_orientation=False`` keeps
    the pixels as stored: a camera's frames must match its calibration, whatever a JPEG's EXIF
    orientation tag says (a photo is shown upright, as viewers show it).
    """
    limit = _check_limit(max_pixels)
    if len(data) == 0:
        raise InputError(f"{name} is empty (0 bytes)")
    size = image_size(data)
    if size is None:
        raise InputError(f"cannot read {name}: {_describe(data)}")
    height, width = size
    if height * width > limit:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} ({height * width / 1e6:.1f} megapixels), over the limit of "
            f"{limit / 1e6:.1f} megapixels; downscale it first, or raise max_pixels if this machine has the memory"
        )
    encoded = np.frombuffer(data, np.uint8)
    try:
        flags = cv2.IMREAD_COLOR | (0 if exif_orientation else cv2.IMREAD_IGNORE_ORIENTATION)
        image = cv2.imdecode(encoded, flags)
    except cv2.error as exc:
        raise InputError(f"cannot decode {name} ({width}x{height}): {str(exc).strip().splitlines()[-1]}") from None
    finally:
        del encoded  # a memory-mapped file cannot be closed while an array still points into it
    if image is None:
        raise InputError(f"cannot decode {name}: the {width}x{height} image data is damaged or cut short")
    return image


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file to an HxWx3 BGR uint8 array (see :func:`decode_image_bytes`).

    The file is memory-mapped, so only its header is read before the size check.
    """
    path = Path(path)
    limit = _check_limit(max_pixels)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    if not path.is_file():
        raise InputError(f"no such image file: {path}")
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise InputError(f"{path} is empty (0 bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return decode_image_bytes(mapped, limit, name=str(path))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
