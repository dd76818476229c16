"""Runtime: depth from images on PyTorch, ONNX Runtime, TensorRT or OpenVINO.

Imports neither torch nor the training code at module level, so it runs on a Jetson or an
OpenVINO box with numpy, OpenCV and the one backend library installed.
"""

from commands.errors import InputError, MissingDependencyError, ModelFileError

from .metric import ScaleShift, fit_scale_shift
from .predictor import DepthPredictor
from .visualize import colorize

__all__ = [
    "DepthPredictor",
    "InputError",
    "MissingDependencyError",
    "ModelFileError",
    "ScaleShift",
    "colorize",
    "fit_scale_shift",
]
