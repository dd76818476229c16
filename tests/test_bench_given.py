"""``python -m benchmarks --model A --model B``: the artefacts a team has, timed and scored against
their references on a machine with the runtime's dependencies alone. PyTorch (and OpenVINO, where
no IR is given) is made unimportable in the benchmark and in every worker it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from export.openvino import export_openvino
from tests.conftest import REPO
from tests.test_reference import flip_largest_onnx_weight

# Benchmark runs whose rows are checked: under another worker's load a row can be flagged (alone).
pytestmark = pytest.mark.alone

QUICK = ["--quick", "--runs", "2", "--rounds", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory, tiny_spec) -> Path:
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    folder = tmp_path_factory.mktemp("given")
    torch.manual_seed(0)
    onnx_path = export_onnx(DepthAnythingV2(tiny_spec).eval(), folder / "m.onnx", 56, 84).path
    export_openvino(onnx_path, folder / "m32.xml", "fp32")
    damaged = folder / "damaged.onnx"
    for suffix in ("", ".json", ".reference.npz"):
        Path(f"{damaged}{suffix}").write_bytes(Path(f"{onnx_path}{suffix}").read_bytes())
    flip_largest_onnx_weight(damaged)
    return folder


def without(tmp_path: Path, *modules: str) -> dict:
    """An environment where ``modules`` cannot be imported, in this process's children and theirs:
    a package of that name first on the path raises ImportError."""
    blocker = tmp_path / "blocked"
    for name in modules:
        (blocker / name).mkdir(parents=True, exist_ok=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])}


def bench(tmp_path: Path, env: dict, *models: Path | str) -> tuple[subprocess.CompletedProcess, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    options = [m for m in models if isinstance(m, str)]
    models = tuple(m for m in models if not isinstance(m, str))
    argv = [sys.executable, "-m", "benchmarks", *[a for m in models for a in ("--model", str(m))], *QUICK, *options]
    argv += ["--work-dir", str(tmp_path / "work"), "--report-dir", str(tmp_path / "report")]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    report = tmp_path / "report" / "report.json"
    return done, json.loads(report.read_text()) if report.is_file() else {}


def test_onnx_and_ir_rows_without_pytorch(tmp_path, artefacts):
    env = without(tmp_path, "torch")
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is not installed here" in check.stderr  # the block holds
    done, data = bench(tmp_path, env, artefacts / "m.onnx", artefacts / "m32.xml", artefacts / "damaged.onnx")
    assert done.returncode == 1, done.stderr  # a row failed its check: exit code 1, with the report written
    assert "error: 1 of 3 artefacts failed: damaged.onnx (exported but failed validation)" in done.stderr
    rows = {row["variant"]: row for row in data["rows"]}
    assert set(rows) == {"m.onnx", "m32.xml", "damaged.onnx"}
    for name in ("m.onnx", "m32.xml"):
        row = rows[name]
        assert row["status"] == "ok" and row["end_to_end"]["runs"] == 2
        assert row["verification"]["passed"] and row["vs_fp32"]["abs_rel"] < 1e-4
    assert rows["m32.xml"]["info"]["precision"] == "fp32"  # as exported, on this bf16 CPU too
    damaged = rows["damaged.onnx"]
    assert (
        damaged["status"] == "exported but failed validation" and "over its reference's tolerance" in damaged["error"]
    )
    facts = {Path(f["artefact"]).name: f for f in data["artefacts"]}
    assert facts["m32.xml"]["precision"] == "fp32" and facts["m32.xml"]["reference"].endswith("m32.xml.reference.npz")
    assert facts["m.onnx"]["verification"]["passed"] and not facts["damaged.onnx"]["verification"]["passed"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Artefacts" in text and "| `" in text and "against each artefact's reference" in text
    assert "onnxruntime (m.onnx)" in text and "openvino (m32.xml)" in text
    assert "FAILED: max\\|a-b\\|/std(ref)" in text  # the metric's bars escaped inside the table


def test_an_onnx_row_needs_neither_pytorch_nor_openvino(tmp_path, artefacts):
    done, data = bench(tmp_path, without(tmp_path, "torch", "openvino"), artefacts / "m.onnx")
    assert done.returncode == 0, done.stderr
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["verification"]["passed"]


def test_model_files_that_cannot_be_used_exit_2(tmp_path, artefacts):
    env = without(tmp_path, "torch")
    done, _ = bench(tmp_path, env, tmp_path / "missing.engine")
    assert done.returncode == 2 and "missing.engine: no such model file" in done.stderr
    odd = tmp_path / "model.tflite"
    odd.write_bytes(b"x")
    done, _ = bench(tmp_path, env, odd)
    assert done.returncode == 2 and "cannot tell the backend" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--model", str(artefacts / "m.onnx"), "--sizes", "56x84"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--model benchmarks given ones" in done.stderr


def test_given_files_at_their_own_size_each_once_told_apart_without_profiles(tmp_path, artefacts):
    plain = tmp_path / "a" / "m.onnx"  # a static 56x84 ONNX with no sidecar and no reference
    plain.parent.mkdir()
    plain.write_bytes((artefacts / "m.onnx").read_bytes())
    argv = ["--no-profile", "--throughput", "none"]
    done, data = bench(tmp_path, {**os.environ, "PYTHONPATH": str(REPO)}, plain, artefacts / "m.onnx", plain, *argv)
    assert done.returncode == 0, done.stderr  # 518x518 and a failed row before
    assert f"note: {plain} is {plain}, given twice: timed once" in done.stderr
    rows = {row["variant"]: row for row in data["rows"]}
    assert set(rows) == {str(plain), str(artefacts / "m.onnx")}  # two m.onnx told apart by their paths
    assert all(row["size"] == [56, 84] and row["status"] == "ok" for row in rows.values())
    assert rows[str(plain)]["error"] == "not scored: no reference beside it"
    assert not any(row.get("profile") for row in rows.values())  # --no-profile honoured


def test_every_row_failed_and_unusable_files_exit_as_the_table_says(tmp_path, artefacts):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done, data = bench(tmp_path / "one", env, artefacts / "damaged.onnx")
    assert done.returncode == 1 and data["rows"][0]["status"] == "exported but failed validation"
    corrupt = tmp_path / "corrupt.xml"  # a half-written IR: exit 2 before anything is timed
    corrupt.write_text((artefacts / "m32.xml").read_text()[:500])
    (tmp_path / "corrupt.bin").write_bytes((artefacts / "m32.bin").read_bytes())
    done, data = bench(tmp_path / "two", env, corrupt)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "OpenVINO cannot load it" in done.stderr
    assert done.stderr.count(str(corrupt)) == 1
    assert not data
    truncated = tmp_path / "t.onnx"  # a truncated reference beside the model: exit 1 "unexpected" before
    truncated.write_bytes((artefacts / "m.onnx").read_bytes())
    good = (artefacts / "m.onnx.reference.npz").read_bytes()
    Path(f"{truncated}.reference.npz").write_bytes(good[: len(good) // 2])
    done, data = bench(tmp_path / "three", env, truncated)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "damaged reference" in done.stderr
