"""Every export's sidecar keeps its keys: the commands' ``<artefact>.json`` (and the INT8 budget's
``.quant.json``) hold the keys recorded in ``tests/data/sidecar_keys.json``, nested keys included.
A change of keys is a change for every reader of the sidecars (the runtime, the benchmark's
Artefacts table, users' scripts): update the file on purpose, never by accident."""

from __future__ import annotations

import importlib
import json

import pytest

from tests.conftest import REPO
from tests.sa1b import make_shard

EXPECTED = REPO / "tests" / "data" / "sidecar_keys.json"
SIZE = ["--size", "56x56"]
INT8 = ["--calib-samples", "6", "--accuracy-images", "2"]


def run(module: str, *argv: str) -> None:
    """``python -m module argv...`` as a call of the command's ``main`` in this process (the same
    parsing, checks and files; eight fresh interpreters importing PyTorch cost 20 s). Its output
    is in the test's captured output when the exit code is not 0."""
    try:
        main = importlib.import_module(module + ".__main__").main
    except ModuleNotFoundError as exc:
        if exc.name != module + ".__main__":  # a dependency missing inside it: not a module without one
            raise
        main = importlib.import_module(module).main
    assert main(list(argv)) == 0, f"python -m {module} {' '.join(argv)}"


def keys(value, prefix: str = "") -> set[str]:
    """Dotted key paths of a JSON value; a list of records counts by its first record's keys."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return keys(value[0], prefix + "[]")
    if not isinstance(value, dict):
        return set()
    found = set()
    for key, item in value.items():
        name = prefix + "." + key if prefix else key
        # per-size checks are keyed by the size: one level of such keys, named by its shape
        if prefix.endswith("checks"):
            name = prefix + ".<size>"
        found |= {name} | keys(item, name)
    return found


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory, tiny_checkpoint) -> dict[str, list[str]]:
    folder = tmp_path_factory.mktemp("exports")
    make_shard(folder / "calib" / "sa_000000.tar", count=10, faults=False)
    calib = ["--calib-dir", str(folder / "calib"), *INT8, *SIZE]
    onnx = folder / "m.onnx"
    run("export.onnx", "--checkpoint", str(tiny_checkpoint), *SIZE, "--output", str(onnx))
    run("export.quantize", "--onnx", str(onnx), "--fp16", "--output", str(folder / "q.fp16.onnx"))
    run("export.quantize", "--onnx", str(onnx), *calib, "--target", "cpu", "--output", str(folder / "q.int8.onnx"))
    run("export.quantize", "--onnx", str(onnx), *calib, "--accuracy-budget", "off", "--output", str(folder / "o.onnx"))
    run("export.openvino", "--onnx", str(onnx), "--fp16", "--output", str(folder / "v.fp16.xml"))
    run("export.openvino", "--onnx", str(onnx), "--int8", *calib, "--output", str(folder / "v.int8.xml"))
    run("export.trt", "--onnx", str(onnx), "--onnx-only", "--trt-version", "10.3", "--output", str(folder / "t.engine"))
    run("export.trt", "--checkpoint", str(tiny_checkpoint), "--int8", "--onnx-only", "--trt-version", "8.5", *calib,
        "--output", str(folder / "t8.engine"))  # fmt: skip
    return {
        path.name.replace(".json", ""): sorted(keys(json.loads(path.read_text())))
        for path in sorted(folder.glob("*.json"))
    }


def test_every_export_keeps_its_sidecar_keys(sidecars):
    expected = json.loads(EXPECTED.read_text())
    assert sorted(sidecars) == sorted(expected)  # the same artefacts, each with its sidecar
    for name, keys_now in sidecars.items():
        assert keys_now == expected[name], (name, set(keys_now) ^ set(expected[name]))
