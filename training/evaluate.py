"""Recall@N evaluation of a checkpoint on a dataset (training/README.md, "The protocol").

    python -m training.evaluate CHECKPOINT --dataset DIR [--split all|train|val|test] [--json OUT.json]

Recall@1/5/10/20 at 25 m through runtime.evaluation.recall (the same functions every stage uses); queries without a
database image within 25 m are dropped first (and counted). Every figure is reported together with the
split, descriptor dimension, input resolution and model fingerprint, since published NetVLAD numbers are
hard to reproduce mostly because these drift silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from runtime import PlaceDataset
from runtime.cli.console import command_boundary
from runtime.cli.options import (
    QUIET,
    VERBOSE,
    batch_size_option,
    json_option,
    kit_app,
    overwrite_option,
    run_app,
    threads_option,
)
from runtime.evaluation.recall import DEFAULT_NS, rank_database, recall_at_n
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)

DEFAULT_SPLIT_FRACTIONS = (0.6, 0.15, 0.25)


@dataclass(frozen=True)
class RecallReport:
    """Recall@N with everything needed to reproduce the figure."""

    dataset: str
    split: str
    num_db: int
    num_queries: int  # queries evaluated (with at least one positive)
    dropped_queries: int  # queries without a database image within radius_m
    radius_m: float
    descriptor_dim: int
    resolution: str  # "HxW" of the model input
    fingerprint: str
    recall: dict[int, float]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recall"] = {str(k): v for k, v in self.recall.items()}
        return d

    def summary(self) -> str:
        figures = " ".join(f"R@{n}={100 * r:.1f}%" for n, r in self.recall.items())
        return (
            f"{figures} | {self.dataset} split={self.split} queries={self.num_queries} (dropped "
            f"{self.dropped_queries}) db={self.num_db} dim={self.descriptor_dim} res={self.resolution} "
            f"model={self.fingerprint}"
        )


def recall_from_descriptors(
    db_descriptors: np.ndarray,
    q_descriptors: np.ndarray,
    dataset: PlaceDataset,
    ns: Sequence[int] = DEFAULT_NS,
    radius_m: float = EVAL_RADIUS_M,
) -> tuple[dict[int, float], int]:
    """Recall@N of descriptors ``(N_db, D)``/``(N_q, D)`` of ``dataset``; returns (recall, dropped count)."""
    positives = dataset.positives(radius_m)
    keep = np.array([len(p) > 0 for p in positives], dtype=bool)
    ranked = rank_database(
        np.asarray(db_descriptors, np.float32), np.asarray(q_descriptors, np.float32)[keep], max(ns)
    )
    recall = recall_at_n(ranked, [p for p, k in zip(positives, keep, strict=True) if k], ns)
    return recall, int(np.count_nonzero(~keep))


def describe(
    model, dataset: PlaceDataset, split: str, recall: dict[int, float], dropped: int, seconds: float = 0.0
):
    cfg = model.config
    return RecallReport(
        dataset=dataset.name,
        split=split,
        num_db=dataset.num_db,
        num_queries=dataset.num_queries - dropped,
        dropped_queries=dropped,
        radius_m=EVAL_RADIUS_M,
        descriptor_dim=cfg.descriptor_dim,
        resolution=f"{cfg.input_height}x{cfg.input_width}",
        fingerprint=model.fingerprint(),
        recall=recall,
        seconds=round(seconds, 2),
    )


def split_descriptors(
    model, dataset: PlaceDataset, split: str, batch_size: int = 32, progress: Callable | None = None
) -> np.ndarray:
    """Descriptors ``(N, D)`` float32 of every image of ``split`` ("database"/"queries") through the full model."""
    import torch

    from training.data import compute_frozen_features
    from training.train_steps import descriptors_from_frozen

    frozen, _ = compute_frozen_features(model, dataset, split, batch_size, progress)
    return descriptors_from_frozen(model, frozen, batch_size, torch.float32).numpy()


def evaluate_model(
    model,
    dataset: PlaceDataset,
    split: str = "all",
    batch_size: int = 32,
    progress: Callable | None = None,
) -> RecallReport:
    """Recall@1/5/10/20 at 25 m of ``model`` (a PlaceModel) on ``dataset``."""
    started = time.perf_counter()
    db = split_descriptors(model, dataset, "database", batch_size, progress)
    q = split_descriptors(model, dataset, "queries", batch_size, progress)
    recall, dropped = recall_from_descriptors(db, q, dataset)
    report = describe(model, dataset, split, recall, dropped, time.perf_counter() - started)
    log.info("%s", report.summary())
    return report


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset_spec: str | Path,
    split: str = "all",
    fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    refit: bool = False,
    batch_size: int = 32,
    progress: Callable | None = None,
) -> RecallReport:
    """Load ``checkpoint``, open ``dataset_spec`` (runtime.datasets.open_dataset) and evaluate ``split``.

    ``split``: "all", or "train"/"val"/"test" of :func:`training.data.split_along_route` with ``fractions``
    (what ``training.train`` uses). ``refit``: re-fit the NetVLAD centroids on the evaluated database
    images first (:func:`training.model.refit_centroids`).
    """
    from runtime import open_dataset
    from runtime.errors import ConfigError
    from training.checkpoint import load_model
    from training.data import SPLITS, split_along_route

    model = load_model(checkpoint)
    dataset = open_dataset(dataset_spec)
    if split != "all":
        if split not in SPLITS:
            raise ConfigError(f"split must be 'all' or one of {SPLITS}, got {split!r}")
        dataset = split_along_route(dataset, fractions)[split].dataset
    if refit:
        from training.model import refit_centroids

        images = [dataset.read_image("database", i) for i in range(dataset.num_db)]
        model = refit_centroids(model, images)
    return evaluate_model(model, dataset, split, batch_size, progress)


app = kit_app(help="Recall@1/5/10/20 at 25 m of a checkpoint on a dataset.")


@app.command()
@command_boundary
def cli(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="A model.pt written by python -m training.train."
    ),
    dataset: str = typer.Option(
        ..., help="Folder with database.csv, 'nordland', 'aligned:DB,Q' or a .mat file."
    ),
    split: str = typer.Option("all", help="all, or the route split of training.train: train, val or test."),
    refit_centroids: bool = typer.Option(False, help="Re-fit the NetVLAD centroids on the database images."),
    json_out: Path = json_option("the report"),
    overwrite: bool = overwrite_option("the --json file"),
    batch_size: int = batch_size_option(32),
    threads: int = threads_option("PyTorch"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime.cli.console import progress
    from runtime.files import atomic_write_text
    from training.command import start_command

    start_command(verbose, quiet, threads, {"--json": json_out}, overwrite)
    report = evaluate_checkpoint(
        checkpoint, dataset, split, refit=refit_centroids, batch_size=batch_size, progress=progress
    )
    typer.echo(report.summary())
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.evaluate ARGS``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
