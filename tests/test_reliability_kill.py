"""A killed export leaves the old artefact or none, never a wrong one, and no debris after the next run.

Each export CLI is SIGKILLed at several points of a run that replaces an existing artefact built
from model A with one from model B: while it verifies (a timer polling for the staged file), and
right after each rename or delete it makes in the output folder. After every kill, whatever is
loadable at the output path must compute A or B (a new weights file beside an old graph computes
neither), and a sidecar, if present, must describe the file beside it. A final full run then
leaves nothing hidden.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from export.metrics import compare, run_onnxruntime, verification_input
from export.onnx import export_onnx
from runtime import DepthPredictor
from runtime.backends.openvino import openvino_core
from runtime.metadata import artefact_digest, read_sidecar
from runtime.reference import reference_path
from tests.conftest import REPO

SIZE = 56


def two_tiny_models(tiny_spec):
    """Models A and B of different widths: any mix of their files is wrong (or unloadable)."""
    import dataclasses

    import torch

    from train.models import DepthAnythingV2

    torch.manual_seed(0)
    first = DepthAnythingV2(tiny_spec).eval()
    torch.manual_seed(1)
    second = DepthAnythingV2(dataclasses.replace(tiny_spec, name="tiny48", embed_dim=48)).eval()
    return [first, second]


# Runs an export CLI that SIGKILLs itself right after its k-th rename or delete in the output
# folder: every step of replacing the artefact is interrupted once, deterministically.
KILL_AFTER_OPS = """
import os, runpy, signal, sys
k, folder, module = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3]
count = 0
def counted(real, target):
    def op(*args, **kwargs):
        global count
        result = real(*args, **kwargs)
        if "dir_fd" not in kwargs and os.path.dirname(os.path.realpath(target(args))) == folder:
            count += 1
            if count == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return op
os.replace = counted(os.replace, lambda a: a[1])
os.unlink = counted(os.unlink, lambda a: a[0])
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_cli(argv: list[str], kill_when: Callable[[], bool] | None = None, kill_after_ops: int = 0) -> bool:
    """Run ``python -m argv``, SIGKILLed once ``kill_when()`` holds (polled every millisecond) or
    right after its ``kill_after_ops``-th rename or delete in the output folder. True if killed."""
    if kill_after_ops:
        output = Path(argv[argv.index("--output") + 1])
        command = ["-c", KILL_AFTER_OPS, str(kill_after_ops), str(output.parent), *argv]
    else:
        command = ["-m", *argv]
    proc = subprocess.Popen(
        [sys.executable, *command], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        if kill_when is not None and kill_when():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{argv[0]} did not finish in 120 s")
        time.sleep(0.001)
    if proc.returncode == -signal.SIGKILL:
        return True
    assert proc.returncode == 0, proc.stderr.read()
    return False


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def staged(folder: Path, name: str) -> Callable[[], bool]:
    """Kill once a staging folder holds the complete artefact ``name`` (verification under way)."""
    return lambda: any((p / name).is_file() for p in folder.glob(f".{name}.*") if p.is_dir())


def assert_sound(path: Path, computes: Callable[[Path], int | None]) -> None:
    """Nothing, or an artefact that computes model A or B with metadata and a reference that fit it."""
    if not path.exists():
        return
    assert computes(path) is not None, f"{path} is loadable but computes neither model"
    meta = read_sidecar(path)
    if meta is not None:
        assert meta["sha256"] == artefact_digest(path), "the sidecar describes another file"  # with its .bin
    if reference_path(path).exists():  # an old model's reference beside a new model would fail it
        assert DepthPredictor(path, verify=True).info()["verification"]["passed"]


def interrupt_everywhere(argv_a, argv_b, path, computes) -> None:
    """Build A; kill B while verifying, then after each of its file operations; finish B."""
    run_cli(argv_a)
    assert computes(path) == 0
    assert run_cli(argv_b, kill_when=staged(path.parent, path.name))
    assert_sound(path, computes)
    assert hidden(path.parent), "a kill while verifying leaves a temporary folder (removed by the next run)"
    ops = 0
    while run_cli(argv_b, kill_after_ops=ops + 1):
        ops += 1
        assert_sound(path, computes)
    assert ops >= 3  # old metadata, old artefact, new artefact, new metadata: each step was cut
    assert computes(path) == 1


def test_killed_onnx_exports_leave_no_wrong_model_and_no_debris(tmp_path, tiny_spec):
    import torch

    from train.models import save_model

    models = two_tiny_models(tiny_spec)
    checkpoints = [save_model(m, tmp_path / f"ckpt{i}.safetensors") for i, m in enumerate(models)]
    x = verification_input(SIZE, SIZE)
    with torch.inference_mode():
        references = [m(torch.from_numpy(x)).numpy() for m in models]
    assert compare(references[0], references[1]).max_rel_std > 1  # A and B are told apart

    def computes(path: Path) -> int | None:
        out = run_onnxruntime(path, x)
        matches = [i for i, ref in enumerate(references) if compare(out, ref).max_rel_std <= 5e-4]
        return matches[0] if matches else None

    out = tmp_path / "out"
    path = out / "m.onnx"
    argv = ["export.onnx", "--height", str(SIZE), "--width", str(SIZE), "--output", str(path), "--checkpoint"]
    interrupt_everywhere([*argv, str(checkpoints[0])], [*argv, str(checkpoints[1])], path, computes)
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx", "m.onnx.json", "m.onnx.reference.npz"]


def test_killed_openvino_exports_leave_no_mixed_pair_and_no_debris(tmp_path, tiny_spec):

    models = two_tiny_models(tiny_spec)
    sources = [export_onnx(m, tmp_path / f"src{i}.onnx", SIZE, SIZE).path for i, m in enumerate(models)]
    x = verification_input(SIZE, SIZE)
    references = [run_onnxruntime(s, x) for s in sources]
    assert compare(references[0], references[1]).max_rel_std > 1

    def computes(xml: Path) -> int | None:
        compiled = openvino_core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = np.asarray(compiled({0: x})[0])
        matches = [i for i, ref in enumerate(references) if compare(out, ref).max_rel_std <= 0.1]
        return matches[0] if matches else None

    out = tmp_path / "out"
    xml = out / "m.xml"
    argv = ["export.openvino", "--fp16", "--shape", f"{SIZE}x{SIZE}", "--output", str(xml), "--onnx"]
    interrupt_everywhere([*argv, str(sources[0])], [*argv, str(sources[1])], xml, computes)
    assert sorted(p.name for p in out.iterdir()) == ["m.bin", "m.xml", "m.xml.json", "m.xml.reference.npz"]
