"""Backends by name, and the one mapping from model-file suffix to backend."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from commands.errors import ModelFileError

from .base import Backend, InputSpec

# name -> (module, class); modules are imported only when their backend is used.
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("runtime.backends.pytorch", "TorchBackend"),
    "onnxruntime": ("runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "tensorrt": ("runtime.backends.tensorrt", "TensorRTBackend"),
    "openvino": ("runtime.backends.openvino", "OpenVINOBackend"),
}
SNAPSHOT_CONFIG = "config.json"  # a Hugging Face snapshot folder (Depth Anything 3) holds one
SUFFIXES: dict[str, str] = {
    ".pth": "torch",
    ".pt": "torch",
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".xml": "openvino",
}


def resolve_backend(model: Any, backend: str = "auto") -> str:
    """The backend name for ``model``: ``backend`` when given, else from the file suffix."""
    if isinstance(model, (str, Path)) and (Path(model) / SNAPSHOT_CONFIG).is_file():
        if backend not in ("auto", "torch"):  # a Depth Anything 3 snapshot folder: PyTorch weights
            raise ModelFileError(f"{model} is a checkpoint folder, which the torch backend runs, not {backend}")
        return "torch"
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        inside = sorted(p.name for p in Path(model).iterdir() if p.suffix.lower() in SUFFIXES)
        hint = f" (it holds {', '.join(inside[:5])})" if inside else ""
        raise ModelFileError(f"{model} is a directory: pass the model file inside it{hint}")
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        return backend
    if isinstance(model, (str, Path)):
        suffix = Path(model).suffix.lower()
        if suffix not in SUFFIXES:
            raise ModelFileError(
                f"{model}: cannot tell the backend from the suffix {suffix or '(none)'!r}; "
                f"known: {', '.join(sorted(SUFFIXES))}, or pass backend="
            )
        return SUFFIXES[suffix]
    if type(model).__module__.startswith("torch") or hasattr(model, "state_dict"):
        return "torch"
    raise ModelFileError(f"cannot run a {type(model).__name__}: pass a model file path or a torch.nn.Module")


def backend_class(name: str) -> type[Backend]:
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


__all__ = ["BACKENDS", "SUFFIXES", "Backend", "InputSpec", "backend_class", "resolve_backend"]
