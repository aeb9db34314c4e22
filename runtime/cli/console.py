"""Logging, progress and the error boundary, for command-line entry points only.

Libraries just use ``logging.getLogger`` and raise :mod:`runtime.errors`; every command wraps its function in
:func:`command_boundary`, which turns those errors into one line and an exit code.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# The kit's own loggers (packages and command names): only they reach the console below WARNING, unless -vv.
# Other libraries (onnxscript, onnx_ir, faiss's loader, ray, ...) log INFO lines a user cannot act on.
KIT_LOGGERS = ("runtime", "training", "export", "benchmarks", "__main__")


class _KitOnly(logging.Filter):
    """Pass every WARNING and above; below that, only records of the kit's loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        top = record.name.split(".", 1)[0]
        return top in KIT_LOGGERS or top.startswith("netvlad-")


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Set up logging for a command: WARNING when quiet, INFO by default, DEBUG with -v; below WARNING only
    the kit's own loggers reach the console, other libraries' too with -vv."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    if verbose < 2:
        for handler in logging.root.handlers:
            handler.addFilter(_KitOnly())


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool | None = None):
    """A tqdm progress bar on stderr; when stderr is not a terminal (a log file, CI), a log line every 10 %
    instead, at most one per :data:`LOG_PROGRESS_SECONDS` (so quick steps stay quiet).

    Libraries accept an optional ``progress`` callable argument and default to no bar; commands pass this.
    """
    from tqdm.auto import tqdm

    if disable is None and not sys.stderr.isatty():
        return _LoggedProgress(iterable, total, desc, unit)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=bool(disable),
        dynamic_ncols=True,
        mininterval=0.5,
    )


LOG_PROGRESS_SECONDS = 5.0


class _LoggedProgress:
    """The part of tqdm's interface the kit uses (iterate, ``update``, ``close``), as log lines."""

    def __init__(self, iterable, total, desc: str, unit: str) -> None:
        import time

        self._clock = time.monotonic
        self.iterable, self.desc, self.unit = iterable, desc or "progress", unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.disable = 0, False
        self._start = self._last = self._clock()
        self._next_pct = 10

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = 100 * self.n / self.total
        now = self._clock()
        if pct >= self._next_pct and now - self._last >= LOG_PROGRESS_SECONDS:
            logging.getLogger("runtime.cli.console").info(
                "%s: %d of %d %s (%.0f%%, %.0f s)",
                self.desc,
                self.n,
                self.total,
                self.unit,
                pct,
                now - self._start,
            )
            self._last = now
        while self._next_pct <= pct:
            self._next_pct += 10

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Exit codes of every netvlad-kit command (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # the run started and failed (a backend, a parity gate, a dead stream, a full disk)
EXIT_USAGE = 2  # bad input or usage: fix the command line, the file or the data and rerun
EXIT_INTERRUPTED = 130  # Ctrl-C (or SIGTERM), after the outputs written so far were flushed

BUG_HINT = (
    "this is a bug in netvlad-kit: rerun the command with -v and report it together with the output above"
)

# OS errors that mean the environment refused (not a bug): a one-line message, exit 1.
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EMFILE}
)
# ... and those that are about a path the user gave (when the error names a file): exit 2.
_PATH_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV}
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.flush()
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _sigterm_as_interrupt(signum, frame) -> None:  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt


def command_boundary(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap one command's function (a typer command or an argparse ``main``): the error boundary.

    - a :class:`NetVLADKitError` becomes one line ``error: ...`` on stderr and exit ``exc.exit_code``
      (2 for bad input or usage, 1 for a run that failed); with ``-v`` its traceback is logged first;
    - an environment ``OSError`` (disk full, permission denied, read-only filesystem) becomes one line, exit 1;
      one about a path the user gave (no such file or folder, not a folder, ...) one line, exit 2;
    - Ctrl-C (and SIGTERM) ends with ``interrupted`` and exit 130, after the command's own ``with``/``finally``
      blocks have flushed and closed its outputs;
    - anything else is a bug: its traceback is kept, followed by a hint to rerun with ``-v`` and report it.

    ``SystemExit`` (argparse, ``typer.Exit``) and click's own exceptions pass through unchanged. A function
    that returns an int (an argparse ``main``) keeps its return value.
    """
    from runtime.errors import NetVLADKitError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        verbose = bool(kwargs.get("verbose"))
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        try:
            return fn(*args, **kwargs)
        except NetVLADKitError as exc:
            if verbose:
                logging.getLogger("netvlad-kit").debug("traceback of the error below", exc_info=True)
            _fail(_one_line(str(exc)), exc.exit_code)
        except KeyboardInterrupt:
            sys.stderr.write("\ninterrupted\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_INTERRUPTED) from None
        except OSError as exc:
            path_error = exc.errno in _PATH_ERRNOS and exc.filename is not None
            if exc.errno not in _ENVIRONMENT_ERRNOS and not path_error:
                _report_bug()
            if verbose:
                logging.getLogger("netvlad-kit").debug("traceback of the error below", exc_info=True)
            where = f" ('{exc.filename}')" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}", EXIT_USAGE if path_error else EXIT_FAILED)
        except SystemExit:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("click", "typer")):  # usage errors, Abort: click reports them
                raise
            _report_bug()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _report_bug() -> NoReturn:
    traceback.print_exc(file=sys.stderr)
    _fail(BUG_HINT, EXIT_FAILED)
