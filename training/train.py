"""``python -m training.train --out DIR``: train NetVLAD the way the paper's code does (training/README.md).

With no other argument it trains the default efficientnet_lite0 NetVLAD on the synthetic ``small`` world
(generated under DIR/cache the first time), offline, in about 15 minutes on 2 CPU cores; the command line
only maps its options onto :class:`training.config.TrainConfig` and calls :func:`train`.
This module imports torch lazily, so ``--help`` works everywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app, run_app, threads_option

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.model import ModelConfig

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
    from runtime.files import clean_stale, output_lock
    from training.loop import Trainer

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out '{out_dir}' is a file, not a training folder; choose another --out")
    with output_lock(out_dir, "training folder"):
        clean_stale(out_dir, extra_patterns=(".*.tmp",))  # checkpoints a killed run was writing
        return Trainer(cfg, out_dir, resume, Path(cache_dir) if cache_dir else None, progress).run()


app = kit_app(
    help="Train NetVLAD (weakly supervised, as the paper's code; training/README.md) and write DIR/model.pt, "
    "the one model to deploy (netvlad-export DIR/model.pt).",
)


@app.command()
@command_boundary
def cli(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: model.pt, checkpoints, metrics.jsonl, summary.json."
    ),
    preset: str = typer.Option("default", help="Training preset: default, paper or tiny."),
    dataset: str = typer.Option(
        None,
        help="Dataset folder (database.csv), 'nordland', 'aligned:DB,Q' or a .mat file; default: synthetic.",
    ),
    synth_preset: str = typer.Option(
        None, help="Synthetic world preset without --dataset: tiny, small, medium."
    ),
    synth_seed: int = typer.Option(None, help="Synthetic world seed."),
    backbone: str = typer.Option(None, help="efficientnet_lite0 (default), vgg16, resnet18 or resnet50."),
    clusters: int = typer.Option(None, help="NetVLAD clusters K (default 64)."),
    height: int = typer.Option(None, help="Model input height in pixels."),
    width: int = typer.Option(None, help="Model input width in pixels."),
    both_ways: bool = typer.Option(
        None,
        "--both-ways/--one-way",
        help="Train each drive as database and as queries, tuples crossing drives (default: both ways for "
        "frame-aligned drives such as nordland, one way otherwise).",
    ),
    trainable_stages: int = typer.Option(
        None, help="Backbone stages trained (the rest is frozen and cached)."
    ),
    seed: int = typer.Option(None, help="Training seed."),
    lr: float = typer.Option(None, help="Learning rate."),
    optimizer: str = typer.Option(None, help="sgd or adam."),
    epochs: int = typer.Option(None, help="Maximum epochs."),
    max_steps: int = typer.Option(None, help="Stop after this many optimiser steps."),
    max_minutes: float = typer.Option(None, help="Stop after this many minutes of training."),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Batch size: training tuples (query, positive, negatives) per step (default 4).",
    ),
    cache_refresh: int = typer.Option(
        None, help="Refresh the descriptor cache every N queries (default 1000)."
    ),
    whitening_dim: int = typer.Option(
        None,
        help="Training-domain PCA-whitening of model.pt to this dimension (default: none). Only to deploy in "
        "the training domain: it does not carry over to other domains.",
    ),
    checkpoint_every: int = typer.Option(None, help="Write last.pt every N steps (default 200)."),
    device: str = typer.Option(None, help="auto (default), cpu, cuda or cuda:N."),
    threads: int = threads_option("PyTorch"),
    cache_dir: Path = typer.Option(
        None, help="Synthetic world and frozen-feature cache (default OUT/cache)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    args = SimpleNamespace(
        **{k: v for k, v in locals().items() if k not in ("configure_logging", "progress")}
    )
    cfg = resume_config(args) if resume and (out / "last.pt").is_file() else config_from_args(args)
    path = train(cfg, out, resume=resume, cache_dir=cache_dir, progress=progress)
    log.info("model written to %s (see %s)", path, out / "summary.json")
    typer.echo(recall_line(out / "summary.json"))


def recall_line(summary_path: Path) -> str:
    """One line from a run's summary: R@1 and R@5 of the untrained (k-means) model and the trained one."""
    import json

    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    parts = []
    for split in ("val", "test"):
        before = summary.get("init", {}).get(split, {}).get("recall", {})
        after = summary.get("raw", {}).get(split, {}).get("recall", {})
        if before and after:
            parts.append(
                f"{split} R@1 {100 * before['1']:.1f} -> {100 * after['1']:.1f} %, "
                f"R@5 {100 * before['5']:.1f} -> {100 * after['5']:.1f} %"
            )
    return "untrained (k-means init) -> trained: " + ("; ".join(parts) or "no held-out split")


def config_from_args(args: SimpleNamespace) -> TrainConfig:
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
        "batch_tuples": args.batch_size,
        "cache_refresh_queries": args.cache_refresh,
        "checkpoint_every_steps": args.checkpoint_every,
        "device": args.device,
        "threads": args.threads or os.cpu_count() or 1,  # 0: one per core
        "both_ways": args.both_ways,
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
    cfg = TrainConfig.preset(args.preset, model_overrides=model, **fields)
    if args.dataset is not None and args.height is None and args.width is None:
        cfg = cfg.replace(model=input_size_for_images(cfg.model, args.dataset))
    return cfg


def input_size_for_images(model: ModelConfig, dataset_spec: str) -> ModelConfig:
    """``model`` with an input height that keeps the aspect ratio of the dataset's images at the model's
    input width (rounded to the backbone stride), when the images have another aspect than the input.

    Nordland's 64x32 frames (2:1) get 160x320 instead of the default 240x320 (4:3): upsampled 5x, not
    squashed. The size chosen is the model card's, so the runtime resizes every frame the same way.
    """
    import dataclasses

    from runtime import open_dataset
    from training.model.backbones import BACKBONES

    dataset = open_dataset(dataset_spec)
    if dataset.num_db == 0:
        return model
    h, w = dataset.read_image("database", 0).shape[:2]
    stride = BACKBONES[model.backbone][2]
    height = max(stride, round(model.input_width * h / w / stride) * stride)
    if height == model.input_height:
        return model
    log.info(
        "model input %dx%d (height x width) for the dataset's %dx%d images: their aspect ratio at width %d "
        "(give --height/--width to choose another)",
        height, model.input_width, h, w, model.input_width,
    )  # fmt: skip
    return dataclasses.replace(model, input_height=height)


def resume_config(args: SimpleNamespace) -> TrainConfig:
    """On --resume: the stored config of the run, with the budget options given on the command line."""
    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig

    state = load_checkpoint(args.out / "last.pt").get("training_state") or {}
    stored = TrainConfig.from_dict(state["config"]) if "config" in state else config_from_args(args)
    budget = {"epochs": args.epochs, "max_steps": args.max_steps}
    if args.max_minutes is not None:
        budget["max_train_seconds"] = args.max_minutes * 60.0
    return stored.replace(**{k: v for k, v in budget.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.train ARGS``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.train")


if __name__ == "__main__":
    raise SystemExit(main())
