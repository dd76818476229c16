"""``benchmarks.family_cost`` makes its weights and frames without the test tree
(``benchmarks.weights``), and they are the official-parity fixtures' weights; its ``flicker`` step
(Video Depth Anything streamed against each frame alone) runs without the test tree too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO

NO_TESTS = """
import sys
from pathlib import Path

class NoTests:
    def find_spec(self, name, path=None, target=None):
        if name == "tests" or name.startswith("tests."):
            raise ImportError("a benchmark imported the test tree: " + name)

sys.meta_path.insert(0, NoTests())
from benchmarks.family_cost import frames, write_weights

write_weights(Path(sys.argv[1]))
shown = frames(28)
assert len(shown) == 6 and all(f.shape == (28, 28, 3) and f.dtype.name == "uint8" for f in shown)
assert any((a != b).any() for a, b in zip(shown, shown[1:]))  # a pan, not one frame six times
"""

FLICKER = (
    NO_TESTS.split("from benchmarks.family_cost")[0]
    + """
from benchmarks.family_cost import checkpoint, main
from benchmarks.weights import write_checkpoint

write_checkpoint("vda-small", checkpoint(Path(sys.argv[1]), "vda-small"))
sys.exit(main(["flicker", "--size", "56", "--backends", "torch-fp32", "--out", sys.argv[1]]))
"""
)


def test_family_cost_needs_no_test_tree_and_writes_the_fixture_weights(tmp_path):
    import torch

    from benchmarks.family_cost import checkpoint
    from tests.da3_fixtures import da3_state_dict
    from tests.parity import deterministic_state_dict, official_keys
    from tests.video_fixtures import vda_state_dict
    from train.models import load_model

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", NO_TESTS, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    dav2 = torch.load(checkpoint(tmp_path, "dav2-s"), weights_only=True)
    assert all(np.array_equal(dav2[k].numpy(), v) for k, v in deterministic_state_dict(official_keys("vits")).items())
    vda = torch.load(checkpoint(tmp_path, "vda-small"), weights_only=True)
    assert vda.keys() == vda_state_dict().keys()
    assert all(torch.equal(vda[k], v) for k, v in vda_state_dict().items())
    da3 = load_model(checkpoint(tmp_path, "da3-small"))
    want = da3_state_dict("da3-small")
    assert all(torch.equal(da3.state_dict()[k], v) for k, v in want.items())


def test_the_flicker_step_measures_the_stream_against_each_frame_alone(tmp_path):
    """The flicker measurement that was ``tests/perf/video_depth.py``'s own, as a benchmark step:
    both scenes, both ways, a figure each (``None`` would be a collapsed or unmeasurable output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", FLICKER, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert (result["step"], result["size"]) == ("flicker", "56x56")
    scenes = result["rows"]["vda-small torch-fp32"]
    assert set(scenes) == {"panning (6 frames)", "still with sensor noise (8 frames)"}
    for figures in scenes.values():
        assert set(figures) == {"stream (temporal head)", "each frame alone"}
        assert all(isinstance(v, float) and 0.0 <= v < 1.0 for v in figures.values()), figures
    assert not (REPO / "tests" / "perf" / "video_depth.py").exists()  # folded in here: one place to measure


def test_the_vit_l_families_are_asked_by_name_and_compared_with_dav2_l(capsys):
    """DA3Mono-Large and DA-V2-L are measured only when ``--families`` names them (the default stays
    the small networks), each ViT-L family's time is a ratio to DA-V2-L, and DA3Mono-Large's
    deterministic weights are made for the official network's keys in their order (the fixture's)."""
    import pytest

    from benchmarks.family_cost import FAMILIES, baseline, family_list, main
    from benchmarks.weights import network_keys
    from tests.da3_fixtures import keys

    assert "da3-mono-large" not in FAMILIES and "dav2-l" not in FAMILIES
    assert family_list(" dav2-l,da3-mono-large,") == ["dav2-l", "da3-mono-large"]
    assert [baseline(f) for f in ("dav2-s", "da3-small", "vda-small", "dav2-l", "da3-mono-large")] == [
        "dav2-s",
        "dav2-s",
        "dav2-s",
        "dav2-l",
        "dav2-l",
    ]
    with pytest.raises(SystemExit) as refused:
        main(["time", "--families", "da3-mono-large,da3-metric-large"])
    assert refused.value.code == 2
    assert "da3-metric-large not of" in capsys.readouterr().err
    assert network_keys("da3-mono-large") == [(k, list(s)) for k, s in keys("da3mono-large")]
    vitl = dict(network_keys("dav2-l"))
    assert vitl["pretrained.pos_embed"] == [1, 1370, 1024] and len(vitl) > len(network_keys("dav2-s"))
