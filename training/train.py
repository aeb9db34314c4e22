"""``python -m training.train --out DIR``: train NetVLAD the way the paper's code does (PROTOCOL.md).

With no other argument it trains the default efficientnet_lite0 NetVLAD on the synthetic ``small`` world
(generated under DIR/cache the first time), offline, in about 15 minutes on 2 CPU cores; the command line
only maps its options onto :class:`training.config.TrainConfig` and calls :func:`train`.
This module imports torch lazily, so ``--help`` works everywhere.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.console import command_boundary

if TYPE_CHECKING:
    from training.config import TrainConfig

log = logging.getLogger(__name__)


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: Callable | None = None,
) -> Path:
    """Train per ``cfg`` into ``out_dir`` (see training.loop for the files) and return ``model.pt``.

    ``resume``: continue the run in ``out_dir`` from its ``last.pt`` exactly (model, optimiser, scheduler,
    RNG, mining state, step); only the budget fields (epochs, max_steps, max_train_seconds, patience) may
    differ from the original config. ``cache_dir``: where the synthetic world and the frozen-feature cache
    live (default ``out_dir/cache``; share it between runs to skip regenerating them).
    """
    from runtime.errors import OutputError
    from runtime.outputs import clean_stale, output_lock
    from training.loop import Trainer

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out '{out_dir}' is a file, not a training folder; choose another --out")
    with output_lock(out_dir, "training folder"):
        clean_stale(out_dir, extra_patterns=(".*.tmp",))  # checkpoints a killed run was writing
        return Trainer(cfg, out_dir, resume, Path(cache_dir) if cache_dir else None, progress).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train NetVLAD (weakly supervised, PROTOCOL.md) and write DIR/model.pt for netvlad-export.",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (checkpoints, metrics.jsonl, summary.json)"
    )
    p.add_argument(
        "--preset", default="default", help="training preset: default, paper, tiny (default: default)"
    )
    p.add_argument(
        "--dataset", help="dataset folder (database.csv), 'nordland', 'aligned:DB,Q' or .mat; default: synth"
    )
    p.add_argument("--synth-preset", help="synthetic world preset when no --dataset: tiny, small, medium")
    p.add_argument("--synth-seed", type=int, help="synthetic world seed")
    p.add_argument("--backbone", help="efficientnet_lite0 (default), vgg16, resnet18, resnet50")
    p.add_argument("--clusters", type=int, help="NetVLAD clusters K (default 64)")
    p.add_argument("--height", type=int, help="model input height")
    p.add_argument("--width", type=int, help="model input width")
    p.add_argument(
        "--trainable-stages", type=int, help="backbone stages trained (the rest is frozen and cached)"
    )
    p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes of training")
    p.add_argument("--batch-tuples", type=int, help="tuples per optimiser step (default 4)")
    p.add_argument(
        "--cache-refresh", type=int, help="refresh the descriptor cache every N queries (default 1000)"
    )
    p.add_argument(
        "--whitening-dim", type=int, help="PCA-whitening output dimension; 0 for none (default 4096)"
    )
    p.add_argument("--checkpoint-every", type=int, help="write last.pt every N steps (default 200)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    p.add_argument(
        "--cache-dir", type=Path, help="synthetic world and frozen-feature cache (default OUT/cache)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Map parsed options onto a :class:`TrainConfig` (unset options keep the preset's values)."""
    from training.config import TrainConfig

    fields = {
        "dataset": args.dataset,
        "synth_preset": args.synth_preset,
        "synth_seed": args.synth_seed,
        "seed": args.seed,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "max_train_seconds": None if args.max_minutes is None else args.max_minutes * 60.0,
        "batch_tuples": args.batch_tuples,
        "cache_refresh_queries": args.cache_refresh,
        "checkpoint_every_steps": args.checkpoint_every,
        "device": args.device,
        "threads": args.threads,
    }
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.whitening_dim is not None:
        fields["whitening_dim"] = args.whitening_dim or None
    model = {
        "backbone": args.backbone,
        "num_clusters": args.clusters,
        "input_height": args.height,
        "input_width": args.width,
        "trainable_stages": args.trainable_stages,
    }
    model = {k: v for k, v in model.items() if v is not None}
    return TrainConfig.preset(args.preset, model_overrides=model, **fields)


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """On --resume: the stored config of the run, with the budget options given on the command line."""
    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig

    state = load_checkpoint(args.out / "last.pt").get("training_state") or {}
    stored = TrainConfig.from_dict(state["config"]) if "config" in state else config_from_args(args)
    budget = {"epochs": args.epochs, "max_steps": args.max_steps}
    if args.max_minutes is not None:
        budget["max_train_seconds"] = args.max_minutes * 60.0
    return stored.replace(**{k: v for k, v in budget.items() if v is not None})


@command_boundary
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.console import configure_logging, progress

    configure_logging(args.verbose)
    cfg = resume_config(args) if args.resume and (args.out / "last.pt").is_file() else config_from_args(args)
    path = train(cfg, args.out, resume=args.resume, cache_dir=args.cache_dir, progress=progress)
    log.info("model written to %s (see %s)", path, args.out / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
