"""PyTorch backend: a ``DepthAnythingV2`` checkpoint or any module mapping (N,3,H,W) to (N,H,W)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ModelFileError, require
from .base import Backend, InputSpec

PRECISIONS = ("fp32", "fp16", "bf16")


def resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"the torch backend runs on 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return device


def resolve_precision(device: str, precision: str | None) -> str:
    """FP16 on CUDA and FP32 on CPU unless asked; FP16 on CPU is refused (bf16 is the CPU choice)."""
    if precision is None:
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 autocast is not supported on the CPU; use precision='bf16' or 'fp32'")
    return precision


def check_cuda_precision(precision: str, gpu: str, capability: tuple[int, int]) -> None:
    """BF16 needs Ampere or newer (compute capability 8.0: Jetson Orin yes, Jetson Xavier 7.2
    no); on older GPUs PyTorch either refuses it kernel by kernel or emulates it slowly."""
    if precision == "bf16" and tuple(capability) < (8, 0):
        raise ValueError(
            f"{gpu} (compute capability {capability[0]}.{capability[1]}) has no bf16 units; use precision='fp16'"
        )


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, model: Any, device: str = "auto", precision: str | None = None, attention: str = "fused"
    ) -> None:
        super().__init__()
        torch = require("torch", "torch", "PyTorch")
        self._torch = torch
        owned = isinstance(model, (str, Path))  # loaded here: nobody else holds it
        if owned:
            from train.models import CheckpointError, load_model

            try:
                model = load_model(model)
            except CheckpointError as exc:
                raise ModelFileError(str(exc)) from exc
        if not isinstance(model, torch.nn.Module):
            raise ModelFileError(f"the torch backend needs a torch.nn.Module, got {type(model).__name__}")
        self.device = resolve_device(torch, device)
        self.precision = resolve_precision(self.device, precision)
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index or 0
            check_cuda_precision(
                self.precision, torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
            )
        # "fused" (default) or the official code's "explicit" form (train.models.Attention); set on
        # the module itself, so a model passed in runs the requested form whatever it ran before.
        if hasattr(model, "set_attention"):
            model.set_attention(attention)
        elif attention != "fused":
            raise ValueError(f"attention={attention!r} needs a DepthAnythingV2 model, got {type(model).__name__}")
        self.attention = attention
        self._dtype = None
        if self.device.startswith("cuda") and self.precision != "fp32":
            # The half formats run on CUDA from a half copy of the weights: autocast casts every
            # weight again on every call (its cast cache lasts one autocast region). vits 518 at
            # batch 1 on an H200, one run: half weights 5.2 ms, autocast 6.7 ms, FP32 7.6 ms (an
            # earlier run had autocast at 13.7 ms, slower than FP32). The module passed in is left
            # as it was, for other predictors that share it.
            self._dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            half = model if owned else copy.deepcopy(model)
            self._model = half.to(device=self.device, dtype=self._dtype).eval()
        else:
            self._model = model.to(self.device).eval()
        self.input_spec = InputSpec("image", (None, 3, None, None))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32" or self._dtype is not None:
            return contextlib.nullcontext()
        dtype = self._torch.float16 if self.precision == "fp16" else self._torch.bfloat16
        return self._torch.autocast(self.device.split(":")[0], dtype=dtype)

    @contextlib.contextmanager
    def _exact_fp32(self) -> Iterator[None]:
        """FP32 on CUDA computes in FP32: PyTorch lets cuDNN convolutions use TF32 (a 10-bit
        mantissa) by default, which moves the output by about 1e-3 of its spread. Turned off for
        the call only and restored after (a process-wide switch: concurrent CUDA work in other
        threads sees it during the call)."""
        if self.precision != "fp32" or not self.device.startswith("cuda"):
            yield
            return
        backends = self._torch.backends
        saved = backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        if self._dtype is not None:
            x = x.to(self._dtype)
        with torch.inference_mode(), self._autocast(), self._exact_fp32():
            y = self._model(x)
        return y.float().cpu().numpy()

    def versions(self) -> dict[str, str]:
        return {"torch": self._torch.__version__}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "attention": self.attention}

    def _release(self) -> None:
        self._model = None
