"""A reference that is damaged, inconsistent or another artefact's is one line naming the file and
what is wrong with it, exit code 2, never a traceback; an INT8 export whose accuracy was not
measured has a reference that says so and what it then checks."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from runtime import DepthPredictor
from runtime.reference import ReferenceFileError, load_reference, reference_path
from tests.sa1b import make_shard
from tests.test_reference import artefacts, run  # noqa: F401 - the module's fixture


def _copy(tmp_path, artefacts):  # noqa: F811
    model = tmp_path / "m.onnx"
    for suffix in ("", ".json"):
        (tmp_path / f"m.onnx{suffix}").write_bytes((artefacts / f"m.onnx{suffix}").read_bytes())
    return model


def _rewrite(source, target, change):
    """``target``: the reference ``source`` with its arrays passed through ``change(dict)``."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    with zipfile.ZipFile(target, "w") as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w") as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)


def _meta(**changes):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        meta.update(changes)
        arrays["meta"] = np.array(json.dumps(meta))

    return change


def _wrong_output(arrays):
    arrays["output_0"] = arrays["output_0"][:10]


DAMAGE = {
    "truncated": (lambda data: data[: len(data) // 2], "damaged reference: it cannot be read"),
    "empty": (lambda data: b"", "damaged reference: the file is empty"),
    "bit-flipped": (lambda data: data[:4000] + bytes([data[4000] ^ 0x10]) + data[4001:], "damaged reference"),
}
INCONSISTENT = {
    "version as a string": (_meta(version="1"), "its format version is '1', not a whole number"),
    "inputs as strings": (_meta(inputs=["a", "b"]), "its inputs are not a list of named entries"),
    "wrong-shaped output": (_wrong_output, "output_0 is float32 (10, 84), not the (56, 84) float map of its input"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE) + sorted(INCONSISTENT))
def test_a_damaged_reference_is_one_line_and_exit_2(tmp_path, artefacts, case):  # noqa: F811
    model = _copy(tmp_path, artefacts)
    good = reference_path(artefacts / "m.onnx")
    if case in DAMAGE:
        damage, says = DAMAGE[case]
        reference_path(model).write_bytes(damage(good.read_bytes()))
    else:
        change, says = INCONSISTENT[case]
        _rewrite(good, reference_path(model), change)
    done = run("runtime.verify", str(model))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr and "details in" not in done.stderr
    assert done.stderr.startswith(f"error: {reference_path(model)}: ") and says in done.stderr, done.stderr
    with pytest.raises(ReferenceFileError, match="damaged reference"):  # zipfile.BadZipFile before
        DepthPredictor(model, verify=True)


def test_another_models_reference_of_the_same_size_is_named_as_such(tmp_path, artefacts, tiny_spec):  # noqa: F811
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(1)
    export_onnx(DepthAnythingV2(tiny_spec).eval(), tmp_path / "other.onnx", 56, 84)  # same input size
    model = _copy(tmp_path, artefacts)
    reference_path(model).write_bytes(reference_path(tmp_path / "other.onnx").read_bytes())
    done = run("runtime.verify", str(model))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "was written for other.onnx (sha256 " in done.stderr and f"{model} is another file (sha256" in done.stderr
    assert "pass the model's own reference" in done.stderr and "The artefact is damaged" not in done.stderr
    # Its own reference passes; one recorded for the file before a change says that too when it fails.
    reference_path(model).write_bytes(reference_path(artefacts / "m.onnx").read_bytes())
    assert run("runtime.verify", str(model)).returncode == 0
    (tmp_path / "other.onnx").replace(model)
    done = run("runtime.verify", str(model))
    assert done.returncode == 1 and "was written for m.onnx" in done.stderr and "a file changed since" in done.stderr


@pytest.mark.parametrize("command, name", [("export.quantize", "m.int8.onnx"), ("export.openvino", "m.int8.xml")])
def test_an_unmeasured_int8_export_says_so_and_passes_its_own_check(tmp_path, artefacts, command, name):  # noqa: F811
    # export.openvino --int8 --accuracy-budget off wrote the 0.01 budget it never met (a replay found it)
    shards = make_shard(tmp_path / "sa1b" / "sa_000000.tar", count=6, faults=False).parent
    int8 = tmp_path / name
    done = run(
        command,
        *(("--int8",) if command == "export.openvino" else ()),
        "--onnx",
        str(artefacts / "m.onnx"),
        "--calib-dir",
        str(shards),
        "--calib-samples",
        "5",
        "--accuracy-budget",
        "off",
        "--output",
        str(int8),
    )
    assert done.returncode == 0, done.stderr
    reference = load_reference(reference_path(int8))
    assert reference.meta["measured"] is False and reference.tolerance == 0.2  # not the 0.01 budget
    assert all(item["source"] == "bundled photograph" for item in reference.meta["inputs"])
    verified = run("runtime.verify", str(int8))
    assert verified.returncode == 0, verified.stdout + verified.stderr  # "damaged" before
    assert "note: unmeasured int8 export (--accuracy-budget off): its reference checks only" in verified.stdout
    predictor = DepthPredictor(int8, verify=True)
    assert "unmeasured" in predictor.info()["verification"]["note"]
