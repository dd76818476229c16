"""Depth Anything V2 and Video Depth Anything models: encoder table, model, checkpoint loading and saving."""

import sys

if sys.version_info < (3, 10):  # noqa: UP036 - the package installs on 3.8 for the runtime
    raise ImportError(
        f"the PyTorch model core and training need Python >= 3.10 (this is {sys.version.split()[0]}); "
        "on JetPack 5's Python 3.8 only the runtime and python -m export.trt run"
    )

from .checkpoint import CheckpointError, load_backbone, load_model, save_model, to_official
from .depth_anything import DepthAnythingV2
from .student import build_student
from .teacher_model import build_teacher, freeze
from .variants import PATCH_SIZE, VARIANTS, ModelSpec, get_spec
from .video import VideoDepthAnything

__all__ = [
    "PATCH_SIZE",
    "VARIANTS",
    "CheckpointError",
    "DepthAnythingV2",
    "ModelSpec",
    "VideoDepthAnything",
    "build_student",
    "build_teacher",
    "freeze",
    "get_spec",
    "load_backbone",
    "load_model",
    "save_model",
    "to_official",
]
