"""``python -m training.split --dataset nordland --split test --out DIR``: one split of the route as a dataset folder.

Writes ``DIR/database.csv`` and ``DIR/queries.csv`` (the generic format, runtime.datasets.generic) holding
exactly the images of that split of :func:`training.data.split_along_route` (what ``training.train`` trains,
validates and tests on), in route order, with their positions; the images stay where they are (paths
relative to DIR). Every tool of the kit then measures the held-out stretch by itself: ``netvlad-map build
--dataset DIR``, ``netvlad-bench sequence --dataset DIR``, ``netvlad-run --folder`` on its queries, and the
SeqSLAM anchor (``--synth DIR``). ``--split all`` writes the whole route instead, each image with its split
in a ``condition`` column (``guard``: left out of every split by the 25 m guard), so that a map of the whole
route can be scored on the held-out frames alone: ``netvlad-bench sequence`` and the anchor report R@1 per
condition.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app, run_app
from training.evaluate import DEFAULT_SPLIT_FRACTIONS

log = logging.getLogger(__name__)


def write_split(
    dataset_spec: str, split: str, out: Path, fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
) -> Path:
    """Write ``split`` of ``dataset_spec`` as a generic dataset folder ``out``; returns ``out``."""
    from runtime import open_dataset
    from runtime.errors import ConfigError, OutputError
    from runtime.files import atomic_write_text
    from training.data import SPLITS, split_along_route

    if split not in (*SPLITS, "all"):
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)} or all, got {split!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file; give a folder for database.csv and queries.csv")
    dataset = open_dataset(dataset_spec)
    splits = split_along_route(dataset, tuple(fractions))
    if split == "all":  # the whole route, each image labelled with its split ("guard": in none)
        part = dataset
        labels = {"database": np.full(dataset.num_db, "guard", dtype=object),
                  "queries": np.full(dataset.num_queries, "guard", dtype=object)}  # fmt: skip
        for name, s in splits.items():
            labels["database"][s.db_indices], labels["queries"][s.q_indices] = name, name
    else:
        part, labels = splits[split].dataset, None
    out.mkdir(parents=True, exist_ok=True)
    for name, which, images, utm, times in (
        ("database.csv", "database", part.db_images, part.db_utm, part.db_time),
        ("queries.csv", "queries", part.q_images, part.q_utm, part.q_time),
    ):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        extra = (["timestamp"] if times is not None else []) + (["condition"] if labels else [])
        writer.writerow(["image", "easting", "northing", *extra])
        for i, image in enumerate(images):
            rel = os.path.relpath(Path(part.root) / image, out.resolve())
            row = [rel, f"{utm[i, 0]:.3f}", f"{utm[i, 1]:.3f}"]
            row += [f"{times[i]:.3f}"] if times is not None else []
            writer.writerow(row + ([labels[which][i]] if labels else []))
        atomic_write_text(out / name, buf.getvalue())
    log.info(
        "%s: %d database images, %d queries of split '%s' written to %s",
        dataset.name, part.num_db, part.num_queries, split, out,
    )  # fmt: skip
    return out


app = kit_app(
    help="Write one split of the route (what training.train trains, validates and tests on) as a dataset "
    "folder: database.csv and queries.csv, the images left where they are."
)


@app.command()
@command_boundary
def cli(
    dataset: str = typer.Option(
        ..., help="Folder with database.csv, 'nordland', 'aligned:DB,Q' or a .mat file."
    ),
    split: str = typer.Option(
        "test",
        help="train, val or test: the route split of training.train; all: the whole route, with each "
        "image's split in a condition column.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder for database.csv and queries.csv."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    typer.echo(str(write_split(dataset, split, out)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.split ARGS``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.split")


if __name__ == "__main__":
    raise SystemExit(main())
