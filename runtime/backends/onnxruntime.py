"""ONNX Runtime backend: FP32, FP16-typed and Q/DQ INT8 ``.onnx`` models as they are.

Providers follow ``device``: ``cpu``; ``cuda`` (IO binding keeps tensors on the GPU between
calls); ``tensorrt`` (the TensorRT execution provider, with its engine cache beside the
model); ``openvino`` (the OpenVINO execution provider, when that build is installed);
``auto`` takes the best one available.

The precision is the artefact's: an FP32 ONNX runs FP32 on every provider unless ``precision=
"fp16"`` asks the TensorRT provider for FP16, and the CUDA provider's TF32 default (FP32 matrix
products with a 10-bit mantissa, ``use_tf32``, on from ONNX Runtime 1.18: onnxruntime#19357) is
turned off for FP32 models. A precision the provider cannot run the model in is an error.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from commands.errors import ModelFileError, require

from ..int8_cpu import mismatch, this_cpu
from ..metadata import read_sidecar
from ..metric import OutputKind
from ..prediction import SKY, extras_of
from ..sky import apply_sky_step, check_runtime_sky_step, sky_to_far
from ..video_state import STREAM_INPUTS
from .base import Backend, InputSpec, check_depth_output, check_streams
from .profiling import Profile, events_after, onnxruntime_events, onnxruntime_layers, onnxruntime_runs, timed_calls

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "openvino": ["OpenVINOExecutionProvider", "CPUExecutionProvider"],
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")
USE_TF32_SINCE = (1, 18)  # the CUDA provider's use_tf32 option (onnxruntime#19357)
_warned: set = set()  # INT8 artefacts already warned about in this process (once each)


def provider_settings(provider: str, artefact: str, asked: str | None, ort_version: str) -> tuple[dict, str]:
    """The options for ``provider`` that keep ``artefact``'s precision (or give the one ``asked``),
    and the precision that then runs. An FP16 or INT8 ONNX carries its types and runs as written."""
    release = tuple(int(v) for v in ort_version.split(".")[:2] if v.isdigit())
    if asked is not None and asked != artefact and not (provider == "TensorrtExecutionProvider" and asked == "fp16"):
        raise ValueError(
            f"ONNX Runtime's {provider} runs this {artefact} model as {artefact}, not {asked}: export a {asked} "
            "model, or pass precision=None"
        )
    if provider == "TensorrtExecutionProvider":
        return {"trt_fp16_enable": asked == "fp16"}, asked or artefact
    if provider == "CUDAExecutionProvider" and artefact == "fp32" and release >= USE_TF32_SINCE:
        return {"use_tf32": 0}, artefact
    return {}, artefact


def choose_providers(device: str, available: list[str]) -> list[str]:
    """The provider list for ``device``; a device whose provider is missing is an error, not a fallback."""
    if device == "auto":
        for name in AUTO_ORDER:
            if PROVIDERS[name][0] in available:
                return [p for p in PROVIDERS[name] if p in available]
        raise ModelFileError(f"ONNX Runtime offers none of the usual providers: {available}")
    key = device.split(":")[0]
    if key not in PROVIDERS:
        raise ValueError(f"device must be auto, {', '.join(PROVIDERS)} (optionally :N), not {device!r}")
    if PROVIDERS[key][0] not in available:
        package = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu", "openvino": "onnxruntime-openvino"}
        raise ValueError(
            f"ONNX Runtime here has no {PROVIDERS[key][0]} (available: {', '.join(available)}); "
            f"install {package.get(key, 'onnxruntime')} instead of onnxruntime"
        )
    return [p for p in PROVIDERS[key] if p in available]


def artefact_precision(recorded: str | None) -> str:
    """fp32, fp16 or int8 from a sidecar's precision (``int8+fp16`` is an INT8 model)."""
    recorded = recorded or "fp32"
    return "int8" if "int8" in recorded else "fp16" if "fp16" in recorded else "fp32"


