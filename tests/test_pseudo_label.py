"""Stage 2 at scale: batches grouped by input size, loader workers, mixed precision, the label
formats and what they cost, on real SA-1B-format shards made here."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import REPO, make_tiny_spec
from tests.sa1b import make_shard, shard_photos
from train.data import sa1b
from train.data.labels import FORMATS, LabelReader, LabelWriter, decode, encode
from train.plan import real_disparity
from train.pseudo_label import check_precision, group_by_size, label_images, label_source

ASPECTS = (1.5, 1.0, 0.75, 2.0)  # landscape, square, portrait, panorama: four network input sizes
SIZE = 112


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher trained for a few steps on procedural scenes, so its labels vary like depth.

    Untrained, the model's map is nearly flat (its spread is ~2% of its level), and then 1e-5 of
    the map's spread is below what FP32 convolutions round differently between batch sizes (oneDNN
    picks its algorithm by batch size; measured 3e-5 of such a flat map's spread, 1.5e-6 of a
    trained one's)."""
    from train.data.datasets import SceneDataset
    from train.data.synthetic import SyntheticScenes
    from train.engine import TrainConfig, train
    from train.losses import DistillationLoss
    from train.models import DepthAnythingV2, freeze, save_model

    torch.manual_seed(0)
    model = DepthAnythingV2(make_tiny_spec())
    run = tmp_path_factory.mktemp("teacher")
    config = TrainConfig(output=run, steps=16, batch_size=4, lr=2e-4, crop=SIZE, workers=0, save_every=16)
    scenes = SceneDataset(SyntheticScenes(16, size=(140, 179), seed=0), SIZE)
    train(model, scenes, DistillationLoss(trim=0), config, "teacher")
    save_model(model, run / "teacher.safetensors")
    return freeze(model), run / "teacher.safetensors"


@pytest.fixture(scope="module")
def mixed_shard(tmp_path_factory) -> Path:
    return make_shard(tmp_path_factory.mktemp("sa1b") / "sa_000000.tar", count=12, aspects=ASPECTS)


def test_group_by_size_batches_one_shape_and_bounds_what_waits():
    shapes = [(3, 14, 28), (3, 28, 14), (3, 14, 28), None, (3, 14, 28), (3, 28, 14), (3, 42, 14), (3, 14, 28)]
    items = [(i, None if s is None else torch.zeros(s)) for i, s in enumerate(shapes)]
    groups = [[i for i, _ in g] for g in group_by_size(items, batch_size=3)]
    assert groups == [[3], [0, 2, 4], [1, 5], [6], [7]]  # unreadable at once, full batch when full
    for group in group_by_size(items, batch_size=3):
        assert len({None if t is None else tuple(t.shape) for _, t in group}) == 1
    # At most max_waiting inputs wait: the fullest partial batch leaves early.
    early = [[i for i, _ in g] for g in group_by_size(items, batch_size=3, max_waiting=2)]
    assert early == [[0, 2], [3], [1, 5], [4, 7], [6]]


def test_batched_labels_equal_one_at_a_time(teacher, mixed_shard):
    model, _ = teacher
    candidates, _ = sa1b.members(mixed_shard)
    calls: list[tuple[int, ...]] = []
    hook = model.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    try:
        one = dict(label_images(model, candidates, SIZE, batch_size=1, workers=0))
        calls.clear()
        batched = dict(label_images(model, candidates, SIZE, batch_size=3, workers=2))
    finally:
        hook.remove()
    assert sorted(one) == sorted(batched) == list(range(len(candidates)))
    assert [i for i in one if one[i] is None] == [i for i in batched if batched[i] is None] == [12]  # truncated jpeg
    assert len({shape[2:] for shape in calls}) == len(ASPECTS) and max(shape[0] for shape in calls) == 3
    worst = 0.0
    for i, label in one.items():
        if label is not None:
            assert batched[i].shape == label.shape
            worst = max(worst, float(np.abs(batched[i] - label).max() / label.std()))
    print(f"batched vs one-at-a-time, FP32: max |diff| / std = {worst:.1e}")
    assert worst <= 1e-5


