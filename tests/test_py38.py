"""What a JetPack 5 device runs (Python 3.8 with TensorRT 8.5) must parse and run on Python 3.8:
the runtime and everything ``export.trt`` imports. No 3.8 interpreter is installed here, so vermin
checks the syntax and library use statically, and this test checks what vermin cannot."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _py38_patterns() -> list[str]:
    """The globs pyproject.toml's ``[tool.ruff.per-file-target-version]`` holds to py38 (read
    without tomllib, which Python 3.10 lacks)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[tool.ruff.per-file-target-version]", 1)[1].split("\n[", 1)[0]
    return re.findall(r'^"([^"]+)"\s*=\s*"py38"', section, flags=re.MULTILINE)


# One list: the files pyproject.toml's ruff section holds to py38.
PY38 = sorted({path for pattern in _py38_patterns() for path in REPO.glob(pattern)})


def test_the_py38_list_covers_what_a_jetson_imports():
    names = {str(p.relative_to(REPO)) for p in PY38}
    for needed in ("runtime/predictor.py", "commands/runner.py", "export/trt/build.py", "export/trt/rules.py"):
        assert needed in names
    # python -m runtime.verify and python -m benchmarks --model run on the device too
    for needed in ("runtime/verify.py", "runtime/reference.py", "export/reference.py", "benchmarks/given.py"):
        assert needed in names
    assert {str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.py")} <= names


def test_vermin_finds_nothing_newer_than_python_3_8():
    vermin = Path(sys.executable).with_name("vermin")  # the dev extra's console script, beside python
    run = subprocess.run(
        [str(vermin), "-t=3.8-", "--violations", "--no-tips", *map(str, PY38)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_annotations_are_never_evaluated():
    """vermin treats annotations as unevaluated; that holds only with the __future__ import, and
    ``list[int]`` or ``X | None`` evaluated at import time fail on 3.8."""
    missing = []
    for path in PY38:
        tree = ast.parse(path.read_text())
        has_annotations = any(
            (isinstance(n, (ast.AnnAssign, ast.arg)) and getattr(n, "annotation", None) is not None)
            or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None)
            for n in ast.walk(tree)
        )
        future = any(
            isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
            for n in tree.body
        )
        if has_annotations and not future:
            missing.append(str(path.relative_to(REPO)))
    assert missing == []


def test_the_tensorrt_export_imports_without_torch():
    """A Jetson that builds engines from a calibrated ONNX, checks them and benchmarks them has no
    PyTorch: export.trt, runtime.verify and the benchmark of given artefacts must not need it."""
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'): raise ImportError('no torch here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import export.trt.__main__, export.trt.build, runtime, runtime.verify\n"
        "import benchmarks.__main__, benchmarks.given, benchmarks.worker, benchmarks.jetson\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr
