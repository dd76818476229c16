"""Sharding a model over the ranks (PyTorch FSDP2, ``fully_shard``) and the training state in one
format whether the run is sharded or not.

DDP keeps a whole copy of the weights, gradients and Adam state on every rank: 16 bytes per
parameter, 18 GB for a ViT-G teacher before any activation. FSDP splits all three over the ranks
and gathers one block's weights at a time for its forward and backward, so each rank holds about
``16 * params / world`` bytes plus one block. Every encoder block is its own unit (gathered and
freed on its own), the DPT head another, and the root holds what is left (embeddings, norms).

Checkpoints do not depend on the wrapping: ``state.pt`` always holds the full state dict under the
official names and the optimiser state in PyTorch's own index-keyed form, exactly what a DDP or
single-process run writes. A sharded run gathers both onto rank 0 to save, and loads by
broadcasting rank 0's copy, so a run can resume under DDP from an FSDP checkpoint and back, and on
another number of ranks.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from itertools import chain
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def shard_model(model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``fully_shard`` each encoder block, the DPT head and the root, in place; returns ``model``.

    ``param_dtype`` (bf16/fp16 with ``--amp`` on CUDA) gathers and computes in that precision
    while gradients are reduced and the optimiser steps in float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import Shard

    def placement(parameter: nn.Parameter) -> Shard | None:
        # Tensors of one row (position embeddings, class and mask tokens) would otherwise sit
        # whole on rank 0: split them along their longest side instead.
        if parameter.ndim > 1 and parameter.shape[0] == 1:
            return Shard(max(range(parameter.ndim), key=lambda dim: parameter.shape[dim]))
        return None

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for module in (*model.pretrained.blocks, model.depth_head, model):
        fully_shard(module, mp_policy=policy, shard_placement_fn=placement)
    return model


def optimiser_names(model: nn.Module, optimiser: torch.optim.Optimizer) -> list[str]:
    """The parameter name of each optimiser slot, in PyTorch's index order (groups in turn)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for p in chain.from_iterable(g["params"] for g in optimiser.param_groups)]


def by_index(state: Mapping, names: list[str]) -> dict:
    """Name-keyed optimiser state (``torch.distributed.checkpoint``'s form) -> ``Optimizer.state_dict()``'s."""
    index = {name: i for i, name in enumerate(names)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def by_name(state: Mapping, names: list[str]) -> dict:
    """``Optimizer.state_dict()``'s index-keyed form -> name-keyed, the inverse of :func:`by_index`."""
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state(model: nn.Module, optimiser: torch.optim.Optimizer, sharded: bool) -> tuple[dict, dict]:
    """Full weights and optimiser state (index-keyed) as a plain run has them.

    Sharded, this is a collective (every rank calls it) and only rank 0 gets the tensors, on the
    CPU; the other ranks get two empty dicts.
    """
    if not sharded:
        return model.state_dict(), optimiser.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options(cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimiser, options=options)
    return weights, (by_index(optim, optimiser_names(model, optimiser)) if weights else {})


def load_state(model: nn.Module, optimiser: torch.optim.Optimizer, path: Path, sharded: bool, main: bool) -> int:
    """Load ``state.pt`` into the model and optimiser; returns its step.

    Unsharded every rank reads the file (DDP then starts from identical replicas); sharded only
    rank 0 reads it and broadcasts, so the host memory of one full copy is needed once, not per rank.
    """
    device = next(model.parameters()).device
    if not sharded:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        return int(state["step"])
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = torch.load(path, map_location="cpu", weights_only=True) if main else {}
    step = [int(state["step"]) if main else 0]
    dist.broadcast_object_list(step, src=0)
    options = _options(broadcast_from_rank0=True)
    set_model_state_dict(model, state["model"] if main else {}, options=options)
    optim = by_name(state["optimiser"], optimiser_names(model, optimiser)) if main else {}
    set_optimizer_state_dict(model, optimiser, optim, options=options)
    return step[0]


def checksum(weights: Mapping[str, torch.Tensor]) -> float:
    """A cheap, order-sensitive fingerprint of a state dict: equal weights give equal sums.

    Linear in the elements, so the sum of the ranks' checksums of their shards is the whole's.
    """
    with torch.no_grad():
        return float(sum(v.double().sum() * (i + 1) for i, v in enumerate(weights.values())))


def weights_checksum(model: nn.Module, sharded: bool) -> float:
    """:func:`checksum` of the full weights; sharded, a collective over the shards (nothing gathered)."""
    if not sharded:
        return checksum(model.state_dict())
    from torch.distributed.tensor import DTensor

    local = {k: v.to_local() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    total = torch.tensor([checksum(local)], dtype=torch.float64, device=next(model.parameters()).device)
    dist.all_reduce(total)
    return float(total[0])


def state_mib(model: nn.Module, optimiser: torch.optim.Optimizer) -> float:
    """What this rank holds of the training state: its weights, gradients and optimiser moments
    (its shards of them under FSDP). Counted from the tensors, so allocator caching and heap
    fragmentation do not blur it; DDP's gradient buckets (a further 4 bytes a parameter) are not in it."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    tensors = [*parameters, *(p.grad for p in parameters if p.grad is not None)]
    tensors += [v for state in optimiser.state.values() for v in state.values() if torch.is_tensor(v)]
    local = (t.to_local() if isinstance(t, DTensor) else t for t in tensors)
    return sum(t.numel() * t.element_size() for t in local) / 2**20


def peak_memory_mib(device: torch.device) -> float:
    """This process's peak memory: allocated CUDA memory on a GPU, else resident memory (VmHWM,
    which unlike ``ru_maxrss`` is not inherited across ``exec`` from a large parent)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
