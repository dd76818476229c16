"""An artefact's precision is the artefact's: no backend default changes the numbers of what was
exported. OpenVINO runs bf16 by default on CPUs with bf16 units (this project's CI CPU has them):
an FP32 IR must still run f32 unless the caller asks for bf16."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cpu import detect
from export.openvino import export_openvino
from runtime import DepthPredictor
from runtime.accuracy import compare
from runtime.backends.onnxruntime import provider_settings
from runtime.backends.openvino import RT_INFO_PRECISION, import_openvino, openvino_core
from runtime.metadata import sidecar_path
from runtime.preprocessing import prepare_fixed, resize_depth

SIZE = (98, 126)
BF16 = detect().native("bf16")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_spec):
    import torch

    from export.onnx import export_onnx
    from train.models import DepthAnythingV2

    folder = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    model = DepthAnythingV2(tiny_spec).eval()
    onnx_path = export_onnx(model, folder / "m.onnx", *SIZE).path
    export_openvino(onnx_path, folder / "m32.xml", "fp32")
    export_openvino(onnx_path, folder / "m16.xml", "fp16")
    return model, folder


def pytorch_fp32(model, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(prepare_fixed(image, SIZE)))[0].numpy()
    return resize_depth(out, *image.shape[:2])


def test_an_fp32_ir_agrees_with_pytorch_fp32_unless_bf16_is_asked_for(exported, photo):
    model, folder = exported
    reference = pytorch_fp32(model, photo)
    default = DepthPredictor(folder / "m32.xml")
    assert default.info()["precision"] == "fp32" and default.info()["weights"] == "fp32"
    # Within 1e-3 in the project's metric, max|a-b|/std(ref), which bounds the relative L2 error too.
    assert compare(default.predict(photo), reference).max_rel_std <= 1e-3
    bf16 = DepthPredictor(folder / "m32.xml", precision="bf16")
    if BF16:  # this CPU's default would have been bf16: the check above is the one that could fail
        assert bf16.info()["precision"] == "bf16"
        assert compare(bf16.predict(photo), reference).max_rel_std > 1e-3


def test_an_fp16_ir_keeps_the_devices_default(exported):
    _, folder = exported
    import_openvino()  # an error naming the extra where OpenVINO is missing
    compiled = openvino_core().compile_model(str(folder / "m16.xml"), "CPU")
    default = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    predictor = DepthPredictor(folder / "m16.xml", device="cpu")
    assert predictor.info()["weights"] == "fp16"
    assert predictor.info()["precision"] == {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[default]


def test_the_irs_own_precision_is_read_without_its_sidecar(tmp_path, exported):
    _, folder = exported
    ov = import_openvino()
    lone = tmp_path / "lone32.xml"
    for suffix in (".xml", ".bin"):
        lone.with_suffix(suffix).write_bytes((folder / f"m32{suffix}").read_bytes())
    assert not sidecar_path(lone).exists()
    assert openvino_core().read_model(str(lone)).get_rt_info(RT_INFO_PRECISION).astype(str) == "fp32"
    assert DepthPredictor(lone).info()["precision"] == "fp32"
    # an IR converted elsewhere (no sidecar, no record): read from its weights
    plain32, plain16 = tmp_path / "plain32.xml", tmp_path / "plain16.xml"
    converted = ov.convert_model(str(folder / "m.onnx"))
    ov.save_model(converted, str(plain32), compress_to_fp16=False)
    ov.save_model(converted, str(plain16), compress_to_fp16=True)
    assert DepthPredictor(plain32).info()["precision"] == "fp32"
    sixteen = DepthPredictor(plain16).info()
    assert sixteen["weights"] == "fp16" and sixteen["precision"] == ("bf16" if BF16 else "fp32")


def test_onnxruntime_keeps_the_onnx_models_precision():
    # TensorRT provider: FP16 only when asked for, never by default on an FP32 model
    assert provider_settings("TensorrtExecutionProvider", "fp32", None, "1.20.0") == (
        {"trt_fp16_enable": False},
        "fp32",
    )
    assert provider_settings("TensorrtExecutionProvider", "fp32", "fp16", "1.20.0") == (
        {"trt_fp16_enable": True},
        "fp16",
    )
    # CUDA provider: TF32 (on by default since 1.18) off for FP32 models; older releases have no switch
    assert provider_settings("CUDAExecutionProvider", "fp32", None, "1.18.1") == ({"use_tf32": 0}, "fp32")
    assert provider_settings("CUDAExecutionProvider", "fp32", None, "1.17.3") == ({}, "fp32")
    assert provider_settings("CUDAExecutionProvider", "fp16", None, "1.20.0") == ({}, "fp16")
    assert provider_settings("CPUExecutionProvider", "int8", None, "1.20.0") == ({}, "int8")
    # a precision the provider cannot run the model in is an error, not a label
    with pytest.raises(ValueError, match="runs this fp32 model as fp32, not bf16"):
        provider_settings("CPUExecutionProvider", "fp32", "bf16", "1.20.0")


def test_onnxruntime_says_what_ran(exported):
    _, folder = exported
    assert DepthPredictor(folder / "m.onnx", device="cpu").info()["precision"] == "fp32"
    with pytest.raises(ValueError, match="not fp16"):
        DepthPredictor(folder / "m.onnx", device="cpu", precision="fp16")