def default_threads() -> int:
    """Intra-op threads: the physical-ish core count this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        model: Any,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        streams: int = 1,
    ) -> None:
        super().__init__()
        ort = require("onnxruntime", "onnx", "ONNX Runtime")
        self._ort = ort
        path = self.model_path(model, ".onnx files", "ONNX file")
        providers = choose_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ``streams`` runs at once share the cores: a session's run is thread-safe, and each run
        # parallelises over its own share (one thread each on a 2-core CPU with streams=2).
        self.max_concurrency = check_streams(streams)
        options.intra_op_num_threads = max(1, (threads or default_threads()) // streams)
        options.log_severity_level = 3  # errors only: shape-inference notes on Q/DQ models are noise
        meta = read_sidecar(path) or {}
        artefact = artefact_precision(meta.get("precision"))
        provider_options = []
        for index, provider in enumerate(providers):  # the first provider runs what was asked; fallbacks as written
            settings = provider_settings(provider, artefact, precision if index == 0 else None, ort.__version__)[0]
            if provider == "TensorrtExecutionProvider":
                cache = path.with_name(path.name + ".trt_cache")
                settings.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache))
            provider_options.append(settings)
        self._load = (path, providers, provider_options)
        try:
            self._session = self._new_session(options)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelFileError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        custom = self._session.get_modelmeta().custom_metadata_map
        self._sky_step = False  # a graph that leaves the DA3 sky step to the runtime (export.trt's sky-less ONNX)
        if tuple(i.name for i in inputs[1:]) == STREAM_INPUTS:  # a Video Depth Anything stream step
            self.stream_names = STREAM_INPUTS
            self._stream_shapes = [tuple(i.shape) for i in inputs[2:]]
            self._stream_inputs = [i.name for i in inputs]
        elif len(inputs) != 1 or inputs[0].type != "tensor(float)":
            raise ModelFileError(f"{path}: expected one float32 image input")
        else:  # depth, and a DA3 network's sky map or depth confidence after it
            try:
                self.extra_outputs = extras_of([o.name for o in outputs], path)
                self._sky_step = check_runtime_sky_step(custom, self.extra_outputs, path)
            except ValueError as exc:
                raise ModelFileError(str(exc)) from None
        dims = inputs[0].shape
        if len(dims) != 4:
            raise ModelFileError(f"{path}: input {inputs[0].name!r} has shape {dims}; expected (N, 3, H, W)")
        self.input_spec = InputSpec(inputs[0].name, tuple(d if isinstance(d, int) and d > 0 else None for d in dims))
        check_depth_output(path, outputs[0].shape or ())
        self._output = outputs[0].name
        self._providers = self._session.get_providers()
        self.precision = provider_settings(self._providers[0], artefact, precision, ort.__version__)[1]
        self.read_identity(custom, meta)
        self.output_kind = OutputKind.from_metadata(custom, "ONNX metadata") or OutputKind.from_metadata(
            meta, "sidecar"
        )
        self.device = self._providers[0].replace("ExecutionProvider", "").lower()
        self._io_binding = self._providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._threads = options.intra_op_num_threads
        # An INT8 model made (and measured) for another class of CPU than this one: say so, once.
        # One exported before the arithmetic was recorded has full-range weights: a VNNI model.
        unrecorded = {"class": "vnni", "form": "u8s8", "measured_on": "an unrecorded CPU"}
        self.int8_cpu = None
        if artefact == "int8" and self.device == "cpu":
            self.int8_cpu = meta.get("int8_cpu") or (unrecorded if meta.get("target") == "cpu" else None)
        message = mismatch(self.int8_cpu)
        if message and str(path.resolve()) not in _warned:
            _warned.add(str(path.resolve()))
            warnings.warn(f"{path.name}: {message}", stacklevel=3)

    def _new_session(self, options: Any) -> Any:
        path, providers, provider_options = self._load
        return self._ort.InferenceSession(str(path), options, providers=providers, provider_options=provider_options)

    def _infer(self, batch: np.ndarray, session: Any = None) -> np.ndarray:
        session = session or self._session
        if self._sky_step:
            return sky_to_far(*session.run([self._output, SKY], {self.input_spec.name: batch}))
        if not self._io_binding:
            return session.run([self._output], {self.input_spec.name: batch})[0]
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_spec.name, batch)
        binding.bind_output(self._output, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [self._output, *self.extra_outputs]
        values = self._session.run(names, {self.input_spec.name: batch})
        outs = {"depth": values[0], **dict(zip(self.extra_outputs, values[1:]))}
        return apply_sky_step(outs) if self._sky_step else outs

    def _step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        # CPU inputs are read where they lie: the cache is not copied per frame.
        return self._session.run(None, dict(zip(self._stream_inputs, (batch, slot_pos, *caches))))

    def stream_shapes(self, height: int, width: int) -> list:
        return self._stream_shapes

    def _profile(self, batch: np.ndarray, calls: int) -> Profile:
        # Profiling is a session option: a second session, whose trace goes to a temporary folder.
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.log_severity_level = 3
        options.enable_profiling = True
        with tempfile.TemporaryDirectory(prefix="dav2-ort-profile-") as folder:
            options.profile_file_prefix = str(Path(folder) / "profile")
            session = self._new_session(options)
            self._infer(batch, session)  # warm-up: its events are dropped below
            walls = timed_calls(lambda: self._infer(batch, session), calls, warmup=0)
            events = onnxruntime_events(session.end_profiling())
        runs = onnxruntime_runs(events)
        profiled = events_after(events, float(runs[-calls]["ts"])) if len(runs) > calls else events
        return Profile(
            "ONNX Runtime profiling (enable_profiling), a second session", onnxruntime_layers(profiled, calls), walls
        )

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": self._ort.__version__}

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "providers": self._providers,
            "threads": self._threads,
            "streams": self.max_concurrency,
            **(
                {"int8_arithmetic": this_cpu()["arithmetic"]}
                if self.precision == "int8" and self.device == "cpu"
                else {}
            ),
            **({"int8_made_for": self.int8_cpu.get("class")} if self.int8_cpu else {}),
        }

    def _release(self) -> None:
        self._session = None
