"""Run a command with a tiny (or read-only) file system mounted on a folder: full-disk and read-only
cases without root and without touching the machine's disks.

The folder gets a tmpfs of the given size in a private mount namespace (``unshare --mount
--map-root-user``, an unprivileged user namespace where the kernel allows one), so the mount
exists only for that command and vanishes with it. What the command left in the folder is listed
from inside the namespace before it ends. Where namespaces are not allowed (some containers, CI
sandboxes), :func:`unavailable` gives the reason to skip with.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

# $1 folder, $2 mount options, $3 listing file (outside the folder), then the command.
_SCRIPT = """
folder=$1; options=$2; listing=$3; shift 3
mount -t tmpfs -o "$options" tiny "$folder" || exit 97
"$@"
code=$?
find "$folder" -mindepth 1 -printf '%P\\n' > "$listing"
exit $code
"""


class TinyRun(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    left: list[str]  # paths under the folder when the command ended, relative to it


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why a tmpfs cannot be mounted in a private namespace here, or ``None`` when it can."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            ["unshare", "--mount", "--map-root-user", "mount", "-t", "tmpfs", "-o", "size=8k", "tiny", folder],
            capture_output=True,
            text=True,
        )
    if probe.returncode:
        return f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}"
    return None


def run_with_tmpfs(command: list[str], folder: Path, size: str = "64k", read_only: bool = False, **kwargs) -> TinyRun:
    """Run ``command`` with a ``size`` tmpfs (read-only if asked) mounted on ``folder`` (which must exist)."""
    options = f"size={size}" + (",ro" if read_only else "")
    listing = folder.parent / f".{folder.name}.listing"
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--map-root-user",
            "sh",
            "-c",
            _SCRIPT,
            "sh",
            str(folder),
            options,
            str(listing),
            *command,
        ],
        capture_output=True,
        text=True,
        **kwargs,
    )
    assert run.returncode != 97, f"mounting the tmpfs failed: {run.stderr}"
    left = listing.read_text().split() if listing.exists() else []
    listing.unlink(missing_ok=True)
    return TinyRun(run.returncode, run.stdout, run.stderr, left)
