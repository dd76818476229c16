"""INT8 held to an accuracy budget: exact outlier migration, measurement on held-out images,
reverts of the harmful layers, the report, and reproducible INT8 files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.errors import ExportError
from export.onnx import export_onnx
from export.quantize.budget import HeldOutSplit, quant_report_path, quantize_with_budget
from export.quantize.calibration import CalibrationSet
from export.quantize.qdq import quantize_int8
from export.quantize.smooth import find_sites, smooth
from export.trt.rules import TrtVersion, check_onnx
from tests.sa1b import make_shard

SIZE = (56, 56)


@pytest.fixture(scope="module")
def stressed(tmp_path_factory, tiny_spec):
    """The tiny model with the stress outliers built in, as opset-17 and opset-16 ONNX."""
    import torch

    from tests.stress import add_outliers
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    model = add_outliers(DepthAnythingV2(tiny_spec).eval())
    folder = tmp_path_factory.mktemp("stressed")
    paths = {opset: export_onnx(model, folder / f"tiny{opset}.onnx", *SIZE, opset=opset).path for opset in (16, 17)}
    make_shard(folder / "sa1b" / "sa_0.tar", 14, faults=False)
    calibration = CalibrationSet(folder / "sa1b", 14, SIZE, progress=False)
    return paths, calibration


def run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def layernorm_outputs(path):
    model = onnx.load(str(path))
    return [s.output for s in find_sites(model)]


@pytest.mark.parametrize("opset", [16, 17], ids=["split LayerNorm", "LayerNormalization"])
def test_outlier_migration_is_exact_and_flattens_the_channels(tmp_path, stressed, opset):
    paths, calibration = stressed
    source, migrated = paths[opset], tmp_path / "smoothed.onnx"
    sites = smooth(source, migrated, calibration)
    assert sites == 2 * 4  # norm1 -> qkv and norm2 -> fc1 in each of the tiny model's 4 blocks
    batch = next(iter(calibration))
    before, after = run(source, batch), run(migrated, batch)
    assert np.abs(before - after).max() <= 1e-5 * before.std()  # powers of two: in fact bit-exact
    # the LayerNorm outputs the quantizer sees lost their outlier channels
    from export.quantize.smooth import channel_maxima

    tensors = layernorm_outputs(source)
    spread = [channel_maxima(p, tensors, [batch]) for p in (source, migrated)]
    ratio = [np.median([m.max() / np.median(m) for m in s.values()]) for s in spread]
    assert ratio[1] < ratio[0] / 4, ratio


def test_budget_met_means_plain_int8_bit_for_bit(tmp_path, stressed):
    """Nothing to repair: the budgeted export is the plain INT8 model, and INT8 exports repeat exactly."""
    paths, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    checked = quantize_with_budget(paths[17], split, tmp_path / "budget.onnx", budget=10.0, log=lambda *_: None)
    plain = quantize_int8(paths[17], split, tmp_path / "plain.onnx")
    quantize_int8(paths[17], split, tmp_path / "again.onnx")
    assert checked.reverted == [] and not checked.smoothed
    data = [(tmp_path / name).read_bytes() for name in ("budget.onnx", "plain.onnx", "again.onnx")]
    assert data[0] == data[1] == data[2]
    report = json.loads(quant_report_path(tmp_path / "budget.onnx").read_text())
    assert report["error"] == checked.error and report["held_out_images"] == 4 and report["float_layers"] == 0
    meta = json.loads((tmp_path / "budget.onnx.json").read_text())
    assert meta["accuracy"]["int8_layers"] == len(plain.quantized) and meta["calibration"]["held_out"] == 4


def test_over_budget_the_harmful_layers_go_back_to_float(tmp_path, stressed):
    paths, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    lines = []
    plain = quantize_with_budget(paths[17], split, tmp_path / "p.onnx", budget=10.0, log=lines.append).error
    budget = plain / 2
    checked = quantize_with_budget(paths[17], split, tmp_path / "b.onnx", budget=budget, log=lines.append)
    assert checked.error <= budget < checked.plain_error
    report = json.loads(quant_report_path(tmp_path / "b.onnx").read_text())
    assert report["int8_layers"] == len(checked.quantized) and report["float_layers"] == len(checked.reverted)
    assert report["smoothing"]["used"] == checked.smoothed
    if checked.reverted:
        assert report["sensitivity"] and any("back to float" in line for line in lines)
    # what it wrote still parses on every TensorRT release this target is for
    for release in ("8.6", "10.3"):
        assert check_onnx(tmp_path / "b.onnx", TrtVersion.parse(release)) == []


def test_an_impossible_budget_stops_with_the_numbers(tmp_path, stressed):
    paths, calibration = stressed
    with pytest.raises(
        ExportError,
        match=r"misses the accuracy budget even with the harmful layers .* back in float: AbsRel",
    ):
        quantize_with_budget(
            paths[17],
            HeldOutSplit(calibration, 4),
            tmp_path / "x.onnx",
            budget=1e-12,
            smooth_mode="off",
            log=lambda *_: None,
        )
    assert not (tmp_path / "x.onnx").exists()


def test_held_out_images_are_not_calibration_images(stressed):
    _, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    used = [b.tobytes() for b in split]
    held = [b.tobytes() for b in split.held_out_batches()]
    assert len(used) == 10 and len(held) == 4 and not set(used) & set(held)
    with pytest.raises(ExportError, match="held-out"):
        HeldOutSplit(calibration, 14)


@pytest.mark.slow  # NNCF's accuracy control ranks every quantizer: about 80 s even on the tiny model
def test_openvino_int8_within_budget_uses_nncf_accuracy_control(tmp_path, stressed):
    from export.openvino import export_openvino

    paths, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    plain = export_openvino(paths[17], tmp_path / "plain.xml", "int8", split, SIZE, budget=10.0)
    error = plain["quantization"]["accuracy"]["plain_error"]
    budget = error / 2
    data = export_openvino(paths[17], tmp_path / "budget.xml", "int8", split, SIZE, budget=budget)
    accuracy = data["quantization"]["accuracy"]
    assert accuracy["plain_error"] > budget >= accuracy["error"]
    assert 0 < accuracy["fake_quantize"] < accuracy["fake_quantize_plain"]  # some layers back in float, not all
