"""Which TensorRT this build is for: the installed one, or the release ``--trt-version`` names."""

from __future__ import annotations

import sys

from commands.errors import MissingDependencyError, require

from ..errors import ExportRequestError
from .decisions import DEFAULT_TARGET, JETPACK_NOTE
from .rules import TrtVersion, known_releases


def installed_tensorrt():
    """The tensorrt module, or ``None`` when it is not installed."""
    try:
        return require("tensorrt", "tensorrt", "TensorRT", JETPACK_NOTE)
    except MissingDependencyError:
        return None


def target_version(trt, requested: str | None) -> TrtVersion:
    """The installed TensorRT, or the release named by --trt-version (default: JetPack 6's), which
    must be one whose rules are known (an installed newer release is checked with the newest table)."""
    wanted = TrtVersion.target(requested) if requested else None
    if trt is None:
        return wanted or TrtVersion.target(DEFAULT_TARGET)
    version = TrtVersion.parse(trt.__version__)
    if wanted is not None and wanted != version:
        raise ExportRequestError(f"`trt_version` {requested} differs from the installed TensorRT {trt.__version__}")
    if not version.known:
        print(
            f"note: TensorRT {trt.__version__} is newer than the parser rules this project encodes "
            f"({known_releases()}); checking against the nearest table",
            file=sys.stderr,
        )
    return version
