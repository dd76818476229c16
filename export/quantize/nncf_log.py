"""NNCF's log at warnings only, for the length of a quantization: its info lines (every node it
leaves unquantized, with its graph index: hundreds a run) would bury the export's own progress and
its one-line notes. Its progress bars stay. No project imports, so any module may use it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def nncf_quiet() -> Iterator[None]:
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
