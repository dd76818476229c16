"""Big models in memory and many nodes: activation checkpointing, FSDP against DDP (weights,
checkpoint format, resuming across them), two torchrun launchers as two nodes, and what each
saves in memory. The CPU runs FSDP2 with gloo for real; the GPU cases are marked ``gpu``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, make_tiny_spec
from tests.test_reliability import run_child
from tests.test_training import COMMON, stage
from train.models import DepthAnythingV2, load_model

# Several ranks of a distributed job on local ports: not beside another worker's (alone).
pytestmark = pytest.mark.alone

SCENES = ["--data", "synthetic:16", "--save-every", "2"]


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    from train.losses import DistillationLoss

    torch.manual_seed(0)
    plain = DepthAnythingV2(make_tiny_spec()).train()
    recomputing = DepthAnythingV2(make_tiny_spec()).train()
    recomputing.load_state_dict(plain.state_dict())
    recomputing.set_activation_checkpointing(True)
    images, target = torch.randn(2, 3, 56, 70), torch.rand(2, 56, 70) + 0.1
    runs = {}
    block = {}
    for name, model in (("plain", plain), ("recomputing", recomputing)):
        calls = block[name] = []
        # A pre-hook: recomputation stops as soon as what backward needs exists, before any forward hook.
        model.pretrained.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        loss = DistillationLoss()(model(images), target, torch.ones_like(target, dtype=torch.bool))
        loss.backward()
        runs[name] = loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert len(block["plain"]) == 1 and len(block["recomputing"]) == 2  # really recomputed in backward
    (loss, grads), (loss_ckpt, grads_ckpt) = runs["plain"], runs["recomputing"]
    assert torch.allclose(loss, loss_ckpt, rtol=1e-6, atol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 100
    for key, grad in grads.items():
        assert torch.allclose(grad, grads_ckpt[key], rtol=1e-5, atol=1e-7 * float(grad.abs().max())), key
    with torch.no_grad():  # inference never recomputes: nothing to save for a backward pass
        block["recomputing"].clear()
        recomputing(images)
    assert len(block["recomputing"]) == 1


def two_ranks(output, *extra: str, steps: int = 2) -> dict:
    stage("train.teacher", *SCENES, *COMMON, "--steps", str(steps), "--output", str(output), *extra, nproc=2)
    return json.loads((output / "summary.json").read_text())


@pytest.fixture(scope="module")
def step2(tmp_path_factory):
    """Two steps on two CPU processes (gloo), once with DDP and once with FSDP."""
    root = tmp_path_factory.mktemp("sharding")
    return {"ddp": two_ranks(root / "ddp"), "fsdp": two_ranks(root / "fsdp", "--fsdp"), "root": root}


def assert_same_weights(a, b, tolerance=1e-6):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value, b[key], rtol=0, atol=tolerance * max(1.0, float(value.abs().max()))), key


def test_fsdp_and_ddp_reach_the_same_weights_and_write_the_same_files(step2):
    ddp, fsdp, root = step2["ddp"], step2["fsdp"], step2["root"]
    assert (ddp["parallel"], fsdp["parallel"]) == ("ddp", "fsdp") and ddp["world_size"] == fsdp["world_size"] == 2
    assert ddp["loss_last"] == pytest.approx(fsdp["loss_last"], rel=1e-5)
    # Each rank holds half the weights, gradients and Adam moments (up to the padding of uneven shards).
    for whole, half in zip(ddp["rank_state_mib"], fsdp["rank_state_mib"], strict=True):
        assert 0.49 * whole < half < 0.52 * whole
    assert_same_weights(load_model(root / "ddp" / "model.safetensors"), load_model(root / "fsdp" / "model.safetensors"))
    # state.pt: the same keys, optimiser slots and hyper-parameters, the same Adam moments.
    plain, sharded = (torch.load(root / name / "state.pt", weights_only=True) for name in ("ddp", "fsdp"))
    assert plain["step"] == sharded["step"] == 2
    assert plain["optimiser"]["param_groups"] == sharded["optimiser"]["param_groups"]
    assert plain["optimiser"]["state"].keys() == sharded["optimiser"]["state"].keys()
    for slot, moments in plain["optimiser"]["state"].items():
        for name, value in moments.items():
            assert torch.allclose(value, sharded["optimiser"]["state"][slot][name], rtol=1e-5, atol=1e-9), (slot, name)


def test_ddp_and_fsdp_resume_each_others_checkpoints(step2):
    root = step2["root"]
    shutil.copytree(root / "ddp", root / "ddp_then_fsdp")
    shutil.copytree(root / "fsdp", root / "fsdp_then_ddp")
    into_fsdp = two_ranks(root / "ddp_then_fsdp", "--fsdp", steps=4)
    into_ddp = two_ranks(root / "fsdp_then_ddp", steps=4)
    assert into_fsdp["resumed_from"] == into_ddp["resumed_from"] == 2
    assert (into_fsdp["parallel"], into_ddp["parallel"]) == ("fsdp", "ddp")
    # Equal only if each side restored the other's weights and Adam moments exactly: a lost
    # optimiser state would restart Adam's bias correction and move the weights differently.
    assert_same_weights(
        load_model(root / "ddp_then_fsdp" / "model.safetensors"),
        load_model(root / "fsdp_then_ddp" / "model.safetensors"),
    )
    assert into_fsdp["rank_checksums"][0] == pytest.approx(into_ddp["rank_checksums"][0], rel=1e-7)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_rendezvous_over_loopback(tmp_path):
    """Two torchrun launchers, one process each, meet at a c10d rendezvous as two machines would."""
    endpoint = f"127.0.0.1:{free_port()}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes"]
    launcher += ["--rdzv-conf", "join_timeout=60"]
    command = [*launcher, "-m", "train.teacher", *SCENES, *COMMON, "--steps", "2", "--output", str(tmp_path)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}  # each "node" talks over loopback
    nodes = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, results, strict=True):
        assert node.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"] == "ddp"
    first, second = summary["rank_checksums"]
    assert first == second  # gradients were averaged across the two "nodes"


VITL_STEP = """
import torch
from train.models import DepthAnythingV2
torch.manual_seed(0)
model = DepthAnythingV2("vitl").train().set_activation_checkpointing({checkpointing})
with open("/proc/self/status") as status:
    before = next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) / 1024
