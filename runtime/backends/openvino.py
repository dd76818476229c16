"""OpenVINO backend: IR (``.xml``/``.bin``) or ONNX models on Intel CPUs, GPUs and NPUs.

The inference precision is the artefact's. OpenVINO by default runs in bf16 on CPUs with
AVX512-BF16 or AMX (and f16 on GPUs), which would silently change the numbers of a model exported
in FP32: an FP32 model (by its sidecar, else the precision ``export.openvino`` writes into the IR,
else its weights' element types) runs f32 unless ``precision=`` asks for another format; FP16
models (and INT8 ones, whose float layers are FP16-compressed) keep the device's default.
``info()`` reports what the compiled model really uses. Several infer requests serve concurrent callers (the
predictor's ``stream`` and threads) without one global lock.

Disk: compiled models are cached (``cache_dir``, default ``~/.cache/dav2-edge/openvino``, about
50 MB per model, device and precision for vits), which halves the next load time; the oldest
blobs are removed past ``CACHE_LIMIT_BYTES``, ``info()`` shows the folder and its size, and
``cache_dir=None`` turns the cache off. OpenVINO's and NNCF's usage telemetry
(which sends events and writes ``~/intel/`` on every import) is kept off in this toolkit's
processes: see :func:`telemetry_off`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from commands.errors import ModelFileError, require

from ..metadata import read_sidecar
from ..metric import OutputKind
from ..prediction import extras_of
from ..sky import sky_step_refusal
from ..video_state import STREAM_INPUTS
from .base import Backend, InputSpec, check_depth_output, check_streams
from .openvino_pre import check_preprocess, embed_preprocessing
from .profiling import Profile, openvino_counters, openvino_fused_types, openvino_layers, timed_calls

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
HINT_NAMES = {v: k for k, v in PRECISION_HINTS.items()}
DEVICES = ("AUTO", "CPU", "GPU", "NPU")
HINTS = ("LATENCY", "THROUGHPUT")


RT_INFO_PRECISION = ["dav2_edge", "precision"]  # where export.openvino records the IR's precision


def artefact_precision(model: Any, meta: dict[str, Any]) -> str:
    """The precision a model was exported in: its sidecar's, else the IR's own record (rt_info),
    else read from its weights (FakeQuantize or integer weights: int8; FP16 weights: fp16)."""
    if meta.get("precision"):
        return str(meta["precision"])
    if model.has_rt_info(RT_INFO_PRECISION):
        return str(model.get_rt_info(RT_INFO_PRECISION).astype(str))
    kinds = {type_name(op.get_element_type()) for op in model.get_ops() if op.get_type_name() == "Constant"}
    if any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) or kinds & {"i8", "u8"}:
        return "int8"
    return "fp16" if "f16" in kinds else "fp32"


def float_format(model: Any, precision: str) -> str:
    """The format the model's float arithmetic was exported in: FP16 when its float weights are
    stored in FP16 (FP16 IRs, and INT8 IRs whose float layers were compressed), else FP32."""
    if precision in ("fp32", "fp16"):
        return precision
    constants = (op for op in model.get_ops() if op.get_type_name() == "Constant")
    return "fp16" if any(type_name(op.get_element_type()) == "f16" for op in constants) else "fp32"


def ov_device(device: str) -> str:
    name = "AUTO" if device == "auto" else device.upper()
    if name.split(".")[0] not in DEVICES:
        raise ValueError(f"OpenVINO device must be one of auto, cpu, gpu, gpu.N, npu; not {device!r}")
    return name


# Compiled-model cache bound: a handful of models x devices x precisions.
CACHE_LIMIT_BYTES = 1 << 30


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dav2-edge" / "openvino"


def cache_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prune_cache(folder: Path, limit: int = CACHE_LIMIT_BYTES) -> list[Path]:
    """Remove the least recently written blobs until ``folder`` holds at most ``limit`` bytes."""
    blobs = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in blobs)
    removed = []
    for blob in blobs[:-1]:  # the newest is the model just compiled
        if total <= limit:
            break
        total -= blob.stat().st_size
        blob.unlink(missing_ok=True)
        removed.append(blob)
    return removed


@contextlib.contextmanager
def telemetry_off() -> Iterator[None]:
    """Keep OpenVINO's and NNCF's usage telemetry off for what runs inside.

    Both libraries send usage events (and write ``~/intel/``) whenever ``openvino`` is imported,
    a model is converted or NNCF is imported, unless the user ran ``opt_in_out --opt_out`` or
    the process is a CI job; their only per-process switch is that CI check (the ``CI``
    variable), so it is set for the duration and restored after, and nothing else in the
    process sees it.
    """
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


def import_openvino() -> ModuleType:
    """``openvino``, imported with its telemetry off (or an error naming the extra)."""
    with telemetry_off():
        return require("openvino", "openvino", "OpenVINO")


_CORE: Any = None
_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``openvino.Core``: made at first use, never freed.

    Every Core this toolkit uses is this one, as OpenVINO advises. A Core gives the thread that
    compiles on it an alternate signal stack of its own and puts back, when freed, the one it
    found; two Cores freed in the order they were made leave the thread's alternate stack in
    unmapped memory, and the next signal Python handles there (a DataLoader worker's SIGCHLD,
    SIGTERM, Ctrl-C) kills the process with SIGSEGV and no trace (OpenVINO 2026.4 on the CPU
    device; tests/test_openvino_core.py shows it in a subprocess)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def load_error(exc: BaseException) -> str:
    """The lines of an OpenVINO exception that say what is wrong, without its source locations."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return "; ".join(useful or lines[-1:]) or exc.__class__.__name__


