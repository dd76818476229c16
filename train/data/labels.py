"""Pseudo-label files: one per SA-1B shard, written as labels arrive, read back per image.

Three formats (``python -m train.pseudo_label --label-format``), all at the network resolution
(518 on the short side), each image listed in the shard's ``<shard>.json`` index:

- ``float16`` (default): ``<shard>.npz``, one float16 ``.npy`` per image, stored as is: 2 bytes
  a pixel, 0.71 MB for a 4:3 image (518x686), 0.81 MB for a 3:2 one (518x784). Rounding: 2^-11
  of each value (an error that grows with the value, whatever the map's spread); above 65504 a
  value becomes infinite.
- ``float16z``: the same ``.npz`` deflated (what ``np.savez_compressed`` writes): the same
  numbers bit for bit, so the same training, in about 0.8 bytes a pixel on a real disparity map.
- ``png16``: ``<shard>.png.tar``, one 16-bit grey PNG per image (``<key>.png``), the label mapped
  linearly onto 0..65534 with the offset and scale in the index (``label = offset + scale * q``);
  65535 marks a non-finite value. The error is at most range / 131068 whatever the values: the
  bits go to the map's spread, which is all the scale-and-shift-invariant loss sees, so a flat
  far-away scene keeps its detail where float16 rounds it to a few levels. About 1.15 bytes a
  pixel on a real disparity map; an image viewer opens the PNGs.

Labels are encoded in threads and written by one more (zlib, OpenCV and file writes release the
GIL), so encoding overlaps the teacher.
"""

from __future__ import annotations

import io
import queue
import tarfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

FORMATS = ("float16", "float16z", "png16")
SUFFIX = {"float16": ".npz", "float16z": ".npz", "png16": ".png.tar"}
DEFLATE_LEVEL = 1  # float16z: 6 saves another 14% in three times the time (README)
INVALID = 65535  # png16 code of a non-finite value
LEVELS = 65534  # png16 codes of finite values: 0..LEVELS
PNG_LEVEL = 3  # zlib effort: 9 takes ~10x the time for a few percent (README)


def encode(label: np.ndarray, fmt: str) -> tuple[bytes, dict]:
    """One label's bytes in ``fmt`` and what its index entry needs to decode them."""
    if fmt != "png16":  # float16z is deflated as the zip entry is written
        buffer = io.BytesIO()
        np.save(buffer, label.astype(np.float16))
        return buffer.getvalue(), {}
    finite = np.isfinite(label)
    values = label[finite].astype(np.float64)
    offset = float(values.min()) if values.size else 0.0
    spread = float(values.max()) - offset if values.size else 0.0
    scale = spread / LEVELS if spread > 0 else 1.0
    codes = np.full(label.shape, INVALID, np.uint16)
    codes[finite] = np.clip(np.round((values - offset) / scale), 0, LEVELS).astype(np.uint16)
    ok, png = cv2.imencode(".png", codes, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise ValueError(f"PNG encoding failed for a {label.shape} label")
    return png.tobytes(), {"offset": offset, "scale": scale}


def decode(data: bytes, fmt: str, entry: dict) -> np.ndarray:
    """The float32 label from :func:`encode`'s bytes and the entry's fields."""
    if fmt != "png16":
        return np.load(io.BytesIO(data)).astype(np.float32)
    codes = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if codes is None or codes.dtype != np.uint16:
        raise ValueError("not a 16-bit PNG label")
    label = (entry["offset"] + entry["scale"] * codes.astype(np.float64)).astype(np.float32)
    label[codes == INVALID] = np.nan
    return label


class LabelWriter:
    """Adds labels to one shard's label file at ``path`` (a temporary name: the caller renames it
    once the index is ready). ``threads`` encode, one more writes in call order; ``add`` blocks
    only when ``4 * threads`` labels are waiting."""

    def __init__(self, path: Path, fmt: str, threads: int = 4) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown label format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.entries: list[dict] = []
        if fmt == "png16":
            self._file: zipfile.ZipFile | tarfile.TarFile = tarfile.open(path, "w")
        else:
            method = zipfile.ZIP_DEFLATED if fmt == "float16z" else zipfile.ZIP_STORED
            self._file = zipfile.ZipFile(path, "w", method, allowZip64=True, compresslevel=DEFLATE_LEVEL)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="label-encode")
        self._queue: queue.Queue = queue.Queue(maxsize=4 * threads)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_all, name="label-write", daemon=True)
        self._writer.start()

    def add(self, entry: dict, label: np.ndarray) -> None:
        """Queue ``label`` under ``entry["key"]``; the entry gets the decoding fields once written."""
        if self._error is not None:
            raise self._error
        self._queue.put((entry, self._pool.submit(encode, label, self.fmt)))

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that add() never blocks forever
            entry, future = item
            try:
                data, fields = future.result()
                if self.fmt == "png16":
                    info = tarfile.TarInfo(f"{entry['key']}.png")
                    info.size = len(data)
                    self._file.addfile(info, io.BytesIO(data))
                else:
                    self._file.writestr(f"{entry['key']}.npy", data)
                self.entries.append({**entry, **fields})
            except BaseException as exc:  # handed to the caller by add() or close()
                self._error = exc

    def close(self) -> list[dict]:
        """Write what is queued and close the file; returns the entries in the order written."""
        self._queue.put(None)
        self._writer.join()
        self._pool.shutdown()
        self._file.close()
        if self._error is not None:
            raise self._error
        return self.entries


class LabelReader:
    """Reads single labels from shards' label files, keeping each file open once read."""

    def __init__(self) -> None:
        self._open: dict[str, zipfile.ZipFile | tarfile.TarFile] = {}

    def read(self, entry: dict) -> np.ndarray:
        """``entry`` as :func:`train.data.datasets.read_label_index` lists it (``labels``: the file,
        ``format``, ``key``); float32, NaN where the teacher gave no finite value."""
        fmt = entry.get("format", "float16")  # label folders written before the other formats
        handle = self._open.get(entry["labels"])
        if handle is None:
            path = entry["labels"]
            handle = self._open[path] = tarfile.open(path) if fmt == "png16" else zipfile.ZipFile(path)
        if fmt != "png16":
            data = handle.read(f"{entry['key']}.npy")
        else:
            member = handle.extractfile(f"{entry['key']}.png")
            if member is None:
                raise KeyError(f"{entry['key']}.png is not a file in {entry['labels']}")
            data = member.read()
        return decode(data, fmt, entry)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()
