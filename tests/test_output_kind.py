"""Every artefact says what it outputs (relative inverse depth or metres with max_depth), from the
checkpoint through ONNX, OpenVINO and the sidecars to the predictor, the colours and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import DepthPredictor, InputError, colorize
from runtime.accuracy import KIND_METRICS
from runtime.metadata import read_sidecar
from runtime.metric import OUTPUT_KINDS, OutputKind, resolve_output_kind
from tests import scenes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "values,kind,max_depth",
    [
        ({"output_kind": "metric", "max_depth": "20.0"}, "metric", 20.0),
        ({"output_kind": "relative", "max_depth": ""}, "relative", None),
        ({"max_depth": "80"}, "metric", 80.0),  # exports before output_kind wrote max_depth alone
        ({"max_depth": ""}, "relative", None),
        ({"encoder": "vits"}, None, None),  # says nothing
    ],
)
def test_output_kind_from_metadata(values, kind, max_depth):
    found = OutputKind.from_metadata(values, "ONNX metadata")
    assert (found.kind, found.max_depth, found.source) == (kind, max_depth, "ONNX metadata") if kind else found is None


@pytest.mark.parametrize(
    "values,match",
    [
        ({"output_kind": "metric", "max_depth": ""}, "sidecar: a metric model needs a positive max_depth"),
        ({"output_kind": "metric", "max_depth": "nan"}, "positive max_depth"),
        ({"output_kind": "disparity"}, "output kind must be relative or metric"),
        ({"output_kind": "relative", "max_depth": "20"}, "belongs to metric models"),
        ({"max_depth": "far"}, "is not a number"),
    ],
)
def test_inconsistent_metadata_is_refused(values, match):
    with pytest.raises(InputError, match=match):
        OutputKind.from_metadata(values, "sidecar")


def test_what_the_user_says_fills_in_for_a_silent_file_and_never_overrides_one():
    assert resolve_output_kind(None, None, None, "m.onnx") == OutputKind()
    assert resolve_output_kind(None, "metric", 10.0, "m.onnx") == OutputKind("metric", 10.0)
    # --max-depth alone (metric before) and with relative (ignored before) are refused; 1e-300 m too.
    with pytest.raises(InputError, match="--max-depth alone does not make it metric: give --output-kind metric"):
        resolve_output_kind(None, None, 10.0, "m.onnx")
    with pytest.raises(InputError, match="a relative model has none: drop --max-depth"):
        resolve_output_kind(None, "relative", 20.0, "m.onnx")
    assert resolve_output_kind(OutputKind("metric", 20.0), None, 20.0, "m.onnx").max_depth == 20.0
    with pytest.raises(InputError, match="give --max-depth"):
        resolve_output_kind(None, "metric", None, "m.onnx")
    found = OutputKind("metric", 20.0, "ONNX metadata")
    assert resolve_output_kind(found, "metric", 20.0, "m.onnx") is found
    for kind, depth in [("relative", None), ("metric", 80.0)]:
        with pytest.raises(InputError, match=r"m.onnx outputs metric depth in metres \(up to 20 m\) \(its ONNX"):
            resolve_output_kind(found, kind, depth, "m.onnx")


@pytest.fixture(scope="module")
def metric_onnx(tmp_path_factory):
    return scenes.affine_onnx(tmp_path_factory.mktemp("metric") / "metric.onnx", max_depth=20.0)


@pytest.fixture(scope="module")
def relative_onnx(tmp_path_factory):
    return scenes.affine_onnx(tmp_path_factory.mktemp("relative") / "relative.onnx")


def test_the_predictor_reads_the_kind_from_the_file(metric_onnx, relative_onnx):
    metric = DepthPredictor(metric_onnx)
    assert (metric.output_kind, metric.max_depth) == ("metric", 20.0)
    assert metric.info()["output"] == {"kind": "metric", "max_depth": 20.0, "unit": "m", "source": "ONNX metadata"}
    relative = DepthPredictor(relative_onnx)
    assert relative.output_kind == "relative" and relative.info()["output"]["source"] == "default"
    told = DepthPredictor(relative_onnx, output_kind="metric", max_depth=5.0)
    assert told.output == OutputKind("metric", 5.0) and told.output.source == "given"
    with pytest.raises(InputError, match="outputs metric depth"):
        DepthPredictor(metric_onnx, output_kind="relative")


def test_torch_models_say_what_their_head_outputs(tiny_spec):
    from train.models import DepthAnythingV2

    assert DepthPredictor(DepthAnythingV2(tiny_spec, max_depth=20.0)).output == OutputKind("metric", 20.0)
    plain = DepthPredictor(DepthAnythingV2(tiny_spec))
    assert plain.output == OutputKind() and plain.output.source == "checkpoint"


def test_a_metric_checkpoint_stays_metric_through_onnx_fp16_and_openvino(tmp_path, tiny_spec, photo):
    import onnx
    import torch

    from export.onnx import export_onnx
    from export.openvino import export_openvino
    from export.quantize.fp16 import to_fp16
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    model = DepthAnythingV2(tiny_spec, max_depth=20.0).eval()
    path = export_onnx(model, tmp_path / "metric.onnx", 56, 56).path
    props = {e.key: e.value for e in onnx.load(str(path)).metadata_props}
    assert props["output_kind"] == "metric" and float(props["max_depth"]) == 20.0
    assert (read_sidecar(path)["output_kind"], read_sidecar(path)["max_depth"]) == ("metric", 20.0)
    onnx_predictor = DepthPredictor(path)
    torch_predictor = DepthPredictor(model, fixed_size=(56, 56))
    assert onnx_predictor.output == torch_predictor.output == OutputKind("metric", 20.0)
    np.testing.assert_allclose(onnx_predictor.predict(photo), torch_predictor.predict(photo), rtol=1e-3, atol=1e-3)
    fp16 = to_fp16(path, tmp_path / "metric.fp16.onnx")
    assert DepthPredictor(fp16).output == OutputKind("metric", 20.0)
    xml = tmp_path / "metric.xml"
    export_openvino(path, xml, "fp32")
    assert read_sidecar(xml)["output_kind"] == "metric" and read_sidecar(xml)["max_depth"] == 20.0
    xml.with_name(xml.name + ".json").unlink()  # the IR itself carries it
    ir = DepthPredictor(xml, cache_dir=None)
    assert ir.output == OutputKind("metric", 20.0) and ir.output.source == "OpenVINO rt_info (dav2_edge)"
    direct = DepthPredictor(path, backend="openvino", cache_dir=None)
    assert direct.output == OutputKind("metric", 20.0) and "framework" in direct.output.source


def test_a_relative_export_says_relative(tmp_path, tiny_onnx):
    assert read_sidecar(tiny_onnx)["output_kind"] == "relative" and read_sidecar(tiny_onnx)["max_depth"] is None
    assert DepthPredictor(tiny_onnx).output.source == "ONNX metadata"


def test_colours_show_near_bright_for_both_kinds():
    metres = np.tile(np.linspace(1.0, 10.0, 64, dtype=np.float32), (4, 1))
    metres[0, 0], metres[0, 1] = 0.0, np.nan
    gray = colorize(metres, "gray", kind="metric")
    assert gray[2, 0].tolist() == [255] * 3 and gray[2, -1].tolist() == [0] * 3  # 1 m bright, 10 m dark
    assert gray[0, 0].tolist() == [0] * 3 and gray[0, 1].tolist() == [0] * 3
    same = colorize(-metres[1:], "gray")  # relative inverse depth ordered the same way gives the same picture
    np.testing.assert_array_equal(gray[1:], same)
    ranged = colorize(metres, "gray", vmin=0.0, vmax=20.0, kind="metric")
    assert ranged[2, -1, 0] == 128 and ranged[2, 0, 0] == 242  # 10 m and 1 m on a 0-20 m scale
    with pytest.raises(ValueError, match="kind must be"):
        colorize(metres, kind="metres")


@pytest.mark.parametrize("kind", ["depth_up_to_scale", "metres_per_focal"])
def test_colours_take_every_output_kind_depth_kinds_near_bright(kind):
    """Every kind DepthPredictor.output_kind says (DA3's two were a ValueError after the model ran)."""
    assert set(OUTPUT_KINDS) == set(KIND_METRICS)
    depth = np.tile(np.linspace(1.0, 10.0, 64, dtype=np.float32), (4, 1))
    depth[0, 0] = -1.0
    np.testing.assert_array_equal(colorize(depth, "gray", kind=kind), colorize(depth, "gray", kind="metric"))
    gray = colorize(depth, "gray", kind=kind)
    assert gray[2, 0].tolist() == [255] * 3 and gray[2, -1].tolist() == [0] * 3 and gray[0, 0].tolist() == [0] * 3


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=REPO, capture_output=True, text=True)


