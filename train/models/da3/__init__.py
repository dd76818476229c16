"""Depth Anything 3 (ByteDance-Seed/Depth-Anything-3) networks on one view, under the official names."""

from .model import DA3Depth, DepthAnything3, sky_to_far
from .variants import DA3_VARIANTS, DEPTH_UP_TO_SCALE, FAMILY, METRES_PER_FOCAL, DA3Spec, get_da3_spec

__all__ = [
    "DA3_VARIANTS",
    "DEPTH_UP_TO_SCALE",
    "FAMILY",
    "METRES_PER_FOCAL",
    "DA3Depth",
    "DA3Spec",
    "DepthAnything3",
    "get_da3_spec",
    "sky_to_far",
]
