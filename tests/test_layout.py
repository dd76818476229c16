"""The layout holds: no import circles, no source file over 450 lines, every command answers
``--help``, and every command ends with the exit codes of docs/exit-codes.md."""

from __future__ import annotations

import ast
import importlib
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from commands.runner import EXIT_FAILED, EXIT_USAGE
from tests.conftest import REPO

PACKAGES = ("commands", "train", "export", "runtime", "benchmarks")
MAX_LINES = 450
COMMANDS = (
    "runtime",
    "runtime.bag",
    "runtime.ros2",
    "runtime.verify",
    "export.onnx",
    "export.openvino",
    "export.quantize",
    "export.trt",
    "benchmarks",
    "benchmarks.levers",
    "train.teacher",
    "train.pseudo_label",
    "train.distill",
    "train.eval",
    "train.plan",
)


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, at module level or inside functions alike: ``from a
    import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circles():
    files = source_files()
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    # A package's __init__ is imported before any of its modules: an edge from a module to its own
    # package would only say that, so it is not a dependency.
    for name, edges in graph.items():
        edges -= {name.rpartition(".")[0]}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_answers_help(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_command_has_a_script_that_runs_its_main():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {}
    for target in scripts.values():
        module, function = target.split(":")
        targets[module.removesuffix(".__main__")] = getattr(importlib.import_module(module), function)
    assert sorted(targets) == sorted(COMMANDS)
    # the command runner's main (exit codes, one-line errors), as python -m runs it
    assert all(hasattr(main, "__wrapped__") for main in targets.values())


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "dav2-depth").exists(), reason="the project is not pip-installed here"
)
def test_an_installed_script_runs_the_command():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dav2-depth"), "missing.png", "--model", "m.onnx"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == EXIT_USAGE and "missing.png" in one_line_error(result)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["runtime", "missing.png", "--model", "m.onnx"], "missing.png"),
        (["runtime.bag", "missing_bag", "--image-topic", "/c", "--model", "m.onnx", "--output", "o"], "no such bag"),
        (["runtime.ros2", "--model", "m.onnx"], "rclpy is not importable"),  # a missing library
        (["export.onnx", "--checkpoint", "missing.pth"], "no such checkpoint file"),
        (["export.openvino", "--onnx", "missing.onnx", "--fp32"], "missing.onnx"),
        (["export.quantize", "--onnx", "missing.onnx", "--calib-dir", "."], "missing.onnx"),
        (["export.trt", "--check", "missing.onnx", "--trt-version", "10.3"], "no such ONNX file"),
        (["benchmarks", "--images", "no_such_folder", "--quick"], "no_such_folder"),
        (["train.teacher", "--data", "nonsense", "--output", "o"], "--data must be"),
        (["train.pseudo_label", "--teacher", "missing.safetensors", "--source", ".", "--output", "o"], "missing"),
        (["train.distill", "--labels", "no_labels", "--output", "o"], "no_labels"),
        (["train.eval", "--model", "missing.onnx", "--data", "."], "missing.onnx"),
    ],
)
def test_an_input_error_exits_2_with_one_line(argv, match, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True, env=_env_with_repo()
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert match in one_line_error(result)


def _env_with_repo() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_a_failed_check_exits_1(tiny_onnx):
    """TensorRT 8.5 has no LayerNormalization op: the rule check fails the opset-17 model."""
    result = run("export.trt", "--check", str(tiny_onnx), "--trt-version", "8.5")
    assert result.returncode == EXIT_FAILED
    assert "LayerNormalization" in result.stdout


def test_a_run_with_nothing_usable_exits_1(tiny_onnx, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = run("runtime", str(tmp_path / "broken.png"), "--model", str(tiny_onnx), "--output-dir", str(tmp_path))
    assert result.returncode == EXIT_FAILED
    assert "skipped" in result.stderr


def test_the_docs_have_the_exit_code_table():
    text = (REPO / "docs" / "exit-codes.md").read_text()
    table = text.split("# Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |", "| 143 |"):
        assert code in table