def test_python_m_runtime_writes_a_metric_models_metres(tmp_path, metric_onnx, relative_onnx):
    depth = scenes.render(scenes.Scene())
    image = scenes.encode(depth / 20.0)
    cv2.imwrite(str(tmp_path / "scene.png"), image)
    run = run_cli(
        str(tmp_path / "scene.png"),
        "--model",
        str(metric_onnx),
        "--output-dir",
        str(tmp_path),
        "--save-npy",
        "--colormap",
        "gray",
    )
    assert run.returncode == 0, run.stderr
    assert "metric depth in metres (up to 20 m)" in run.stderr and run.stdout.split("->")[0].endswith(" m ")
    metres = np.load(tmp_path / "scene_depth.npy")
    np.testing.assert_array_equal(metres, DepthPredictor(metric_onnx).predict(image))
    np.testing.assert_allclose(metres[1:], depth[1:], atol=20 / 65535)
    png = cv2.imread(str(tmp_path / "scene_depth.png"), cv2.IMREAD_GRAYSCALE)
    near, far = np.unravel_index(np.argmin(depth), depth.shape), np.unravel_index(np.argmax(depth), depth.shape)
    assert png[near] > 200 and png[far] < 60
    told = run_cli(
        str(tmp_path / "scene.png"),
        "--model",
        str(relative_onnx),
        "--output-kind",
        "metric",
        "--max-depth",
        "10",
        "--output-dir",
        str(tmp_path / "told"),
    )
    assert told.returncode == 0 and "up to 10 m" in told.stderr, told.stderr
    wrong = run_cli(
        str(tmp_path / "scene.png"),
        "--model",
        str(metric_onnx),
        "--output-kind",
        "relative",
        "--output-dir",
        str(tmp_path / "wrong"),
    )
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "outputs metric depth" in wrong.stderr
    for value in ("-3", "1e-300"):
        bad = run_cli(str(tmp_path / "scene.png"), "--model", str(relative_onnx), "--max-depth", value)
        assert bad.returncode == 2 and "give a number of metres from 0.001 to 100000" in bad.stderr
    alone = run_cli(str(tmp_path / "scene.png"), "--model", str(relative_onnx), "--max-depth", "20")
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1 and "--max-depth alone" in alone.stderr
    assert json.loads(json.dumps(DepthPredictor(metric_onnx).info()["output"]))["unit"] == "m"
