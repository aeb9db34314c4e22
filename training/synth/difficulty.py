"""How hard the synthetic world is: the raw-pixel baseline (:mod:`runtime.datasets.baseline`) per query
condition, computed on images rendered in memory (nothing written)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from runtime.datasets.baseline import THUMBNAIL_SIZE, thumbnail_descriptors
from runtime.datasets.place import neighbours_within
from runtime.protocol import EVAL_RADIUS_M
from runtime.recall import DEFAULT_NS, rank_database, recall_at_n
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
    from runtime.datasets import open_dataset
    from runtime.datasets.baseline import raw_pixel_recall

    dataset = open_dataset(spec)
    groups = dataset.info.get("extra_columns", {}).get("queries", {}).get("condition")
    return raw_pixel_recall(dataset, ns=ns, query_groups=groups)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.synth.difficulty SPEC``: print the raw-pixel baseline's recall@1/5/10/20."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.synth.difficulty", description=main.__doc__)
    parser.add_argument("spec", help="a dataset folder, 'nordland', 'aligned:DB,Q' or a .mat file")
    args = parser.parse_args(argv)
    for group, recall in dataset_baseline_recall(args.spec).items():
        print(f"{group:10s} " + "  ".join(f"R@{n} {value:.3f}" for n, value in recall.items()))


if __name__ == "__main__":
    main()
