"""Distilling from every family: a Depth Anything 3 snapshot and a Video Depth Anything ``.pth`` as
``train.pseudo_label --teacher``, labels that say their teacher and its output kind, per-focal labels
rescaled with the crop, a student of the teacher's kind that exports, quantizes and runs in
``DepthPredictor`` as that kind, the loss for each kind, and a teacher file of no family refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from commands.errors import InputError
from runtime import DepthPredictor
from runtime.metadata import sidecar_path
from tests.conftest import make_tiny_spec
from tests.da3_fixtures import da3_state_dict, write_snapshot
from tests.sa1b import make_shard
from tests.video_fixtures import vda_state_dict
from train.data import sa1b
from train.data.datasets import PseudoLabelDataset
from train.engine import TrainConfig
from train.losses import AbsoluteDepthLoss, DistillationLoss, ScaleInvariantDepthLoss, loss_for_kind
from train.models import load_model
from train.pseudo_label import ShardImages, label_images, label_source
from train.pseudo_label import main as label_main
from train.student_training import distill

SIZE = 56  # teacher and student short side: tiny and fast; what the numbers mean does not depend on it


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sa1b")
    make_shard(folder / "sa_000000.tar", count=6, faults=False)
    return folder


def photo(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def label_cli(teacher, source, output, *extra: str) -> dict:
    argv = ["--teacher", str(teacher), "--source", str(source), "--output", str(output), "--size", str(SIZE)]
    assert label_main([*argv, "--workers", "0", "--batch-size", "3", *extra]) == 0
    return json.loads((output / "sa_000000.tar.json").read_text())


def distil_and_export(labels, tmp_path, steps: int = 4, lr: float = 2e-4):
    """A tiny student from ``labels``, loaded back from its checkpoint, and its verified ONNX export."""
    from export.onnx import export_onnx

    cfg = TrainConfig(output=tmp_path / "student", steps=steps, batch_size=2, lr=lr, crop=SIZE, workers=0)
    cfg.save_every = steps
    torch.manual_seed(0)
    distill(labels, cfg, make_tiny_spec())
    student = load_model(tmp_path / "student" / "model.safetensors")
    onnx = tmp_path / "student.onnx"
    export_onnx(student, onnx, SIZE, SIZE)
    return student, onnx


def onnx_metadata(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_a_da3_snapshot_teacher_gives_depth_up_to_scale_labels_and_student(tmp_path, source):
    snapshot = write_snapshot(tmp_path / "DA3-SMALL", "da3-small", da3_state_dict("da3-small"))
    index = label_cli(snapshot, source, tmp_path / "labels")
    teacher = index["teacher"]
    assert (teacher["family"], teacher["variant"], teacher["licence"]) == (
        "depth-anything-3",
        "da3-small",
        "Apache-2.0",
    )
    assert teacher["output_kind"] == "depth_up_to_scale" and teacher["max_depth"] is None
    # The labels are the network's depth output on the image it saw (float16 rounding).
    network = load_model(snapshot).deployable()
    found, _ = sa1b.members(source / "sa_000000.tar")
    exact = dict(label_images(network, found[:1], SIZE))[0]
    stored = np.load(tmp_path / "labels" / index["labels"])["m0"].astype(np.float32)
    np.testing.assert_allclose(stored, exact, rtol=2e-3, atol=1e-6)
    student, onnx = distil_and_export(tmp_path / "labels", tmp_path)
    assert student.output_kind == "depth_up_to_scale"
    assert onnx_metadata(onnx)["output_kind"] == "depth_up_to_scale"
    assert json.loads(sidecar_path(onnx).read_text())["output_kind"] == "depth_up_to_scale"
    with DepthPredictor(onnx) as predictor:
        assert predictor.output_kind == "depth_up_to_scale" and predictor.predict(photo()).shape == (48, 64)
        with pytest.raises(InputError):  # no focal length makes depth up to scale metres
            predictor.predict(photo(), focal=300.0)


def test_a_metres_per_focal_teacher_gives_a_student_that_needs_the_focal_length(tmp_path, source):
    """DA3-Small's network labelled as a depth-per-focal-length model, as DA3Metric-Large is (its
    ViT-L weights are 1.3 GB): what the labels and the student are follows the kind, not the size."""
    from train.models.da3 import DA3_VARIANTS, METRES_PER_FOCAL, DepthAnything3
    from train.models.teacher_model import freeze

    spec = dataclasses.replace(DA3_VARIANTS["da3-small"], name="da3metric-test", output=METRES_PER_FOCAL)
    network = DepthAnything3(spec)
    network.load_state_dict(da3_state_dict("da3-small"))
    teacher = freeze(network.deployable())
    label_source(teacher, source, tmp_path / "labels", SIZE, progress=False)
    index = json.loads((tmp_path / "labels" / "sa_000000.tar.json").read_text())
    assert index["teacher"]["output_kind"] == "metres_per_focal"
    assert (index["teacher"]["focal_px"], index["teacher"]["focal_at"]) == (None, "label resolution")
    # A crop at twice the label's size doubles the focal length in pixels: the per-focal target halves.
    entry = index["entries"][0]
    label = np.load(tmp_path / "labels" / index["labels"])[entry["key"]].astype(np.float32)
    double = PseudoLabelDataset(tmp_path / "labels", crop=2 * min(entry["shape"]), jitter=False)
    _, target, mask = double.sample(0, np.random.default_rng(0))
    assert double.output_kind == "metres_per_focal" and mask.all()
    assert np.isin(target * 2, label).all()  # every target pixel is a label pixel halved
    same = PseudoLabelDataset(tmp_path / "labels", crop=min(entry["shape"]), jitter=False)
    assert np.isin(same.sample(0, np.random.default_rng(0))[1], label).all()
    student, onnx = distil_and_export(tmp_path / "labels", tmp_path, steps=150, lr=5e-4)
    assert student.output_kind == "metres_per_focal"
    # It learns the number itself, not only its shape: the median of its output over the teacher's,
    # on the labelled images (measured 0.87 after 150 steps; 0.26 untrained).
    found, _ = sa1b.members(source / "sa_000000.tar")
    images = ShardImages(found, SIZE)
    with torch.inference_mode():
        ratios = [
            float(student(x[None]).median() / teacher(x[None]).median()) for _, x in map(images.__getitem__, range(6))
        ]
    assert 0.7 < np.median(ratios) < 1.4, ratios
    assert onnx_metadata(onnx)["output_kind"] == "metres_per_focal"
    from export.quantize.__main__ import main as quantize_main

    int8 = tmp_path / "student.int8.onnx"
    quantize = ["--onnx", str(onnx), "--output", str(int8), "--calib-dir", str(source), "--calib-samples", "4"]
    # A 4-block, 32-wide student trained 150 steps: INT8 costs it ~4% AbsRel, over the 1% default budget.
    assert quantize_main([*quantize, "--target", "cpu", "--allow-fewer", "--accuracy-budget", "0.06"]) == 0
    image = photo()
    for artefact in (onnx, int8):
        with DepthPredictor(artefact) as predictor:
            assert predictor.output_kind == "metres_per_focal"
            with pytest.raises(InputError, match="focal length"):
                predictor.predict(image)
            raw = predictor.predict_batch([image], raw=True)[0]
            metres = predictor.predict(image, focal=300.0)
            h, w = predictor.network_size(image)
        np.testing.assert_allclose(metres, raw * 0.5 * (300.0 * w / 64 + 300.0 * h / 48) / 300.0, rtol=1e-5)


def test_a_video_depth_anything_teacher_gives_relative_labels_and_student(tmp_path, source):
    pth = tmp_path / "video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), pth)
    index = label_cli(pth, source, tmp_path / "labels")
    teacher = index["teacher"]
    assert (teacher["family"], teacher["output_kind"], teacher["licence"]) == (
        "video-depth-anything",
        "relative",
        "Apache-2.0",
    )
    assert teacher["variant"] == "Video-Depth-Anything-Small"
    student, onnx = distil_and_export(tmp_path / "labels", tmp_path)
    assert student.output_kind == "relative" and onnx_metadata(onnx)["output_kind"] == "relative"
    with DepthPredictor(onnx) as predictor:
        assert predictor.output_kind == "relative"
    meta = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert meta["steps"] == 4


def test_teachers_no_student_can_learn_from_are_refused_in_one_line(tmp_path, source, capsys):
    from safetensors.torch import save_file

    stray = tmp_path / "stray.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, str(stray))
    metric_vda = tmp_path / "metric_video_depth_anything_vits.pth"
    torch.save(vda_state_dict(), metric_vda)
    for path, says in ((stray, "Depth Anything 3"), (metric_vda, "metres with no bound")):
        out = tmp_path / f"labels-{path.stem}"
        argv = ["--teacher", str(path), "--source", str(source), "--output", str(out), "--workers", "0"]
        assert label_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and not out.exists()


def test_each_kind_has_its_loss():
    torch.manual_seed(0)
    target = torch.rand(2, 28, 28) + 0.5
    scaled, shifted = 3.0 * target, target + 0.7
    assert isinstance(loss_for_kind("relative"), DistillationLoss)
    depth = loss_for_kind("depth_up_to_scale", trim=0.0)
    assert isinstance(depth, ScaleInvariantDepthLoss)
    assert float(depth(scaled, target)) < 1e-5 < float(depth(shifted, target))  # a scale is free, a shift is not
    absolute = loss_for_kind("metres_per_focal")
    assert isinstance(absolute, AbsoluteDepthLoss) and loss_for_kind("metric").__class__ is AbsoluteDepthLoss
    assert float(absolute(target, target)) < 1e-2 < float(absolute(scaled, target))  # the number is the answer
    with pytest.raises(ValueError, match="no distillation loss"):
        loss_for_kind("disparity")
