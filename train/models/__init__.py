"""Depth Anything V2 models: encoder table, model, checkpoint loading and saving."""

from .checkpoint import CheckpointError, load_backbone, load_model, save_model, to_official
from .depth_anything import DepthAnythingV2
from .student import build_student
from .teacher import build_teacher, freeze
from .variants import PATCH_SIZE, VARIANTS, ModelSpec, get_spec

__all__ = [
    "PATCH_SIZE",
    "VARIANTS",
    "CheckpointError",
    "DepthAnythingV2",
    "ModelSpec",
    "build_student",
    "build_teacher",
    "freeze",
    "get_spec",
    "load_backbone",
    "load_model",
    "save_model",
    "to_official",
]
