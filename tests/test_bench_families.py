"""``python -m benchmarks`` with the other families' checkpoints and artefacts: a Depth Anything 3
snapshot folder, its ONNX and OpenVINO IR, a Video Depth Anything stream graph. Each row is timed
(a stream model as a stream step with its cache), scored with its output kind's metric, and the
report says what each model outputs and under which licence. Real ONNX Runtime, OpenVINO and
PyTorch at tiny sizes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.stats import KIND_WORDING, kind_metrics, kind_wording

# Benchmark runs whose rows are checked: another worker's load made one row "impossible" (alone).
pytestmark = pytest.mark.alone

SIZE = (56, 70)
QUICK = ["--quick", "--runs", "2", "--rounds", "2", "--warmup", "1", "--no-profile", "--throughput", "none"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    import torch

    from export.onnx import export_onnx
    from export.openvino import export_openvino
    from tests.da3_fixtures import da3_state_dict, write_snapshot
    from tests.video_fixtures import vda_state_dict
    from train.models import load_model

    folder = tmp_path_factory.mktemp("families")
    snapshot = write_snapshot(folder / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))
    onnx = export_onnx(load_model(snapshot), folder / "da3s.onnx", *SIZE).path
    export_openvino(onnx, folder / "da3s.xml", "fp32")
    torch.save(vda_state_dict(), folder / "video_depth_anything_vits.pth")
    vda = export_onnx(load_model(folder / "video_depth_anything_vits.pth"), folder / "vda.onnx", *SIZE).path
    export_openvino(vda, folder / "vda.xml", "fp32")
    return folder


def bench(tmp_path: Path, *argv: str) -> tuple[SimpleNamespace, dict, str]:
    """``python -m benchmarks argv`` (quick settings, its folders under ``tmp_path``, run from there)
    as a call of its ``main`` in this process, as tests/test_benchmark_report.py runs it: the same
    report and exit code without a fresh interpreter importing PyTorch each time. Its output is in
    the test's captured output."""
    from benchmarks.__main__ import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    dirs = ["--work-dir", str(tmp_path / "work"), "--report-dir", str(tmp_path / "report")]
    with contextlib.chdir(tmp_path):
        code = main([*argv, *QUICK, *dirs])
    done = SimpleNamespace(returncode=code, stderr=f"python -m benchmarks exited {code} (its output is above)")
    report = tmp_path / "report"
    if not (report / "report.json").is_file():
        return done, {}, ""
    return done, json.loads((report / "report.json").read_text()), (report / "report.md").read_text()


def test_the_report_words_every_kind_the_runtime_has_a_metric_for():
    """The kinds and their metrics are the runtime's table; the benchmark keeps only the wording."""
    from runtime.accuracy import KIND_METRICS
    from runtime.metric import OUTPUT_KINDS

    assert set(KIND_WORDING) == set(KIND_METRICS) == set(OUTPUT_KINDS)
    assert all(kind_wording(kind) for kind in OUTPUT_KINDS)
    with pytest.raises(ValueError, match="no metric for output kind 'metres'"):
        kind_wording("metres")
    for missing in (None, ""):  # an older artefact that says no kind: relative, as int8_metric takes it
        assert kind_wording(missing) == kind_wording("relative")


def test_depth_up_to_scale_is_scored_by_one_scale_in_depth():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 10.0, (20, 30)).astype(np.float32)
    assert kind_metrics(3.0 * depth, depth, "depth_up_to_scale")["abs_rel"] < 1e-6  # a scale is free
    shifted = kind_metrics(depth + 1.0, depth, "depth_up_to_scale")  # a shift is an error in depth
    assert shifted["abs_rel"] > 0.02 and kind_metrics(1.0 / depth + 0.5, 1.0 / depth, "relative")["abs_rel"] < 1e-6
    assert kind_metrics(2.0 * depth, depth, "metric")["abs_rel"] == pytest.approx(1.0)  # metres: no fit
    broken = depth.copy()
    broken[3, 4] = np.nan
    assert np.isnan(kind_metrics(broken, depth, "depth_up_to_scale")["abs_rel"])


