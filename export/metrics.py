"""How exports measure their artefacts: the two metrics, each named for what it measures, the
inputs they are measured on, and one way to run an ONNX model with ONNX Runtime.

- ``MAX_REL_STD``, ``max|a - b| / std(ref)``: the gate of every FP32/FP16 export, the parity
  tests, the sidecars and the CLIs' reports (``compare``).
- ``ABS_REL_ALIGNED``: AbsRel against FP32 after least-squares scale-and-shift alignment, mean
  over held-out images: the INT8 accuracy budget of relative models and the benchmark's accuracy
  columns (``abs_rel``); ``ABS_REL_SCALED`` (scale fit in depth) and ``ABS_REL_DEPTH`` (no
  alignment) the budget of the other output kinds (``int8_measure``, ``runtime.accuracy``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from commands.errors import require
from runtime.accuracy import (
    ABS_REL_ALIGNED,
    FP32_TOLERANCE,
    MAX_REL_STD,
    Comparison,
    Int8Measure,
    abs_rel,
    compare,
    int8_metric,
    short_name,
)

# The metrics live in the runtime, which checks artefacts against their references without
# PyTorch; the exports use them under these names.
from runtime.sky import runtime_sky_step, sky_to_far

__all__ = [
    "ABS_REL_ALIGNED",
    "FP32_TOLERANCE",
    "MAX_REL_STD",
    "Comparison",
    "Int8Measure",
    "OnnxRuntimeRunner",
    "abs_rel",
    "check_sizes",
    "compare",
    "int8_measure",
    "int8_metric",
    "run_onnxruntime",
    "short_name",
    "verification_frames",
    "verification_input",
    "verification_photos",
]


class OnnxRuntimeRunner:
    """One ONNX Runtime CPU session for ``path`` (or a serialized model); call it with an NCHW float32 batch.

    ``as_written`` turns ONNX Runtime's Q/DQ optimisations off, so Q/DQ pairs run as written
    (float simulation of the INT8 arithmetic, the same on every CPU) instead of through this
    CPU's INT8 kernels. Its basic optimisations stay (constant folding computes the weights' Q/DQ
    once at load instead of every call, with the same kernels): measured on vits at 518x518, a
    Q/DQ model runs in 0.70-0.81 s a frame instead of 1.23-1.38 s, the FP32 model's speed.
    """

    def __init__(self, path: str | Path | bytes, as_written: bool = False) -> None:
        ort = require("onnxruntime", "onnx", "ONNX Runtime")
        options = ort.SessionOptions()
        if as_written:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        names = [o.name for o in self.session.get_outputs()]
        # a graph that leaves the DA3 sky step to the runtime (export.trt's sky-less graph): applied here
        self._sky = names.index("sky") if runtime_sky_step(meta) and "sky" in names else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for one batch, in the graph's order (depth first)."""
        outs = self.session.run(None, {self.input_name: batch})
        if self._sky is not None:
            outs[0] = sky_to_far(outs[0], outs[self._sky])
        return outs

    def run_all(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        return [self(batch) for batch in batches]


def int8_measure(path: str | Path) -> Int8Measure:
    """What an INT8 model quantized from the ONNX at ``path`` is held to: the metric of its output
    kind on ``depth`` and, for a DA3 network, its extra outputs (``sky``, ``depth_conf``) against
    FP32 within the same budget; both read from the ONNX metadata."""
    from .graph import load_onnx, onnx_output_kind

    model = load_onnx(path, load_external_data=False)
    values = {entry.key: entry.value for entry in model.metadata_props}
    extras = tuple(n for n in values.get("extra_outputs", "").split(",") if n)
    outputs = [o.name for o in model.graph.output]
    if outputs[1 : 1 + len(extras)] != list(extras):
        extras = ()  # outputs after depth that are not the named extras (a stream's state): depth only
    return Int8Measure(int8_metric(onnx_output_kind(path).kind), extras)


def run_onnxruntime(path: str | Path, batch: np.ndarray, as_written: bool = False) -> np.ndarray:
    """The output of ``path`` for one batch (a session of its own; keep an ``OnnxRuntimeRunner`` for more)."""
    return OnnxRuntimeRunner(path, as_written)(batch)


def verification_photos(names: tuple[str, ...] = ("motorcycle_left.png",)) -> dict[str, np.ndarray]:
    """Real photographs (bundled samples, BGR) when scikit-image is installed, else one textured
    synthetic scene: the inputs exports check and write references on."""
    try:
        from runtime.io.samples import sample_images

        return sample_images(names)
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:480, 0:640]
        image = np.stack([(xx * 0.4) % 255, (yy * 0.5) % 255, (xx + yy) * 0.2 % 255], -1).astype(np.uint8)
        image[100:300, 200:400] = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
        return {"synthetic_scene": image}


def verification_input(height: int, width: int) -> np.ndarray:
    """A real photograph (bundled sample) when available, else a textured synthetic scene."""
    return verification_frames(height, width, 1)[0]


def verification_frames(height: int, width: int, frames: int, shift: int = 6) -> list[np.ndarray]:
    """``verification_input`` panning sideways (``shift`` pixels a frame), as network inputs: the
    first frame is ``verification_input`` itself; what the stream exports are checked on."""
    from runtime.preprocessing import prepare_fixed

    photo = next(iter(verification_photos().values()))
    return [prepare_fixed(np.roll(photo, shift * t, axis=1), (height, width)) for t in range(frames)]


def check_sizes(height: int, width: int, dynamic: bool) -> list[tuple[int, int]]:
    """Sizes to verify at: the export size, and for dynamic exports two others of other aspect."""
    if not dynamic:
        return [(height, width)]
    return [(height, width), (max(14, height - 154), width + 126), (height + 98, max(14, width - 84))]
