"""OpenVINO INT8 held to the accuracy budget by the project's method: NNCF quantizes, probes
bypass FakeQuantize ops instead of quantizing again, and the choice is NNCF's ignored scope."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from export.errors import ExportError, ExportRequestError
from export.openvino import export_openvino
from export.quantize import search
from export.quantize.budget import quant_report_path
from export.quantize.options import DEFAULT_ACCURACY_BUDGET, Int8Options
from export.quantize.search import group_of
from runtime.backends.openvino import openvino_core

SIZE = (56, 56)
OPTIONS = Int8Options(Path(), samples=10, held_out=4)


def quantized_layers(xml: Path, onnx_path: Path) -> set[str]:
    """The layers (ONNX names) of a saved IR that read a FakeQuantize: those that run in INT8."""
    import onnx

    from export.quantize.openvino_int8 import QuantizerWalk, layer_names

    model = openvino_core().read_model(str(xml))
    walk = QuantizerWalk(layer_names(model, onnx.load(str(onnx_path))))
    return set().union(*walk.quantizers(model).values())


def test_within_the_default_budget_where_plain_int8_is_not(tmp_path, stress_tiny):
    source, split = stress_tiny
    data = export_openvino(source, tmp_path / "m.xml", "int8", split, SIZE, OPTIONS)
    accuracy = data["quantization"]["accuracy"]
    assert accuracy["plain_error"] > DEFAULT_ACCURACY_BUDGET >= accuracy["error"]
    report = json.loads(quant_report_path(tmp_path / "m.xml").read_text())
    floats = report["float_layers"]
    assert report["accepted"] and floats and floats == accuracy["float_layers"] == report["reverted"]
    # named as the ONNX graph names them, and in float in the IR; the rest of the layers INT8
    in_int8 = quantized_layers(tmp_path / "m.xml", source)
    assert not in_int8 & set(floats) and len(in_int8) == report["int8_layers"]
    assert all(p["loop"] in ("plain", "smoothing", "groups", "layers", "reverts") for p in report["probes"])
    assert report["probes"][-1]["error"] == report["error"]  # the last probe's model is the artefact
    assert data["quantization"]["overflow_fix"].startswith("enable")


@pytest.mark.parametrize("smoothed", [False, True], ids=["plain", "SmoothQuant"])
def test_probes_are_nncf_with_those_layers_in_its_ignored_scope(tmp_path, stress_tiny, smoothed):
    """A probe bypasses FakeQuantize ops and restores corrected biases in one quantized model; it
    must compute what NNCF builds with the layers ignored, to rounding."""
    import onnx

    from export.quantize.openvino_int8 import Nncf, OpenVinoProbes, compile_f32, kept_in_float, layer_names
    from runtime.backends.openvino import import_openvino

    ov = import_openvino()
    source, split = stress_tiny
    model = ov.convert_model(str(source))
    names = layer_names(model, onnx.load(str(source)))
    nncf = Nncf(model, split, names, kept_in_float(names, OPTIONS))
    held = split.held_out_batches()
    probes = OpenVinoProbes(ov, model, nncf.quantize(smoothed, False), names, held, [], None)
    layers = probes.layers
    block = [n for n in layers if n.startswith("/pretrained/blocks.1/")]  # attention included
    dpt = [n for n in layers if group_of(n) == "depth_head/level2"]  # a ConvTranspose, corrected biases
    assert any("MatMul_1" in n for n in block) and any("ConvTranspose" in n for n in dpt)
    assert any(n in probes.biases for n in dpt)  # NNCF's bias correction changed them: restored
    one_in_int8 = [n for n in layers if n != "/pretrained/blocks.2/mlp/fc2/MatMul"]
    for floats in (block, dpt, ["/depth_head/refinenet1/Resize", *block[:2]], one_in_int8):
        probe = compile_f32(ov, probes.build(frozenset(floats)))
        again = compile_f32(ov, nncf.quantize(smoothed, False, floats))
        for batch in held:
            a, b = np.asarray(probe(batch)[0]), np.asarray(again(batch)[0])
            assert np.abs(a - b).max() <= 1e-5 * b.std()


def test_a_refused_export_leaves_its_report_and_no_artefact(tmp_path, stress_tiny, monkeypatch):
    source, split = stress_tiny
    monkeypatch.setattr(search, "MAX_REVERTS", 3)  # a shorter hopeless search
    with pytest.raises(ExportError, match=r"OpenVINO INT8 misses the accuracy budget: .* no probe met the budget"):
        export_openvino(source, tmp_path / "m.xml", "int8", split, SIZE, replace(OPTIONS, budget=1e-9, smooth="off"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xml.quant.json"]
    report = json.loads((tmp_path / "m.xml.quant.json").read_text())
    assert report["accepted"] is False and report["would_meet_budget"] is None and report["target"] == "openvino"
    assert len(report["reverts"]) == 3 and all(p["error"] > 0 for p in report["probes"])


def test_a_refusal_names_float_layers_that_meet_the_budget_when_passed_back(tmp_path, stress_tiny, monkeypatch):
    source, split = stress_tiny
    monkeypatch.setattr(search, "MAX_REVERTS", 0)
    with pytest.raises(ExportError, match=r"--float-layers"):
        export_openvino(source, tmp_path / "m.xml", "int8", split, SIZE, OPTIONS)
    would = json.loads((tmp_path / "m.xml.quant.json").read_text())["would_meet_budget"]
    monkeypatch.undo()
    options = replace(OPTIONS, smooth=would["smooth"], float_layers=tuple(would["float_layers"]))
    # NNCF now quantizes with them in its ignored scope: the numbers the probe measured
    data = export_openvino(source, tmp_path / "m.xml", "int8", split, SIZE, options)
    assert data["quantization"]["accuracy"]["error"] == pytest.approx(would["error"], rel=1e-4)
    assert not quantized_layers(tmp_path / "m.xml", source) & set(would["float_layers"])


def test_float_layers_are_honoured_with_and_without_a_budget(tmp_path, stress_tiny):
    source, split = stress_tiny
    chosen = ("/pretrained/blocks.0/attn/MatMul_1", "/depth_head/resize_layers.0/ConvTranspose")
    plain = replace(OPTIONS, budget=None, float_layers=chosen)
    data = export_openvino(source, tmp_path / "a.xml", "int8", split.base, SIZE, plain)
    assert not quantized_layers(tmp_path / "a.xml", source) & set(chosen)
    assert len(data["quantization"]["ignored_scope"]) >= len(chosen) + 3  # patch embedding, output convolutions
    export_openvino(source, tmp_path / "b.xml", "int8", split, SIZE, replace(OPTIONS, float_layers=chosen))
    assert json.loads((tmp_path / "b.xml.quant.json").read_text())["float_layers"][:2] == list(chosen)
    assert not quantized_layers(tmp_path / "b.xml", source) & set(chosen)
    with pytest.raises(ExportRequestError, match="is not a layer OpenVINO quantizes"):
        export_openvino(source, tmp_path / "c.xml", "int8", split, SIZE, replace(OPTIONS, float_layers=("nope",)))


def test_float_layers_refuses_nodes_int8_never_quantizes_as_the_qdq_path_does(tmp_path, stress_tiny):
    import onnx

    from export.quantize.budget import check_float_layers
    from export.quantize.qdq import select_nodes

    source, split = stress_tiny
    nodes = onnx.load(str(source)).graph.node
    for kind in ("Sqrt", "Reshape"):  # reported "in float" on OpenVINO before
        never = next(n.name for n in nodes if n.op_type == kind)
        options = replace(OPTIONS, budget=None, float_layers=(never,))
        with pytest.raises(
            ExportRequestError, match=f"`int8.float_layers`: '{never}' is not a layer OpenVINO quantizes"
        ):
            export_openvino(source, tmp_path / "m.xml", "int8", split.base, SIZE, options)
        with pytest.raises(ExportRequestError, match="is not a layer ONNX Q/DQ quantizes"):
            check_float_layers((never,), select_nodes(onnx.load(str(source)), ())[0], "ONNX Q/DQ")
    assert not list(tmp_path.iterdir()) or not (tmp_path / "m.xml").exists()


def test_the_command_takes_float_layers_and_writes_its_report(tmp_path, stress_tiny, tiny_spec):
    from tests.conftest import STRESS_SEED
    from tests.stress import stress_model
    from train.models import save_model

    _, split = stress_tiny
    checkpoint = save_model(stress_model(tiny_spec, STRESS_SEED), tmp_path / "stress.safetensors")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.openvino",
            "--int8",
            "--checkpoint",
            str(checkpoint),
            "--size",
            "56",
            "--calib-dir",
            str(split.base.source),
            "--calib-samples",
            "10",
            "--accuracy-images",
            "4",
            "--float-layers",
            "/pretrained/blocks.2/mlp/fc2/MatMul",
            "--output",
            str(tmp_path / "m.xml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "10 calibration + 4 held-out accuracy images" in run.stdout and "1 in float" in run.stdout
    report = json.loads((tmp_path / "m.xml.quant.json").read_text())
    assert report["float_layers"][0] == "/pretrained/blocks.2/mlp/fc2/MatMul" and report["accepted"]
    assert report["error"] <= DEFAULT_ACCURACY_BUDGET


@pytest.mark.slow  # NNCF's accuracy control ranks every quantizer: a minute or more even on the tiny model
def test_nncf_accuracy_control_stays_available(tmp_path, stress_tiny):
    source, split = stress_tiny
    nncf = replace(OPTIONS, accuracy_method="nncf")
    plain = export_openvino(source, tmp_path / "p.xml", "int8", split, SIZE, replace(nncf, budget=1.0))
    budget = plain["quantization"]["accuracy"]["plain_error"] / 2
    data = export_openvino(source, tmp_path / "m.xml", "int8", split, SIZE, replace(nncf, budget=budget))
    accuracy = data["quantization"]["accuracy"]
    assert accuracy["method"] == "nncf" and accuracy["plain_error"] > budget >= accuracy["error"]
    report = json.loads((tmp_path / "m.xml.quant.json").read_text())
    assert report["float_layers"] == accuracy["float_layers"] and [p["loop"] for p in report["probes"]] == [
        "plain",
        "reverts",
    ]
    assert accuracy["float_layers"] and not quantized_layers(tmp_path / "m.xml", source) & set(accuracy["float_layers"])
