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

from runtime.console import command_boundary
from runtime.datasets import PlaceDataset

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


@command_boundary
def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT pairs")
    p.add_argument("--dataset", required=True)
    p.add_argument("--limit", type=int, help="first N database images (and their queries)")
    p.add_argument("--refit", action="store_true", help="also re-fit the centroids on the database images")
    p.add_argument("--cache-dir", type=Path, help="frozen-feature cache folder")
    p.add_argument("--json", dest="json_out", type=Path)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from runtime.atomic import atomic_write_text
    from runtime.console import configure_logging, progress
    from runtime.datasets import open_dataset

    configure_logging()
    import torch

    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.dataset)
    if args.limit:
        dataset = first_stretch(dataset, args.limit)
    pairs = dict(item.split("=", 1) if "=" in item else (Path(item).stem, item) for item in args.checkpoints)
    results = compare_checkpoints(pairs, dataset, args.cache_dir, args.refit, progress=progress)
    for label, report in results.items():
        figures = " ".join(f"R@{n}={100 * r:.1f}%" for n, r in report["recall"].items())
        print(f"{label:24s} {figures} | {report['dataset']} q={report['num_queries']} db={report['num_db']} "
              f"dim={report['descriptor_dim']} res={report['resolution']} model={report['fingerprint']}")  # fmt: skip
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
