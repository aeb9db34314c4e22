"""How hard the synthetic world is: the raw-pixel baseline (:mod:`runtime.evaluation.baseline`) per query
condition, computed on images rendered in memory (nothing written)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import json_option, kit_app, overwrite_option, run_app
from runtime.datasets.place import neighbours_within
from runtime.evaluation.baseline import THUMBNAIL_SIZE, thumbnail_descriptors
from runtime.evaluation.recall import DEFAULT_NS, rank_database, recall_at_n
from runtime.protocol import EVAL_RADIUS_M
from training.synth.config import SynthConfig
from training.synth.world import SynthWorld


def baseline_recall(
    world: SynthWorld | SynthConfig,
    ns: Sequence[int] = DEFAULT_NS,
    size: tuple[int, int] = THUMBNAIL_SIZE,
    grayscale: bool = False,
    radius_m: float = EVAL_RADIUS_M,
    progress: Callable[..., Iterable] | None = None,
) -> dict[str, dict[int, float]]:
    """Raw-pixel recall@N of the world's queries against its database: ``{"all"|condition: {n: recall}}``."""
    if isinstance(world, SynthConfig):
        world = SynthWorld(world)
    wrap = progress or (lambda it, **_: it)
    db = thumbnail_descriptors(
        (world.image("database", i) for i in wrap(range(world.num_db), total=world.num_db, desc="database")),
        size,
        grayscale,
    )
    q = thumbnail_descriptors(
        (
            world.image("queries", i)
            for i in wrap(range(world.num_queries), total=world.num_queries, desc="queries")
        ),
        size,
        grayscale,
    )
    positives = neighbours_within(world.database.utm, world.queries.utm, radius_m)
    ranked = rank_database(db, q, max(ns))
    labels = np.asarray(world.queries.conditions)
    result = {"all": recall_at_n(ranked, positives, ns)}
    for label in dict.fromkeys(labels.tolist()):
        idx = np.flatnonzero(labels == label)
        result[label] = recall_at_n(ranked[idx], [positives[i] for i in idx], ns)
    return result


def dataset_baseline_recall(spec: str, ns: Sequence[int] = (1, 5, 10, 20)) -> dict[str, dict[int, float]]:
    """Raw-pixel recall@N of any dataset spec (``open_dataset``), per query ``condition`` where present."""
    from runtime import open_dataset
    from runtime.evaluation.baseline import raw_pixel_recall

    dataset = open_dataset(spec)
    groups = dataset.info.get("extra_columns", {}).get("queries", {}).get("condition")
    return raw_pixel_recall(dataset, ns=ns, query_groups=groups)


app = kit_app(
    help="Recall@1/5/10/20 of the raw-pixel baseline (16x12 thumbnails) on a dataset, overall and per query "
    "condition: how hard the dataset is before any learning.",
)


@app.command()
@command_boundary
def cli(
    spec: str = typer.Argument(
        ..., metavar="DATASET", help="A dataset folder, 'nordland', 'aligned:DB,Q' or a .mat file."
    ),
    json_out: Path = json_option("the recall per condition"),
    overwrite: bool = overwrite_option("the --json file"),
) -> None:
    from runtime.files import check_not_replacing

    check_not_replacing({"--json": json_out}, overwrite)  # before the work, not after it
    from runtime.files import atomic_write_text

    results = dataset_baseline_recall(spec)
    for group, recall in results.items():
        typer.echo(f"{group:10s} " + "  ".join(f"R@{n} {value:.3f}" for n, value in recall.items()))
    if json_out:
        payload = {group: {str(n): v for n, v in recall.items()} for group, recall in results.items()}
        atomic_write_text(json_out, json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.synth.difficulty DATASET``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.synth.difficulty")


if __name__ == "__main__":
    raise SystemExit(main())
