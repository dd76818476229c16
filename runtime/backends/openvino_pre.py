"""Pre-processing inside a compiled OpenVINO model: the camera's uint8 BGR frame goes in as it is,
and the plugin converts, resizes and normalises it (OpenVINO's ``PrePostProcessor``), so the
robot's process does no float image work of its own.

The official ``infer_image`` (``runtime.preprocessing``): BGR to RGB, /255, bicubic resize
(``cv2.INTER_CUBIC``) to the network size, ImageNet mean and std, NCHW. In the plugin: u8 to f32,
BGR to RGB, the cubic resize on 0..255 values, then mean 255*MEAN and scale 255*STD: a resize is
linear with weights that sum to one, so it commutes with the per-channel affine map and the
order changes only rounding. The resize is ``Interpolate``-11 in ``cubic`` mode with
``half_pixel`` coordinates, ``cube_coeff`` -0.75 and no antialiasing (what ``RESIZE_CUBIC``
builds in OpenVINO 2026.4, read from the built model): OpenCV's INTER_CUBIC kernel and sampling
grid, computed in another order. Only for fixed-size models, as ``prepare_fixed``: the frame is
resized straight to the model's own H x W, whatever its size.
"""

from __future__ import annotations

from typing import Any

from commands.errors import ModelFileError

from ..preprocessing import MEAN, STD

MODES = ("numpy", "model")


def check_preprocess(preprocess: str) -> str:
    if preprocess not in MODES:
        raise ValueError(f"preprocess must be 'numpy' (OpenCV here) or 'model' (in OpenVINO), not {preprocess!r}")
    return preprocess


def embed_preprocessing(ov: Any, model: Any, path: object) -> Any:
    """``model`` taking uint8 (N, H, W, 3) BGR frames of any size, with the official pre-processing
    in front of it; a dynamic-size model is refused (its input size follows each image's aspect
    ratio, which a plugin-side resize cannot)."""
    from openvino.preprocess import ColorFormat, PrePostProcessor, ResizeAlgorithm

    shape = model.input(0).get_partial_shape()
    if shape.rank.get_length() != 4 or not (shape[2].is_static and shape[3].is_static):
        raise ModelFileError(
            f"{path}: preprocess='model' needs a fixed-size model (input {shape}); export one with --size HxW"
        )
    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    tensor.set_color_format(ColorFormat.BGR).set_spatial_dynamic_shape()
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB)
    steps.resize(ResizeAlgorithm.RESIZE_CUBIC)
    steps.mean([255.0 * float(v) for v in MEAN]).scale([255.0 * float(v) for v in STD])
    return ppp.build()
