"""The two errors every export raises; ``commands.runner`` turns them into exit codes 1 and 2."""

from __future__ import annotations

from commands.errors import InputError
from commands.runner import CommandError


class ExportError(CommandError):
    """An export that failed, or whose artefact failed its verification (exit code 1)."""


class ExportRequestError(ExportError, InputError):
    """An export that cannot be done as asked: options, files, sizes or images (exit code 2)."""
