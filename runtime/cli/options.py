"""The option vocabulary every command shares: one name, one meaning and one default for each.

``--threads N`` (CPU threads; one default, :data:`DEFAULT_THREADS`), ``--batch-size N``, ``--json FILE``
(machine-readable output), ``--overwrite`` (replace an output that exists), ``-v/--verbose``,
``-q/--quiet``. Commands declare them with these helpers so that their ``--help`` reads the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

DEFAULT_THREADS = 2  # CPU threads of every command (0: one per core)
HELP_WIDTH = 80  # --help fits an 80-column terminal (narrower ones wrap to theirs)


def kit_app(**kwargs: Any) -> typer.Typer:
    """A typer app with the kit's ``--help``: click's plain layout (a flag reads ``--show / --no-show``, an
    option ``--model PATH``; no ``<bool>`` placeholder, no box drawing that breaks in logs and narrow
    terminals), at most :data:`HELP_WIDTH` columns, ``-h`` as well as ``--help``, no shell-completion options."""
    context = {"max_content_width": HELP_WIDTH, "help_option_names": ["-h", "--help"]}
    return typer.Typer(
        add_completion=False,
        rich_markup_mode=None,
        context_settings={**context, **kwargs.pop("context_settings", {})},
        **kwargs,
    )


def threads_option(what: str) -> Any:
    return typer.Option(
        DEFAULT_THREADS, "--threads", min=0, help=f"CPU threads for {what} (0: one per core)."
    )


def batch_size_option(default: int, what: str = "images per inference batch") -> Any:
    return typer.Option(default, "--batch-size", min=1, help=f"Batch size: {what}.")


def json_option(what: str) -> Any:
    return typer.Option(None, "--json", help=f"Also write {what} as JSON to this file.")


def overwrite_option(what: str) -> Any:
    return typer.Option(False, "--overwrite", help=f"Replace {what} if it exists.")


VERBOSE = typer.Option(
    0, "--verbose", "-v", count=True, help="More log output (-v: debug; -vv: libraries too)."
)
QUIET = typer.Option(False, "--quiet", "-q", help="Warnings and errors only.")


def run_app(app: typer.Typer, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a typer ``app`` as ``python -m ...`` would (``argv`` None: the process's arguments).

    Returns 0 on success instead of exiting, so that ``main(argv)`` stays callable from Python and tests; a
    failure still exits (``SystemExit`` with the command's exit code).
    """
    commands = app.registered_commands
    if len(commands) == 1 and not (commands[0].help or commands[0].callback.__doc__):
        commands[0].help = app.info.help  # a one-command app shows its own help under Usage
    try:
        app(args=None if argv is None else list(argv), prog_name=prog_name, standalone_mode=True)
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0
        raise
    return 0
