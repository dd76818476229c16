"""Reading and writing checkpoints: official ``.pth``, Hugging Face ``-hf`` safetensors, ours.

Every format is mapped to the official state-dict names in one place (``to_official``), then
loaded strictly: a file of another model fails with its missing and unexpected keys listed,
never as a silent partial load. Nothing is ever unpickled beyond plain tensors.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from runtime.io.files import atomic_write

from .depth_anything import DepthAnythingV2
from .state import listed, state_mismatch
from .variants import VARIANTS, ModelSpec, get_spec
from .video.checkpoint import is_video_state, load_video_model

FORMAT_TAG = "dav2-edge"
_WRAPPER_KEYS = ("model", "state_dict", "module")


# The published weights' licences, by encoder. Depth-Anything-V2's README (DepthAnything/
# Depth-Anything-V2 @ 049f021, "LICENSE"): "Depth-Anything-V2-Small model is under the Apache-2.0
# license. Depth-Anything-V2-Base/Large/Giant models are under the CC-BY-NC-4.0 license."; the
# Hugging Face cards agree (depth-anything/Depth-Anything-V2-Small and -Small-hf: apache-2.0;
# -Large and -Large-hf: cc-by-nc-4.0). The metric checkpoints' cards are tagged apache-2.0 even for
# Base/Large, which the README does not say: the README's stricter rule is kept for them too.
OFFICIAL_LICENCES = {"vits": "Apache-2.0", "vitb": "CC-BY-NC-4.0", "vitl": "CC-BY-NC-4.0", "vitg": "CC-BY-NC-4.0"}
UNKNOWN_LICENCE = "unknown"


def checkpoint_licence(metadata: Mapping[str, str], spec: ModelSpec) -> str:
    """Ours: what the file's metadata says (``license``), else unknown; the published ones (official
    ``.pth``, Hugging Face ``-hf``): by encoder."""
    if metadata.get("format") == FORMAT_TAG:
        return metadata.get("license") or metadata.get("licence") or UNKNOWN_LICENCE
    return OFFICIAL_LICENCES.get(spec.name, UNKNOWN_LICENCE)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


# Hugging Face ``DepthAnythingForDepthEstimation`` names -> official names. The q/k/v split
# is undone separately. The fusion stages are numbered in reverse there (layers.0 = refinenet4).
_HF_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^backbone\.embeddings\.cls_token$", "pretrained.cls_token"),
        (r"^backbone\.embeddings\.mask_token$", "pretrained.mask_token"),
        (r"^backbone\.embeddings\.position_embeddings$", "pretrained.pos_embed"),
        (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
        (r"^backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"pretrained.blocks.\1.ls\2.gamma"),
        (r"^backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"pretrained.blocks.\1.attn.proj."),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"pretrained.blocks.\1.mlp.w12."),
        (r"^backbone\.encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"pretrained.blocks.\1.mlp.w3."),
        (r"^backbone\.encoder\.layer\.(\d+)\.", r"pretrained.blocks.\1."),
        (r"^backbone\.layernorm\.", "pretrained.norm."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
        (r"^neck\.convs\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
        (r"^neck\.fusion_stage\.layers\.(\d)\.", lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}."),
        (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
        (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
        (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
    ]
]
_HF_FUSION_PARTS = [
    (re.compile(r"\.projection\."), ".out_conv."),
    (re.compile(r"\.residual_layer(\d)\.convolution(\d)\."), r".resConfUnit\1.conv\2."),
]
_HF_QKV = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def _hf_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _HF_QKV.match(key)
        if match:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = value
            continue
        new = key
        for pattern, repl in _HF_RULES:
            new, hits = pattern.subn(repl, new, count=1)
            if hits:
                break
        if new.startswith("depth_head.scratch.refinenet"):
            for pattern, repl in _HF_FUSION_PARTS:
                new = pattern.sub(repl, new)
        out[new] = value
    for (block, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            # Left under its own name so the strict check reports it instead of guessing.
            out.update({f"backbone.encoder.layer.{block}.attention.attention.{p}.{leaf}": t for p, t in parts.items()})
            continue
        out[f"pretrained.blocks.{block}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def to_official(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Map a state dict from any known source to the official names; also say which source."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):  # saved from a DDP-wrapped model
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
        keys = list(state_dict)
    if any(k.startswith("backbone.embeddings.") for k in keys):
        return _hf_to_official(state_dict), "huggingface"
    return dict(state_dict), "official"


def infer_spec(state_dict: Mapping[str, torch.Tensor]) -> ModelSpec:
    """The variant whose width, depth and feed-forward type match the tensors."""
    pos = state_dict.get("pretrained.pos_embed")
    if pos is None:
        raise CheckpointError(
            "cannot tell the encoder: the file has no 'pretrained.pos_embed' tensor, so it is not a "
            "Depth Anything V2 checkpoint (pass encoder= if it is one under other names)"
        )
    width = pos.shape[-1]
    depth = 1 + max((int(m[1]) for k in state_dict if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))), default=-1)
    ffn = "swiglu" if any(".mlp.w12." in k for k in state_dict) else "mlp"
    for spec in VARIANTS.values():
        if (spec.embed_dim, spec.depth, spec.ffn) == (width, depth, ffn):
            return spec
    raise CheckpointError(
        f"no known encoder has width {width}, {depth} blocks and a {ffn} feed-forward; "
        f"known: {', '.join(f'{s.name} ({s.embed_dim}x{s.depth})' for s in VARIANTS.values())}"
    )


def sniff(path: Path) -> str:
    """What a would-be checkpoint file is, from its first bytes: ``torch-zip`` (``torch.save``),
    ``pickle`` (the legacy ``torch.save`` format), ``safetensors``, ``zip`` (some other archive),
    ``damaged-zip``, ``empty``, ``html``, ``lfs-pointer``, ``text`` or ``unknown``."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "damaged-zip"
        return "torch-zip" if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names) else "zip"
    # safetensors before pickle: its first byte is the low byte of the header length, which is
    # 0x80 (pickle's PROTO opcode) for one header in 256 (seen with safetensors 0.8's headers).
    if len(head) >= 10 and head[8:9] == b"{":  # u64 header length, then the JSON header
        (length,) = struct.unpack("<Q", head[:8])
        if 0 < length <= path.stat().st_size - 8:
            return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # PROTO 2-5: torch.save's legacy format
        return "pickle"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "lfs-pointer"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "html"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "text"
    return "unknown"


