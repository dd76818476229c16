"""Shared fixtures: the official parity weights (rebuilt from tests/data), tiny models, images."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import parity
from tests.machine_share import RUN, machine_share, remove_lock_files

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored
    # signal is inherited: Python then installs no KeyboardInterrupt handler, here or in the
    # tools the tests start, and the Ctrl-C tests would test nothing (a CI run started that way
    # failed them). Ctrl-C behaves as in a terminal, whoever started pytest.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    # The parity data ships in the repository: a checkout without it fails loudly rather than
    # letting the project's main compatibility promise go untested (no skip, in CI or anywhere).
    missing = parity.missing_files()
    if missing:
        raise pytest.UsageError(f"official parity data missing from {parity.DATA}: {', '.join(missing)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    # an ``alone`` test has the machine to itself under pytest-xdist (tests/machine_share.py)
    with machine_share(item.get_closest_marker("alone") is not None):
        return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    remove_lock_files(os.environ.get(RUN))  # each worker at its end; the last one leaves none


@pytest.fixture(autouse=True)
def sigchld_as_before() -> Iterator[None]:
    """Each test leaves SIGCHLD as it found it. PyTorch's DataLoader installs a process-wide
    SIGCHLD handler the first time it starts workers and never removes it; in this long-lived
    process, with OpenVINO's threads loaded by earlier tests, that handler running when a later
    test's subprocess ended crashed the interpreter (a segfault inside subprocess.run, reproduced
    by an OpenVINO test, the loader-workers test and a CLI test in that order, and gone with
    this). A command runs one of these per process, so only the suite needs it."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)


@pytest.fixture(scope="session", autouse=True)
def no_gpu_by_default() -> Iterator[dict]:
    """The suite checks CPU numbers wherever it runs: on a GPU machine only the tests marked
    ``gpu`` see the GPU (device="auto" would otherwise pick CUDA and FP16 and move every
    comparison). Session-wide, so session and module fixtures (the shared benchmark run) are
    covered too, and the processes tests start inherit it; ``gpu_for_gpu_tests`` lifts it."""
    torch = sys.modules.get("torch")
    real = {"env": os.environ.get("CUDA_VISIBLE_DEVICES"), "torch": torch}
    if torch is not None:
        real["is_available"] = torch.cuda.is_available
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUDA_VISIBLE_DEVICES", "")
        if torch is not None:
            patch.setattr(torch.cuda, "is_available", lambda: False)
        yield real


@pytest.fixture(autouse=True)
def gpu_for_gpu_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, no_gpu_by_default: dict) -> None:
    if not request.node.get_closest_marker("gpu"):
        return
    if no_gpu_by_default["env"] is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", no_gpu_by_default["env"])
    if no_gpu_by_default["torch"] is not None:
        monkeypatch.setattr(no_gpu_by_default["torch"].cuda, "is_available", no_gpu_by_default["is_available"])


def official_state_dict(encoder: str) -> dict:
    import torch

    keys = parity.official_keys(encoder)
    return {k: torch.from_numpy(v) for k, v in parity.deterministic_state_dict(keys).items()}


@pytest.fixture(scope="session")
def vits_state_dict() -> dict:
    return official_state_dict("vits")


@pytest.fixture(scope="session")
def vits_model(vits_state_dict):
    from train.models import DepthAnythingV2

    model = DepthAnythingV2("vits")
    model.load_state_dict(vits_state_dict, strict=True)
    return model.eval()


def make_tiny_spec():
    from train.models import ModelSpec

    return ModelSpec(
        "tiny", depth=4, embed_dim=32, num_heads=2, features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3)
    )


@pytest.fixture(scope="session")
def tiny_spec():
    return make_tiny_spec()


@pytest.fixture
def tiny_model(tiny_spec):
    import torch

    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    return DepthAnythingV2(tiny_spec).eval()


