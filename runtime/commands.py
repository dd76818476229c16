"""One way to run every command: its errors as one line, and one table of exit codes.

Every ``python -m ...`` command of this project (runtime, export, train, benchmarks) runs its
``main`` through :func:`run_command`, so they all end the same way:

====  =====================================================================================
code  meaning
====  =====================================================================================
0     done
1     a check, an export or a run failed: an artefact over its tolerance, a build that
      failed, no frame that could be decoded; or an unexpected error (its traceback goes to
      a log file, named in the one-line message)
2     usage or input error: bad options, a missing or unreadable file, an image, model or
      checkpoint that cannot be used, a missing optional library; nothing was attempted
3     ``python -m benchmarks --strict``: the report's own reliability checks failed
130   interrupted (Ctrl-C); nothing is left half-written under an output name
====  =====================================================================================

Python 3.8 compatible: the runtime commands run on JetPack 5.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError, MissingDependencyError, ModelFileError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNRELIABLE = 3
EXIT_INTERRUPTED = 130


class CommandError(RuntimeError):
    """A command that ran and failed (a check over its tolerance, an export or build that failed):
    exit code 1. The message says what failed and what to try."""


# Problems with what was asked: the options, the files given, or the installed extras. ValueError
# covers the library's own argument checks (an unknown device or precision, a bad size).
USAGE_ERRORS = (InputError, ModelFileError, MissingDependencyError, FileNotFoundError, ValueError)

_STAGE = ["starting"]


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the step in progress, so an unexpected failure can say where it happened."""
    previous, _STAGE[0] = _STAGE[0], name
    yield  # on an exception the name stays for run_command to report
    _STAGE[0] = previous


def error_log_path(prog: str) -> Path:
    folder = Path(os.environ.get("DAV2_LOG_DIR") or Path.home() / ".cache" / "dav2-edge" / "logs")
    return folder / f"{prog.split()[-1]}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def exit_code(exc: BaseException) -> int:
    """The exit code of the table above for an exception a command ended with."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
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
    _STAGE[0] = "starting"
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted: nothing was written under the output name", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, *USAGE_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:
        where = _STAGE[0]
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


def command(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[..., int]]:
    """Decorate a command's ``main(argv)`` so that calling it runs through :func:`run_command`."""

    def wrap(main: Callable[[list[str] | None], int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            return run_command(main, argv, prog)

        return run

    return wrap
