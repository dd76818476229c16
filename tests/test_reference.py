"""References travel with every artefact, and ``python -m runtime.verify`` holds the artefact to them:
each export writes ``<artefact>.reference.npz``; verify passes on sound ONNX Runtime and OpenVINO
artefacts and fails (exit 1, with the numbers) on artefacts damaged after export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.metrics import FP32_TOLERANCE
from export.openvino import export_openvino
from export.reference import FP16_TOLERANCE
from runtime import DepthPredictor
from runtime.accuracy import ABS_REL_ALIGNED, MAX_REL_STD
from runtime.reference import ReferenceMismatch, load_reference, reference_path
from tests.conftest import REPO
from tests.sa1b import make_shard
from tests.test_reliability_gates import negate_largest_weights


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True)


def flip_largest_onnx_weight(path: Path) -> None:
    """Negate the ONNX file's largest weight tensor in place (its reference stays as exported)."""
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    largest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(largest), largest.name))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, tiny_spec):
    """A tiny model's static ONNX (56x84), dynamic ONNX (112x112) and FP32/FP16 IRs of the static one."""
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    folder = tmp_path_factory.mktemp("artefacts")
    torch.manual_seed(0)
    model = DepthAnythingV2(tiny_spec).eval()
    static = export_onnx(model, folder / "m.onnx", 56, 84).path
    export_onnx(model, folder / "d.onnx", 112, 112, dynamic=True)
    export_openvino(static, folder / "m32.xml", "fp32")
    export_openvino(static, folder / "m16.xml", "fp16")
    return folder


def test_export_onnx_writes_the_reference(artefacts):
    reference = load_reference(reference_path(artefacts / "m.onnx"))
    assert reference.meta["artefact"] == "m.onnx" and reference.meta["precision"] == "fp32"
    assert (reference.metric, reference.tolerance) == (MAX_REL_STD, FP32_TOLERANCE)
    assert reference.sizes == [(56, 84), (56, 84)] and reference.names == ["motorcycle_left", "chelsea"]
    assert reference.meta["outputs_from"] == "PyTorch FP32"
    assert all(i.dtype == np.uint8 for i in reference.images)
    assert [o.shape for o in reference.outputs] == [(56, 84), (56, 84)]
    # The file is a plain npz: nothing in it needs unpickling.
    with np.load(reference.path, allow_pickle=False) as data:
        assert set(data.files) == {"meta", "image_0", "output_0", "image_1", "output_1"}
    # a dynamic model's reference holds its export size and one other
    assert load_reference(reference_path(artefacts / "d.onnx")).sizes == [(112, 112), (84, 140)]
    # nothing half-written was left behind
    assert not [p for p in artefacts.iterdir() if p.name.startswith(".")]


def test_export_openvino_writes_the_reference_of_each_precision(artefacts):
    for name, precision, tolerance in (("m32.xml", "fp32", FP32_TOLERANCE), ("m16.xml", "fp16", FP16_TOLERANCE)):
        reference = load_reference(reference_path(artefacts / name))
        assert (reference.meta["precision"], reference.metric, reference.tolerance) == (
            precision,
            MAX_REL_STD,
            tolerance,
        )
        assert reference.sizes == [(56, 84), (56, 84)]
        # the ONNX's reference (PyTorch FP32 outputs) carries over: same inputs and outputs
        source = load_reference(reference_path(artefacts / "m.onnx"))
        assert all(np.array_equal(a, b) for a, b in zip(reference.outputs, source.outputs, strict=True))