_NOT_A_CHECKPOINT = {
    "empty": "an empty file (0 bytes), not a checkpoint: an interrupted download or copy; fetch it again",
    "damaged-zip": "a damaged zip archive (cut short by an interrupted download?); download it again",
    "html": "an HTML page, not a checkpoint (a failed download: the server sent a web page such as a "
    "login, error or redirect page); download the file itself again (on Hugging Face, a /resolve/ URL)",
    "lfs-pointer": "a Git LFS pointer, not the weights: run 'git lfs pull' in the repository it came from",
    "text": "a text file, not a checkpoint (PyTorch checkpoints are zip archives or pickles, safetensors "
    "files start with a JSON header); check the path or download it again",
    "zip": "a zip archive but not a PyTorch checkpoint (no data.pkl inside); check the path",
    "unknown": "neither a PyTorch checkpoint (a zip archive or a pickle) nor a safetensors file; check the "
    "path, or download it again if it may be damaged",
}


def _unpickle_safely(path: Path, map_location: str | torch.device) -> object:
    try:
        with warnings.catch_warnings():  # torch's note on a pickle's protocol: the refusal below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to load it, it holds Python objects besides tensors and loading it "
            "could run code (weights_only=True). Re-save only the state dict, or convert it to "
            ".safetensors on a machine you trust"
        ) from exc
    except Exception as exc:  # a damaged archive fails deep inside torch with many exception types
        raise CheckpointError(
            f"{path}: a damaged PyTorch checkpoint ({exc.__class__.__name__}: {str(exc).strip().splitlines()[0]}); "
            "download or copy it again"
        ) from exc


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The raw state dict and the metadata of a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory: pass the checkpoint file inside it (.pth or .safetensors)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kind = sniff(path)
    if kind in _NOT_A_CHECKPOINT:
        raise CheckpointError(f"{path}: {_NOT_A_CHECKPOINT[kind]}")
    if kind == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        return state, metadata
    obj = _unpickle_safely(path, map_location)
    while isinstance(obj, Mapping):
        wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if not wrapped:
            break
        obj = obj[wrapped[0]]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj), {}