model(torch.randn(1, 3, 518, 518)).mean().backward()
RESULT = {{"model_mb": before}}
"""


@pytest.mark.slow
def test_activation_checkpointing_memory_vitl_518():
    """Peak memory of one forward and backward of ViT-L at 518x518, batch 1, in a fresh process."""
    peaks = {}
    for checkpointing in (False, True):
        result = run_child(VITL_STEP.format(checkpointing=checkpointing), timeout=600, OMP_NUM_THREADS="2")
        peaks[checkpointing] = result["peak_mb"], result["peak_mb"] - result["model_mb"]
    print(
        "vitl 518x518 forward+backward, batch 1: peak {:.0f} MB ({:.0f} MB above the built model) without "
        "checkpointing, {:.0f} MB ({:.0f} MB) with".format(*peaks[False], *peaks[True])
    )
    assert peaks[True][1] < 0.8 * peaks[False][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_activation_checkpointing_memory_on_cuda():
    """ViT-L at 518x518, batch 4, bf16 autocast: peak allocated CUDA memory of one training step."""
    torch.manual_seed(0)
    model = DepthAnythingV2("vitl").cuda().train()
    images = torch.randn(4, 3, 518, 518, device="cuda")
    peaks = {}
    for checkpointing in (False, True):
        model.set_activation_checkpointing(checkpointing).zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            depth = model(images)
        depth.float().mean().backward()
        peaks[checkpointing] = (torch.cuda.max_memory_allocated() - base) / 2**20
    print(f"{torch.cuda.get_device_name(0)} vitl 518 batch 4 bf16, peak above the weights (MiB): {peaks}")
    assert peaks[True] < 0.5 * peaks[False]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs to shard over")
def test_fsdp_holds_less_per_gpu_than_ddp(tmp_path):
    args = ("--encoder", "vitl", "--crop", "518", "--batch-size", "1", "--workers", "0", "--data", "synthetic:4")
    peaks = {}
    for mode, extra in (("ddp", ()), ("fsdp", ("--fsdp",))):
        stage(
            "train.teacher", *args, "--amp", "bf16", "--steps", "2", "--output", str(tmp_path / mode), *extra, nproc=2
        )
        peaks[mode] = json.loads((tmp_path / mode / "summary.json").read_text())["rank_peak_memory_mib"]
    print(f"{torch.cuda.get_device_name(0)} vitl, 2 GPUs, peak allocated per rank (MiB): {peaks}")
    # ViT-L: 16 bytes a parameter for weights, gradients and Adam, ~5.4 GB; FSDP keeps half per rank.
    assert max(peaks["fsdp"]) < min(peaks["ddp"]) - 2000
