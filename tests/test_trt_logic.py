"""Every TensorRT decision, tested as plain logic (no TensorRT needed); GPU tests at the end."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from commands.errors import ModelFileError
from export.errors import ExportError
from export.trt.decisions import (
    BuildPlan,
    Profile,
    export_opset,
    plan_build,
    split_layernorm_nodes,
    timing_cache_path,
    trtexec_command,
)
from export.trt.rules import TrtVersion
from runtime.backends.cuda import parse_device
from runtime.backends.tensorrt import check_engine_metadata, check_profile, engine_profile, spec_from_dims
from tests.conftest import REPO


@pytest.mark.parametrize(
    "version,precision,typed,flags,network",
    [
        ("8.5.2", "fp16", False, ("FP16",), ("EXPLICIT_BATCH",)),
        ("8.6", "int8", False, ("FP16", "INT8"), ("EXPLICIT_BATCH",)),
        ("8.5", "fp32", False, (), ("EXPLICIT_BATCH",)),
        ("10.3.0", "fp16", True, (), ("STRONGLY_TYPED",)),
        ("10.3", "int8", True, (), ("STRONGLY_TYPED",)),
        ("11.0", "int8", True, (), ()),  # 11: every network is strongly typed, the flag is deprecated
        ("11", "fp32", True, (), ()),
    ],
)
def test_plan_by_release(version, precision, typed, flags, network):
    plan = plan_build(TrtVersion.parse(version), precision)
    assert (plan.strongly_typed, plan.builder_flags, plan.network_flags) == (typed, flags, network)
    assert plan.quantized == (precision == "int8")
    assert plan.typed_fp16 == (typed and precision != "fp32")


def test_fp32_references_turn_tf32_off():
    for version in ("8.5", "10.3", "11"):
        plan = plan_build(TrtVersion.parse(version), "fp32")
        assert plan.cleared_flags == ("TF32",)
        assert "--noTF32" in trtexec_command(Path("m.onnx"), Path("m.engine"), plan, "image", None, 1024, None)
    assert plan_build(TrtVersion.parse("10.3"), "fp16").cleared_flags == ()


def test_weakly_typed_fallback_on_10_and_refusal_on_11():
    plan = plan_build(TrtVersion.parse("10.3"), "int8", weakly_typed=True)
    assert (plan.strongly_typed, plan.builder_flags, plan.network_flags) == (False, ("FP16", "INT8"), ())
    with pytest.raises(ExportError, match=r"strongly typed networks only.*drop --weakly-typed"):
        plan_build(TrtVersion.parse("11.1"), "fp16", weakly_typed=True)


@pytest.mark.parametrize("text,match", [("8.4", "too old"), ("7", "too old"), ("ten", "not a TensorRT version")])
def test_bad_versions(text, match):
    with pytest.raises(ExportError, match=match):
        TrtVersion.parse(text)


KNOWN = "known: 8.5, 8.6, 10.0-10.16, 11.0, 11.1"


@pytest.mark.parametrize("text", ["99", "8.99", "10.17", "11.2", "12"])
def test_a_release_whose_rules_are_not_known_is_refused_with_the_known_ones(text):
    with pytest.raises(
        ExportError, match=rf"^TensorRT {text} is not a release whose parser rules this project knows; {KNOWN}$"
    ):
        TrtVersion.target(text)


def test_known_releases_are_targets_with_their_tables():
    assert [TrtVersion.target(v).table for v in ("8.5", "8.6.1", "10.0", "10.3.0.26", "10.16", "11", "11.1")] == [
        "8.5",
        "8.6",
        "10",
        "10",
        "11",
        "11",
        "11",
    ]


def test_export_opset_splits_layernorm_only_for_8_5():
    assert [export_opset(TrtVersion.parse(v)) for v in ("8.5", "8.6", "10.3", "11")] == [16, 17, 17, 17]


@pytest.fixture(scope="module")
def split_ln_onnx(tmp_path_factory, tiny_spec):
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ln") / "tiny16.onnx"
    export_onnx(DepthAnythingV2(tiny_spec).eval(), path, 56, 56, opset=16)
    return path


def test_split_layernorm_is_pinned_to_fp32_on_8x(split_ln_onnx):
    import onnx

    graph = onnx.load(str(split_ln_onnx))
    names = split_layernorm_nodes(graph)
    layer_norms = 2 * 4 + 4  # norm1/norm2 per block of the tiny spec + the final norm per taken layer
    assert len(names) == 7 * layer_norms
    ops = {n.name: n.op_type for n in graph.graph.node}
    assert sorted({ops[n] for n in names}) == ["Add", "Div", "Pow", "ReduceMean", "Sqrt", "Sub"]
    # 8.5 FP16/INT8: the layers are pinned and the builder must obey
    for precision in ("fp16", "int8"):
        plan = plan_build(TrtVersion.parse("8.5"), precision).pin_fp32(names)
        assert plan.fp32_layers == tuple(names) and plan.builder_flags[-1] == "OBEY_PRECISION_CONSTRAINTS"
        command = trtexec_command(Path("m.onnx"), Path("m.engine"), plan, "image", None, 1024, None)
        assert "--precisionConstraints=obey" in command
        assert f"--layerPrecisions={names[0]}:fp32," in command and f"--layerOutputTypes={names[0]}:fp32," in command
    # nothing to pin in FP32 builds or in strongly typed ones (the ONNX types decide there)
    assert plan_build(TrtVersion.parse("8.5"), "fp32").pin_fp32(names).fp32_layers == ()
    assert plan_build(TrtVersion.parse("10.3"), "fp16").pin_fp32(names).fp32_layers == ()


def test_profile_validation_and_shapes():
    profile = Profile.build((266, 266), (518, 518), (728, 1022), max_batch=4)
    assert profile.shapes() == {"min": (1, 3, 266, 266), "opt": (1, 3, 518, 518), "max": (4, 3, 728, 1022)}
    with pytest.raises(ExportError, match="min <= opt <= max"):
        Profile.build((518, 518), (266, 518), (728, 728))
    with pytest.raises(ExportError, match="--max profile width 1000 must be a positive multiple of 14"):
        Profile.build((266, 266), (518, 518), (728, 1000))


def test_trtexec_commands_for_each_plan(tmp_path):
    onnx, engine, cache = Path("m.onnx"), Path("m.engine"), Path("t.cache")
    typed = trtexec_command(onnx, engine, plan_build(TrtVersion(10, 3), "int8"), "image", None, 4096, cache)
    assert typed == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --stronglyTyped --memPoolSize=workspace:4096 "
        "--timingCacheFile=t.cache"
    )
    profile = Profile.build((266, 266), (518, 518), (728, 728))
    eleven = trtexec_command(onnx, engine, plan_build(TrtVersion(11, 0), "fp16"), "image", None, 4096, None)
    assert "--stronglyTyped" not in eleven  # a deprecated no-op in 11's trtexec
    flags = trtexec_command(onnx, engine, plan_build(TrtVersion(8, 5), "int8"), "image", profile, 2048, None)
    assert flags == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16 --int8 --minShapes=image:1x3x266x266 "
        "--optShapes=image:1x3x518x518 --maxShapes=image:1x3x728x728 --memPoolSize=workspace:2048"
    )


def test_timing_cache_is_keyed_by_release_and_gpu(tmp_path):
    a = timing_cache_path(tmp_path, "10.3", "NVIDIA Orin (nvgpu)", (8, 7))
    assert a.name == "timing-trt10.3-nvidia-orin-nvgpu-sm87.cache"
    assert a != timing_cache_path(tmp_path, "10.4", "NVIDIA Orin (nvgpu)", (8, 7))
    assert a != timing_cache_path(tmp_path, "10.3", "NVIDIA H100", (9, 0))


def meta(trt="10.3.0.26", name="Orin", cc=(8, 7)):
    return {"versions": {"tensorrt": trt}, "gpu": {"name": name, "compute_capability": list(cc)}}


def test_engine_metadata_checks():
    engine = Path("model.engine")
    assert check_engine_metadata(engine, meta(), "10.3.0.26", "Orin", (8, 7)) == []
    assert check_engine_metadata(engine, meta(trt="10.3.0.30"), "10.3.0.26", "Orin", (8, 7)) == []
    with pytest.raises(ModelFileError, match=r"built with TensorRT 8.5.2.2 but 10.3.0.26 is installed.*export.trt"):
        check_engine_metadata(engine, meta(trt="8.5.2.2"), "10.3.0.26", "Orin", (8, 7))
    with pytest.raises(ModelFileError, match=r"built for RTX 4090 \(sm_89\) but this GPU is Orin \(sm_87\)"):
        check_engine_metadata(engine, meta(name="RTX 4090", cc=(8, 9)), "10.3.0.26", "Orin", (8, 7))
    (warning,) = check_engine_metadata(engine, meta(name="A10"), "10.3.0.26", "RTX 3080", (8, 7))
    assert "tuned on A10" in warning
    (warning,) = check_engine_metadata(engine, None, "10.3.0.26", "Orin", (8, 7))
    assert "no model.engine.json" in warning


def test_static_engines_need_no_profile_query():
    def no_profile():
        raise AssertionError("a static engine's profile must not be asked for")

    assert engine_profile((1, 3, 518, 518), no_profile) == ((1, 3, 518, 518), (1, 3, 518, 518))
    assert engine_profile((-1, 3, -1, -1), lambda: ((1, 3, 266, 266), (1, 3, 518, 518), (4, 3, 728, 728))) == (
        (1, 3, 266, 266),
        (4, 3, 728, 728),
    )


def test_profile_bounds_and_dims():
    check_profile((1, 3, 518, 518), (1, 3, 266, 266), (1, 3, 728, 728))
    with pytest.raises(ValueError, match=r"outside the engine's profile.*--min/--max"):
        check_profile((1, 3, 518, 742), (1, 3, 266, 266), (1, 3, 728, 728))
    spec = spec_from_dims("image", (-1, 3, -1, -1))
    assert spec.shape == (None, 3, None, None) and spec.fixed_hw is None
    assert spec_from_dims("image", (1, 3, 518, 518)).fixed_hw == (518, 518)
    with pytest.raises(ModelFileError):
        spec_from_dims("image", (1, 518, 518))


def test_cuda_device_names():
    assert [parse_device(d) for d in ("auto", "cuda", "cuda:1")] == [0, 0, 1]
    with pytest.raises(ValueError, match="CUDA GPU"):
        parse_device("cpu")


def test_plan_onnx_variant_names():
    assert plan_build(TrtVersion(10, 3), "int8").onnx_suffix == ".trt-int8.onnx"
    assert isinstance(plan_build(TrtVersion(8, 5), "fp16"), BuildPlan)


def tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(not tensorrt_missing(), reason="TensorRT is installed here")
def test_cli_without_tensorrt_fails_in_one_line_and_writes_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "export.trt", "--encoder", "vits", "--output", str(tmp_path / "out" / "m.engine")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2  # a missing library: nothing was attempted
    assert run.stderr.strip().count("\n") == 0 and "TensorRT is not installed" in run.stderr
    assert "--onnx-only" in run.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--int8", "--onnx-only", "--encoder", "vits"], "--int8 needs calibration images"),
        (["--onnx-only"], "give --onnx, --checkpoint or --encoder"),
        (["--onnx-only", "--encoder", "vits", "--min", "266x266"], "needs all of --min, --opt and --max"),
        (["--onnx-only", "--encoder", "vits", "--trt-version", "11", "--weakly-typed"], "strongly typed networks only"),
        (
            ["--onnx-only", "--encoder", "vits", "--trt-version", "99"],
            f"TensorRT 99 is not a release whose parser rules this project knows; {KNOWN}",
        ),
        (["--onnx-only", "--encoder", "vits", "--trt-version", "8.99"], "TensorRT 8.99 is not a release whose"),
        (["--calib-samples", "0", "--encoder", "vits"], "argument --calib-samples: '0': must be 1 or more"),
        (["--accuracy-images", "-1", "--encoder", "vits"], "argument --accuracy-images: '-1': must be 1 or more"),
    ],
)
def test_cli_refuses_requests_it_cannot_honour(tmp_path, argv, match):
    run = subprocess.run(
        [sys.executable, "-m", "export.trt", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 2 and match in run.stderr  # usage errors (docs/exit-codes.md)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"hello, not a model\n"])
def test_a_file_that_is_not_onnx_is_one_line_for_check_and_build(tmp_path, content, capsys):
    from export.trt.__main__ import main

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(content)
    for argv in (
        ["--check", str(empty)],
        ["--onnx", str(empty), "--onnx-only", "--output", str(tmp_path / "m.engine")],
    ):
        assert main([*argv, "--trt-version", "10.3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "opset" not in err, err
        expected = "is not an ONNX file: it is empty (0 bytes)" if not content else "is not a readable ONNX file"
        assert err.startswith(f"error: {empty} {expected}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.onnx"]


def gpu_ready() -> bool:
    if tensorrt_missing():
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_ready(), reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision,bound", [("fp16", 0.02), ("int8", 0.2)])
def test_engine_builds_and_matches_pytorch(tmp_path, vits_checkpoint, precision, bound):
    from export.metrics import compare
    from runtime import DepthPredictor
    from tests.sa1b import held_out_photos, make_shard

    engine = tmp_path / f"vits.{precision}.engine"
    argv = [
        sys.executable,
        "-m",
        "export.trt",
        f"--{precision}",
        "--checkpoint",
        str(vits_checkpoint),
        "--output",
        str(engine),
    ]
    if precision == "int8":
        argv += ["--calib-dir", str(make_shard(tmp_path / "sa1b" / "sa_0.tar", 12).parent), "--calib-samples", "12"]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # the FP32 ONNX export.trt wrote beside the engine has the engine's fixed input shape
    (source,) = tmp_path.glob("depth_anything_v2_vits.518x518*.onnx")  # ".opset16" when TensorRT 8.5 is installed
    reference = DepthPredictor(source, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor = DepthPredictor(engine)
    for image in held_out_photos():
        depth = predictor.predict(image)
        assert depth.dtype == np.float32
        assert compare(depth, reference.predict(image)).max_rel < bound


def test_a_batch_profile_is_tuned_at_its_batch_and_the_engine_takes_up_to_it():
    from export.trt.__main__ import build_parser, resolve_profile

    def profile(*argv):
        return resolve_profile(build_parser().parse_args(["--encoder", "vits", *argv]))

    assert profile("--batch", "4").shapes() == {
        "min": (1, 3, 518, 518),
        "opt": (4, 3, 518, 518),  # TensorRT picks the kernels fastest at the opt shape
        "max": (4, 3, 518, 518),
    }
    assert profile("--batch", "2", "--size", "364x644").shapes()["max"] == (2, 3, 364, 644)
    ranged = profile("--batch", "3", "--min", "266x266", "--opt", "518x518", "--max", "728x728")
    assert (ranged.min[0], ranged.opt[0], ranged.max[0]) == (1, 3, 3)
    assert profile("--max-batch", "4", "--min", "266x266", "--opt", "518x518", "--max", "728x728").opt[0] == 1
    assert profile("--batch", "1") is None and profile() is None  # batch 1 at one size: a static engine
    for argv, match in [
        (["--batch", "2", "--max-batch", "2"], "not both"),
        (["--max-batch", "4"], "goes with --min/--opt/--max"),
    ]:
        with pytest.raises(ExportError, match=match):
            profile(*argv)
    with pytest.raises(ExportError, match="1 <= opt <= max"):
        Profile.build((518, 518), (518, 518), (518, 518), max_batch=2, opt_batch=4)
    command = trtexec_command(
        Path("m.onnx"),
        Path("m.engine"),
        plan_build(TrtVersion(10, 3), "fp16"),
        "image",
        profile("--batch", "2"),
        1024,
        None,
    )
    assert "--minShapes=image:1x3x518x518 --optShapes=image:2x3x518x518 --maxShapes=image:2x3x518x518" in command
    # What the runtime reads back from such an engine: up to 2 frames a call, from 1.
    spec = spec_from_dims("image", (-1, 3, 518, 518), ((1, 3, 518, 518), (2, 3, 518, 518)))
    assert (spec.min_batch, spec.max_batch, spec.fixed_hw) == (1, 2, (518, 518))
    static = spec_from_dims("image", (2, 3, 518, 518), ((2, 3, 518, 518), (2, 3, 518, 518)))
    assert (static.min_batch, static.max_batch) == (2, 2)
    unbounded = spec_from_dims("image", (-1, 3, -1, -1))
    assert (unbounded.min_batch, unbounded.max_batch) == (1, None)
