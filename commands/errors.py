"""Errors the runtime raises, each with a message that says how to fix the problem."""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGE = "dav2-edge"


class InputError(ValueError):
    """An image or tensor the predictor cannot use (wrong type, dtype, shape or size)."""


class ModelFileError(ValueError):
    """A model file that does not exist, is not a model, or does not fit this machine."""


class OutputError(OSError):
    """An output that could not be written whole (a full disk, a writer that failed quietly);
    nothing is left under its name. ``OSError(errno, what happened, path)``."""


class MissingDependencyError(ImportError):
    """An optional library is not installed; the message names the pip extra."""


def require(module: str, extra: str, what: str | None = None, note: str = "") -> ModuleType:
    """Import an optional library or raise an error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f"pip install '{PACKAGE}[{extra}]'"
        msg = f"{what or module} is not installed (needed here): {hint}"
        if note:
            msg += f"; {note}"
        raise MissingDependencyError(msg) from exc
