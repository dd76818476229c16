"""One way to run every command: its errors as one line, and one table of exit codes.

Every ``python -m ...`` command of this project (runtime, export, train, benchmarks) runs its
``main`` through :func:`run_command`, so they all end the same way:

====  =====================================================================================
code  meaning
====  =====================================================================================
0     done
1     a check, an export or a run failed: an artefact over its tolerance, a build that
      failed, no frame that could be decoded, inputs that were skipped, an output that could
      not be written (a full disk); or an unexpected error (its traceback goes to a log file,
      named in the one-line message)
2     usage or input error: bad options, a missing or unreadable file, an image, model or
      checkpoint that cannot be used, an output folder that cannot be written, a missing
      optional library; nothing was attempted
3     ``python -m benchmarks --strict``: the report's own reliability checks failed
130   interrupted (Ctrl-C), or ``python -m runtime`` stopped with inputs left; nothing is left
      half-written under an output name
143   terminated (SIGTERM) while running ``python -m runtime`` or ``runtime.bag``: as 130
====  =====================================================================================

An unexpected error's log goes to ``$DAV2_LOG_DIR``, else ``$XDG_CACHE_HOME/dav2-edge/logs``
(``~/.cache/dav2-edge/logs``): never beside an output, which may be what failed.

Python 3.8 compatible: the runtime commands run on JetPack 5.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import InputError, MissingDependencyError, ModelFileError, OutputError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNRELIABLE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


class CommandError(RuntimeError):
    """A command that ran and failed (a check over its tolerance, an export or build that failed):
    exit code 1. The message says what failed and what to try."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor stopping the command), raised like Ctrl-C so outputs are cleaned up."""


# A full or read-only file system or a quota: the output could not be written, whatever the command.
DISK_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG") if hasattr(errno, name))

# Problems with what was asked: the options, the files given, or the installed extras. ValueError
# covers the library's own argument checks (an unknown device or precision, a bad size).
USAGE_ERRORS = (InputError, ModelFileError, MissingDependencyError, FileNotFoundError, ValueError)

_STAGE = ["starting"]
_DONE = [""]  # the last step that finished, for a failure between steps


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the step in progress, so an unexpected failure can say where it happened."""
    previous, _STAGE[0] = _STAGE[0], name
    yield  # on an exception the name stays for run_command to report
    _STAGE[0], _DONE[0] = previous, name


def _where() -> str:
    """The step a failure happened in: the named one, else the one after the last that finished."""
    if _STAGE[0] != "starting" or not _DONE[0]:
        return _STAGE[0]
    return f"the step after {_DONE[0]}"


def error_log_path(prog: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(os.environ.get("DAV2_LOG_DIR") or cache / "dav2-edge" / "logs")
    return folder / f"{prog.split()[-1]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def disk_error(exc: BaseException) -> bool:
    """An output the file system would not take: a one-line failure (exit 1), not a bug to log."""
    return isinstance(exc, OutputError) or (isinstance(exc, OSError) and exc.errno in DISK_ERRNOS)


def exit_code(exc: BaseException) -> int:
    """The exit code of the table above for an exception a command ended with."""
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if disk_error(exc):
        return EXIT_FAILED
    if isinstance(exc, CommandError):  # before USAGE_ERRORS: a failed export may also be a ValueError
        return EXIT_USAGE if isinstance(exc, InputError) else EXIT_FAILED
    if isinstance(exc, USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILED


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None, prog: str) -> int:
    """Run ``main(argv)`` and turn every failure into one line on stderr and an exit code.

    Errors users can fix print their message. Anything else (a library's own exception) prints
    the stage it happened in and the log file that holds the traceback, never the traceback.
    argparse's own usage errors (``SystemExit(2)``) pass through unchanged.
    """
    _STAGE[0], _DONE[0] = "starting", ""
    try:
        return main(argv)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        kept = str(exc) or "nothing was written under the output name"  # a command may say what it kept
        print(f"{what}: {kept}", file=sys.stderr)
        return exit_code(exc)
    except (CommandError, *USAGE_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:
        if disk_error(exc):  # no traceback log: the disk it would go to may be the full one
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            print(f"error: cannot write{where}: {exc.strerror}; nothing is left under the output name", file=sys.stderr)
            return EXIT_FAILED
        where = _where()
        log = error_log_path(prog)
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{prog} {' '.join(sys.argv[1:])}\nstage: {where}\n\n{traceback.format_exc()}")
            details = f"details in {log}"
        except OSError:
            details = "no log could be written"
        summary = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"error: {where} failed: {type(exc).__name__}: {summary} ({details})", file=sys.stderr)
        return EXIT_FAILED


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, so a command stopped by a
    supervisor (systemd, a container runtime, ``timeout``) removes its staged outputs as on Ctrl-C
    instead of dying with a hidden staging folder left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(prog: str, sigterm: bool = False) -> Callable[[Callable[[list[str] | None], int]], Callable[..., int]]:
    """Decorate a command's ``main(argv)`` so that calling it runs through :func:`run_command`.

    ``sigterm=True`` handles SIGTERM like Ctrl-C (:func:`sigterm_as_interrupt`): for commands that
    stage outputs in the main thread. Others keep the default, so a process blocked in native code
    (a collective of a distributed training run) still ends when its launcher sends SIGTERM.
    """

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None, **options: Any) -> int:
            # options: keyword-only parameters of main that no flag reaches (callers in Python only)
            if options:  # a wrong keyword is the Python caller's TypeError here, not a failed command
                inspect.signature(main).bind(argv, **options)
            call = functools.partial(main, **options) if options else main
            if not sigterm:
                return run_command(call, argv, prog)
            with sigterm_as_interrupt():
                return run_command(call, argv, prog)

        return run

    return wrap
