"""What every ``python -m training.*`` command does before its work: refuse to replace an output it was not
told to replace, set up logging, and give PyTorch its CPU threads."""

from __future__ import annotations

import os
from collections.abc import Mapping


def start_command(
    verbose: int,
    quiet: bool,
    threads: int,
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
    overwrite: bool = False,
) -> None:
    """``outputs``: flag -> path of the files the command writes (checked before minutes of work).
    ``threads``: PyTorch CPU threads (0: leave PyTorch's default, one per core)."""
    from runtime.cli.console import configure_logging
    from runtime.files import check_not_replacing

    check_not_replacing(dict(outputs or {}), overwrite)
    configure_logging(verbose, quiet)
    if threads:
        import torch

        torch.set_num_threads(threads)
