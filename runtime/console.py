"""Logging and progress for command-line entry points only; libraries just use ``logging.getLogger``."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Set up root logging for a command: WARNING when quiet, INFO by default, DEBUG with -v."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool | None = None):
    """A tqdm progress bar on stderr (disabled automatically when stderr is not a terminal, unless forced).

    Libraries accept an optional ``progress`` callable argument and default to no bar; commands pass this.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, mininterval=0.5
    )