def _max_depth_from_metadata(path: Path, metadata: Mapping[str, str]) -> float | None:
    if metadata.get("max_depth"):
        return float(metadata["max_depth"])
    config = path.with_name("config.json")  # Hugging Face model folders keep the head type there
    if path.suffix == ".safetensors" and config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if cfg.get("depth_estimation_type") == "metric":
            return float(cfg.get("max_depth", 1.0))
    return None


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and mis-shaped tensor."""
    problems = state_mismatch(model.state_dict(), state_dict)
    if problems:
        prefix = f"{source}: " if source else ""
        parts = [f"{prefix}the checkpoint does not fit DepthAnythingV2({model.spec.name!r})", *problems]
        raise CheckpointError("; ".join(parts))


FAMILIES = ("Depth Anything V2", "Depth Anything 3", "Video Depth Anything")


def _load_da3(path: Path, variant: str | None, map_location: str | torch.device) -> torch.nn.Module:
    """A ``DepthAnything3`` in eval mode from a snapshot folder, or a ``model.safetensors`` + ``variant``."""
    from .da3.checkpoint import build_da3, resolve_files, strip_prefix

    try:
        weights, name = resolve_files(path, variant)
        raw, _ = read_checkpoint(weights, map_location)
        return build_da3(strip_prefix(raw), name, str(path)).to(map_location)
    except ValueError as exc:  # CheckpointError is one too
        raise CheckpointError(str(exc)) from None


def load_model(
    path: str | Path,
    encoder: str | ModelSpec | None = None,
    max_depth: float | None = None,
    map_location: str | torch.device = "cpu",
    variant: str | None = None,
    metric: bool | None = None,
) -> torch.nn.Module:
    """A model in eval mode from any supported checkpoint: a ``DepthAnythingV2`` from an official
    ``.pth``, a Hugging Face ``-hf`` or our ``.safetensors``; a ``DepthAnything3`` from a Depth
    Anything 3 snapshot folder or its ``model.safetensors`` (``variant`` names the model when no
    ``config.json`` does); a ``VideoDepthAnything`` from a Video Depth Anything ``.pth``.

    The encoder comes from ``encoder``, else from our metadata, else from the tensor shapes.
    ``max_depth`` selects the metric head (official metric checkpoints carry no marker).
    A Video Depth Anything ``.pth`` gives a ``VideoDepthAnything`` (``metric``: the metric
    checkpoint under another file name; see ``train.models.video.checkpoint``).
    """
    from .da3.checkpoint import is_da3_state

    path = Path(path)
    if path.is_dir() and ((path / "config.json").is_file() or variant is not None):
        return _load_da3(path, variant, map_location)
    raw, metadata = read_checkpoint(path, map_location)
    if is_da3_state(list(raw)):
        return _load_da3(path, variant, map_location)
    if variant is not None:
        raise CheckpointError(f"{path}: variant={variant!r} names a Depth Anything 3 model, but this is not one")
    state, _source = to_official(raw)
    if is_video_state(state):  # Video Depth Anything: its own network (train.models.video)
        try:
            spec = get_spec(encoder) if encoder is not None else infer_spec(state)
            return load_video_model(path, state, metadata, spec, metric).to(map_location)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: a Video Depth Anything checkpoint, but {exc}") from None
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    if encoder is not None:
        spec = get_spec(encoder)
    elif "spec" in metadata:
        spec = ModelSpec.from_json(metadata["spec"])
    else:
        try:
            spec = infer_spec(state)
        except CheckpointError as exc:
            if "pretrained.pos_embed" not in state:  # none of the families' keys
                raise CheckpointError(
                    f"{path}: not a Depth Anything V2 checkpoint, nor of any known family (tried "
                    f"{', '.join(FAMILIES)}); its first keys: "
                    f"{', '.join(list(raw)[:3]) or '(none)'}"
                ) from None
            raise CheckpointError(f"{path}: {exc}") from None
    if max_depth is None:
        max_depth = _max_depth_from_metadata(path, metadata)
    kind = metadata.get("output_kind") if metadata.get("format") == FORMAT_TAG and max_depth is None else None
    model = DepthAnythingV2(spec, max_depth=max_depth, output_kind=kind or None)  # a distilled student's kind
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    model.licence = checkpoint_licence(metadata, spec)  # travels into every artefact's sidecar
    return model.to(map_location).eval()


def save_model(
    model: torch.nn.Module,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write official-named weights and the variant to ``.safetensors``, atomically.

    ``state_dict`` replaces the model's own (a sharded model's weights, gathered by the caller).
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # DDP / compiled wrappers
    if not isinstance(model, DepthAnythingV2):
        raise TypeError(f"save_model expects a DepthAnythingV2, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: save_model writes .safetensors files; use that suffix")
    meta = {
        "format": FORMAT_TAG,
        "encoder": model.spec.name,
        "spec": model.spec.to_json(),
        "max_depth": "" if model.max_depth is None else repr(float(model.max_depth)),
        "output_kind": model.output_kind,
    }
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    weights = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


_BACKBONE_PREFIXES = ("pretrained.", "backbone.", "encoder.", "model.", "module.")


def load_backbone(model: DepthAnythingV2, path: str | Path) -> list[str]:
    """Initialise the encoder from DINOv2 weights (official ``dinov2_vits14.pth`` or timm naming).

    Every encoder tensor must be present with the right shape (``mask_token`` may be absent:
    timm drops it); anything else in the file (a classifier head, register tokens) is
    returned as ignored keys. A mismatch is a ``CheckpointError`` listing what is wrong.
    """
    raw, _ = read_checkpoint(path)
    state = {}
    for key, value in raw.items():
        for prefix in _BACKBONE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        state[key] = value
    expected = model.pretrained.state_dict()
    missing = [k for k in expected if k not in state and k != "mask_token"]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        parts = [f"{path}: not DINOv2 {model.spec.name} encoder weights"]
        if missing:
            parts.append(f"missing keys: {listed(missing)}")
        if wrong:
            parts.append(f"wrong shapes: {listed(wrong)}")
        raise CheckpointError("; ".join(parts))
    model.pretrained.load_state_dict({k: state.get(k, v) for k, v in expected.items()})
    return sorted(k for k in state if k not in expected)
