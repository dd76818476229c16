"""The training loop the three stages share: one CPU or many GPUs through ``torchrun``.

- Distributed when ``WORLD_SIZE`` > 1 (torchrun sets it): gloo on CPU, nccl on GPU, DDP.
- Batches come from a resumable sampler: a seeded permutation per epoch, sharded by rank, so
  a restart at step ``s`` continues with exactly the batches a run that never stopped would see.
- Rank 0 writes ``state.pt`` (weights, optimiser, step) and ``model.safetensors`` atomically
  every ``save_every`` steps and at the end; a killed run resumes from the last one.
- AMP (bf16/fp16) on GPU.
- For models too large for DDP's full copy per rank: ``--fsdp`` shards weights, gradients and
  optimiser state over the ranks (``train.parallel``) and ``--activation-checkpointing``
  recomputes the encoder blocks' activations in the backward pass. Checkpoints are the same
  files either way, so a run resumes under DDP or FSDP whichever wrote them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from runtime.cli import number
from runtime.io.files import atomic_write, atomic_write_bytes
from train.models import DepthAnythingV2, ModelSpec, save_model
from train.parallel import full_state, load_state, peak_memory_mib, shard_model, state_mib, weights_checksum


@dataclass
class TrainConfig:
    output: Path
    steps: int = 1000
    batch_size: int = 4
    lr: float = 5e-6
    head_lr_scale: float = 10.0  # the DPT head learns 10x faster than the encoder (Depth Anything)
    crop: int = 518
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    workers: int = 2
    amp: str = "none"  # none, bf16, fp16 (GPU only)
    activation_checkpointing: bool = False
    fsdp: bool = False


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise SystemExit(
            f"error: torchrun started more processes per node than this machine has GPUs ({local_rank + 1} > "
            f"{torch.cuda.device_count()}): use --nproc_per_node {torch.cuda.device_count()}, "
            "or CUDA_VISIBLE_DEVICES= to train on the CPU"
        )
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, local_rank, device)


def batches(length: int, batch_size: int, rank: int, world: int, seed: int, start_step: int) -> Iterator[list[int]]:
    """Index batches for this rank from ``start_step`` on, forever, deterministically.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, cut to a multiple of
    ``world * batch_size`` so every rank takes the same number of steps.
    """
    per_step = world * batch_size
    steps_per_epoch = length // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{length} samples cannot fill one step of {world} x {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(length)
        for s in range(offset, steps_per_epoch):
            chunk = order[s * per_step : (s + 1) * per_step]
            yield chunk[rank::world].tolist()
        step = (epoch + 1) * steps_per_epoch


def collate(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    images, targets, masks = zip(*samples, strict=True)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(masks))


class _Batches(torch.utils.data.Dataset):
    """Map-style dataset whose item is a whole batch, so workers load batches in order."""

    def __init__(self, dataset, plan: list[list[int]], step0: int, seed: int) -> None:
        self.dataset, self.plan, self.step0, self.seed = dataset, plan, step0, seed

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        # One generator per (step, sample): augmentation does not depend on worker count or resumes.
        return collate(
            [self.dataset.sample(j, np.random.default_rng([self.seed, self.step0 + i, j])) for j in self.plan[i]]
        )


def parameter_groups(model: DepthAnythingV2, cfg: TrainConfig) -> list[dict]:
    encoder = [p for p in model.pretrained.parameters() if p.requires_grad]
    head = [p for p in model.depth_head.parameters() if p.requires_grad]
    return [{"params": encoder, "lr": cfg.lr}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]


def train(
    model: DepthAnythingV2,
    dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    stage: str,
    extra_metadata: dict | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` (``.sample(i, rng) -> (image, target, mask)``); resumable."""
    env = setup_distributed()
    cfg.output.mkdir(parents=True, exist_ok=True)
    state_path = cfg.output / "state.pt"
    if env.main:  # temp files of a run killed mid-write; the files under final names are whole
        for stale in cfg.output.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    model.train()
    for parameter in model.unused_parameters():
        parameter.requires_grad_(False)
    model.set_activation_checkpointing(cfg.activation_checkpointing)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    use_amp = amp_dtype is not None and env.device.type == "cuda"
    sharded = cfg.fsdp and env.world > 1
    if cfg.fsdp and not sharded and env.main:
        print(f"[{stage}] note: --fsdp with one process has nothing to shard; training unsharded")
    if sharded:  # moves only this rank's shards to its device; before the optimiser, which holds them
        shard_model(model, amp_dtype if use_amp else None)
    else:
        model.to(env.device)
    optimiser = torch.optim.AdamW(parameter_groups(model, cfg), weight_decay=0.01)
    start = 0
    if state_path.is_file():
        start = load_state(model, optimiser, state_path, sharded, env.main)
        if env.main:
            print(f"[{stage}] resuming from step {start} ({state_path})")
    wrapped = nn.parallel.DistributedDataParallel(model) if env.world > 1 and not sharded else model
    remaining = max(0, cfg.steps - start)
    plan_iter = batches(len(dataset), cfg.batch_size, env.rank, env.world, cfg.seed, start)
    plan = [next(plan_iter) for _ in range(remaining)]
    loader = torch.utils.data.DataLoader(
        _Batches(dataset, plan, start, cfg.seed),
        batch_size=None,
        shuffle=False,
        num_workers=cfg.workers,
        persistent_workers=False,
    )
    # Works on FSDP's sharded gradients too: DTensor reduces the inf/NaN flag over the ranks.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if amp_dtype is not None and not use_amp and env.main:
        print(f"[{stage}] note: --amp {cfg.amp} applies on CUDA only; training in float32 on the {env.device.type}")
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, desc=stage, unit="step", disable=not env.main)
    history = []
    step = start
    started = time.perf_counter()
    for images, targets, masks in loader:
        images, targets, masks = (t.to(env.device, non_blocking=True) for t in (images, targets, masks))
        with torch.autocast(env.device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
            prediction = wrapped(images)
        loss = loss_fn(prediction.float(), targets, masks)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        step += 1
        history.append(float(loss.detach()))
        bar.update()
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(history[-cfg.log_every :]):.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(model, optimiser, step, cfg, stage, env, extra_metadata, sharded)
    bar.close()
    if remaining == 0 and env.main:
        print(f"[{stage}] already at step {start} of {cfg.steps}: nothing to do")
    memory = round(state_mib(model, optimiser), 1), round(peak_memory_mib(env.device), 1)
    per_rank = [(weights_checksum(model, sharded), *memory)]
    if env.world > 1:
        gathered = [None] * env.world
        dist.all_gather_object(gathered, per_rank[0])
        per_rank = gathered
    summary = {
        "stage": stage,
        "steps": cfg.steps,
        "resumed_from": start,
        "world_size": env.world,
        "device": env.device.type,
        "amp": cfg.amp if use_amp else "none",
        "parallel": "fsdp" if sharded else "ddp" if env.world > 1 else "none",
        "activation_checkpointing": cfg.activation_checkpointing,
        "rank_checksums": [checksum for checksum, _, _ in per_rank],
        "rank_state_mib": [held for _, held, _ in per_rank],  # weights, gradients, Adam: this rank's part
        # GPU: peak allocated CUDA memory; CPU: peak resident memory of the process.
        "rank_peak_memory_mib": [peak for _, _, peak in per_rank],
        "loss_first": history[:1],
        "loss_last": history[-1:],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if env.main:
        atomic_write_bytes(cfg.output / "summary.json", json.dumps(summary, indent=2).encode())
    if env.world > 1:
        dist.barrier()
    return summary


def save_checkpoint(
    model, optimiser, step, cfg: TrainConfig, stage: str, env: Dist, extra: dict | None, sharded: bool = False
) -> None:
    """Rank 0 writes ``state.pt`` and ``model.safetensors``; sharded, every rank must call this."""
    weights, optim = full_state(model, optimiser, sharded)
    if not env.main:
        return
    state = {"model": weights, "optimiser": optim, "step": step}
    atomic_write(cfg.output / "state.pt", lambda tmp: torch.save(state, tmp))
    metadata = {"stage": stage, "step": step, **(extra or {})}
    save_model(model, cfg.output / "model.safetensors", metadata=metadata, state_dict=weights)


MAX_CROP = 4088


def crop_size(text: str) -> int:
    """argparse type for ``--crop``: a multiple of 14 from 14 to ``MAX_CROP``."""
    value = number(14, MAX_CROP, integer=True)(text)
    if value % 14:
        raise argparse.ArgumentTypeError(f"{text!r} is not a multiple of 14: give 14, 28, ... up to {MAX_CROP}")
    return value


def add_common_args(parser: argparse.ArgumentParser, steps: int, crop: int) -> None:
    parser.add_argument("--output", type=Path, required=True, help="run folder: checkpoints, state, summary")
    parser.add_argument(
        "--steps", type=number(1, 10**9, integer=True), default=steps, help=f"optimiser steps (default {steps})"
    )
    parser.add_argument("--batch-size", type=number(1, 4096, integer=True), default=4, help="per rank (default 4)")
    parser.add_argument(
        "--lr", type=number(0, 1, above=True), default=5e-6, help="encoder learning rate; the head gets 10x"
    )
    parser.add_argument(
        "--crop", type=crop_size, default=crop, help=f"training crop, a multiple of 14 (default {crop})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save-every", type=number(1, 10**9, integer=True), default=100, help="checkpoint interval in steps"
    )
    parser.add_argument("--workers", type=number(0, 256, integer=True), default=2, help="data loader workers per rank")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision (GPU)")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute encoder block activations in the backward pass: far less memory, ~1/4 more compute",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="shard weights, gradients and optimiser state over the torchrun ranks (FSDP) instead of DDP",
    )
    parser.add_argument("--spec", help="custom architecture as ModelSpec JSON (small test models)")
    parser.add_argument("--init-backbone", type=Path, help="DINOv2 weights for the encoder (official or timm)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config; also seeds torch, so the model built next starts the same in every run."""
    if args.fsdp:
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401 - public from PyTorch 2.6
        except ImportError:
            raise SystemExit(f"error: --fsdp needs PyTorch >= 2.6 (fully_shard); this is {torch.__version__}") from None
    torch.manual_seed(args.seed)
    return TrainConfig(
        output=args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        crop=args.crop,
        seed=args.seed,
        save_every=args.save_every,
        workers=args.workers,
        amp=args.amp,
        activation_checkpointing=args.activation_checkpointing,
        fsdp=args.fsdp,
    )


def spec_or_encoder(args: argparse.Namespace, encoder: str) -> str | ModelSpec:
    return ModelSpec.from_json(args.spec) if args.spec else encoder
