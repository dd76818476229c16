"""SA-1B calibration samples: deterministic, safe with hostile shards, cached by content."""

from __future__ import annotations

import numpy as np
import pytest

from export.quantize.calibration import CalibrationError, CalibrationSet
from runtime.preprocessing import prepare_fixed
from tests.sa1b import make_shard
from train.data.sa1b import safe_member_name

SHAPE = (140, 182)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sa1b")
    make_shard(folder / "sa_000000.tar", count=10, seed=0)
    make_shard(folder / "sa_000001.tar", count=6, seed=1, faults=False)
    return folder


def test_corrupt_images_are_skipped_and_hostile_members_rejected(shard_dir, tmp_path):
    calib = CalibrationSet(shard_dir, num_samples=16, input_shape=SHAPE, cache_dir=tmp_path / "cache", progress=False)
    assert len(calib) == 16
    assert calib.report.corrupt == ["sa_000000.tar:sa_9001.jpg"]
    assert sorted(calib.report.rejected_members) == [
        "sa_000000.tar:../escape.jpg",
        "sa_000000.tar:/tmp/absolute.jpg",
        "sa_000000.tar:sa_link.jpg",
    ]
    summary = calib.report.summary()
    assert "1 corrupt skipped" in summary and "3 unsafe tar member names rejected" in summary
    assert not (shard_dir.parent / "escape.jpg").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"cache"}


def test_sampling_is_deterministic_per_seed(shard_dir):
    first = CalibrationSet(shard_dir, 6, SHAPE, seed=3, progress=False)
    again = CalibrationSet(shard_dir, 6, SHAPE, seed=3, progress=False)
    other = CalibrationSet(shard_dir, 6, SHAPE, seed=4, progress=False)
    assert first.report.used == again.report.used and first.report.used != other.report.used
    assert np.array_equal(np.concatenate(list(first)), np.concatenate(list(again)))


def test_samples_are_the_runtime_preprocessing_of_the_member(shard_dir):
    import tarfile

    import cv2

    calib = CalibrationSet(shard_dir, 3, SHAPE, progress=False)
    shard, member = calib.report.used[0].split(":")
    with tarfile.open(shard_dir / shard) as tar:
        image = cv2.imdecode(np.frombuffer(tar.extractfile(member).read(), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(next(iter(calib)), prepare_fixed(image, SHAPE))
    assert next(iter(calib)).shape == (1, 3, *SHAPE) and next(iter(calib)).dtype == np.float32


def test_too_few_images_is_an_error_unless_allowed(shard_dir):
    with pytest.raises(CalibrationError, match=r"asked for 40 .* found only 16 usable.*`allow_fewer`"):
        CalibrationSet(shard_dir, 40, SHAPE, progress=False)
    assert len(CalibrationSet(shard_dir, 40, SHAPE, allow_fewer=True, progress=False)) == 16


def test_cache_is_reused_and_keyed_by_samples_and_shape(shard_dir, tmp_path, monkeypatch):
    import export.quantize.calibration as calibration

    cache = tmp_path / "cache"
    first = CalibrationSet(shard_dir, 5, SHAPE, cache_dir=cache, progress=False)

    def no_decoding(data):
        raise AssertionError("decoded again although the cache holds these samples")

    monkeypatch.setattr(calibration.sa1b, "decode", no_decoding)
    cached = CalibrationSet(shard_dir, 5, SHAPE, cache_dir=cache, progress=False)
    assert cached.report.used == first.report.used and cached.report.corrupt == first.report.corrupt
    assert np.array_equal(np.concatenate(list(cached)), np.concatenate(list(first)))
    monkeypatch.undo()
    other_shape = CalibrationSet(shard_dir, 5, (154, 154), cache_dir=cache, progress=False)
    assert other_shape.key != first.key and len(list(cache.glob("calib-*.npy"))) == 2


def test_folder_of_images_works(tmp_path, photo):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.roll(photo, 10 * i, axis=1))
    (tmp_path / "notes.txt").write_text("not an image")
    assert len(CalibrationSet(tmp_path, 3, SHAPE, progress=False)) == 3


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationSet(tmp_path / "nope", 3, SHAPE)


@pytest.mark.parametrize(
    "name,ok",
    [
        ("sa_1.jpg", True),
        ("./sa_1.jpg", True),
        ("dir/sa_1.jpg", True),
        ("../x.jpg", False),
        ("/etc/x.jpg", False),
        ("a/../../x.jpg", False),
        ("a\\..\\x.jpg", False),
        ("", False),
    ],
)
def test_safe_member_names(name, ok):
    assert safe_member_name(name) is ok
