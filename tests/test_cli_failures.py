"""No export command lets a traceback out: a failure in any stage prints one line naming the stage
and a log file that holds the traceback, and exits 1."""

from __future__ import annotations

import pytest

import export.onnx
import export.quantize.__main__
import export.quantize.budget
import export.quantize.fp16
import export.trt.__main__
import export.trt.build
from tests.sa1b import make_shard


class Injected(RuntimeError):
    """Stands for whatever a library raises deep inside a stage."""


def fail(*args, **kwargs):
    raise Injected("injected failure\nsecond line that must not be printed")


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("DAV2_LOG_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_spec):
    import torch

    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cli_failures")
    path = folder / "tiny.onnx"
    export.onnx.export_onnx(DepthAnythingV2(tiny_spec).eval(), path, 56, 56)
    make_shard(folder / "sa1b" / "sa_0.tar", 4, faults=False)
    return path


TRT_CLI, BUILD = export.trt.__main__, export.trt.build
QUANTIZE_CLI, BUDGET = export.quantize.__main__, export.quantize.budget
V = "10.3"
TRT = ["--onnx-only", "--trt-version", V, "--size", "56x56"]


@pytest.mark.parametrize(
    "module,target,argv,stage",
    [
        (TRT_CLI, (BUILD, "check_onnx"), ["--fp16", *TRT], "checking the source ONNX"),
        (TRT_CLI, (BUDGET, "CalibrationSet"), ["--int8", *TRT], "reading calibration images"),
        (TRT_CLI, (BUDGET, "quantize_int8"), ["--int8", *TRT], "calibrating and quantizing"),
        (TRT_CLI, (BUILD, "fp16_artefact"), ["--fp16", *TRT], "converting to an FP16-typed graph"),
        (TRT_CLI, (BUILD, "require_compatible"), ["--fp16", *TRT], f"checking the TensorRT {V} parser rules"),
        (TRT_CLI, (export.onnx, "export_onnx"), ["--fp16", *TRT, "--encoder", "vits"], "exporting the ONNX model"),
        (QUANTIZE_CLI, (BUDGET, "CalibrationSet"), [], "reading calibration images"),
        (QUANTIZE_CLI, (BUDGET, "quantize_int8"), [], "calibrating and quantizing"),
        (QUANTIZE_CLI, (QUANTIZE_CLI, "fp16_artefact"), ["--fp16"], "converting to an FP16-typed graph"),
    ],
)
def test_a_failing_stage_is_one_line_and_a_log(
    tmp_path, source, log_dir, capsys, monkeypatch, module, target, argv, stage
):
    monkeypatch.setattr(*target, fail)
    calib = ["--calib-dir", str(source.parent / "sa1b"), "--calib-samples", "2", "--accuracy-images", "2"]
    if "--encoder" in argv:
        full = [*argv, "--output", str(tmp_path / "out" / "m.engine")]
    elif module is TRT_CLI:
        full = ["--onnx", str(source), *argv, "--output", str(tmp_path / "out" / "m.engine"), *calib]
    else:
        full = ["--onnx", str(source), *argv, "--output", str(tmp_path / "out" / "m.onnx"), *calib]
    assert module.main(full) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]  # progress bars share stderr
    assert len(errors) == 1 and "Traceback" not in err and "second line" not in err, err
    assert errors[0].startswith(f"error: {stage} failed: Injected: injected failure (details in ")
    (log,) = log_dir.iterdir()
    text = log.read_text()
    assert str(log) in errors[0] and "Traceback" in text and f"stage: {stage}" in text and "second line" in text