def test_quantize_int8_and_fp16_write_references(tmp_path, artefacts):
    shards = make_shard(tmp_path / "sa1b" / "sa_000000.tar", count=8, faults=False).parent
    int8 = tmp_path / "m.int8.onnx"
    done = run(
        "export.quantize",
        "--onnx",
        str(artefacts / "m.onnx"),
        "--calib-dir",
        str(shards),
        "--calib-samples",
        "5",
        "--accuracy-images",
        "2",
        "--accuracy-budget",
        "1.0",
        "--output",
        str(int8),
    )
    assert done.returncode == 0, done.stderr
    reference = load_reference(reference_path(int8))
    assert (reference.meta["precision"], reference.metric, reference.tolerance) == ("int8", ABS_REL_ALIGNED, 1.0)
    sources = [i["source"] for i in reference.meta["inputs"]]
    assert sources.count("calibration image held out of calibration") == 2 and "bundled photograph" in sources
    assert set(reference.sizes) == {(56, 84)}
    fp16 = tmp_path / "m.fp16.onnx"
    done = run("export.quantize", "--onnx", str(artefacts / "m.onnx"), "--fp16", "--output", str(fp16))
    assert done.returncode == 0, done.stderr
    reference = load_reference(reference_path(fp16))
    assert (reference.meta["precision"], reference.tolerance) == ("fp16", FP16_TOLERANCE)
    # both run within their tolerance where they land
    for model in (int8, fp16):
        verified = run("runtime.verify", str(model))
        assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize("version,typed", [("10.3", True), ("8.6", False)])
def test_trt_onnx_only_writes_the_reference_that_travels(tmp_path, artefacts, version, typed):
    out = tmp_path / "m.fp16.engine"
    done = run(
        "export.trt", "--onnx", str(artefacts / "m.onnx"), "--onnx-only", "--trt-version", version, "--output", str(out)
    )
    assert done.returncode == 0, done.stderr
    ready = out.with_name("m.fp16.trt-fp16.onnx") if typed else artefacts / "m.onnx"
    reference = load_reference(reference_path(ready))
    assert reference.sizes == [(56, 84), (56, 84)]
    assert reference.meta["precision"] == ("fp16" if typed else "fp32")
    assert not out.exists()
    islands = ready.with_name(ready.name + ".fp32-islands.onnx")  # the fallback travels with its reference
    assert islands.is_file() == typed
    if typed:
        assert load_reference(reference_path(islands)).meta["artefact"] == islands.name
        verified = run("runtime.verify", str(islands))
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_verify_passes_on_onnxruntime_and_openvino_artefacts(artefacts):
    for name, backend in (("m.onnx", "onnxruntime"), ("d.onnx", "onnxruntime"), ("m32.xml", "openvino")):
        done = run("runtime.verify", str(artefacts / name))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"on {backend} (" in done.stdout and "PASSED" in done.stdout
        assert "motorcycle_left" in done.stdout and "max|a-b|/std" in done.stdout
    # an FP16 IR runs in the CPU's default format (bf16 here where the CPU has it), and says which bound held it
    done = run("runtime.verify", str(artefacts / "m16.xml"))
    assert done.returncode == 0, done.stdout + done.stderr
    predictor = DepthPredictor(artefacts / "m32.xml", verify=True)
    check = predictor.info()["verification"]
    assert check["passed"] and check["value"] <= FP32_TOLERANCE and check["ran"]["precision"] == "fp32"
    assert check["seconds"] >= 0 and len(check["inputs"]) == 2


def test_verify_fails_on_artefacts_damaged_after_export(tmp_path, artefacts):
    onnx_copy = tmp_path / "m.onnx"
    for suffix in ("", ".json", ".reference.npz"):
        onnx_copy.with_name("m.onnx" + suffix).write_bytes((artefacts / f"m.onnx{suffix}").read_bytes())
    flip_largest_onnx_weight(onnx_copy)
    ir_copy = tmp_path / "m32.xml"
    for suffix in (".xml", ".bin", ".xml.json", ".xml.reference.npz"):
        (tmp_path / f"m32{suffix}").write_bytes((artefacts / f"m32{suffix}").read_bytes())
    negate_largest_weights(ir_copy)
    for model in (onnx_copy, ir_copy):
        done = run("runtime.verify", str(model))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAILED" in done.stdout and "motorcycle_left 56x84: max|a-b|/std" in done.stdout
        assert "over its reference's tolerance" in done.stderr and "(OVER the tolerance 0.0005)" in done.stderr
        with pytest.raises(ReferenceMismatch, match="over its reference's tolerance") as raised:
            DepthPredictor(model, verify=True)
        assert raised.value.result.value > 100 * FP32_TOLERANCE


