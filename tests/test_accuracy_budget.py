"""INT8 held to an accuracy budget: exact outlier migration, measurement on held-out images,
reverts of the harmful layers, the report, and reproducible INT8 files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.errors import ExportError, ExportRequestError
from export.metrics import OnnxRuntimeRunner
from export.onnx import export_onnx
from export.quantize import search
from export.quantize.budget import MIN_HELD_OUT, HeldOutSplit, quant_report_path, quantize_with_budget
from export.quantize.calibration import CalibrationSet
from export.quantize.options import DEFAULT_ACCURACY_BUDGET, Int8Options
from export.quantize.probes import QdqProbes
from export.quantize.qdq import quantize_int8
from export.quantize.search import MAX_REVERTS, group_of
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
    checked = quantize_with_budget(
        paths[17], split, tmp_path / "budget.onnx", Int8Options(budget=10.0), log=lambda *_: None
    )
    plain = quantize_int8(paths[17], split, tmp_path / "plain.onnx")
    quantize_int8(paths[17], split, tmp_path / "again.onnx")
    assert checked.reverted == [] and not checked.smoothed
    data = [(tmp_path / name).read_bytes() for name in ("budget.onnx", "plain.onnx", "again.onnx")]
    assert data[0] == data[1] == data[2]
    report = json.loads(quant_report_path(tmp_path / "budget.onnx").read_text())
    assert report["error"] == checked.error and report["held_out_images"] == 4 and report["float_layers"] == []
    meta = json.loads((tmp_path / "budget.onnx.json").read_text())
    assert meta["accuracy"]["int8_layers"] == len(plain.quantized) and meta["calibration"]["held_out"] == 4


def test_over_budget_the_harmful_layers_go_back_to_float(tmp_path, stressed):
    paths, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    lines = []
    plain = quantize_with_budget(
        paths[17], split, tmp_path / "p.onnx", Int8Options(budget=10.0), log=lines.append
    ).error
    budget = plain / 2
    checked = quantize_with_budget(paths[17], split, tmp_path / "b.onnx", Int8Options(budget=budget), log=lines.append)
    assert checked.error <= budget < checked.plain_error
    report = json.loads(quant_report_path(tmp_path / "b.onnx").read_text())
    assert report["int8_layers"] == len(checked.quantized) and report["float_layers"] == checked.reverted
    assert report["smoothing"]["used"] == checked.smoothed
    if checked.reverted:
        assert report["sensitivity"] and any("back to float" in line for line in lines)
    # what it wrote still parses on every TensorRT release this target is for
    for release in ("8.6", "10.3"):
        assert check_onnx(tmp_path / "b.onnx", TrtVersion.parse(release)) == []


def test_an_impossible_budget_is_refused_and_leaves_its_report(tmp_path, stressed):
    paths, calibration = stressed
    with pytest.raises(ExportError, match=r"INT8 misses the accuracy budget: AbsRel .* layers back in float") as error:
        quantize_with_budget(
            paths[17],
            HeldOutSplit(calibration, 4),
            tmp_path / "x.onnx",
            Int8Options(budget=1e-12, smooth="off"),
            log=lambda *_: None,
        )
    assert "no probe met the budget" in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["x.onnx.quant.json"]  # no artefact, no temporaries
    report = json.loads((tmp_path / "x.onnx.quant.json").read_text())
    assert report["accepted"] is False and report["would_meet_budget"] is None
    assert 0 < len(report["reverts"]) <= MAX_REVERTS
    assert report["float_layers"] == [step["reverted"] for step in report["reverts"]]
    # every probe is there with its error, in the order measured, and what it kept in float or INT8
    assert [p["step"] for p in report["probes"]] == list(range(1, len(report["probes"]) + 1))
    assert all(p["error"] > 1e-12 and ("float_layers" in p or "int8_only" in p) for p in report["probes"])
    assert {p["loop"] for p in report["probes"]} == {"plain", "groups", "layers", "reverts"}


def test_held_out_images_are_not_calibration_images(stressed):
    _, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    used = [b.tobytes() for b in split]
    held = [b.tobytes() for b in split.held_out_batches()]
    assert len(used) == 10 and len(held) == 4 and not set(used) & set(held)
    with pytest.raises(ExportError, match="held-out"):
        HeldOutSplit(calibration, 14)


def outputs(model, batches, as_written):
    runner = OnnxRuntimeRunner(model if isinstance(model, bytes) else str(model), as_written)
    return runner.run_all(batches)


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_probes_are_a_requantization_without_the_quantizers_of_the_float_layers(tmp_path, stress_tiny, target):
    """A probe removes Q/DQ pairs from one quantized graph; it must be the model ONNX Runtime's
    quantizer writes with those layers in float: the same nodes, the same numbers."""
    source, split = stress_tiny
    held = split.held_out_batches()
    base = quantize_int8(source, split, tmp_path / "base.onnx", target=target, cache_dir=tmp_path)
    layers = base.quantized
    probes = QdqProbes(base.path, source, layers, target, held, OnnxRuntimeRunner(source).run_all(held), tmp_path)
    block = [n for n in layers if n.startswith("/pretrained/blocks.1/")]
    dpt = [n for n in layers if group_of(n) == "depth_head/level2"]  # convolutions with biases
    one_in_int8 = [n for n in layers if n != "/pretrained/blocks.2/mlp/fc2/MatMul"]
    as_written = target == "tensorrt"
    for floats in (block, dpt, block[:1] + dpt[-2:], one_in_int8):
        probe = probes.build(frozenset(floats))
        again = quantize_int8(
            source, split, tmp_path / "again.onnx", target=target, keep_fp=tuple(floats), cache_dir=tmp_path
        )
        written = onnx.load(str(again.path))
        assert sorted(n.op_type for n in probe.graph.node) == sorted(n.op_type for n in written.graph.node)
        assert len(again.quantized) == len(layers) - len(floats)
        probed, requantized = (
            outputs(probe.SerializeToString(), held, as_written),
            outputs(again.path, held, as_written),
        )
        assert all(np.array_equal(a, b) for a, b in zip(probed, requantized, strict=True))


def test_probes_from_cached_fp32_activations_give_the_whole_graph_numbers(tmp_path, stress_tiny):
    source, split = stress_tiny
    held = split.held_out_batches()
    references = OnnxRuntimeRunner(source).run_all(held)
    base = quantize_int8(source, split, tmp_path / "base.onnx", cache_dir=tmp_path)
    whole = QdqProbes(base.path, source, base.quantized, "tensorrt", held, references, tmp_path)
    cut = QdqProbes(base.path, source, base.quantized, "tensorrt", held, references, tmp_path)
    groups = {}
    for name in base.quantized:
        groups.setdefault(group_of(name), set()).add(name)
    cut.warm(list(groups.values()))
    assert cut.cache and len(next(iter(cut.cache.values()))) == len(held)
    for names in [groups["pretrained/blocks.3"], {"/pretrained/blocks.2/mlp/fc2/MatMul"}, groups["depth_head/level1"]]:
        floats = frozenset(base.quantized) - names
        # the probe ran only what follows the cached tensors, and gave the same error
        assert len(cut.after_cut(cut.build(floats), set(cut.cache)).graph.node) < len(cut.build(floats).graph.node)
        assert cut.error(floats) == pytest.approx(whole.error(floats), rel=1e-5)
    assert cut.error(frozenset()) == whole.error(frozenset())  # nothing cached applies: the whole graph


def test_stress_weights_within_the_default_budget_where_plain_int8_is_not(tmp_path, stress_tiny):
    source, split = stress_tiny
    lines = []
    checked = quantize_with_budget(source, split, tmp_path / "m.onnx", log=lines.append)
    assert checked.error <= DEFAULT_ACCURACY_BUDGET < checked.plain_error and checked.reverted
    report = json.loads(quant_report_path(tmp_path / "m.onnx").read_text())
    assert report["accepted"] and report["float_layers"] == checked.reverted
    written = onnx.load(str(tmp_path / "m.onnx"))
    readers_of_dq = {n.name for n in written.graph.node for i in n.input if i.endswith("_DequantizeLinear_Output")}
    assert not readers_of_dq & set(checked.reverted)  # the named layers read float weights and inputs
    # progress: which loop, step k of at most N, the error and the time so far
    assert any(re.match(r"  \[\d+:\d\d\] group 1 of \d+: only .* in INT8: AbsRel \d\.\d{4}$", x) for x in lines)
    assert any(re.match(r"  \[\d+:\d\d\] step 1 of at most \d+: .* back to float: AbsRel", x) for x in lines)


def test_refusal_names_float_layers_that_met_the_budget_and_they_do(tmp_path, stress_tiny, monkeypatch):
    source, split = stress_tiny
    monkeypatch.setattr(search, "MAX_REVERTS", 0)  # the search stops before reverting anything
    with pytest.raises(ExportError, match=r"met it \(AbsRel 0\.\d+\) with --smooth (on|off) --float-layers") as error:
        quantize_with_budget(source, split, tmp_path / "m.onnx", log=lambda *_: None)
    would = json.loads(quant_report_path(tmp_path / "m.onnx").read_text())["would_meet_budget"]
    assert not (tmp_path / "m.onnx").exists() and would["error"] <= DEFAULT_ACCURACY_BUDGET
    assert str(would["probe"]) in str(error.value)
    monkeypatch.undo()
    again = quantize_with_budget(
        source,
        split,
        tmp_path / "m.onnx",
        Int8Options(smooth=would["smooth"], float_layers=tuple(would["float_layers"])),
        log=lambda *_: None,
    )
    assert again.error == pytest.approx(would["error"], rel=1e-5) and again.reverted == []
    assert not set(again.quantized) & set(would["float_layers"])


def test_float_layers_are_honoured_and_checked(tmp_path, stress_tiny):
    source, split = stress_tiny
    chosen = ("/pretrained/blocks.1/attn/qkv/MatMul", "/depth_head/refinenet2/out_conv/Conv")
    checked = quantize_with_budget(source, split, tmp_path / "m.onnx", Int8Options(budget=10.0, float_layers=chosen))
    assert not set(chosen) & set(checked.quantized)
    report = json.loads(quant_report_path(tmp_path / "m.onnx").read_text())
    assert report["float_layers"] == list(chosen) and report["int8_layers"] == len(checked.quantized)
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["accuracy"]["float_layers"] == list(chosen)
    with pytest.raises(
        ExportRequestError, match=r"'/pretrained/blocks.1/attn/qkv/Matmul' is not a layer .* did you mean"
    ):
        quantize_with_budget(
            source, split, tmp_path / "x.onnx", Int8Options(float_layers=("/pretrained/blocks.1/attn/qkv/Matmul",))
        )


def test_image_counts_say_what_was_asked_and_allow_fewer_shrinks_the_held_out_share(tmp_path):
    from export.quantize.budget import read_int8_images
    from export.quantize.calibration import CalibrationError
    from export.quantize.options import Int8Options

    make_shard(tmp_path / "sa_0.tar", 9)  # 9 photos and a truncated one
    ask = Int8Options(tmp_path, samples=6, held_out=8)
    message = r"asked for 6 calibration \+ 8 held-out accuracy images, 9 found usable \(9 calibration images, 1 corrupt"
    with pytest.raises(
        CalibrationError, match=message + r".*lower `int8.samples` or `int8.held_out`, or pass `int8.allow_fewer`"
    ):
        read_int8_images(ask, SIZE, None, progress=False)
    fewer = read_int8_images(replace(ask, allow_fewer=True), SIZE, None, progress=False)
    assert (len(fewer), fewer.held_out) == (6, 3)  # calibration keeps its 6, the held-out share shrinks
    tight = read_int8_images(replace(ask, samples=7, allow_fewer=True), SIZE, None, progress=False)
    assert (len(tight), tight.held_out) == (7, MIN_HELD_OUT)
    with pytest.raises(CalibrationError, match=r"accepts no fewer than 8 calibration \+ 2 held-out accuracy images"):
        read_int8_images(replace(ask, samples=8, allow_fewer=True), SIZE, None, progress=False)
    with pytest.raises(CalibrationError, match=r"asked for 12 calibration images, 9 found usable"):
        read_int8_images(replace(ask, samples=12, budget=None), SIZE, None, progress=False)


def test_layer_groups_are_transformer_blocks_and_dpt_pyramid_levels():
    assert group_of("/pretrained/blocks.11/mlp/fc2/MatMul") == "pretrained/blocks.11"
    for name in ("projects.1/Conv", "resize_layers.1/ConvTranspose", "layer2_rn/Conv", "refinenet2/out_conv/Conv"):
        assert group_of(f"/depth_head/{name}") == "depth_head/level2"
    assert group_of("/depth_head/Resize") == "depth_head/Resize"


def test_export_quantize_takes_float_layers_and_a_refusal_keeps_its_report(tmp_path, stress_tiny):
    source, split = stress_tiny
    command = [sys.executable, "-m", "export.quantize", "--onnx", str(source), "--calib-dir", str(split.base.source)]
    command += ["--calib-samples", "10", "--accuracy-images", "4"]
    names = ["/pretrained/blocks.0/attn/qkv/MatMul", "/pretrained/blocks.0/mlp/fc1/MatMul"]
    run = subprocess.run(
        [
            *command,
            "--float-layers",
            ",".join(names),
            "--float-layers",
            "/pretrained/blocks.3/mlp/fc2/MatMul",
            "--accuracy-budget",
            "1",
            "--output",
            str(tmp_path / "a.onnx"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "10 calibration + 4 held-out accuracy images" in run.stdout and ", 3 back in float" in run.stdout
    report = json.loads((tmp_path / "a.onnx.quant.json").read_text())
    assert report["float_layers"] == [*names, "/pretrained/blocks.3/mlp/fc2/MatMul"]
    run = subprocess.run(
        [*command, "--accuracy-budget", "1e-9", "--smooth", "off", "--output", str(tmp_path / "b.onnx")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 1 and "INT8 misses the accuracy budget" in run.stderr
    assert "step 1 of at most" in run.stdout  # the progress of the search it refused after
    assert (tmp_path / "b.onnx.quant.json").is_file() and not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("command", ["export.quantize", "export.trt", "export.openvino"])
def test_every_int8_command_takes_float_layers_comma_separated_or_repeated(command):
    import importlib

    from export.quantize.options import Int8Options

    parser = importlib.import_module(command if command == "export.openvino" else f"{command}.__main__").build_parser()
    argv = [
        "--onnx",
        "m.onnx",
        "--calib-dir",
        "d",
        "--float-layers",
        "/a/MatMul,/b/Conv",
        "--float-layers",
        "/c/MatMul",
    ]
    assert Int8Options.from_args(parser.parse_args(argv)).float_layers == ("/a/MatMul", "/b/Conv", "/c/MatMul")


def test_smoothquant_after_a_plain_run_in_the_same_cache_gives_what_a_fresh_cache_gives(tmp_path, stressed):
    """The smoothed model's calibration ranges are its own: a plain run's cached ranges (same
    source, same images, same cache folder) never stand in for them."""
    paths, calibration = stressed
    split = HeldOutSplit(calibration, 4)
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    quiet = {"log": lambda *_: None}
    quantize_with_budget(
        paths[17], split, tmp_path / "a.onnx", Int8Options(budget=10.0, smooth="off"), cache_dir=shared, **quiet
    )
    after_plain = quantize_with_budget(
        paths[17], split, tmp_path / "b.onnx", Int8Options(budget=10.0, smooth="on"), cache_dir=shared, **quiet
    )
    alone = quantize_with_budget(
        paths[17], split, tmp_path / "c.onnx", Int8Options(budget=10.0, smooth="on"), cache_dir=fresh, **quiet
    )
    assert len(list(shared.glob("ranges-*.json"))) == 2
    assert after_plain.error == alone.error
