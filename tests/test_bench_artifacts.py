"""Where the benchmark's model comes from, and what it says when no source gave one."""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks.artifacts import DEFAULT_CHECKPOINT, hub_address, resolve_model


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """A working folder without checkpoints/ and a hub at a closed local port: nothing to find."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return tmp_path


def test_the_random_weights_notice_names_every_source_tried(nowhere):
    source = resolve_model(None, nowhere, use_hub=True)
    assert source.description == "random vits weights (torch seed 0)" and source.path.is_file()
    notice = source.notice
    assert "RANDOM vits weights" in notice
    assert "--checkpoint (not given)" in notice and f"{DEFAULT_CHECKPOINT} (no such file)" in notice
    if importlib.util.find_spec("huggingface_hub") is None:
        assert "huggingface_hub is not installed (pip install 'dav2-edge[bench]')" in notice
    else:
        assert "127.0.0.1:9 is unreachable and the hub's local cache has no copy" in notice
    without_hub = resolve_model(None, nowhere, use_hub=False).notice
    assert "(not tried: --no-hub)" in without_hub


def test_hub_address_follows_hf_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub_address() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example:8443")
    assert hub_address() == ("hf-mirror.example", 8443)


def test_bench_extra_installs_the_hub_client():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads TOML itself")
    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(req.startswith("huggingface_hub") for req in extras["bench"])
