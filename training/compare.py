"""Compare checkpoints on one dataset, sharing their frozen-feature pass (one backbone pass for all).

    python -m training.compare --dataset nordland [--limit 1200] [--refit] [--json OUT] NAME=CHECKPOINT ...

For each checkpoint: recall@1/5/10/20 at 25 m (with split, dimension, resolution, fingerprint); with
``--refit``, also after re-fitting its NetVLAD centroids on the evaluated database images (a domain
vocabulary, :func:`training.model.refit_centroids`). ``--limit N`` keeps the first N database images and
the queries whose nearest database image is among them (a contiguous stretch of the route).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer

from runtime import PlaceDataset
from runtime.cli.console import command_boundary
from runtime.cli.options import (
    QUIET,
    VERBOSE,
    json_option,
    kit_app,
    overwrite_option,
    run_app,
    threads_option,
)

log = logging.getLogger(__name__)


def first_stretch(dataset: PlaceDataset, limit: int) -> PlaceDataset:
    """The first ``limit`` database images and the queries nearest to them."""
    from training.data import subset

    if limit >= dataset.num_db:
        return dataset
    d2 = ((dataset.q_utm[:, None, :] - dataset.db_utm[None, :, :]) ** 2).sum(-1)  # (N_q, N_db)
    q_idx = np.flatnonzero(np.argmin(d2, axis=1) < limit)
    return subset(dataset, np.arange(limit), q_idx, f"{dataset.name}[:{limit}]")


def compare_checkpoints(
    checkpoints: Mapping[str, str | Path],
    dataset: PlaceDataset,
    cache_dir: Path | None = None,
    refit: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable | None = None,
) -> dict[str, dict[str, Any]]:
    """``{name: RecallReport.to_dict()}`` (plus ``name+refit`` entries with ``refit``)."""
    import torch

    from training.checkpoint import load_model
    from training.data import frozen_key, load_or_compute_frozen
    from training.evaluate import describe, recall_from_descriptors
    from training.model.clusters import refit_from_local_features
    from training.train_steps import descriptors_from_frozen

    results: dict[str, dict[str, Any]] = {}
    memo: dict[str, dict[str, torch.Tensor]] = {}
    for name, path in checkpoints.items():
        model = load_model(path)
        key = frozen_key(model)
        if key not in memo:
            memo[key] = load_or_compute_frozen(model, dataset, cache_dir, batch_size, progress)
        frozen = memo[key]
        variants = [(name, model)]
        if refit:
            order = np.random.default_rng(seed).permutation(len(frozen["database"]))

            def batches(m=model, f=frozen["database"], order=order):
                for start in range(0, len(order), batch_size):
                    with torch.inference_mode():
                        idx = torch.from_numpy(order[start : start + batch_size])
                        yield m.backbone_trainable(f[idx].float())

            variants.append(
                (f"{name}+refit", refit_from_local_features(model, batches(), dataset.num_db, seed=seed))
            )
        for label, m in variants:
            db = descriptors_from_frozen(m, frozen["database"], batch_size, torch.float32).numpy()
            q = descriptors_from_frozen(m, frozen["queries"], batch_size, torch.float32).numpy()
            recall, dropped = recall_from_descriptors(db, q, dataset)
            results[label] = describe(m, dataset, "all", recall, dropped).to_dict()
            log.info("%-24s %s", label, " ".join(f"R@{n}={100 * r:.1f}" for n, r in recall.items()))
    return results


app = kit_app(help=(__doc__ or "").splitlines()[0])


@app.command()
@command_boundary
def cli(
    checkpoints: list[str] = typer.Argument(
        ..., metavar="NAME=CHECKPOINT...", help="Checkpoints to compare, each as NAME=PATH (or just PATH)."
    ),
    dataset: str = typer.Option(
        ..., help="Folder with database.csv, 'nordland', 'aligned:DB,Q' or a .mat file."
    ),
    limit: int = typer.Option(None, help="Only the first N database images (and their queries)."),
    refit: bool = typer.Option(False, help="Also re-fit the centroids on the database images."),
    cache_dir: Path = typer.Option(None, help="Frozen-feature cache folder."),
    json_out: Path = json_option("the reports"),
    overwrite: bool = overwrite_option("the --json file"),
    threads: int = threads_option("PyTorch"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime import open_dataset
    from runtime.cli.console import progress
    from runtime.files import atomic_write_text
    from training.command import start_command

    start_command(verbose, quiet, threads, {"--json": json_out}, overwrite)
    data = open_dataset(dataset)
    if limit:
        data = first_stretch(data, limit)
    pairs = dict(item.split("=", 1) if "=" in item else (Path(item).stem, item) for item in checkpoints)
    results = compare_checkpoints(pairs, data, cache_dir, refit, progress=progress)
    for label, report in results.items():
        figures = " ".join(f"R@{n}={100 * r:.1f}%" for n, r in report["recall"].items())
        typer.echo(f"{label:24s} {figures} | {report['dataset']} q={report['num_queries']} db={report['num_db']} "
                   f"dim={report['descriptor_dim']} res={report['resolution']} model={report['fingerprint']}")  # fmt: skip
    if json_out:
        atomic_write_text(json_out, json.dumps(results, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.compare ARGS``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.compare")


if __name__ == "__main__":
    raise SystemExit(main())