def test_da3_snapshot_onnx_and_ir_rows_with_their_outputs_and_licence(tmp_path, models):
    done, data, text = bench(
        tmp_path,
        *("--model", str(models / "DA3-SMALL"), "--model", str(models / "da3s.onnx")),
        *("--model", str(models / "da3s.xml")),
    )
    assert done.returncode == 0, done.stderr
    rows = {row["variant"]: row for row in data["rows"]}
    assert set(rows) == {"DA3-SMALL", "da3s.onnx", "da3s.xml"}
    for row in rows.values():
        assert row["end_to_end"]["runs"] == 2 and row["model_call"]["median"] > 0
        assert row["size"] == list(SIZE)  # the checkpoint runs at the size its exports share
    for name in ("da3s.onnx", "da3s.xml"):
        assert rows[name]["status"] == "ok" and rows[name]["verification"]["passed"]
        assert rows[name]["vs_fp32"]["metric"] == "after a least-squares scale alone in depth"
        assert rows[name]["vs_fp32"]["abs_rel"] < 1e-4
    assert rows["DA3-SMALL"]["backend"] == "torch" and "not scored" in rows["DA3-SMALL"]["error"]
    facts = {Path(f["artefact"]).name: f for f in data["artefacts"]}
    for fact in facts.values():
        assert (fact["family"], fact["variant"], fact["output_kind"], fact["licence"]) == (
            "depth-anything-3",
            "da3-small",
            "depth_up_to_scale",
            "Apache-2.0",
        )
    import onnxruntime

    graph = [o.name for o in onnxruntime.InferenceSession(str(models / "da3s.onnx")).get_outputs()]
    assert facts["DA3-SMALL"]["extra_outputs"] == ["depth_conf"] and facts["da3s.onnx"]["extra_outputs"] == graph[1:]
    assert "| family | variant | output kind | extra outputs | licence |" in text
    assert "| depth-anything-3 | da3-small | depth up to scale | depth_conf | Apache-2.0 |" in text


def test_a_stream_graph_is_timed_as_a_stream_step(tmp_path, models):
    """The ONNX with the stream reference its export wrote is scored on the reference's frames run
    as one stream; an IR without one (an export older than the references) is timed, not scored,
    and says so."""
    from runtime.reference import reference_path

    older = tmp_path / "older"
    older.mkdir()
    for part in [*models.glob("vda.xml*"), models / "vda.bin"]:
        if part != reference_path(models / "vda.xml"):  # the IR, its weights and sidecar, no reference
            (older / part.name).write_bytes(part.read_bytes())
    assert reference_path(models / "vda.onnx").is_file() and not reference_path(older / "vda.xml").exists()
    done, data, text = bench(tmp_path, "--model", str(models / "vda.onnx"), "--model", str(older / "vda.xml"))
    assert done.returncode == 0, done.stderr
    rows = {Path(row["variant"]).suffix: row for row in data["rows"]}
    for row in rows.values():
        assert row["status"] == "ok" and row["info"]["stream"] and row["model_call"]["median"] > 0, row
    assert rows[".onnx"]["verification"]["passed"] and rows[".onnx"]["vs_fp32"]["abs_rel"] < 1e-4
    assert "no stream reference beside it" in rows[".xml"]["error"]  # said, not hidden
    for fact in data["artefacts"]:
        assert fact["family"] == "video-depth-anything" and fact["variant"] == "Video-Depth-Anything-Small"
        assert fact["output_kind"] == "relative" and fact["licence"] == "Apache-2.0"
    assert "video-depth-anything (stream)" in text and "streamed check" in text


def test_a_stream_graph_with_a_stream_reference_is_scored_frame_by_frame(tmp_path, models):
    """export.trt writes a stream reference beside the stream ONNX: the row is scored on its frames
    with the cache carried; a reference one frame of which is off marks the row invalid."""
    import shutil

    from export.trt.stream import make_stream_reference
    from runtime.reference import Reference, reference_path, save_reference

    paths = {}
    for name in ("good", "off"):
        paths[name] = tmp_path / name / "vda.onnx"
        paths[name].parent.mkdir()
        for file in models.glob("vda.onnx*"):
            shutil.copy(file, paths[name].parent / file.name)
        reference = make_stream_reference(paths[name], paths[name], "fp32")
        if name == "off":  # the third frame's depth, the cache it read in wrong
            outputs = [o * (1.3 if i == 2 else 1.0) for i, o in enumerate(reference.outputs)]
            reference = Reference(reference.images, outputs, reference.meta)
        save_reference(reference_path(paths[name]), reference)
    done, data, _ = bench(tmp_path / "bench", "--model", str(paths["good"]), "--model", str(paths["off"]))
    assert done.returncode == 1, done.stderr  # one row failed validation
    rows = {Path(row["variant"]).parent.name: row for row in data["rows"]}
    assert rows["good"]["status"] == "ok" and rows["good"]["verification"]["passed"], rows["good"]
    assert len(rows["good"]["verification"]["inputs"]) == len(reference.outputs)
    assert rows["good"]["vs_fp32"]["abs_rel"] < 1e-4
    assert rows["off"]["status"] != "ok" and not rows["off"]["verification"]["passed"]


