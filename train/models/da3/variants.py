"""The table of Depth Anything 3 networks: one row per published model, nothing copied into scripts.

Each row says what the official config (``configs/<name>.yaml`` of ByteDance-Seed/Depth-Anything-3)
builds: the DINOv2 encoder, the blocks whose tokens feed the head, where alternating (camera-token)
attention, QK-norm and 2-D RoPE start (-1: never), whether the head sees the last local block's
tokens concatenated to each taken layer's (``cat_token``), the head (``dpt``: depth + sky;
``dualdpt``: depth + confidence + ray map) and whether a camera decoder predicts pose and field of
view. What the numbers mean (``output``) and the weights' licence travel with every artefact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..variants import VARIANTS as ENCODERS

FAMILY = "depth-anything-3"
# What a DA3 network's ``depth`` is: depth up to an unknown scale (any-view and mono networks), or
# depth per focal length (the metric network: metres = focal_px * depth / 300, focal in pixels of
# the image the network sees).
DEPTH_UP_TO_SCALE = "depth_up_to_scale"
METRES_PER_FOCAL = "metres_per_focal"
METRIC_FOCAL_DIVISOR = 300.0


@dataclass(frozen=True)
class DA3Spec:
    name: str
    encoder: str  # a row of train.models.variants.VARIANTS
    out_layers: tuple[int, int, int, int]
    alt_start: int
    qknorm_start: int
    rope_start: int
    cat_token: bool
    head: str  # "dpt" (depth, sky) or "dualdpt" (depth, depth_conf, ray)
    features: int
    out_channels: tuple[int, int, int, int]
    camera: bool  # camera encoder + decoder (the any-view networks)
    output: str
    licence: str

    @property
    def embed_dim(self) -> int:
        return ENCODERS[self.encoder].embed_dim

    @property
    def head_dim_in(self) -> int:
        return self.embed_dim * (2 if self.cat_token else 1)

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.head == "dpt":
            return ("depth", "sky")
        return ("depth", "depth_conf", "extrinsics", "intrinsics")

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """The per-pixel outputs a deployed network may return after ``depth``: the sky map (the
        mono and metric networks) or the depth confidence (the any-view networks)."""
        return ("sky",) if self.head == "dpt" else ("depth_conf",)


_ANYVIEW = {"out_layers": (5, 7, 9, 11), "alt_start": 4, "qknorm_start": 4, "rope_start": 4, "cat_token": True}
_MONO = {"out_layers": (4, 11, 17, 23), "alt_start": -1, "qknorm_start": -1, "rope_start": -1, "cat_token": False}
_L_HEAD = {"features": 256, "out_channels": (256, 512, 1024, 1024)}

# Licences: the Depth-Anything-3 README's model table (DA3-Small/Base, DA3Mono-Large and
# DA3Metric-Large: Apache-2.0; DA3-Large/Giant: CC-BY-NC-4.0).
DA3_VARIANTS: dict[str, DA3Spec] = {
    "da3-small": DA3Spec(
        "da3-small",
        "vits",
        **_ANYVIEW,
        head="dualdpt",
        features=64,
        out_channels=(48, 96, 192, 384),
        camera=True,
        output=DEPTH_UP_TO_SCALE,
        licence="Apache-2.0",
    ),
    "da3-base": DA3Spec(
        "da3-base",
        "vitb",
        **_ANYVIEW,
        head="dualdpt",
        features=128,
        out_channels=(96, 192, 384, 768),
        camera=True,
        output=DEPTH_UP_TO_SCALE,
        licence="Apache-2.0",
    ),
    "da3mono-large": DA3Spec(
        "da3mono-large",
        "vitl",
        **_MONO,
        head="dpt",
        **_L_HEAD,
        camera=False,
        output=DEPTH_UP_TO_SCALE,
        licence="Apache-2.0",
    ),
    "da3metric-large": DA3Spec(
        "da3metric-large",
        "vitl",
        **_MONO,
        head="dpt",
        **_L_HEAD,
        camera=False,
        output=METRES_PER_FOCAL,
        licence="Apache-2.0",
    ),
}
# Names as the Hugging Face repositories spell them (depth-anything/DA3-SMALL, DA3METRIC-LARGE, ...).
ALIASES = {name.replace("-", ""): name for name in DA3_VARIANTS}


def get_da3_spec(name: str) -> DA3Spec:
    key = name.strip().lower().rsplit("/", 1)[-1]
    key = ALIASES.get(key.replace("-", "").replace("_", ""), key)
    try:
        return DA3_VARIANTS[key]
    except KeyError:
        raise ValueError(f"unknown Depth Anything 3 model {name!r}; known: {', '.join(DA3_VARIANTS)}") from None
