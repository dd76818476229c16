"""The thin part of ``export.trt`` that needs TensorRT and a GPU: parse and build an engine, name
the GPU, run a built engine on its reference. Everything that decides is in ``decisions`` and
``rules`` (tested without TensorRT); ``build`` hands the steps their records."""

from __future__ import annotations

from pathlib import Path

from commands.runner import stage
from runtime.io.files import atomic_write_bytes

from ..errors import ExportError
from .decisions import BuildPlan, Profile
from .outputs import check_network_outputs


def pin_layers_fp32(trt, network, names: tuple[str, ...]) -> int:
    """Set FP32 precision and output types on the named layers; how many were found."""
    wanted, pinned = set(names), 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def build_engine(
    trt,
    onnx_path: Path,
    plan: BuildPlan,
    profile: Profile | None,
    input_name: str,
    workspace_mib: int,
    timing_cache: Path | None,
    outputs: tuple[str, ...] = ("depth",),
) -> bytes:
    """Parse ``onnx_path`` and build a serialised engine, reusing and updating the timing cache;
    the network must output every one of the ONNX's ``outputs`` (depth and its extra outputs)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    marked = [network.get_output(i).name for i in range(network.num_outputs)]
    check_network_outputs(outputs, marked, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.fp32_layers:
        pinned = pin_layers_fp32(trt, network, plan.fp32_layers)
        print(f"pinned {pinned} of {len(plan.fp32_layers)} layers to FP32")
    if profile is not None:
        optimisation = builder.create_optimization_profile()
        shapes = profile.shapes()
        optimisation.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(optimisation)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"warning: {timing_cache} does not match this TensorRT/GPU; starting a new timing cache")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine; its log above says why")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def gpu_info(trt) -> tuple[str, tuple[int, int]]:
    """The GPU an engine is built on (name, compute capability); a placeholder without TensorRT."""
    if trt is None:
        return "<target GPU>", (0, 0)
    from runtime.backends.cuda import open_cuda

    cuda = open_cuda(0)
    try:
        return cuda.device_info()
    finally:
        cuda.close()


def run_reference(engine: Path, reference):
    """The engine on its reference's inputs, through the runtime's TensorRT backend (a stream
    engine: the reference's frames in order, the cache carried, ``runtime.stream_check``)."""
    from runtime.backends.tensorrt import TensorRTBackend
    from runtime.stream_check import check_backend

    with stage("running the engine on its reference"), TensorRTBackend(engine) as backend:
        return check_backend(backend, reference)