def test_verify_usage_errors_exit_2(tmp_path, artefacts):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes((artefacts / "m.onnx").read_bytes())
    done = run("runtime.verify", str(lone))
    assert done.returncode == 2 and "no reference beside it (lone.onnx.reference.npz)" in done.stderr
    # a reference that is not one (garbage bytes, or an npz that needs unpickling)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"format": "x"}], dtype=object))
    for bad in (garbage, pickled):
        done = run("runtime.verify", str(lone), "--reference", str(bad))
        assert done.returncode == 2 and "damaged reference: it cannot be read" in done.stderr, done.stderr
    # a static model with another artefact's reference (made at another size)
    done = run("runtime.verify", str(lone), "--reference", str(reference_path(artefacts / "d.onnx")))
    assert done.returncode == 2 and "but the model takes 56x84" in done.stderr
    # its own reference, named explicitly
    done = run("runtime.verify", str(lone), "--reference", str(reference_path(artefacts / "m.onnx")))
    assert done.returncode == 0, done.stderr


def test_sidecars_and_info_carry_the_licence(tmp_path, tiny_spec):
    """The checkpoint's licence goes into every artefact's sidecar and info(); non-commercial
    weights are named once by each export."""
    import torch

    from train.models import DepthAnythingV2, save_model

    torch.manual_seed(0)
    checkpoint = tmp_path / "student.safetensors"
    save_model(DepthAnythingV2(tiny_spec), checkpoint, metadata={"license": "CC-BY-NC-4.0"})
    model = tmp_path / "s.onnx"
    done = run("export.onnx", "--checkpoint", str(checkpoint), "--size", "56x56", "--output", str(model))
    assert done.returncode == 0, done.stderr
    assert "carries CC-BY-NC-4.0 weights: non-commercial use only" in done.stderr
    ir = tmp_path / "s.xml"
    done = run("export.openvino", "--onnx", str(model), "--fp32", "--output", str(ir))
    assert done.returncode == 0 and "non-commercial use only" in done.stderr, done.stderr
    for artefact in (model, ir):
        assert json.loads(Path(f"{artefact}.json").read_text())["licence"] == "CC-BY-NC-4.0"
        assert DepthPredictor(artefact).info()["licence"] == "CC-BY-NC-4.0"
    props = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    assert props["licence"] == "CC-BY-NC-4.0"
    assert DepthPredictor(checkpoint).info()["licence"] == "CC-BY-NC-4.0"


def test_the_official_checkpoints_licences_by_encoder(vits_checkpoint):
    from train.models import VARIANTS
    from train.models.checkpoint import FORMAT_TAG, checkpoint_licence

    assert {name: checkpoint_licence({}, spec) for name, spec in VARIANTS.items()} == {
        "vitt": "unknown",  # no published vitt weights: a file claiming to be official has no licence to cite
        "vits": "Apache-2.0",
        "vitb": "CC-BY-NC-4.0",
        "vitl": "CC-BY-NC-4.0",
        "vitg": "CC-BY-NC-4.0",
    }
    assert checkpoint_licence({"format": FORMAT_TAG}, VARIANTS["vits"]) == "unknown"  # ours, without a record
    assert DepthPredictor(vits_checkpoint, device="cpu").info()["licence"] == "Apache-2.0"
    from export.source import RANDOM_WEIGHTS, load_source_model

    assert load_source_model(None, "vits").licence == RANDOM_WEIGHTS


@pytest.mark.slow
def test_a_vits_reference_is_a_few_megabytes(vits_static_onnx):
    """Measured: 2 inputs at 518x518, 2.9 MB (uint8 images and float32 outputs, compressed)."""
    size = reference_path(vits_static_onnx).stat().st_size
    assert size < 4e6
