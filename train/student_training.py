"""Stage 3: the student learns from the teacher's pseudo-labels on real images.

The student learns its teacher's kind of number (the label index says which: relative inverse
depth, depth up to scale, metres per focal length, metres) and says it in its checkpoint, so its
exports and the runtime treat it as they treat the teacher. The loss follows the kind
(``train.losses.depth_kinds``): for relative labels Depth Anything V2's scale-and-shift-invariant
MAE with the worst 10% of pixels per image ignored (pseudo-labels are wrong in places), plus
gradient matching (alpha = 2); a scale-only fit in depth for depth-up-to-scale labels; the
scale-invariant log loss (lambda 0.5) for per-focal and metric labels.
"""

from __future__ import annotations

from pathlib import Path

from train.data.datasets import PseudoLabelDataset
from train.engine import TrainConfig, train
from train.losses import FeatureAlignedLoss, loss_for_kind
from train.models import DepthAnythingV2, ModelSpec, build_student, load_backbone, load_model
from train.models.checkpoint import CheckpointError
from train.models.selection import select_weights


def distill(
    labels: str | Path,
    cfg: TrainConfig,
    student: str | ModelSpec = "vits",
    init_backbone: str | Path | None = None,
    trim: float = 0.1,
    alpha: float = 2.0,
    align_backbone: str | Path | None = None,
    align_weight: float = 1.0,
    init_from: str | Path | None = None,
) -> dict:
    """Train a student on pseudo-labels; with ``align_backbone`` (DINOv2 weights of the
    student's size) its encoder is also kept close to that frozen encoder's features; with
    ``init_from`` (a larger Depth Anything V2 checkpoint) it starts from a selection of its weights."""
    dataset = PseudoLabelDataset(labels, cfg.crop)
    model = build_student(student, max_depth=dataset.max_depth, output_kind=dataset.output_kind)
    if init_from is not None:
        larger = load_model(init_from)
        if type(larger) is not DepthAnythingV2:  # a Depth Anything 3 or Video Depth Anything network
            raise CheckpointError(
                f"{init_from}: init_from takes a Depth Anything V2 checkpoint (weight selection slices its "
                f"encoder and DPT head), not a {type(larger).__name__}"
            )
        select_weights(model, larger)
    if init_backbone is not None:
        load_backbone(model, init_backbone)
    loss = loss_for_kind(dataset.output_kind, alpha=alpha, trim=trim)
    if align_backbone is not None:
        frozen = DepthAnythingV2(model.spec)
        load_backbone(frozen, align_backbone)
        loss = FeatureAlignedLoss(loss, model.pretrained, frozen.pretrained, weight=align_weight)
    teacher = {f"teacher_{k}": v for k, v in label_teacher(Path(labels)).items() if v is not None}
    return train(model, dataset, loss, cfg, "student", {"labels": str(labels), **teacher})


def label_teacher(labels: Path) -> dict:
    """The teacher's family, variant and licence as the label index records them (empty for old labels)."""
    import json

    for index_path in sorted(labels.rglob("*.json")):
        teacher = json.loads(index_path.read_text()).get("teacher") or {}
        return {k: teacher.get(k) for k in ("family", "variant", "licence")}
    return {}
