"""Video Depth Anything (DepthAnything/Video-Depth-Anything): network, streaming step, checkpoints."""

from .network import SLOTS, VideoDepthAnything, state_shapes

__all__ = ["SLOTS", "VideoDepthAnything", "state_shapes"]
