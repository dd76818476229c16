"""Deterministic weights with the activation outliers real vision transformers have, for testing
INT8 against the failure it exists for. Not a trained model: its depth means nothing.

Trained DINOv2/CLIP ViTs carry a few residual-stream channels and a few tokens whose activations
are one to two orders of magnitude above the rest ("Vision Transformers Need Registers", Darcet et
al. 2023; "Massive Activations in Large Language Models", Sun et al. 2024, ViTs included), and
LayerNorm's gain amplifies some channels ("Outlier Suppression", Wei et al. 2022). With the per-tensor
activation scales TensorRT and OpenVINO use, such a channel either clips or leaves the other
channels a handful of INT8 levels. ``add_outliers`` builds three such patterns into any model:

1. LayerNorm-output channel outliers: in every block, ``norm1``/``norm2`` gains of ``CHANNELS`` are
   multiplied by ``GAIN`` and the matching input rows of ``attn.qkv``/``mlp.fc1`` divided by it.
   The FP32 function is unchanged (to rounding); only the activations feeding those linears carry
   the outliers, which is what SmoothQuant-style migration undoes exactly.
2. MLP hidden outliers: in ``HIDDEN_BLOCKS``, two ``mlp.fc1`` outputs get a bias of ``HIDDEN_BIAS``
   (GELU passes it through), so ``mlp.fc2``'s input has two huge channels; ``fc2``'s columns for them
   are scaled down by the same factor. Not LayerNorm-fed: only keeping that ``fc2`` in float helps.
3. Token outliers: ``TOKENS`` patch positions get ``TOKEN_NORM`` added to their position embedding,
   so a few tokens of the residual stream are far larger than the rest, as register-like tokens are.

As a checkpoint for the export commands: ``python -m tests.stress --output stress_vits.safetensors
[--encoder vits] [--seed 0]`` (this project's ``.safetensors``, read by ``--checkpoint``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

CHANNELS = (7, 101, 230, 333)
GAIN = 256.0
HIDDEN_BLOCKS = (2, 5, 8, 11)
HIDDEN_CHANNELS = (17, 900)
HIDDEN_BIAS = 2000.0
TOKENS = (0, 444, 777, 1200)
TOKEN_NORM = 30.0
BLOCK_GAIN = 8.0
HEAD_BIAS = 0.02


@torch.no_grad()
def add_outliers(model: torch.nn.Module) -> torch.nn.Module:
    """Build the outliers above into ``model`` (a ``DepthAnythingV2``) in place; returns it."""
    vit = model.pretrained
    dim = vit.spec.embed_dim
    channels = [c % dim for c in CHANNELS]
    for index, block in enumerate(vit.blocks):
        for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
            norm.weight[channels] *= GAIN
            norm.bias[channels] *= GAIN
            linear.weight[:, channels] /= GAIN
        if index in HIDDEN_BLOCKS and hasattr(block.mlp, "fc1"):
            hidden = [c % block.mlp.fc1.out_features for c in HIDDEN_CHANNELS]
            block.mlp.fc1.bias[hidden] += HIDDEN_BIAS
            block.mlp.fc2.weight[:, hidden] /= HIDDEN_BIAS
    tokens = [1 + t % (vit.pos_embed.shape[1] - 1) for t in TOKENS]  # +1: position 0 is the class token
    direction = torch.linspace(-1.0, 1.0, dim, device=vit.pos_embed.device)
    vit.pos_embed[0, tokens] += TOKEN_NORM * direction / direction.norm() * dim**0.5
    return model


@torch.no_grad()
def stress_model(encoder: str = "vits", seed: int = 0) -> torch.nn.Module:
    """Seeded random weights of ``encoder`` with the outliers built in.

    Two changes make the random model's depth depend on its blocks, as a trained model's does: the
    blocks' LayerScale gains are raised to ``BLOCK_GAIN`` (at initialisation they add little to the
    residual stream), and the head's last bias is lowered to ``HEAD_BIAS`` (the official 0.5 leaves a
    map that varies by under 1 %, which no INT8 error can move far).
    """
    from train.models import DepthAnythingV2

    torch.manual_seed(seed)
    model = DepthAnythingV2(encoder).eval()
    for block in model.pretrained.blocks:
        block.ls1.gamma.fill_(BLOCK_GAIN)
        block.ls2.gamma.fill_(BLOCK_GAIN)
    # The official head's output bias (0.5) drowns the random features: the map would vary by <1 %.
    model.depth_head.scratch.output_conv2[2].bias.fill_(HEAD_BIAS)
    return add_outliers(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.stress",
        description="Write the stress weights (seeded random weights with ViT activation outliers) as a checkpoint.",
    )
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--encoder", choices=("vits", "vitb", "vitl", "vitg"), default="vits", help="default vits")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    from train.models import save_model

    save_model(stress_model(args.encoder, args.seed), args.output, {"weights": "tests.stress (not a trained model)"})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
