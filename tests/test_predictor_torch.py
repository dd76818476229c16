"""DepthPredictor on the PyTorch backend: shapes, batching, threads, files and errors."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from export.metrics import compare
from runtime import DepthPredictor, InputError, ModelFileError
from train.models import save_model

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vits_predictor(vits_model):
    return DepthPredictor(vits_model, device="cpu")


def test_bgr_rgb_and_gray_give_float32_depth_at_input_resolution(vits_predictor, photo):
    depth = vits_predictor.predict(photo)
    assert depth.dtype == np.float32 and depth.shape == photo.shape[:2]
    assert depth.std() > 0
    rgb = np.ascontiguousarray(photo[:, :, ::-1])
    assert np.array_equal(vits_predictor.predict(rgb, rgb=True), depth)
    gray = vits_predictor.predict(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    assert gray.shape == photo.shape[:2] and gray.dtype == np.float32


def test_predictor_equals_the_model_run_by_hand(vits_predictor, vits_model, photo):
    from runtime.preprocessing import prepare_dynamic

    x = torch.from_numpy(prepare_dynamic(photo))
    with torch.inference_mode():
        raw = vits_model(x)
    expected = torch.nn.functional.interpolate(raw[:, None], photo.shape[:2], mode="bilinear", align_corners=True)
    assert compare(vits_predictor.predict(photo), expected[0, 0].numpy()).max_rel_std < 1e-4


def test_batch_equals_single_images(vits_predictor, photo):
    small = cv2.resize(photo, (200, 150))
    images = [photo, small, np.ascontiguousarray(photo[::-1]), small]
    batch = vits_predictor.predict_batch(images)
    assert [d.shape for d in batch] == [im.shape[:2] for im in images]
    for image, depth in zip(images, batch, strict=True):
        # Not bit-identical on PyTorch: a batched matrix product sums in another order (measured
        # 1.6e-5; ONNX Runtime and OpenVINO gave identical numbers), as docs/measurements.md says.
        assert compare(depth, vits_predictor.predict(image)).max_rel_std < 1e-4
    assert vits_predictor.predict_batch([]) == []


def test_batch_error_names_the_bad_image(vits_predictor, photo):
    with pytest.raises(InputError, match=r"image 1: expected uint8"):
        vits_predictor.predict_batch([photo, photo.astype(np.float32)])


def test_concurrent_calls_give_the_same_results(tiny_model, photo):
    predictor = DepthPredictor(tiny_model, device="cpu")
    images = [photo, np.ascontiguousarray(photo[:, ::-1]), cv2.resize(photo, (320, 240)), photo[:200, :300].copy()]
    expected = [predictor.predict(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(predictor.predict, images * 4))
    for i, depth in enumerate(results):
        assert np.array_equal(depth, expected[i % 4])


def test_checkpoint_files_dispatch_to_torch(tmp_path, tiny_model, photo):
    path = save_model(tiny_model, tmp_path / "tiny.safetensors")
    predictor = DepthPredictor(path)
    assert predictor.backend == "torch" and predictor.input_shape == (None, 3, None, None)
    assert compare(predictor.predict(photo), DepthPredictor(tiny_model).predict(photo)).max_rel_std < 1e-6
    info = predictor.info()
    assert info["backend"] == "torch" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["versions"]["torch"] == torch.__version__ and info["model"] == str(path)


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tiny_model, photo):
    fp32 = DepthPredictor(tiny_model).predict(photo)
    bf16 = DepthPredictor(tiny_model, precision="bf16")
    assert bf16.info()["precision"] == "bf16"
    assert np.abs(bf16.predict(photo) - fp32).max() < 0.02 * np.abs(fp32).max()


def test_explicit_attention_matches_fused(tiny_model, photo):
    import copy

    from train.models.backbone import Attention

    fused = DepthPredictor(tiny_model)
    model = copy.deepcopy(tiny_model)
    explicit = DepthPredictor(model, attention="explicit")
    assert (fused.info()["attention"], explicit.info()["attention"]) == ("fused", "explicit")
    reference = fused.predict(photo)
    assert np.abs(explicit.predict(photo) - reference).max() <= 1e-5 * np.abs(reference).max()
    DepthPredictor(model)  # a model handed over again runs the form asked for, not the last one
    assert {m.kind for m in model.modules() if isinstance(m, Attention)} == {"fused"}


def test_wrong_checkpoint_is_a_model_file_error(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="not a Depth Anything V2 checkpoint"):
        DepthPredictor(tmp_path / "other.pth")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"model": "model.bin"}, ModelFileError, "cannot tell the backend"),
        ({"model": "x.pth", "backend": "tflite"}, ValueError, "unknown backend 'tflite'"),
        ({"model": 42}, ModelFileError, "cannot run a int"),
        ({"precision": "fp16", "device": "cpu"}, ValueError, "use precision='bf16'"),
        ({"precision": "int4"}, ValueError, "precision must be one of"),
        ({"device": "tpu"}, ValueError, "runs on 'cpu', 'cuda'"),
        ({"input_size": 10}, ValueError, "at least 14"),
        ({"attention": "flash"}, ValueError, "attention must be one of fused, explicit"),
    ],
)
def test_bad_arguments_are_clear_errors(tiny_model, kwargs, error, match):
    kwargs = {"model": tiny_model, **kwargs}
    with pytest.raises(error, match=match):
        DepthPredictor(**kwargs)


def test_cuda_request_without_a_gpu_is_explained(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        DepthPredictor(tiny_model, device="cuda")


def test_closed_predictor_refuses_work(tiny_model, photo):
    with DepthPredictor(tiny_model) as predictor:
        predictor.predict(photo)
    with pytest.raises(RuntimeError, match="closed"):
        predictor.predict(photo)


def test_runtime_imports_neither_torch_nor_train():
    code = "import sys, runtime; bad = {'torch', 'train'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cli_writes_a_depth_png(tmp_path, tiny_model, photo):
    model = save_model(tiny_model, tmp_path / "tiny.safetensors")
    cv2.imwrite(str(tmp_path / "in.jpg"), photo)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            str(tmp_path / "in.jpg"),
            str(tmp_path / "broken.jpg"),
            "--model",
            str(model),
            "--output-dir",
            str(tmp_path / "out"),
            "--save-npy",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1, run.stderr  # an input was skipped (docs/exit-codes.md); the good one is written
    assert "skipped" in run.stderr and "broken.jpg" in run.stderr
    depth_png = cv2.imread(str(tmp_path / "out" / "in_depth.png"))
    assert depth_png.shape == photo.shape  # the colourised depth alone (--side-by-side adds the input)
    assert np.load(tmp_path / "out" / "in_depth.npy").shape == photo.shape[:2]


def test_cli_usage_errors_exit_2():
    run = subprocess.run([sys.executable, "-m", "runtime"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "give image files" in run.stderr


def test_fixed_size_pins_a_dynamic_model(tiny_model, photo):
    predictor = DepthPredictor(tiny_model, fixed_size=(140, 182))
    assert predictor.prepare(photo).shape == (1, 3, 140, 182)
    assert predictor.predict(photo).shape == photo.shape[:2]


def test_bf16_on_a_gpu_without_bf16_units_is_a_clear_error():
    from runtime.backends.pytorch import check_cuda_precision

    with pytest.raises(ValueError, match=r"Xavier \(compute capability 7.2\) has no bf16 units; use precision='fp16'"):
        check_cuda_precision("bf16", "Xavier", (7, 2))
    check_cuda_precision("fp16", "Xavier", (7, 2))
    check_cuda_precision("bf16", "Orin", (8, 7))


def test_fp32_switch_for_cuda_restores_exactly_and_survives_the_new_tf32_api():
    """TF32 off for what runs inside, restored exactly after, also with interleaved callers (two
    predictors in two threads) and with TF32 set through PyTorch's per-backend API, where reading
    the legacy flags raises. The switches are plain settings: no GPU needed to check them."""
    from runtime.backends.pytorch import exact_fp32_cuda

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # a user's choice; the legacy getters now refuse to answer
        first, second = exact_fp32_cuda(torch), exact_fp32_cuda(torch)
        first.__enter__()
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        second.__enter__()
        first.__exit__(None, None, None)  # the first caller leaves while the second still runs
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        second.__exit__(None, None, None)
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", saved[1])
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_cuda_device_index_beyond_the_gpus_is_a_clear_error():
    from types import SimpleNamespace

    from runtime.backends.pytorch import resolve_device

    one_gpu = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True, device_count=lambda: 1))
    assert resolve_device(one_gpu, "cuda:0") == "cuda:0" and resolve_device(one_gpu, "cuda") == "cuda"
    with pytest.raises(ValueError, match=r"'cuda:1': PyTorch sees 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device(one_gpu, "cuda:1")
    with pytest.raises(ValueError, match="runs on 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device(one_gpu, "cuda1")
