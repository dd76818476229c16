"""``python -m benchmarks`` on a tiny model: the three report files and their structure."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main
from benchmarks.report import rank
from train.models import save_model


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    import torch

    from tests.conftest import make_tiny_spec
    from train.models import DepthAnythingV2

    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    checkpoint = save_model(DepthAnythingV2(make_tiny_spec()), root / "tiny.safetensors")
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--no-hub",
        "--quick",
        "--backends",
        "torch,onnxruntime",
        "--sizes",
        "56x84",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--work-dir",
        str(root / "work"),
        "--report-dir",
        str(root / "report"),
    ]
    assert main(argv) == 0
    return root / "report", argv


def test_report_files_and_schema(tiny_report):
    folder, _ = tiny_report
    assert {p.name for p in folder.iterdir()} == {
        "report.json",
        "report.md",
        "latency_vs_accuracy.png",
        "depth_grid.png",
    }
    data = json.loads((folder / "report.json").read_text())
    assert data["schema_version"] == 2 and data["notice"] is None
    assert {"cpu", "usable_cores", "libraries", "gpu"} <= set(data["machine"])
    rows = data["rows"]
    assert [(r["backend"], r["precision"]) for r in rows if r["status"] == "ok"]
    labels = {(r["backend"], r["precision"]) for r in rows}
    assert labels == {("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    medians = [r["end_to_end"]["median"] for r in rows if r.get("end_to_end")]
    assert medians == sorted(medians)
    for row in rows:
        assert row["model_call"]["runs"] == 3 and row["end_to_end"]["p99"] >= row["end_to_end"]["median"]
        assert row["artefact_mib"] > 0 and row["peak_rss_mib"] > 0 and row["cold_start_s"] > 0
        assert 0 <= row["vs_fp32"]["abs_rel"] and 0 <= row["vs_fp32"]["delta1"] <= 1
        assert "motorcycle_left" in row["vs_gt"]
    torch_fp32 = next(r for r in rows if (r["backend"], r["precision"], r["variant"]) == ("torch", "fp32", None))
    assert torch_fp32["speedup_vs_torch_fp32"] == 1.0 and torch_fp32["vs_fp32"]["abs_rel"] < 1e-6
    explicit = next(r for r in rows if r["variant"])  # the official code's attention form, same numbers
    assert explicit["info"]["attention"] == "explicit" and explicit["vs_fp32"]["abs_rel"] < 1e-5
    ort_fp32 = next(r for r in rows if (r["backend"], r["precision"]) == ("onnxruntime", "fp32"))
    assert ort_fp32["vs_fp32"]["abs_rel"] < 1e-4
    roofline = data["roofline"]
    work = roofline["work"]["56x84"]
    assert work["ops"] == 2 * sum(work["macs"].values()) > 0
    assert set(roofline["ceilings"]) == {"fp32", "bf16", "int8"}
    for row in rows:  # achieved throughput is the counted work over the measured model call
        assert row["ops_per_s"] == pytest.approx(work["ops"] / row["model_call"]["median"])
        assert 0 < row["share_of_ceiling"]


def test_markdown_table(tiny_report):
    folder, _ = tiny_report
    text = (folder / "report.md").read_text()
    data = json.loads((folder / "report.json").read_text())
    table = [line for line in text.splitlines() if line.startswith("| ") and "backend |" not in line]
    assert len(table) == len(data["rows"])
    assert "Fastest within the accuracy budget" in text and "**Machine**" in text
    assert "torch (explicit attention, as the official code) | fp32" in text
    assert "**Ceilings**" in text and "**Work at 56x84**" in text and "PyTorch FP32 model call measured" in text
    best = data["fastest_within_budget"]
    assert f"**{best['backend']}**" in text


def test_artefacts_are_reused_on_a_second_run(tiny_report):
    folder, argv = tiny_report
    work = argv[argv.index("--work-dir") + 1]
    from pathlib import Path

    before = {p: p.stat().st_mtime_ns for p in Path(work, "artifacts").glob("*.onnx")}
    assert (
        main(
            [
                *argv[: argv.index("--backends")],
                "--backends",
                "onnxruntime",
                "--sizes",
                "56x84",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--work-dir",
                work,
                "--report-dir",
                str(folder.parent / "again"),
            ]
        )
        == 0
    )
    after = {p: p.stat().st_mtime_ns for p in Path(work, "artifacts").glob("*.onnx")}
    assert before == after


def test_ranking_picks_the_fastest_row_within_budget():
    def row(name, ms, abs_rel, status="ok"):
        stats = {"median": ms / 1000, "p90": 0, "p99": 0, "fps": 0}
        return {
            "backend": name,
            "precision": "fp32" if name == "torch" else "x",
            "size": [518, 518],
            "status": status,
            "end_to_end": stats,
            "model_call": stats,
            "vs_fp32": {"abs_rel": abs_rel},
        }

    rows = [
        row("torch", 900, 0.0),
        row("fast-bad", 100, 0.5),
        row("fast-ok", 150, 0.01),
        row("broken", 50, 0.0, "run failed"),
        {"backend": "tensorrt", "precision": "fp16", "size": [518, 518], "status": "unavailable"},
    ]
    ranked, best = rank(rows, budget=0.02)
    assert best["backend"] == "fast-ok"
    assert [r["backend"] for r in ranked] == ["broken", "fast-bad", "fast-ok", "torch", "tensorrt"]
    assert best["speedup_vs_torch_fp32"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    "argv,match", [(["--backends", "tflite"], "unknown backend"), (["--sizes", "500"], "multiple")]
)
def test_bad_usage_exits_2(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and match in capsys.readouterr().err


def test_peak_memory_is_the_worker_own():
    import subprocess
    import sys

    code = (
        "import numpy as np\nfrom benchmarks.worker import peak_rss_kib\n"
        "before = peak_rss_kib()\nx = np.ones(200 * 2**20 // 8)\nprint(before, peak_rss_kib())"
    )
    before, after = map(
        float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    )
    assert after - before > 150 * 1024  # the 200 MiB array shows up in KiB
    assert before < 200 * 1024  # and a fresh interpreter does not start with its parent's peak
