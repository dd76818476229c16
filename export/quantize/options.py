"""What an INT8 export is asked for, in one object: the calibration images and the accuracy budget.

Every INT8 export (``export.quantize``, ``export.trt --int8``, ``export.openvino --int8``, the
benchmark) takes these, under the same names and defaults (``export.cli.add_calibration_args``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from runtime.accuracy import DEFAULT_ACCURACY_BUDGET

from ..errors import ExportRequestError

DEFAULT_CALIB_SAMPLES = 500  # TensorRT's and OpenVINO's guidance: a few hundred images at deployment size
DEFAULT_ACCURACY_IMAGES = 8
SMOOTH_MODES = ("auto", "on", "off")
METHODS = ("percentile", "entropy", "minmax")
# Percentile is the default: on ViT activations (long-tailed after LayerNorm and GELU) the
# KL/entropy rule clips too hard; measured on vits at 266x350 it gave 4x the error of 99.99 %.
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
# How the budget is held: this project's sensitivity analysis on every path, or on OpenVINO NNCF's
# own accuracy control (``nncf.quantize_with_accuracy_control``).
ACCURACY_METHODS = ("sensitivity", "nncf")


@dataclass(frozen=True)
class Int8Options:
    """Calibration on ``samples`` images of ``calib_dir`` (plus ``held_out`` more to measure on when
    a ``budget`` is set), activation ranges by ``method``, layers matching ``keep_fp`` and the layers
    named in ``float_layers`` (ONNX node names, as the ``.quant.json`` report names them) in float."""

    calib_dir: Path | None = None  # None: the caller hands the images over itself
    samples: int = DEFAULT_CALIB_SAMPLES
    budget: float | None = DEFAULT_ACCURACY_BUDGET  # AbsRel vs FP32 on held-out images; None: no check
    held_out: int = DEFAULT_ACCURACY_IMAGES
    smooth: str = "auto"
    method: str = DEFAULT_METHOD
    percentile: float = DEFAULT_PERCENTILE
    keep_fp: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    allow_fewer: bool = False
    float_layers: tuple[str, ...] = field(default_factory=tuple)
    accuracy_method: str = "sensitivity"
    # The cpu target's INT8 arithmetic (``runtime.int8_cpu``): auto (this CPU), vnni or avx2.
    int8_arithmetic: str = "auto"

    def __post_init__(self) -> None:
        """Checked once, here: every step below takes the options whole and trusts them."""
        for name, value, allowed in (
            ("smooth", self.smooth, SMOOTH_MODES),
            ("method", self.method, METHODS),
            ("accuracy_method", self.accuracy_method, ACCURACY_METHODS),
        ):
            if value not in allowed:
                raise ExportRequestError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    @classmethod
    def from_args(cls, args) -> Int8Options:
        """The options of ``export.cli.add_calibration_args`` (and ``--keep-fp``/``--percentile``/``--seed``)."""
        return cls(
            calib_dir=args.calib_dir,
            samples=args.calib_samples,
            budget=args.accuracy_budget,
            held_out=args.accuracy_images,
            smooth=args.smooth,
            method=getattr(args, "calib_method", None) or DEFAULT_METHOD,
            percentile=getattr(args, "percentile", None) or DEFAULT_PERCENTILE,
            keep_fp=tuple(getattr(args, "keep_fp", None) or ()),
            seed=getattr(args, "seed", 0),
            allow_fewer=args.allow_fewer,
            float_layers=split_names(getattr(args, "float_layers", None) or ()),
            accuracy_method=getattr(args, "accuracy_method", None) or "sensitivity",
            int8_arithmetic=getattr(args, "int8_arithmetic", None) or "auto",
        )


def split_names(values) -> tuple[str, ...]:
    """``--float-layers`` values, comma-separated or repeated, as one tuple without repeats."""
    names = (name.strip() for value in values for name in value.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


# The budget's defaults, for callers that hand over the images themselves (the tests, the benchmark).
BUDGET_DEFAULTS = Int8Options()