def test_cli_batched_png16_labels_resume_and_train(tmp_path, teacher, mixed_shard):
    model, checkpoint = teacher
    source = tmp_path / "sa1b"
    source.mkdir()
    (source / mixed_shard.name).symlink_to(mixed_shard)
    make_shard(source / "sa_000001.tar", count=5, seed=1, faults=False)
    command = [sys.executable, "-m", "train.pseudo_label", "--teacher", str(checkpoint), "--source", str(source)]
    command += ["--output", str(tmp_path / "labels"), "--size", str(SIZE), "--batch-size", "4", "--workers", "1"]
    command += ["--label-format", "png16"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "17 images labelled in 2 shards" in run.stdout and "1 corrupt images skipped" in run.stdout
    # The one-at-a-time reference, in FP32 and in process.
    reference = tmp_path / "reference"
    totals = label_source(model, source, reference, SIZE, progress=False, label_format="float16")
    assert totals["images"] == 17
    exact = {}
    for container in sa1b.containers(source):
        found, _ = sa1b.members(container)
        exact.update({(container.name, i): label for i, label in label_images(model, found, SIZE)})
    reader = LabelReader()
    for shard in ("sa_000000.tar", "sa_000001.tar"):
        index = json.loads((tmp_path / "labels" / f"{shard}.json").read_text())
        plain = json.loads((reference / f"{shard}.json").read_text())
        assert index["format"] == "png16" and (tmp_path / "labels" / index["labels"]).is_file()
        assert [(e["member"], e["key"], e["shape"]) for e in index["entries"]] == [
            (e["member"], e["key"], e["shape"]) for e in plain["entries"]
        ]
        assert index["corrupt"] == plain["corrupt"] and index["rejected"] == plain["rejected"]
        for entry in index["entries"]:
            label = reader.read({**entry, "format": "png16", "labels": str(tmp_path / "labels" / index["labels"])})
            truth = exact[(shard, int(entry["key"][1:]))]
            assert np.abs(label - truth).max() <= entry["scale"] / 2 + 1e-5 * truth.std()
    # A killed run is resumed shard by shard: only the shard without an index is done again.
    (tmp_path / "labels" / "sa_000001.tar.json").unlink()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "5 images labelled in 1 shards" in again.stdout and "1 shards already done" in again.stdout
    from train.data.datasets import PseudoLabelDataset

    dataset = PseudoLabelDataset(tmp_path / "labels", crop=SIZE)
    image, _, mask = dataset.sample(0, np.random.default_rng(0))
    assert len(dataset) == 17 and image.shape == (3, SIZE, SIZE) and mask.all() and dataset.skipped == 0


def test_amp_bf16_on_the_cpu_and_clear_errors(teacher, mixed_shard):
    model, _ = teacher
    candidates, _ = sa1b.members(mixed_shard)
    exact = dict(label_images(model, candidates[:4], SIZE))
    half = dict(label_images(model, candidates[:4], SIZE, batch_size=4, amp="bf16"))
    errors = [float(np.abs(half[i] - exact[i]).max() / exact[i].std()) for i in exact]
    print(f"bf16 autocast on the CPU vs FP32: max |diff| / std = {max(errors):.1e}")
    assert 0 < max(errors) < 0.1  # really bf16, and close
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA GPU"):
        check_precision("fp16", torch.device("cpu"))
    command = [sys.executable, "-m", "train.pseudo_label", "--teacher", "x", "--source", "y", "--output", "z"]
    run = subprocess.run([*command, "--batch-size", "0"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2 and "--batch-size: '0' is out of range: give a whole number from 1" in run.stderr
    for size in ("0", "-14", "100000"):  # an OpenCV assertion, a 160 GB allocation before
        run = subprocess.run([*command, "--size", size], cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 2 and f"--size: '{size}' is out of range: give a whole number from 14 to" in run.stderr


def test_label_formats_round_trip_and_their_bytes_per_image(tmp_path):
    label = real_disparity()
    finite = np.isfinite(label)
    assert 0.8 < finite.mean() < 1
    sizes, decoded = {}, {}
    for fmt in FORMATS:
        writer = LabelWriter(tmp_path / fmt, fmt)
        writer.add({"key": "m0"}, label)
        [entry] = writer.close()
        sizes[fmt] = (tmp_path / fmt).stat().st_size  # one label and its container's overhead
        back = decoded[fmt] = LabelReader().read({**entry, "format": fmt, "labels": str(tmp_path / fmt)})
        assert back.dtype == np.float32 and back.shape == label.shape
        assert np.array_equal(np.isfinite(back), finite)  # invalid pixels stay invalid
        error = np.abs(back[finite] - label[finite])
        if fmt == "png16":
            assert (error <= entry["scale"] / 2 + np.abs(label[finite]) * 2.0**-23).all()  # + float32 rounding
            assert entry["scale"] == pytest.approx((np.nanmax(label) - np.nanmin(label)) / 65534)
        else:
            assert (error <= np.abs(label[finite]) * 2.0**-11).all()
    assert np.array_equal(decoded["float16z"], decoded["float16"], equal_nan=True)  # lossless compaction
    pixels = label.size
    print(
        f"{label.shape[0]}x{label.shape[1]} label: "
        + ", ".join(f"{f} {n} bytes ({n / pixels:.2f} B/px)" for f, n in sizes.items())
    )
    assert 2 * pixels < sizes["float16"] < 2 * pixels + 1024
    assert sizes["float16z"] < sizes["float16"] / 2 and sizes["png16"] < sizes["float16"] / 1.5
    flat, fields = encode(np.full((14, 28), 3.5, np.float32), "png16")
    assert np.array_equal(decode(flat, "png16", fields), np.full((14, 28), 3.5, np.float32))
    empty, fields = encode(np.full((14, 14), np.nan, np.float32), "png16")
    assert np.isnan(decode(empty, "png16", fields)).all()


def test_compact_labels_leave_the_training_loss_unchanged():
    """Stage 3's loss (trimmed scale-and-shift-invariant MAE + gradient matching) with each format's
    labels against the exact float32 label: float16z changes nothing float16 does not, and png16
    changes the loss an order of magnitude less than the float16 that stage 2 always wrote."""
    from train.losses import DistillationLoss

    loss = DistillationLoss()
    rng = np.random.default_rng(0)
    changes: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
    real = real_disparity()
    # The real map, and the same scene far away: disparity 20x smaller on an offset, as a
    # landscape's is; float16 then keeps only a few hundred levels of its spread.
    for label in (real, 1.0 + real / 20):
        # A student's guess: monotone in the truth but bent, blurred and noisy, as early in training.
        guess = np.sqrt(np.nan_to_num(label, nan=float(np.nanmean(label)))) + rng.normal(0, 0.3, label.shape)
        pred = torch.from_numpy(cv2.GaussianBlur(guess.astype(np.float32), (5, 5), 2))[None]
        mask = torch.from_numpy(np.isfinite(label))[None]
        exact = float(loss(pred, torch.from_numpy(label)[None], mask))
        for fmt in FORMATS:
            data, fields = encode(label, fmt)
            stored = torch.from_numpy(decode(data, fmt, fields))[None]
            changes[fmt].append(abs(float(loss(pred, stored, mask)) - exact) / exact)
    print(
        "relative change of the stage-3 loss (real, far): "
        + ", ".join(f"{f} {c[0]:.1e} {c[1]:.1e}" for f, c in changes.items())
    )
    assert changes["float16z"] == changes["float16"]
    for png16, float16 in zip(changes["png16"], changes["float16"], strict=True):
        assert png16 < float16 / 5 and png16 < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_batched_bf16_stage2_on_cuda(teacher, mixed_shard):
    """On the GPU: batched FP32 (TF32 off) equals one-at-a-time, batched bf16 stays near it; and
    the images/s of ViT-S at 518 one at a time and batched in bf16 (workers, pinned memory)."""
    import copy
    import time

    model = copy.deepcopy(teacher[0]).cuda()
    candidates, _ = sa1b.members(mixed_shard)
    one = dict(label_images(model, candidates, SIZE))
    batched = dict(label_images(model, candidates, SIZE, batch_size=3, workers=2))
    half = dict(label_images(model, candidates, SIZE, batch_size=3, workers=2, amp="bf16"))
    on_cpu = dict(label_images(teacher[0], candidates, SIZE))
    for i, label in one.items():
        if label is None:
            continue
        assert np.abs(batched[i] - label).max() <= 1e-5 * label.std()
        assert np.abs(label - on_cpu[i]).max() <= 1e-4 * label.std()  # FP32 for real: no TF32
        assert 0 < np.abs(half[i] - label).max() <= 0.1 * label.std()
    from train.models import DepthAnythingV2, freeze

    vits = freeze(DepthAnythingV2("vits")).cuda()
    big = make_shard(mixed_shard.parent / "big" / "sa_000000.tar", count=32, faults=False)
    photos, _ = sa1b.members(big)
    rates = {}
    for name, options in (("one at a time", {}), ("batched bf16", {"batch_size": 8, "workers": 4, "amp": "bf16"})):
        for _ in range(2):  # the first pass warms up kernels and the page cache
            started = time.perf_counter()
            assert sum(1 for _ in label_images(vits, photos, 518, **options)) == 32
            rates[name] = 32 / (time.perf_counter() - started)
    print(f"{torch.cuda.get_device_name(0)} vits stage 2 at 518, images/s (measured, not asserted): {rates}")


def _photo_folder(root: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = shard_photos()
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = photos[i % len(photos)]
        y, x = int(rng.integers(0, 20)), int(rng.integers(0, 20))
        cv2.imwrite(str(path), np.ascontiguousarray(photo[y : y + 150, x : x + 200]))


def test_folder_images_are_keyed_by_their_path_and_grouped_by_folder(tmp_path, teacher):
    model, checkpoint = teacher
    source = tmp_path / "images"
    _photo_folder(source, ["a/x.jpg", "b/x.jpg", "b/y.jpg", "b/z.png", "top.jpg"])
    totals = label_source(model, source, tmp_path / "labels", SIZE, progress=False, checkpoint=checkpoint)
    # Five images in three folders: three shards, none "already done", the two x.jpg both labelled.
    assert (totals["images"], totals["shards"], totals["skipped_done"]) == (5, 3, 0)
    from train.data.datasets import PseudoLabelDataset, read_label_index

    entries = read_label_index(tmp_path / "labels")
    assert sorted(str(Path(e["container"]).name) + "/" + e["member"] for e in entries) == [
        "a/x.jpg",
        "b/x.jpg",
        "b/y.jpg",
        "b/z.png",
        "images/top.jpg",
    ]
    index = json.loads((tmp_path / "labels" / "b" / "_images.json").read_text())
    assert index["teacher"]["checkpoint"] == str(checkpoint) and len(index["teacher"]["sha256"]) == 64
    assert PseudoLabelDataset(tmp_path / "labels", crop=SIZE).sample(1, np.random.default_rng(0))[2].any()
    # Same options again: everything already done. A label file gone: its shard is not trusted.
    assert label_source(model, source, tmp_path / "labels", SIZE, progress=False)["skipped_done"] == 3
    (tmp_path / "labels" / index["labels"]).unlink()
    again = label_source(model, source, tmp_path / "labels", SIZE, progress=False, checkpoint=checkpoint)
    assert (again["shards"], again["images"], again["skipped_done"]) == (1, 3, 2)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"size": 2 * SIZE}, "--size 224"),
        ({"label_format": "png16"}, "--label-format png16"),
        ({"amp": "bf16"}, "--amp bf16"),
        ({"teacher": "other"}, "teacher"),
    ],
)
def test_a_resume_with_other_settings_is_refused(tmp_path, teacher, change, says):
    from commands.errors import InputError

    model, _ = teacher
    source = tmp_path / "images"
    _photo_folder(source, ["p.jpg", "q.jpg"])
    label_source(model, source, tmp_path / "labels", SIZE, progress=False)
    before = sorted(p.name for p in (tmp_path / "labels").iterdir())
    options = {"size": SIZE, "label_format": "float16", "amp": "none", **change}
    other = model
    if options.pop("teacher", None):
        other = copy.deepcopy(model)
        with torch.no_grad():
            next(other.parameters()).add_(1e-3)
    (source / "new").mkdir()
    _photo_folder(source / "new", ["r.jpg"])
    with pytest.raises(InputError, match=re.escape(says)) as caught:
        label_source(other, source, tmp_path / "labels", progress=False, **options)
    assert "label into another --output" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == before  # nothing written


def test_a_truncated_tar_shard_is_skipped_and_counted(tmp_path, teacher):
    _, checkpoint = teacher
    source = tmp_path / "sa1b"
    make_shard(source / "sa_000000.tar", count=3, faults=False)
    whole = make_shard(source / "sa_000001.tar", count=3, seed=1, faults=False)
    data = whole.read_bytes()
    (source / "sa_000002.tar").write_bytes(data[: len(data) // 2 + 100])  # a half-copied shard
    command = [sys.executable, "-m", "train.pseudo_label", "--teacher", str(checkpoint), "--source", str(source)]
    command += ["--output", str(tmp_path / "labels"), "--size", str(SIZE), "--workers", "0"]
    for _ in range(2):  # every rerun labels what it can and names the same shard
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert run.returncode == 1, run.stderr[-2000:]
        assert "1 unreadable shards skipped" in run.stdout and "sa_000002.tar: unreadable tar shard" in run.stdout
        assert "1 shards could not be read" in run.stderr and "Traceback" not in run.stderr
    assert "0 images labelled in 0 shards" in run.stdout and "2 shards already done" in run.stdout
    assert sorted(p.name for p in (tmp_path / "labels").glob("*.json")) == ["sa_000000.tar.json", "sa_000001.tar.json"]
