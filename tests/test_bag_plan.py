"""The bag tool's plan: the bag opened and planned once, the plan (cameras, topics, what the run
writes, the aligner) handed to the pass and the writer as one object; what a run writes is known
from the artefact's sidecar before the model loads. On bags written here with rosbags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rosbags", reason="the bag tool needs the 'ros' extra (rosbags)")

from runtime import DepthPredictor, InputError
from runtime.metadata import ir_rt_info, onnx_metadata, write_sidecar
from runtime.metric import OutputKind, declared_output_kind
from runtime.ros import bag_align, bag_plan
from runtime.ros.bag import CameraRequest, open_plan, process_bag, run_plan
from tests import scenes
from tests.robot_bags import Robot
from tests.scene_bag import CAMERA, IMAGE, LIDAR, START
from tests.test_bag import read_topics

REPO = Path(__file__).resolve().parents[1]
RECORDED = "/cam/depth/relative_inverse"  # recorded under the name a relative run writes


def robot_bag(path: Path, frames: int = 2) -> Path:
    robot = Robot()
    robot.tf(START - 1, scenes.CHAIN)
    robot.info(START)
    for i in range(frames):
        stamp = robot.frame(i)
        robot.add(stamp + 1, RECORDED, IMAGE, robot.messages.image(stamp, scenes.render(scenes.Scene()), "32FC1"))
    return robot.write(path)


@pytest.fixture(scope="module")
def relative_model(tmp_path_factory) -> Path:
    return scenes.affine_onnx(tmp_path_factory.mktemp("model") / "relative.onnx")


def metric_model(path: Path, sidecar: bool = True) -> Path:
    model = scenes.affine_onnx(path, max_depth=20.0)
    if sidecar:  # as every export writes it
        write_sidecar(model, OutputKind("metric", 20.0).sidecar())
    return model


def test_the_bag_is_opened_and_planned_once(tmp_path, relative_model, monkeypatch):
    bag = robot_bag(tmp_path / "in")
    opened, indexed = [], []
    real_open, real_index = bag_plan.open_bag, bag_align.index_sensor
    monkeypatch.setattr(bag_plan, "open_bag", lambda *a: opened.append(a[1]) or real_open(*a))
    monkeypatch.setattr(bag_align, "index_sensor", lambda *a, **k: indexed.append(a[1]) or real_index(*a, **k))
    summary = process_bag(DepthPredictor(relative_model), bag, tmp_path / "out", CAMERA, align_to=LIDAR)
    assert summary.frames == 2 and summary.metric == 2
    assert opened == [bag] and indexed == [LIDAR]  # once each, for the plan; the pass reads the plan's bag


def test_a_plan_is_one_object_handed_to_the_run(tmp_path, relative_model):
    bag = robot_bag(tmp_path / "in", frames=3)
    request = CameraRequest([CAMERA], copy_all=False)
    with open_plan(request, bag, tmp_path / "out", writes=["relative"], align_to=LIDAR) as plan:
        assert [t.image for t in plan.cameras] == [CAMERA] and plan.frames() == 3 and plan.frames(2) == 2
        assert plan.storage == "mcap" and plan.aligner is not None and plan.aligner.topic == LIDAR
        assert plan.writes == ["relative"]
        summary = run_plan(plan, DepthPredictor(relative_model))
        assert plan.writes == ["relative", "metric", "points"]  # an aligned relative model: metres too
    assert not plan.reader.connections  # closed with the plan
    got = read_topics(tmp_path / "out")
    assert summary.frames == 3 and len(got["/cam/depth/image"]) == 3 and len(got["/cam/depth/points"]) == 3


def test_expect_checks_the_topics_again_without_reopening(tmp_path):
    bag = robot_bag(tmp_path / "in")
    with open_plan(CameraRequest([CAMERA], copy_all=True), bag, tmp_path / "out", writes=["metric"]) as plan:
        assert RECORDED in plan.copy  # a metric run does not write relative depth: the recorded topic is copied
        with pytest.raises(InputError, match=f"--copy-all: {RECORDED} is recorded in the bag and this run writes it"):
            plan.expect(["relative"])


def test_declared_output_kind_reads_the_artefact_and_its_sidecar_before_the_model_loads(tmp_path):
    import onnx

    assert declared_output_kind(metric_model(tmp_path / "m.onnx")).is_metric
    bare = metric_model(tmp_path / "bare.onnx", sidecar=False)  # its kind only in its ONNX metadata
    assert onnx_metadata(bare) == {p.key: p.value for p in onnx.load(bare).metadata_props}  # read, not loaded
    found = declared_output_kind(bare)
    assert found.is_metric and found.max_depth == 20.0 and found.source == "ONNX metadata"
    assert found == DepthPredictor(bare).output  # what the load finds
    relative = scenes.affine_onnx(tmp_path / "relative.onnx")  # says nothing: relative, as the load has it
    assert declared_output_kind(relative).kind == "relative" == DepthPredictor(relative).output.kind
    assert declared_output_kind(relative, "metric", 20.0).is_metric  # what the user said
    assert declared_output_kind(tmp_path / "m.onnx", "relative").is_metric  # a contradiction: the load refuses it
    assert declared_output_kind(tmp_path / "head.pth") is None  # a checkpoint's head: only its load can tell
    assert declared_output_kind(tmp_path / "head.pth", "metric", 20.0).is_metric
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    assert (
        onnx_metadata(tmp_path / "junk.onnx") == {} and declared_output_kind(tmp_path / "junk.onnx").kind == "relative"
    )


def test_declared_output_kind_reads_an_openvino_irs_rt_info(tmp_path):
    from export.openvino import export_openvino
    from runtime.metadata import sidecar_path

    export_openvino(metric_model(tmp_path / "m.onnx", sidecar=False), tmp_path / "m.xml", "fp32")
    ir = tmp_path / "m.xml"
    sidecar_path(ir).unlink()  # the rt_info alone
    assert ir_rt_info(ir)["dav2_edge"]["output_kind"] == "metric"
    found = declared_output_kind(ir)
    assert found.is_metric and found.max_depth == 20.0 and found.source == "OpenVINO rt_info (dav2_edge)"
    assert found == DepthPredictor(ir, device="cpu").output


def run_bag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.bag", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("sidecar", [True, False], ids=["sidecar", "ONNX metadata only"])
def test_a_metric_runs_topics_are_planned_from_what_the_artefact_says(tmp_path, relative_model, sidecar):
    """A recorded topic under the relative output's name is copied by a metric model's --copy-all run:
    the plan made before the model loads knows the model writes no relative depth, from its sidecar
    or, with none, from the ONNX file's own metadata (read without loading it)."""
    bag = robot_bag(tmp_path / "in")
    model = metric_model(tmp_path / "metric.onnx", sidecar=sidecar)
    run = run_bag(
        str(bag), "--image-topic", CAMERA, "--model", str(model), "--output", str(tmp_path / "o"), "--copy-all"
    )
    assert run.returncode == 0, run.stderr
    recorded, got = read_topics(bag), read_topics(tmp_path / "o")
    assert set(got) == set(recorded) | {"/cam/depth/image", "/cam/depth/points"}  # every recorded topic, and metres
    assert [raw for _, raw, _ in got[RECORDED]] == [raw for _, raw, _ in recorded[RECORDED]]  # copied, nothing added
    assert len(got["/cam/depth/image"]) == 2 and len(got["/cam/depth/points"]) == 2
    relative = run_bag(
        str(bag), "--image-topic", CAMERA, "--model", str(relative_model), "--output", str(tmp_path / "r"), "--copy-all"
    )
    assert relative.returncode == 2 and f"--copy-all: {RECORDED} is recorded" in relative.stderr, relative.stderr
    assert not (tmp_path / "r").exists()
