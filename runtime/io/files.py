"""Writing outputs so that a crash never leaves a half-written file under the final name.

Temporaries live beside their output as ``.<name>.<pid>-<host>.<random>``: a later run finds
those whose process is gone (killed, or the machine lost power) and removes them, so an
interrupted export leaves no hidden copy of a model behind for long.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from commands.errors import InputError, OutputError
from commands.runner import DISK_ERRNOS

# Host in the name: two machines sharing a folder (an NFS mount, a container volume) must not
# take each other's live temporaries for leftovers of a dead local process.
_HOST = socket.gethostname().replace(".", "_") or "host"


def temp_prefix(path: Path) -> str:
    """The name prefix of this process's temporaries for ``path``."""
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: never remove
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove temporaries for ``path`` left by processes of this host that no longer run."""
    path = Path(path)
    removed = []
    start = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(start):
            continue
        pid, _, host = entry.name[len(start) :].split(".", 1)[0].partition("-")
        if not pid.isdigit() or host != _HOST or _process_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def check_writable_folder(folder: str | Path, option: str, named: str | Path | None = None) -> None:
    """Raise ``InputError`` unless files can be written in ``folder`` (or, if it does not exist
    yet, in the folder it would be made in): checked before a command loads its model, so a
    read-only folder or a file in the way ends the run at once, in one line. The line names
    ``named`` (an output file in that folder) where given, else ``option`` and the folder."""
    folder = Path(folder)
    what = f"{option} {folder}" if named is None else str(named)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder; choose another {option}")
    try:
        with tempfile.NamedTemporaryFile(prefix=".dav2-write-check.", dir=existing):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"{what}: cannot write in {existing} ({reason}); choose another {option}") from None


def named_for_output(exc: OSError, path: Path) -> BaseException:
    """The error to raise for ``exc``, met writing a temporary of ``path``: it names the output and
    its folder, never the hidden temporary. A folder this user may not write in is a usage error
    (``InputError``, exit code 2); a full or read-only disk an ``OutputError`` (exit code 1)."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{path}: cannot write in {path.parent} ({exc.strerror}); choose another output folder")
    if exc.errno in DISK_ERRNOS:
        return OutputError(exc.errno, exc.strerror, str(path))
    return exc


def staging_dir(path: str | Path) -> Path:
    """A fresh temporary folder beside ``path`` for building it (stale ones removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    try:
        return Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    except OSError as exc:
        raise named_for_output(exc, path) from exc


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise named_for_output(exc, path) from exc
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared like any written file
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename != str(path):
            named = named_for_output(exc, path)  # name the output, not its temporary
            if named is not exc:
                raise named from exc
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