def test_the_worker_steps_the_stream_it_times(tmp_path, models):
    """The model call is the stream step on a full cache, the e2e call the next frame pushed: an
    OpenVINO stream graph given the image alone would run on whatever its cache inputs held."""
    from benchmarks.worker import Row
    from export.metrics import verification_photos

    photo = next(iter(verification_photos().values()))
    np.savez(tmp_path / "images.npz", photo=photo)
    config = {"model": str(models / "vda.xml"), "backend": "openvino", "device": "cpu", "precision_arg": None}
    config.update(size=list(SIZE), images=str(tmp_path / "images.npz"), timing_image="photo")
    row = Row(config)
    frames = row.video.state.frames
    timed = row.time(0, 2)
    assert len(timed["model"]) == 2 and row.video.state.frames == frames + 2  # e2e pushed two frames
    slot_pos, caches = row.state
    assert (slot_pos >= 0).all() and len(caches) == 8  # every slot holds a cached frame
    assert row.profile(1)["unavailable"].startswith("a stream model")
    row.predictor.close()


def test_a_da3_checkpoint_through_the_building_benchmark(tmp_path, models):
    argv = ["--checkpoint", str(models / "DA3-SMALL"), "--sizes", f"{SIZE[0]}x{SIZE[1]}", "--size-sweep", "none"]
    done, data, text = bench(tmp_path, *argv, "--backends", "torch,onnxruntime", "--precisions", "fp32")
    assert done.returncode == 0, done.stderr
    assert data["model_facts"]["output_kind"] == "depth_up_to_scale"
    assert data["model_facts"]["extra_outputs"] == ["depth_conf"] and data["model_facts"]["licence"] == "Apache-2.0"
    onnx = next(r for r in data["rows"] if r["backend"] == "onnxruntime")
    assert onnx["status"] == "ok" and onnx["vs_fp32"]["metric"] == "after a least-squares scale alone in depth"
    assert "its numbers are depth up to scale; extra outputs: depth_conf; licence: Apache-2.0" in text


def test_a_model_with_no_licence_says_so():
    from benchmarks.given import model_facts
    from benchmarks.report import artefact_lines

    fact = {"artefact": "m.onnx", "backend": "onnxruntime", "precision": "fp32", "licence": None}
    model_facts(fact, {"info": {"family": "depth-anything-v2", "variant": "vits", "output": {"kind": "relative"}}})
    assert fact["licence"] == "none stated"
    line = next(line for line in artefact_lines({"artefacts": [fact]}) if line.startswith("| `m.onnx`"))
    assert "| depth-anything-v2 | vits | relative inverse depth (larger = nearer) | none | none stated |" in line


def test_the_stream_step_timed_takes_the_input_the_stream_makes_of_a_wide_frame(tmp_path):
    """A PyTorch Video Depth Anything row with a frame wider than 16:9: the timed step takes the
    input the stream itself makes of the frame (``VideoStream.network_input``), the one its cache
    fits, and steps on it. (Every row pins its size, so ``predictor.prepare`` gives the same today;
    the batch is taken from the stream so that the two cannot part.)"""
    import torch

    from benchmarks.worker import Row
    from tests.video_fixtures import frames_bgr, vda_state_dict

    torch.save(vda_state_dict(), tmp_path / "video_depth_anything_vits.pth")
    wide = np.ascontiguousarray(np.concatenate([frames_bgr()[0]] * 3, axis=1)[:120])  # 120x960, 8:1
    np.savez(tmp_path / "images.npz", wide=wide)
    config = {"model": str(tmp_path / "video_depth_anything_vits.pth"), "backend": "torch", "device": "cpu"}
    config.update(precision_arg=None, size=[28, 98], images=str(tmp_path / "images.npz"), timing_image="wide")
    row = Row(config)
    assert row.video is not None and row.predictor.is_stream_model
    assert np.array_equal(row.batch, row.video.network_input(wide, row.video.rgb))
    slot_pos, _ = row.state
    assert (slot_pos >= 0).any()  # the cache the pushes left, at the stream's size
    timed = row.time(0, 1)  # the step on that cache and this batch runs
    assert len(timed["model"]) == 1
    row.predictor.close()


@pytest.mark.parametrize("step", ["time", "memory", "flicker"])
def test_a_timing_step_before_setup_is_one_line_naming_setup_and_exit_2(tmp_path, capsys, step):
    from benchmarks.family_cost import main as family_cost

    assert family_cost([step, "--size", "70", "--out", str(tmp_path / "cost")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found: run `python -m benchmarks.family_cost setup --size 70" in err[0], err
    assert not (tmp_path / "cost").exists()
