"""PyTorch backend: a ``DepthAnythingV2`` checkpoint or any module mapping (N,3,H,W) to (N,H,W)."""

from __future__ import annotations

import contextlib
import copy
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from commands.errors import InputError, ModelFileError, require

from ..metric import OutputKind
from .base import Backend, InputSpec
from .profiling import TORCH_MARKER, Profile, timed_calls, torch_layers
from .torch_pre import TorchImagePipeline

PRECISIONS = ("fp32", "fp16", "bf16")
PREPROCESS = ("auto", "numpy", "device")


def resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use device='cpu'")
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"the torch backend runs on 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {device!r}: PyTorch sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return device


_TF32_LOCK = threading.Lock()
_TF32_STATE = {"depth": 0, "saved": None}


@contextlib.contextmanager
def exact_fp32_cuda(torch: Any) -> Iterator[None]:
    """CUDA matrix products and convolutions in FP32 for what runs inside: PyTorch lets cuDNN
    convolutions use TF32 (a 10-bit mantissa) by default, which moved the official-parity error
    on an H200 from 2.7e-5 to 1.7e-2 of the output's spread.

    The switches are process-wide: the first caller to enter saves and sets them, the last to
    leave restores them exactly (concurrent callers in other threads never restore under each
    other; CUDA work of other threads sees FP32 meanwhile). PyTorch >= 2.9 has per-backend
    ``fp32_precision`` settings and refuses to read the legacy ``allow_tf32`` flags once those
    differ, so they are used where they exist."""
    backends = torch.backends
    conv = getattr(backends.cudnn, "conv", None)
    if hasattr(backends.cuda.matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        switches, exact = ((backends.cuda.matmul, "fp32_precision"), (conv, "fp32_precision")), "ieee"
    else:
        switches, exact = ((backends.cuda.matmul, "allow_tf32"), (backends.cudnn, "allow_tf32")), False
    with _TF32_LOCK:
        if _TF32_STATE["depth"] == 0:
            _TF32_STATE["saved"] = [getattr(owner, name) for owner, name in switches]
            for owner, name in switches:
                setattr(owner, name, exact)
        _TF32_STATE["depth"] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_STATE["depth"] -= 1
            if _TF32_STATE["depth"] == 0:
                for (owner, name), value in zip(switches, _TF32_STATE["saved"]):
                    setattr(owner, name, value)


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


def video_output_kind(model: Any) -> OutputKind | None:
    """Relative inverse depth for the relative checkpoints; the metric ones output metres with no
    bound, which the output kinds do not express yet: ``None`` (the predictor's default)."""
    return None if model.metric else OutputKind("relative", None, "checkpoint")


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model: Any,
        device: str = "auto",
        precision: str | None = None,
        attention: str = "fused",
        preprocess: str = "auto",
        streams: int = 1,
    ) -> None:
        super().__init__()
        if streams != 1:  # its intra-op threads are process-wide: two calls would only contend
            raise ValueError("the torch backend runs one call at a time (streams=1); batch frames with predict_batch")
        if preprocess not in PREPROCESS:
            raise ValueError(f"the torch backend's preprocess is one of {', '.join(PREPROCESS)}, not {preprocess!r}")
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
        if hasattr(model, "deployable"):  # a Depth Anything 3 network: depth and its sky map or confidence
            model = model.deployable(extras=True)
        self.extra_outputs = tuple(getattr(model, "extra_outputs", ()))
        self.licence = getattr(model, "licence", None) or self.licence
        self.device = resolve_device(torch, device)
        self.precision = resolve_precision(self.device, precision)
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index
            index = torch.cuda.current_device() if index is None else index
            check_cuda_precision(
                self.precision, torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
            )
        # "fused" (default) or the official code's "explicit" form (train.models.Attention); set on
        # the module itself, so a model passed in runs the requested form whatever it ran before.
        if hasattr(model, "set_attention"):
            model.set_attention(attention)
        elif attention != "fused":
            raise InputError(
                f"attention={attention!r}: {type(model).__name__} has no attention switch (Depth Anything V2 and 3 "
                "and Video Depth Anything have one); drop attention="
            )
        self.attention = attention
        # The half format asked for, if any: on CUDA the weights and inputs are cast to it, on the
        # CPU (bf16) autocast runs the matrix work in it.
        self._half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        self._cast = self._half is not None and self.device.startswith("cuda")
        if self._cast:
            # The half formats run on CUDA from a half copy of the weights: autocast casts every
            # weight again on every call (its cast cache lasts one autocast region). vits 518 at
            # batch 1 on an H200, one run: half weights 5.2 ms, autocast 6.7 ms, FP32 7.6 ms (an
            # earlier run had autocast at 13.7 ms, slower than FP32). The module passed in is left
            # as it was, for other predictors that share it.
            half = model if owned else copy.deepcopy(model)
            self._model = half.to(device=self.device, dtype=self._half).eval()
        else:
            self._model = model.to(self.device).eval()
        self.input_spec = InputSpec("image", (None, 3, None, None))
        # On a GPU, pre- and post-processing run there too ("auto"); "numpy" keeps them on the CPU.
        on_device = preprocess == "device" or (preprocess == "auto" and self.device.startswith("cuda"))
        self.pipeline = (
            TorchImagePipeline(torch, self.device, self._half if self._cast else None) if on_device else None
        )
        if hasattr(model, "step") and hasattr(model, "state_shapes"):  # Video Depth Anything
            from ..video_state import STREAM_INPUTS

            self.stream_names = STREAM_INPUTS
            self.family, self.variant = model.family, getattr(model, "variant", "")
            self.output_kind = video_output_kind(model)
        if hasattr(model, "max_depth"):  # a DepthAnythingV2: its head says what it outputs
            # a student distilled from a Depth Anything 3 teacher says its kind (output_kind)
            kind = "metric" if model.max_depth is not None else getattr(model, "output_kind", "relative")
            self.output_kind = OutputKind(kind, model.max_depth, "checkpoint")
        elif isinstance(getattr(model, "output_kind", None), str):  # Depth Anything 3 (DA3Depth)
            self.output_kind = OutputKind(model.output_kind, None, "checkpoint")
        self.family = getattr(model, "family", None) or self.family
        self.variant = getattr(model, "variant", None) or getattr(getattr(model, "spec", None), "name", self.variant)

    def _precision(self) -> contextlib.AbstractContextManager:
        """The call's number format: FP32 for real on CUDA (TF32 off, see ``exact_fp32_cuda``),
        autocast for bf16 on the CPU, nothing more where the weights are already half."""
        if self._half is None:
            return exact_fp32_cuda(self._torch) if self.device.startswith("cuda") else contextlib.nullcontext()
        if self._cast:
            return contextlib.nullcontext()
        return self._torch.autocast(self.device.split(":")[0], dtype=self._half)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._infer_outputs(batch)["depth"]

    def _infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = self._torch.from_numpy(batch).to(self.device, non_blocking=True)
        outs = self._run(x.to(self._half) if self._cast else x)
        return {name: out.float().cpu().numpy() for name, out in outs.items()}

    def _infer_on_device(self, batch: Any) -> Any:
        """Depth on the device; with extra outputs a dict of them by name, depth first."""
        outs = self._run(batch)
        return outs if self.extra_outputs else outs["depth"]

    def _run(self, batch: Any) -> dict[str, Any]:
        with self._torch.inference_mode(), self._precision():
            out = self._model(batch)
        if not self.extra_outputs:
            return {"depth": out}
        return {"depth": out[0], **dict(zip(self.extra_outputs, out[1:]))}

    def _step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        t = self._torch
        tensors = [t.from_numpy(a).to(self.device) for a in (batch, slot_pos, *caches)]
        with t.inference_mode(), self._precision():
            outputs = self._model.step(
                *[x.to(self._half) if self._cast and x.is_floating_point() else x for x in tensors]
            )
        return [o.float().cpu().numpy() for o in outputs]

    def stream_shapes(self, height: int, width: int) -> list:
        self.require_open()  # the module is dropped at close
        return self._model.state_shapes(height, width)

    def _profile(self, batch: np.ndarray, calls: int) -> Profile:
        profiler = self._torch.profiler
        cuda = self.device.startswith("cuda")
        activities = [profiler.ProfilerActivity.CPU] + ([profiler.ProfilerActivity.CUDA] if cuda else [])

        def call() -> None:
            with profiler.record_function(TORCH_MARKER):
                self._infer(batch)

        self._infer(batch)  # warm-up outside the profiler
        with profiler.profile(activities=activities) as prof:
            walls = timed_calls(call, calls, warmup=0)
        layers = torch_layers(prof.events(), calls, device=cuda)
        # On CUDA the work is the kernels' device time, counted on the op that launched them.
        what = "CUDA time of the kernels each op launched" if cuda else "self CPU time per op"
        return Profile(f"PyTorch profiler, {what}", layers, walls)

    def versions(self) -> dict[str, str]:
        return {"torch": self._torch.__version__}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "attention": self.attention, "preprocess": "device" if self.pipeline else "numpy"}

    def _release(self) -> None:
        self._model = None
