"""The table of export formats, and the one way to call an export from code.

Each row says what a format writes, which parameters it takes beyond ``source``, ``output`` and
``precision``, and what it needs installed; the commands' ``--help``, the benchmark runner and
``export()`` read it, so a new format is added here (and in the module that makes it)::

    from export.formats import export

    record = export("onnx", "ckpt.pth", "m.onnx", size=(518, 518))  # a checkpoint, or a model
    record = export("openvino", record, "m.int8.xml", precision="int8", calibration=images)
    record = export("tensorrt", "m.onnx", "m.engine", precision="fp16", trt_version="10.3", onnx_only=True)
    record.path, record.precision, record.licence, record.calibration, record.reference

``source`` is a path or the record an earlier export returned; the result is the record of what
was written (``export.artefact.Artefact``), whose sidecar ``<output>.json`` is already on disk.
Errors name the parameters; the commands say the same in their flags.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commands.errors import require

from .errors import ExportRequestError


@dataclass(frozen=True)
class Format:
    name: str
    command: str  # the command that makes it
    writes: str  # what lands beside the output name
    precisions: tuple[str, ...]
    options: tuple[str, ...]  # parameters of export() beyond source, output and precision
    requires: tuple[tuple[str, str, str], ...]  # (module, pip extra, what) that must import
    maker: str  # "module:function" taking (source, output, precision, options); see export.makers

    def help(self) -> str:
        """One paragraph for a command's ``--help``."""
        needs = ", ".join(sorted({f"{extra} extra" for _, extra, _ in self.requires}))
        return (
            f"format {self.name}: writes {self.writes}; precisions {', '.join(self.precisions)}; "
            f"needs the {needs} (pip install 'dav2-edge[{','.join(sorted({e for _, e, _ in self.requires}))}]')"
        )


ONNX = ("onnx", "onnx", "the onnx package")
ORT = ("onnxruntime", "onnx", "ONNX Runtime")
TORCH = ("torch", "torch", "PyTorch")
OPENVINO = ("openvino", "openvino", "OpenVINO")
INT8 = ("calibration", "int8", "size", "target", "cache_dir")

FORMATS = {
    row.name: row
    for row in (
        Format(
            "onnx",
            "python -m export.onnx",
            "<output>.onnx verified against PyTorch, its .json and .reference.npz",
            ("fp32",),
            ("size", "dynamic", "opset", "slim", "verify"),
            (TORCH, ONNX, ORT),
            "export.makers:make_onnx",
        ),
        Format(
            "onnx-quantized",
            "python -m export.quantize",
            "<output>.onnx: Q/DQ INT8 within the accuracy budget (with <output>.onnx.quant.json) "
            "or FP16-typed, its .json and .reference.npz",
            ("int8", "fp16"),
            INT8,
            (ONNX, ORT),
            "export.makers:make_quantized",
        ),
        Format(
            "openvino",
            "python -m export.openvino",
            "<output>.xml and .bin verified against ONNX Runtime, its .json and .reference.npz "
            "(INT8: NNCF within the accuracy budget, with <output>.xml.quant.json)",
            ("fp32", "fp16", "int8"),
            ("calibration", "int8", "size"),
            (ONNX, ORT, OPENVINO),
            "export.makers:make_openvino",
        ),
        Format(
            "tensorrt",
            "python -m export.trt",
            "the TensorRT-ready ONNX (portable; checked against the release's parser rules) and, where "
            "TensorRT is installed, <output>.engine checked on its reference; each with .json and .reference.npz",
            ("fp16", "int8", "fp32"),
            (
                "int8",
                "size",
                "profile",
                "workspace_mib",
                "timing_cache",
                "weakly_typed",
                "trt_version",
                "onnx_only",
                "fp32_layers",
            ),
            (ONNX,),
            "export.makers:make_tensorrt",
        ),
    )
}


def format_row(name: str) -> Format:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ExportRequestError(f"format {name!r} is not one of {', '.join(FORMATS)}{hint}")
    return FORMATS[name]


def export(name: str, source: Any, output: str | Path, precision: str | None = None, **options: Any):
    """Make ``output`` in format ``name`` from ``source``; returns its record (see the module)."""
    row = format_row(name)
    precision = precision or row.precisions[0]
    if precision not in row.precisions:
        raise ExportRequestError(f"format {name!r} takes precision {' or '.join(row.precisions)}, not {precision!r}")
    for option in options:
        if option not in row.options:
            close = difflib.get_close_matches(option, row.options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {', '.join(row.options)}"
            raise ExportRequestError(f"format {name!r} takes no parameter {option!r}{hint}")
    for module, extra, what in row.requires:
        require(module, extra, what)
    module, function = row.maker.split(":")
    maker = getattr(importlib.import_module(module), function)  # by name: the makers import the commands
    return maker(source, Path(output), precision, options)
