"""The official Video Depth Anything references (``tests/data/official_families``) and the
deterministic weights they were made with: the parity recipe, with the head's last bias at 0.5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.weights import family_tensor

DATA = Path(__file__).resolve().parent / "data" / "official_families"
HEAD_BIAS = "head.scratch.output_conv2.2.bias"
CHECKPOINT = "video_depth_anything_vits.pth"  # the official file name
STREAM_SIZE = (56, 84)  # 4x6 patches: the smallest quick stream export with every level of the head


def vda_keys() -> list[tuple[str, list[int]]]:
    return json.loads((DATA / "keys_vda_vits.json").read_text())


def vda_state_dict() -> dict:
    import torch

    state = {}
    for key, shape in vda_keys():
        state[key] = torch.from_numpy(family_tensor("vda", key, shape))
    return state


def write_vda_checkpoint(folder: Path) -> Path:
    """``vda_state_dict`` saved as ``folder/video_depth_anything_vits.pth``."""
    import torch

    path = folder / CHECKPOINT
    torch.save(vda_state_dict(), path)
    return path


def frames_bgr() -> np.ndarray:
    """Six 240x320 frames of a slowly panning scene, BGR as the toolkit takes them."""
    return np.ascontiguousarray(np.load(DATA / "vda_frames_rgb.npy")[..., ::-1])


def official_stream() -> np.ndarray:
    """The official ``infer_video_depth_one(frame, input_size=266, fp32=True)`` outputs, in order."""
    return np.load(DATA / "vda_stream_depth.npy")


def worst_rel_std(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


MOTION_GEMM = "/motion_modules.3/attention_blocks.1/to_out.0/Gemm"


def perturbed_motion_module(onnx_path: Path, output: Path, factor: float = 1.5) -> Path:
    """A copy of a stream ONNX with the last motion module's attention output weight scaled by
    ``factor``: a damaged temporal head that a stream check must catch."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path))
    weights = {i.name: i for i in graph.graph.initializer}
    gemm = next(n for n in graph.graph.node if n.name == MOTION_GEMM)
    weight = weights[gemm.input[1]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(factor), weight.name))
    onnx.save(graph, str(output))
    return output
