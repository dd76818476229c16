"""The export's record (``export.artefact.Artefact``): what a step hands the next in memory.

A file given from outside the run is read once, with its hash taken as the file is now; a record
made in the run carries the hash and the reference its step wrote, so no later step reads back a
sidecar or reference of the same run, nor hashes a file twice. The engine's reference is the
ready ONNX's, carried over in memory (``runtime.inherited_reference``).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

import export.artefact
import export.onnx
import export.quantize.budget
import export.quantize.fp16
import export.quantize.qdq
import export.reference
from export.artefact import Artefact
from export.quantize.options import Int8Options
from export.trt.build import TrtRequest, build_trt, plan_job, ready_step, source_step
from runtime.accuracy import ABS_REL_ALIGNED
from runtime.inherited_reference import inherited_reference
from runtime.metadata import sha256_file, sidecar_path
from runtime.reference import load_reference, reference_path
from tests.sa1b import make_shard


@pytest.fixture
def given(tmp_path, tiny_onnx) -> Path:
    """A copy of the tiny ONNX export with its sidecar and reference, as a user hands it over."""
    for item in (tiny_onnx, sidecar_path(tiny_onnx), reference_path(tiny_onnx)):
        shutil.copy(item, tmp_path / item.name)
    return tmp_path / tiny_onnx.name


def test_a_given_file_is_hashed_as_it_is_now_not_as_its_sidecar_says(given):
    sidecar = sidecar_path(given)
    facts = json.loads(sidecar.read_text())
    facts["sha256"] = "0" * 64  # the file was changed after its sidecar was written
    sidecar.write_text(json.dumps(facts))
    record = Artefact.read(given)
    assert record.sha256 == sha256_file(given) != "0" * 64
    assert record.source_facts() == {"source_onnx": str(given), "source_sha256": sha256_file(given)}
    assert record.reference_data is not None and record.reference_data.path == reference_path(given)


def test_the_hash_covers_weights_kept_beside_the_onnx(tmp_path, given):
    """An ONNX whose weights lie in ``<name>.data`` (as models over 2 GB are saved): another
    weight there is another artefact, though the ``.onnx`` file is the same byte for byte."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(given)
    for name, scale in (("a", 1.0), ("b", 1.5)):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        first = copy.graph.initializer[0]
        first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * scale, first.name))
        folder = tmp_path / name
        folder.mkdir()
        onnx.save_model(copy, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    a, b = Artefact.read(tmp_path / "a" / "m.onnx"), Artefact.read(tmp_path / "b" / "m.onnx")
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    assert a.sha256 != b.sha256


def test_a_record_without_its_hash_is_refused_rather_than_hashed_again(given):
    with pytest.raises(ValueError, match="no SHA-256"):
        Artefact(given).source_facts()


def test_the_engine_reference_is_the_ready_onnx_reference_at_the_engine_precision(given, tmp_path):
    """FP16 engine from a plain FP32 ONNX: the ready ONNX is the given one; its reference's
    inputs and FP32 outputs, held to FP16's rule, named for the engine."""
    request = TrtRequest(precision="fp16", onnx=given, onnx_only=True, trt_version="8.6", output=tmp_path / "t.engine")
    job = plan_job(request, None)
    source, facts = source_step(job)
    ready = ready_step(job, source, facts)
    base = load_reference(reference_path(given))
    assert ready.expected is not None and ready.expected.meta["artefact"] == "t.engine"
    assert ready.expected.meta["precision"] == "fp16" and ready.expected.metric == base.metric
    assert [o.tobytes() for o in ready.expected.outputs] == [o.tobytes() for o in base.outputs]


def test_an_int8_budget_and_an_unmeasured_bound_carry_over_to_what_is_built_from_it(given):
    base = load_reference(reference_path(given))
    int8 = type(base)(base.images, base.outputs, {**base.meta, "metric": ABS_REL_ALIGNED, "tolerance": 0.03})
    carried = inherited_reference(int8, "e.engine", "int8", base.sizes)
    assert (carried.metric, carried.tolerance, carried.meta.get("measured", True)) == (ABS_REL_ALIGNED, 0.03, True)
    unmeasured = type(base)(base.images, base.outputs, {**int8.meta, "measured": False})
    assert inherited_reference(unmeasured, "e.engine", "int8", base.sizes).meta["measured"] is False
    assert inherited_reference(base, "e.engine", "fp16", [(14, 14)]) is None  # no input at that size


DIGESTING = (export.artefact, export.reference, export.quantize.budget, export.quantize.fp16, export.quantize.qdq)


def spy_on_reads_and_hashes(monkeypatch, reads: list[Path], hashed: Counter) -> None:
    """``reads``: every sidecar and reference read by the export steps; ``hashed``: how often the
    same bytes were hashed (counted by digest, so a file hashed staged and again where it landed
    counts twice)."""

    def spy(function, log):
        def call(path, *args, **kwargs):
            log(Path(path))
            return function(path, *args, **kwargs)

        return call

    monkeypatch.setattr(export.artefact, "read_sidecar", spy(export.artefact.read_sidecar, reads.append))
    for module in (export.artefact, export.reference):
        monkeypatch.setattr(module, "load_reference", spy(module.load_reference, reads.append))
    for module in (*DIGESTING, export.onnx):
        monkeypatch.setattr(module, "artefact_digest", hashed_spy(module.artefact_digest, hashed))


def hashed_spy(function, hashed: Counter):
    """``function`` (an artefact digest) counting each digest it returns in ``hashed``."""

    def call(path, *args, **kwargs):
        result = function(path, *args, **kwargs)
        hashed.update([result])
        return result

    return call


def test_no_step_reads_back_what_the_run_wrote(tmp_path, tiny_checkpoint, monkeypatch):
    """INT8 with its budget, from a checkpoint, to the TensorRT 10 ready ONNX (FP16-typed Q/DQ):
    no sidecar or reference the run wrote is read, and no file is hashed twice."""
    make_shard(tmp_path / "calib" / "sa_000000.tar", count=10, faults=False)
    reads: list[Path] = []
    hashed: Counter = Counter()

    spy_on_reads_and_hashes(monkeypatch, reads, hashed)
    out = tmp_path / "out"
    int8 = Int8Options(calib_dir=tmp_path / "calib", samples=6, held_out=2)
    request = TrtRequest(
        precision="int8",
        checkpoint=tiny_checkpoint,
        size=(56, 56),
        int8=int8,
        onnx_only=True,
        trt_version="10.3",
        output=out / "t.engine",
    )
    record = build_trt(request)
    assert record.path.is_file() and record.reference is not None and record.reference.is_file()
    assert [p for p in reads if out in p.parents] == []
    # the exported ONNX is hashed once, staged, for its reference and its record (landing is a
    # rename); the INT8 ONNX once, for its record and its reference
    assert hashed and [d for d, n in hashed.items() if n > 1] == []
    assert record.reference_data is not None and record.reference_data.path == record.reference


def test_quantize_fp16_reads_the_given_reference_once_and_hashes_its_output_once(given, tmp_path, monkeypatch):
    """``export.quantize --fp16``: the given ONNX's sidecar and reference are read once (its
    record carries the reference to the typed copy's), and the copy is hashed once (its record
    and its reference share the digest)."""
    import export.quantize.__main__ as quantize_main

    reads: list[Path] = []
    hashed: Counter = Counter()
    spy_on_reads_and_hashes(monkeypatch, reads, hashed)
    output = tmp_path / "out" / "m.fp16.onnx"
    output.parent.mkdir()
    assert quantize_main.main(["--onnx", str(given), "--fp16", "--output", str(output)]) == 0
    assert Counter(reads) == {given: 1, reference_path(given): 1}  # its sidecar, its reference
    assert [d for d, n in hashed.items() if n > 1] == []
    made = json.loads(sidecar_path(output).read_text())
    typed = load_reference(reference_path(output))
    assert typed.meta["artefact_sha256"] == made["sha256"] == sha256_file(output)
    assert typed.meta["precision"] == "fp16"


def test_an_openvino_ir_is_hashed_once_for_its_record_and_its_reference(given, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import export.openvino
    from export.openvino import main as openvino_main

    reads: list[Path] = []
    hashed: Counter = Counter()
    spy_on_reads_and_hashes(monkeypatch, reads, hashed)
    monkeypatch.setattr(export.openvino, "artefact_digest", hashed_spy(export.openvino.artefact_digest, hashed))
    xml = tmp_path / "out" / "m.xml"
    xml.parent.mkdir()
    assert openvino_main(["--onnx", str(given), "--fp16", "--output", str(xml)]) == 0
    assert Counter(reads) == {given: 1, reference_path(given): 1}
    assert [d for d, n in hashed.items() if n > 1] == []
    made = json.loads(sidecar_path(xml).read_text())
    assert load_reference(reference_path(xml)).meta["artefact_sha256"] == made["sha256"]
