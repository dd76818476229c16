"""Rules every command keeps: options that cannot work refused when parsed, SIGTERM handled like
Ctrl-C where outputs are staged, a full disk as one line, and error logs where docs/exit-codes.md says."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import export.openvino
import export.quantize.__main__
import export.trt.__main__
from commands.errors import OutputError
from commands.runner import (
    EXIT_FAILED,
    EXIT_TERMINATED,
    command,
    error_log_path,
)
from tests.conftest import REPO

EXPORTS = [export.quantize.__main__, export.trt.__main__, export.openvino]


@pytest.mark.parametrize("value", ["-5", "0", "150", "nan", "inf"])
def test_a_percentile_outside_0_to_100_is_refused(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        export.quantize.__main__.build_parser().parse_args(["--onnx", "m.onnx", "--percentile", value])
    assert stopped.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1].endswith(f"'{value}': a percentile is in (0, 100], for example 99.99")
    )


def test_percentiles_in_range_are_taken():
    parser = export.quantize.__main__.build_parser()
    assert [parser.parse_args(["--onnx", "m", "--percentile", v]).percentile for v in ("99.99", "100")] == [99.99, 100]


@pytest.mark.parametrize("module", EXPORTS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--calib-samples", "0", "'0': must be 1 or more"),
        ("--calib-samples", "-5", "'-5': must be 1 or more"),
        ("--accuracy-images", "-1", "'-1': must be 1 or more"),
        ("--calib-samples", "many", "'many' is not a whole number"),
    ],
)
def test_every_int8_export_refuses_counts_below_one(module, option, value, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        module.build_parser().parse_args(["--onnx", "m.onnx", option, value])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"argument {option}: {message}")


# In a fresh interpreter, as a supervisor's SIGTERM meets a command: sent to the pytest process
# itself, the signal found the alternate signal stack of Python's faulthandler unmapped after the
# OpenVINO tests (a segfault inside kill(): OpenVINO Cores freed in load order, mended since by
# runtime/backends/signal_stack.py), a state no command process is in.
SIGTERM_PROBE = """
import os, signal, sys
from commands.runner import Terminated, command, sigterm_as_interrupt

@command("test-command", sigterm=True)
def terminated_while_writing(argv):
    with open(argv[0], "w") as handle:
        handle.write("half")
        os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")

before = signal.getsignal(signal.SIGTERM)
code = terminated_while_writing([sys.argv[1]])
assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only
try:
    with sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
except Terminated:
    print("terminated in the block")
sys.exit(code)
"""


def test_sigterm_stops_a_staging_command_like_ctrl_c(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SIGTERM_PROBE, str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == EXIT_TERMINATED == 143, run.stderr
    assert run.stderr == "terminated (SIGTERM): nothing was written under the output name\n"
    assert run.stdout == "terminated in the block\n"


@command("test-command")
def _disk_full(argv):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), argv[0])


@command("test-command")
def _writer_failed(argv):
    raise OutputError(errno.EIO, "the writer wrote 8 frames but 0 can be read back", argv[0])


def test_a_full_disk_is_one_line_without_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAV2_LOG_DIR", str(tmp_path / "logs"))
    assert _disk_full(["/robot/out.bag"]) == EXIT_FAILED
    assert _writer_failed(["/robot/clip.mp4"]) == EXIT_FAILED
    assert capsys.readouterr().err.splitlines() == [
        "error: cannot write /robot/out.bag: No space left on device; nothing is left under the output name",
        "error: cannot write /robot/clip.mp4: the writer wrote 8 frames but 0 can be read back; nothing is left "
        "under the output name",
    ]
    assert not (tmp_path / "logs").exists()


def test_error_logs_go_where_the_docs_say(tmp_path, monkeypatch):
    monkeypatch.delenv("DAV2_LOG_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert error_log_path("python -m export.trt").parent == tmp_path / "cache" / "dav2-edge" / "logs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert error_log_path("python -m export.trt").parent == tmp_path / "home" / ".cache" / "dav2-edge" / "logs"
    monkeypatch.setenv("DAV2_LOG_DIR", str(tmp_path / "mine"))
    assert error_log_path("python -m export.trt").name.startswith("export.trt-")
    assert error_log_path("python -m export.trt").parent == tmp_path / "mine"
    docs = " ".join((REPO / "docs" / "exit-codes.md").read_text().split())
    assert "the traceback of an unexpected error goes to `$DAV2_LOG_DIR`, else `$XDG_CACHE_HOME/dav2-edge/logs`" in docs