@pytest.fixture
def predictor(tiny_model):
    """A DepthPredictor on the tiny model, 56 pixels on the short side."""
    from runtime import DepthPredictor

    return DepthPredictor(tiny_model, input_size=56)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_spec):
    """The tiny model (seed 0) as a ``.safetensors`` file, for the commands' tests."""
    import torch

    from train.models import DepthAnythingV2, save_model

    torch.manual_seed(0)
    return save_model(DepthAnythingV2(tiny_spec).eval(), tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_spec):
    """A verified static 56x56 ONNX export of the tiny model (seed 0)."""
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    model = DepthAnythingV2(tiny_spec).eval()
    return export_onnx(model, tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx", 56, 56).path


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph, 300x451 BGR uint8."""
    from runtime.io.samples import sample_images

    return sample_images(("chelsea.png",))["chelsea"]


@pytest.fixture(scope="session")
def vits_checkpoint(tmp_path_factory, vits_state_dict):
    """The deterministic official-format vits weights as a ``.pth`` file."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "depth_anything_v2_vits.pth"
    torch.save(vits_state_dict, path)
    return path


@pytest.fixture(scope="session")
def vits_dynamic_onnx(tmp_path_factory, vits_model):
    from export.onnx import export_onnx

    return export_onnx(vits_model, tmp_path_factory.mktemp("onnx") / "vits_dynamic.onnx", dynamic=True)


@pytest.fixture(scope="session")
def vits_static_onnx(tmp_path_factory, vits_model):
    from export.onnx import export_onnx

    return export_onnx(vits_model, tmp_path_factory.mktemp("onnx") / "vits_518.onnx").path


# Seed of the tiny stress weights whose INT8 misses the default accuracy budget at 56x56 on both
# paths (plain AbsRel 0.013 as Q/DQ ONNX, 0.019 on OpenVINO), mostly through one MLP layer.
STRESS_SEED = 2


@pytest.fixture(scope="session")
def stress_tiny(tmp_path_factory, tiny_spec):
    """The tiny model with the stress outliers (``tests.stress.stress_model``) as a 56x56 ONNX, and
    14 SA-1B images for it: 10 to calibrate on, 4 held out."""
    from export.onnx import export_onnx
    from export.quantize.budget import HeldOutSplit
    from export.quantize.calibration import CalibrationSet
    from tests.sa1b import make_shard
    from tests.stress import stress_model

    folder = tmp_path_factory.mktemp("stress_tiny")
    path = export_onnx(stress_model(tiny_spec, STRESS_SEED), folder / "stress.onnx", 56, 56).path
    make_shard(folder / "sa1b" / "sa_0.tar", 14, faults=False)
    return path, HeldOutSplit(CalibrationSet(folder / "sa1b", 14, (56, 56), progress=False), 4)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    """A ``--calib-dir``: one SA-1B shard of 8 clean images (the INT8 tests' 6 + 2 held out); one
    per module, as the tests write beside it."""
    from tests.sa1b import make_shard

    folder = tmp_path_factory.mktemp("calib") / "sa1b"
    make_shard(folder / "sa_0.tar", 8, faults=False)
    return folder


@pytest.fixture(scope="module")
def vda_checkpoint(tmp_path_factory) -> Path:
    """The Video Depth Anything test weights (``tests.video_fixtures``) as an official ``.pth``."""
    from tests.video_fixtures import write_vda_checkpoint

    return write_vda_checkpoint(tmp_path_factory.mktemp("vda"))


@pytest.fixture(scope="session")
def vda_stream_export(tmp_path_factory) -> Path:
    """The test weights' checkpoint and their stream step exported at opset 17 and ``STREAM_SIZE``
    (with the files the export writes beside it), once per session: ``vda_stream`` copies them."""
    from export.onnx import export_onnx
    from tests.video_fixtures import STREAM_SIZE, write_vda_checkpoint
    from train.models import load_model

    folder = tmp_path_factory.mktemp("vda_stream_export")
    checkpoint = write_vda_checkpoint(folder)
    export_onnx(load_model(checkpoint), folder / "vda.onnx", *STREAM_SIZE, verify=False, opset=17)
    return folder


@pytest.fixture(scope="module")
def vda_stream(tmp_path_factory, vda_stream_export) -> dict:
    """The test weights' stream step exported at opset 17 and ``STREAM_SIZE`` (56x84): the model,
    its checkpoint and the ONNX path, in a folder of their own per module (tests write beside it):
    a copy of the session's one export (``vda_stream_export``), the model loaded from the copy."""
    import shutil

    from tests.video_fixtures import CHECKPOINT
    from train.models import load_model

    folder = tmp_path_factory.mktemp("vda_stream")
    for item in vda_stream_export.iterdir():
        shutil.copy2(item, folder / item.name)
    checkpoint = folder / CHECKPOINT
    return {"model": load_model(checkpoint), "checkpoint": checkpoint, "path": folder / "vda.onnx"}


@pytest.fixture(scope="session")
def teacher_and_labels(tmp_path_factory) -> dict:
    """Stages 1 and 2 of the three-stage distillation as ``tests/test_training.py`` runs them: a tiny
    teacher (60 steps, a checkpoint every 30) and its labels of a 40-image shard (with one corrupt
    image), with the labelling's output. Shared by the tests that start from them (stage 3 and the
    vitt student): read only, a test that labels or trains again does so in a copy of its own.
    60 steps: the teacher's held-out AbsRel was 0.258 of the untrained model's (0.232 after 120;
    2026-12-07, Sapphire Rapids class Xeon), against test_training's 0.6 bar."""
    from tests.test_training import COMMON, CROP, scenes_shard, stage

    folder = tmp_path_factory.mktemp("distill")
    teacher = folder / "teacher"
    stage("train.teacher", "--data", "synthetic:64", "--output", str(teacher), "--steps", "60", "--save-every", "30",
          *COMMON)  # fmt: skip
    source = scenes_shard(folder / "sa1b" / "sa_000000.tar", 40, seed=7)
    label = ["train.pseudo_label", "--teacher", str(teacher / "model.safetensors"), "--source", str(source)]
    label += ["--output", str(folder / "labels"), "--size", CROP]
    run = stage(*label)
    return {"teacher": teacher, "source": source, "labels": folder / "labels", "label": label, "stdout": run.stdout}
