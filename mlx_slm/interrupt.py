"""Ctrl-C (or SIGTERM) in the ``mlx-slm`` command: one line and exit status 130 (143) at any moment.

A ``KeyboardInterrupt`` raised in the middle of an import or inside a native
extension's callback can print a long traceback or abort the process (a nanobind
module being initialised aborts with status 134), and SIGTERM (``kill``, a job
scheduler's stop) ends Python without running any cleanup. The command therefore
replaces Python's handlers of both (:func:`install`, the first thing the command
does) with one that removes this run's scratch files and folders (registered with
:func:`scratch`), prints one line and ends the process at once with status 128 plus
the signal's number. The package installs it on import
when the process is the command (:func:`is_command`), before anything heavy loads. Sections that must not be cut in
half (the renames that put an output in place) run under :func:`deferred`; an
interrupt during one takes effect when it ends. Library callers keep Python's
own ``KeyboardInterrupt``: nothing here changes unless :func:`install` ran.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

MESSAGE = "mlx-slm: interrupted; no partial output was left behind"
TERMINATED = "mlx-slm: terminated; no partial output was left behind"
EXIT_STATUS = 130  # 128 + SIGINT; SIGTERM ends with 143
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_scratch: list[Path] = []
_deferring = 0
_pending: int | None = None  # the signal that arrived during a deferred section


def is_command() -> bool:
    """True when this process is the ``mlx-slm`` command (its console script, or ``python -m mlx_slm``)."""
    argv = list(getattr(sys, "orig_argv", []))
    launched_as_module = "-m" in argv and argv.index("-m") + 1 < len(argv) and argv[argv.index("-m") + 1] == "mlx_slm"
    return Path(sys.argv[0]).name == "mlx-slm" or launched_as_module


def install() -> None:
    """Route SIGINT and SIGTERM to :func:`_quit` for the rest of the process (each unless it is ignored:
    SIGINT in a background job)."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def _on_signal(signum, frame) -> None:
    global _pending
    if _deferring:
        _pending = signum
        return
    _quit(signum)


def _quit(signum: int) -> None:
    for path in reversed(_scratch):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    message = MESSAGE if signum == signal.SIGINT else TERMINATED
    os.write(2, (("\n" if sys.stderr.isatty() else "") + message + "\n").encode())
    os._exit(128 + signum)


@contextmanager
def scratch(path):
    """Register ``path`` (a temporary file or folder this run made) for removal if the run is interrupted."""
    path = Path(path)
    _scratch.append(path)
    try:
        yield path
    finally:
        _scratch.remove(path)


@contextmanager
def deferred():
    """Hold an interrupt until the block ends (for renames that must happen together)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            _quit(_pending)