# The layers whose kernels do the model's arithmetic, and OpenVINO's names for number formats.
MATRIX_LAYERS = ("FullyConnected", "MatMul", "Convolution", "Deconvolution", "GroupConvolution")
OPENVINO_TYPES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}


def type_name(value: Any) -> str:
    """An OpenVINO element type (or its string form) as its short name: ``bf16``, ``f32``."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def compiled_execution(compiled: Any) -> dict[str, Any]:
    """What an OpenVINO compiled model really computes in: its inference precision hint (None
    where the device does not report one, as AUTO) and the format of each matrix layer's kernel
    as compiled. A kernel's name ends in the format it computes in (``brgemm_avx512_bf16``,
    ``brgconv_avx512_I8``); its ``runtimePrecision`` is the input's, which for FP16-compressed
    weights says f16 while the kernel computes in f32."""
    try:
        hint = type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except RuntimeError:
        hint = None
    layers: Counter[str] = Counter()
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except RuntimeError:  # a device that exposes no runtime model
        ops = []
    for op in ops:
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in MATRIX_LAYERS:
            continue
        kernel = info["primitiveType"].astype(str).rsplit("_", 1)[-1].lower() if "primitiveType" in info else ""
        if kernel in OPENVINO_TYPES:
            name = kernel
        elif "runtimePrecision" in info:
            name = info["runtimePrecision"].astype(str)
        else:  # a plugin that names neither: not counted rather than counted as ''
            continue
        layers[OPENVINO_TYPES.get(name, name)] += 1
    dominant = layers.most_common(1)[0][0] if layers else OPENVINO_TYPES.get(hint or "", hint)
    return {"format": dominant, "hint": hint, "matrix_layers": dict(layers)}


def rt_info_value(model: Any, key: str) -> str:
    """A string the export wrote into rt_info (``dav2_edge``) or the ONNX metadata OpenVINO
    imported (``framework``); empty when neither has it."""
    for section in ("dav2_edge", "framework"):
        if model.has_rt_info([section, key]):
            return model.get_rt_info([section, key]).astype(str)
    return ""


def rt_info_output_kind(model: Any) -> OutputKind | None:
    """The output kind in a model's rt_info: ``dav2_edge`` (written by export.openvino), else
    ``framework`` (an ONNX file's metadata, as OpenVINO imports it)."""
    for section in ("dav2_edge", "framework"):
        values = {
            key: model.get_rt_info([section, key]).astype(str)
            for key in ("output_kind", "max_depth")
            if model.has_rt_info([section, key])
        }
        found = OutputKind.from_metadata(values, f"OpenVINO rt_info ({section})")
        if found is not None:
            return found
    return None


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        model: Any,
        device: str = "auto",
        precision: str | None = None,
        performance_hint: str = "LATENCY",
        cache_dir: str | Path | None = "auto",
        threads: int | None = None,
        streams: int | None = None,
        preprocess: str = "numpy",
        properties: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        ov = import_openvino()
        self._ov = ov
        path = self.model_path(model, ".xml (IR) or .onnx files", "model file")
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise ModelFileError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
        if performance_hint.upper() not in HINTS:
            raise ValueError(f"performance_hint must be LATENCY or THROUGHPUT, not {performance_hint!r}")
        if precision is not None and precision not in PRECISION_HINTS:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_HINTS)}, got {precision!r}")
        core = openvino_core()
        self._cache = None if cache_dir is None else default_cache_dir() if cache_dir == "auto" else Path(cache_dir)
        config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint.upper()}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams is not None:  # requests that run at once, each on its share of the cores
            config["NUM_STREAMS"] = check_streams(streams)
        config.update(properties or {})  # any other OpenVINO property, as the plugin names it
        self.device = ov_device(device)
        # preprocess="model": uint8 BGR frames in, resize and normalisation in the plugin.
        self.takes_images = check_preprocess(preprocess) == "model"
        self._path, self._config = path, config
        meta = read_sidecar(path) or {}
        refusal = sky_step_refusal(path, "OpenVINO", meta)
        if refusal:
            raise ModelFileError(refusal)
        try:
            network, model_ir = self._read(core)
            self._weights = artefact_precision(network, meta)
            if precision is None and float_format(network, self._weights) == "fp32":
                precision = "fp32"  # the device's bf16/f16 default would change an FP32 artefact's numbers
            if precision is not None:
                config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
            if self._cache is not None:
                # A folder per inference precision: OpenVINO's blob key can leave the hint out (seen
                # with 2026.4 on a Sapphire Rapids CPU: the f16 blob then served FP32 and bf16 requests).
                folder = self._cache / config.get("INFERENCE_PRECISION_HINT", "default")
                folder.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(folder)  # for this compile only: the Core is shared
            self._compiled = core.compile_model(model_ir, self.device, config)
        except RuntimeError as exc:
            raise ModelFileError(f"{path}: OpenVINO cannot load it ({load_error(exc)})") from exc
        if self._cache is not None:
            prune_cache(self._cache)
        self.read_identity({key: rt_info_value(network, key) for key in ("family", "variant", "licence")}, meta)
        names = tuple(next(iter(sorted(p.get_names())), "") for p in network.inputs)
        if names[1:] == STREAM_INPUTS:  # a Video Depth Anything stream step
            self.stream_names, self._stream_inputs = STREAM_INPUTS, names
            self._stream_shapes = [tuple(p.get_shape()) for p in network.inputs[2:]]
        elif len(self._compiled.inputs) != 1:
            raise ModelFileError(f"{path}: expected one image input")
        else:  # depth, and a DA3 network's sky map or depth confidence after it
            try:
                self.extra_outputs = extras_of([o.get_any_name() for o in network.outputs], path)
            except (ValueError, RuntimeError) as exc:
                if len(network.outputs) != 1:  # unnamed outputs: only a single one is depth
                    raise ModelFileError(f"{path}: expected one image input and one output ({exc})") from None
        port = network.input(0)  # the network's own input, before any pre-processing put in front
        shape = port.get_partial_shape()
        if shape.rank.get_length() != 4:
            raise ModelFileError(f"{path}: input has shape {shape}; expected (N, 3, H, W)")
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
        self.input_spec = InputSpec(port.any_name, dims)  # type: ignore[arg-type]
        out = network.output(0).get_partial_shape()
        rank = out.rank.get_length() if out.rank.is_static else 0
        check_depth_output(path, [out[i].get_length() if out[i].is_static else None for i in range(rank)])
        try:
            self._executing = [str(d) for d in self._compiled.get_property("EXECUTION_DEVICES")]
        except RuntimeError:
            self._executing = [self.device]
        self._execution = compiled_execution(self._compiled)
        self.precision = self._compute_precision(core, precision)
        self.output_kind = rt_info_output_kind(network) or OutputKind.from_metadata(meta, "sidecar")
        try:
            count = int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except RuntimeError:
            count = 1
        self._requests: queue.Queue = queue.Queue()
        for _ in range(max(1, count)):
            self._requests.put(self._compiled.create_infer_request())
        self.max_concurrency = max(1, count)
        self._hint = performance_hint.upper()
        try:
            self._streams = int(self._compiled.get_property("NUM_STREAMS"))
        except RuntimeError:  # AUTO reports none: what was asked
            self._streams = streams

    def _compute_precision(self, core: Any, asked: str | None) -> str:
        """The floating-point format the compiled model computes in, as compiled, not as asked: a
        device without units for the format asked for runs another (on a CPU without AVX512-FP16
        an f16 hint compiles to bf16). AUTO reports no hint: then the float kernels' format."""
        hint = self._execution["hint"]
        if hint is not None:
            return HINT_NAMES.get(hint, hint)
        floats = {k: v for k, v in self._execution["matrix_layers"].items() if k != "int8"}
        if floats:
            return max(floats, key=floats.get)
        if asked is not None:
            return asked
        try:
            name = type_name(core.get_property(self._executing[0], "INFERENCE_PRECISION_HINT"))
        except RuntimeError:
            return "device default"
        return HINT_NAMES.get(name, name)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            request.infer({0: batch})
            return request.get_output_tensor(0).data.copy()
        finally:
            self._requests.put(request)

    def _infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        request = self._requests.get()
        try:
            request.infer({0: batch})
            values = [request.get_output_tensor(i).data.copy() for i in range(1 + len(self.extra_outputs))]
        finally:
            self._requests.put(request)
        return {"depth": values[0], **dict(zip(self.extra_outputs, values[1:]))}

    def _step(self, batch: np.ndarray, slot_pos: np.ndarray, caches: list) -> list:
        request = self._requests.get()
        try:  # shared, not copied: the cache is read where it lies
            request.infer(dict(zip(self._stream_inputs, (batch, slot_pos, *caches))), share_inputs=True)
            return [request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]
        finally:
            self._requests.put(request)

    def stream_shapes(self, height: int, width: int) -> list:
        return self._stream_shapes

    def _read(self, core: Any) -> tuple[Any, Any]:
        """The network as read, and the model to compile: the network with the pre-processing in
        front of it where ``preprocess="model"``."""
        network = core.read_model(str(self._path))
        # PrePostProcessor changes the model it is given: a copy, so the network keeps its input
        return network, embed_preprocessing(self._ov, network.clone(), self._path) if self.takes_images else network

    def _profile(self, batch: np.ndarray, calls: int) -> Profile:
        # PERF_COUNT is a compile-time property: a second compiled model, without the blob cache
        # (a profiled blob is not worth 50 MB of disk), so the ordinary requests stay unprofiled.
        core = openvino_core()
        model, compiled_from = self._read(core)
        config = {key: value for key, value in self._config.items() if key != "CACHE_DIR"}
        compiled = core.compile_model(compiled_from, self.device, {**config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer({0: batch})
        warm = openvino_counters(request.get_profiling_info())
        walls = timed_calls(lambda: request.infer({0: batch}), calls, warmup=0)
        after = openvino_counters(request.get_profiling_info())
        try:
            fused = openvino_fused_types(model, compiled.get_runtime_model())
        except RuntimeError:  # a device that exposes no runtime model (AUTO)
            fused = {}
        layers = openvino_layers(warm, after, 1, calls, fused)
        return Profile("OpenVINO performance counters (PERF_COUNT), a second compiled model", layers, walls)

    def versions(self) -> dict[str, str]:
        return {"openvino": self._ov.get_version()}

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "weights": self._weights,
            "execution_devices": self._executing,
            "execution": self._execution,
            "performance_hint": self._hint,
            "infer_requests": self.max_concurrency,
            "streams": self._streams,
            "preprocess": "model" if self.takes_images else "numpy",
            "cache_dir": str(self._cache) if self._cache is not None else None,
            "cache_bytes": cache_size(self._cache) if self._cache is not None else 0,
        }

    def _release(self) -> None:
        self._compiled = None
