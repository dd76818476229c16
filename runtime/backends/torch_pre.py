"""The official pre- and post-processing as PyTorch ops on the model's device, so that on a GPU
only the uint8 frame goes up and the depth map comes down (``preprocess="device"``).

The same steps as ``runtime.preprocessing`` (the official ``infer_image``): BGR to RGB, bicubic
resize to the network size, ImageNet mean and std; afterwards the depth map back to the image's
size with bilinear ``align_corners=True``. PyTorch's ``bicubic`` is OpenCV's ``INTER_CUBIC``
kernel (Keys, a = -0.75) on the same half-pixel grid with clamped borders (measured: at most
4e-5 apart on [0, 1] images); the resize runs on 0..255 values and the normalisation after it,
which changes only rounding, since a resize is linear with weights summing to one. The network
size is the predictor's decision (``dynamic_size`` or the fixed size), passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..preprocessing import MEAN, STD, check_image


class TorchImagePipeline:
    """Frames in, network input out, on ``device``; depth back to the frame's size, to numpy."""

    def __init__(self, torch: Any, device: str, dtype: Any = None) -> None:
        self.torch, self.device = torch, device
        self.dtype = dtype or torch.float32
        # (x - 255 mean) / (255 std) as one multiply-add per pixel
        self.scale = torch.tensor(1.0 / (255.0 * STD), device=device).view(1, 3, 1, 1)
        self.shift = torch.tensor(-MEAN / STD, device=device).view(1, 3, 1, 1)

    def upload(self, image: np.ndarray) -> Any:
        """The uint8 frame on the device; pinned first on CUDA, so the copy can run asynchronously."""
        frame = self.torch.from_numpy(np.ascontiguousarray(check_image(image)))
        if self.device.startswith("cuda"):
            frame = frame.pin_memory()
        return frame.to(self.device, non_blocking=True)

    def prepare(self, images: list[np.ndarray], size: tuple[int, int], rgb: bool = False) -> Any:
        """``(N, 3, h, w)`` network input of ``dtype`` for frames of one size, resized to ``size``."""
        torch = self.torch
        frames = []
        for image in images:
            frame = self.upload(image)
            frame = frame[..., None].expand(*frame.shape, 3) if frame.ndim == 2 else frame
            frames.append(frame if rgb else frame.flip(-1))
        x = torch.stack(frames).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
        return (x * self.scale + self.shift).to(self.dtype)

    def finish(self, depth: Any, height: int, width: int) -> np.ndarray:
        """One ``(h, w)`` depth map on the device, resized to ``height x width``, as float32 numpy."""
        depth = depth.float()[None, None]
        if tuple(depth.shape[-2:]) != (height, width):
            depth = self.torch.nn.functional.interpolate(
                depth, size=(height, width), mode="bilinear", align_corners=True
            )
        return depth[0, 0].cpu().numpy()
