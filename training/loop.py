"""The training run: k-means init, weakly supervised triplet training, validation, PCA-whitening.

Use :func:`training.train.train` (or ``python -m training.train``); this module holds the machinery.
Output folder::

    run.json        the TrainConfig and the dataset of this run
    metrics.jsonl   one JSON object per event: init / refresh / step / epoch / final
    last.pt         latest checkpoint with the full training state (--resume continues from it)
    init.pt         the k-means-initialised model before training (the baseline)
    best.pt         training's best-so-far model (validation recall@5), kept for resuming; not for deployment
    model.pt        the one model to deploy (netvlad-export takes it): the best model, with training-domain
                    PCA-whitening only when ``whitening_dim`` is set
    summary.json    final recall figures (val/test, raw and whitened), throughput, peak memory
"""

from __future__ import annotations

import json
import logging
import random
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime import PlaceDataset
from runtime.errors import ArtifactError, ConfigError
from runtime.files import atomic_write_text
from training.checkpoint import load_checkpoint, model_from_payload, save_checkpoint
from training.config import TrainConfig
from training.data import Split, both_ways, load_or_compute_frozen, split_along_route
from training.evaluate import describe, recall_from_descriptors
from training.loss import triplet_ranking_loss
from training.mining import TripletMiner
from training.model import PlaceModel, build_model, fit_clusters, fit_pca_whitening, initialize_netvlad
from training.model.clusters import sample_local_descriptors
from training.train_steps import descriptors_from_frozen

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
BUDGET_FIELDS = ("epochs", "max_steps", "max_train_seconds", "patience")


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Metrics:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed at once: a crash loses nothing)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def first(self, event: str, keys: tuple[str, ...], **match: Any) -> dict[str, Any]:
        """``keys`` of the first ``event`` record whose fields equal ``match`` (``{}`` when there is none)."""
        if not self.path.is_file():
            return {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if record.get("event") == event and all(record.get(k) == v for k, v in match.items()):
                return {k: record[k] for k in keys if k in record}
        return {}


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A fresh run needs an output folder without another run in it; a resumed one needs its last.pt."""
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise ArtifactError(
                f"cannot resume: '{out_dir / 'last.pt'}' does not exist; start a new run without --resume"
            )
        return
    held = sorted(p.name for p in (out_dir.iterdir() if out_dir.is_dir() else []) if p.suffix == ".pt")
    if (out_dir / RUN_FILE).exists() or held:
        found = ", ".join([RUN_FILE] * (out_dir / RUN_FILE).exists() + held)
        raise ConfigError(
            f"output folder '{out_dir}' already holds a training run ({found}); pass --resume to continue it "
            "or choose another --out"
        )


def resolve_device(device: str) -> torch.device:
    """``auto``/``cpu``/``cuda[:N]`` -> a torch device that exists here (ConfigError naming what is missing)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
        if index >= count:
            raise ConfigError(
                f"--device {device}: this machine has {count} usable CUDA device(s) (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
    return torch.device(device)


def check_own_run(out_dir: Path, resumed_config: dict) -> None:
    """A ``last.pt`` is resumed only in the run folder that wrote it: its config matches the folder's run file.

    A checkpoint copied in from another run (or a folder whose run file is gone) is refused.
    """
    run_file = out_dir / RUN_FILE
    try:
        recorded = json.loads(run_file.read_text(encoding="utf-8"))["config"]
    except FileNotFoundError:
        raise ArtifactError(
            f"cannot resume: '{out_dir / 'last.pt'}' has no {RUN_FILE} beside it, so it was not written by a "
            f"run in '{out_dir}'; start a new run in another --out"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cannot resume: '{run_file}' is unreadable ({exc}); start a new run") from exc
    resumed_config = json.loads(
        json.dumps(resumed_config, default=str)
    )  # tuples -> lists, as in the run file
    differing = sorted(
        k for k in set(recorded) | set(resumed_config)
        if k not in BUDGET_FIELDS and recorded.get(k) != resumed_config.get(k)
    )  # fmt: skip
    if differing:
        raise ArtifactError(
            f"cannot resume: '{out_dir / 'last.pt'}' belongs to another run than '{run_file}' "
            f"({', '.join(differing)} differ); it was copied in from elsewhere. Resume it in its own folder or "
            "start a new run"
        )


def resolve_dataset(cfg: TrainConfig, data_dir: Path, progress: Callable | None = None) -> PlaceDataset:
    """``cfg.dataset`` through open_dataset, or the synthetic world (generated under ``data_dir`` if missing)."""
    from runtime.datasets import load_generic, open_dataset

    if cfg.dataset is not None:
        return open_dataset(cfg.dataset)
    from training.synth import SynthConfig, generate

    world = data_dir / f"synth-{cfg.synth_preset}-seed{cfg.synth_seed}"
    if not (world / "database.csv").is_file():
        log.info(
            "generating the synthetic '%s' world (seed %d) in %s", cfg.synth_preset, cfg.synth_seed, world
        )
        generate(
            SynthConfig.preset(cfg.synth_preset, seed=cfg.synth_seed),
            world,
            overwrite=True,
            progress=progress,
        )
    return load_generic(world)


def trains_both_ways(cfg: TrainConfig, dataset: PlaceDataset) -> bool:
    """``cfg.both_ways``, or when it is None (auto): yes for frame-aligned drives (Nordland, ``aligned:``),
    whose two folders are two traversals of one route, each as good a database as the other."""
    if cfg.both_ways is not None:
        return bool(cfg.both_ways)
    return dataset.info.get("source") == "aligned"


class Trainer:
    """One training run; :meth:`run` does everything. State for --resume: :meth:`state_dict`."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        resume: bool = False,
        cache_dir: Path | None = None,
        progress: Callable | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        check_out_dir(self.out_dir, resume)
        self.device = resolve_device(cfg.device)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume_payload = None
        if resume:
            self.resume_payload = load_checkpoint(self.out_dir / "last.pt")
            state = self.resume_payload.get("training_state")
            if not isinstance(state, dict) or "config" not in state:
                raise ArtifactError(
                    f"'{self.out_dir / 'last.pt'}' has no training state and cannot be resumed; it is a model-only "
                    "checkpoint. Start a new run in another --out"
                )
            check_own_run(self.out_dir, state["config"])
            stored = TrainConfig.from_dict(state["config"])
            differing = [
                k
                for k in stored.to_dict()
                if k not in BUDGET_FIELDS and stored.to_dict()[k] != cfg.to_dict()[k]
            ]
            if differing:
                raise ConfigError(
                    f"--resume: the run in '{self.out_dir}' was started with other settings ({', '.join(differing)} "
                    f"differ); only {', '.join(BUDGET_FIELDS)} may change when resuming"
                )
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.out_dir / "cache"
        self.progress = progress
        self.metrics = Metrics(self.out_dir / "metrics.jsonl")
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        torch.set_num_threads(cfg.threads)

    # -- setup -----------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.dataset = resolve_dataset(cfg, self.cache_dir, self.progress)
        self.splits: dict[str, Split] = split_along_route(self.dataset, cfg.split_fractions)
        if trains_both_ways(cfg, self.dataset):
            self.splits["train"] = both_ways(self.dataset, self.splits["train"])
        self.model: PlaceModel = build_model(cfg.model).to(self.device)
        frozen = load_or_compute_frozen(
            self.model, self.dataset, self.cache_dir, cfg.batch_size, self.progress
        )
        every = torch.cat([frozen["database"], frozen["queries"]])  # (N_db + N_q, C, h, w): Split's rows
        self.frozen = {
            name: {
                "database": every[torch.from_numpy(s.db_rows)],
                "queries": every[torch.from_numpy(s.q_rows)],
            }
            for name, s in self.splits.items()
        }
        del every, frozen
        train = self.splits["train"]
        log.info(
            "training split %s: %d database images, %d queries%s",
            train.dataset.name, train.dataset.num_db, train.dataset.num_queries,
            " (both ways: positives from the other drive)" if train.dataset.info.get("both_ways") else "",
        )  # fmt: skip
        self.miner = TripletMiner(
            train.dataset,
            cfg.pos_radius_m,
            cfg.neg_radius_m,
            cfg.num_neg_samples,
            cfg.num_neg_keep,
            cfg.margin,
            cfg.cache_refresh_queries,
            db_traversal=train.db_traversal,
            q_traversal=train.q_traversal,
        )
        params = self.model.trainable_parameters()
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step_epochs, cfg.lr_gamma)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.epoch = 0
        self.perm: np.ndarray | None = None  # this epoch's query order
        self.pos = 0  # next position in perm
        self.best_score = (-1.0, -1.0)  # validation (recall@5, recall@1): @1 breaks ties
        self.best_epoch = -1
        self.best_step = -1
        self.bad_epochs = 0
        self.train_seconds = 0.0
        self.images_seen = 0
        self.refresh_seconds, self.refresh_images = 0.0, 0  # descriptor-cache refreshes of this process

    def _kmeans_init(self) -> None:
        cfg = self.cfg
        frozen_db = self.frozen["train"]["database"]
        order = self.rng.permutation(len(frozen_db))

        def batches():
            for start in range(0, len(order), cfg.batch_size):
                idx = torch.from_numpy(order[start : start + cfg.batch_size])
                with torch.inference_mode():
                    yield self.model.backbone_trainable(frozen_db[idx].to(self.device, torch.float32)).cpu()

        descriptors = sample_local_descriptors(
            batches(), cfg.kmeans_per_image, cfg.kmeans_descriptors, cfg.seed
        )
        init = fit_clusters(descriptors, cfg.model.num_clusters, cfg.seed, cfg.kmeans_iterations)
        initialize_netvlad(
            self.model, init, source=f"k-means on {self.splits['train'].dataset.name} database"
        )

    # -- evaluation ------------------------------------------------------------------------------------
    def split_descriptors(self, split: str, model: PlaceModel | None = None, dtype=torch.float32):
        model = model or self.model
        f = self.frozen[split]
        run = lambda x: descriptors_from_frozen(model, x, self.cfg.batch_size, dtype, self.device, self.amp)  # noqa: E731
        return run(f["database"]), run(f["queries"])

    def evaluate(self, split: str, model: PlaceModel | None = None) -> dict[str, Any]:
        model = model or self.model
        ds = self.splits[split].dataset
        if ds.num_db == 0 or ds.num_queries == 0:
            return {}
        started = time.perf_counter()
        db, q = self.split_descriptors(split, model)
        recall, dropped = recall_from_descriptors(db.numpy(), q.numpy(), ds)
        return describe(model, ds, split, recall, dropped, time.perf_counter() - started).to_dict()

    def validate(self, event: str) -> bool:
        """Validation recall; best.pt when it beats the best so far (the k-means init included)."""
        val = self.evaluate("val")
        score = self.score(val)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.best_step = score, self.epoch, self.step
            save_checkpoint(self.out_dir / "best.pt", self.model)
        self.metrics.write(
            event, epoch=self.epoch, step=self.step, lr=self.optimizer.param_groups[0]["lr"], val=val,
            best=improved, train_seconds=round(self.train_seconds, 1), peak_memory_mb=round(peak_memory_mb(), 1),
        )  # fmt: skip
        return improved

    @staticmethod
    def score(report: dict[str, Any]) -> tuple[float, float]:
        """Model selection key: validation recall@5 (training/README.md, "The protocol"), then recall@1 to break ties."""
        recall = report.get("recall", {}) if report else {}
        return (float(recall.get("5", -1.0)), float(recall.get("1", -1.0)))

    def refresh_cache(self) -> None:
        started = time.perf_counter()
        db, q = self.split_descriptors("train", dtype=torch.float16)
        self.miner.refresh(db, q)
        seconds = time.perf_counter() - started
        images = len(db) + len(q)
        self.refresh_seconds += seconds
        self.refresh_images += images
        self.metrics.write(
            "refresh",
            step=self.step,
            images=images,
            seconds=round(seconds, 3),
            images_per_s=round(images / max(seconds, 1e-9), 1),
            cache_mb=round((db.numel() + q.numel()) * 2 / 1e6, 2),
            interval_queries=self.miner.refresh_every,
        )

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "miner": self.miner.state_dict(),
            "rng_numpy": self.rng.bit_generator.state,
            "rng_torch": torch.get_rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "perm": None if self.perm is None else torch.from_numpy(self.perm),
            "pos": self.pos,
            "best_score": list(self.best_score),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "bad_epochs": self.bad_epochs,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.miner.load_state_dict(state["miner"])
        self.rng.bit_generator.state = state["rng_numpy"]
        torch.set_rng_state(state["rng_torch"])
        self.step, self.epoch, self.pos = int(state["step"]), int(state["epoch"]), int(state["pos"])
        self.perm = None if state["perm"] is None else state["perm"].numpy().copy()
        self.best_score, self.best_epoch = tuple(state["best_score"]), int(state["best_epoch"])
        self.best_step = int(state["best_step"])
        self.bad_epochs = int(state["bad_epochs"])
        self.train_seconds, self.images_seen = float(state["train_seconds"]), int(state["images_seen"])

    def save_last(self) -> None:
        save_checkpoint(self.out_dir / "last.pt", self.model, training_state=self.state_dict())

    # -- training --------------------------------------------------------------------------------------
    def train_step(self, tuples) -> float:
        cfg = self.cfg
        frozen = self.frozen["train"]
        k = cfg.num_neg_keep
        q_idx = torch.tensor([t.query for t in tuples])
        db_idx = torch.from_numpy(
            np.stack([np.concatenate([[t.positive], t.negatives]) for t in tuples])
        )  # (B, 1+k)
        images = torch.cat(
            [frozen["queries"][q_idx], frozen["database"][db_idx.flatten()]]
        )  # (B + B(1+k), C, h, w)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            desc = self.model.head(images.to(self.device, torch.float32)).float()  # (B(2+k), D)
        b = len(tuples)
        query, rest = desc[:b], desc[b:].view(b, 1 + k, -1)  # (B, D), (B, 1+k, D)
        loss = triplet_ranking_loss(query, rest[:, 0], rest[:, 1:], cfg.margin)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.images_seen += images.shape[0]
        return float(loss.detach())

    def budget_exhausted(self) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return True
        return cfg.max_train_seconds is not None and self.train_seconds >= cfg.max_train_seconds

    def run_epoch(self) -> bool:
        """Train until the end of the epoch (True) or until the budget is spent (False)."""
        cfg = self.cfg
        if self.perm is None:
            self.perm = self.rng.permutation(self.miner.trainable_queries)
            self.pos = 0
        bar = (
            self.progress(total=len(self.perm), desc=f"epoch {self.epoch + 1}", unit="query")
            if self.progress
            else None
        )
        if bar is not None:
            bar.update(self.pos)
        losses, window_start, window_images = [], time.perf_counter(), 0
        while self.pos < len(self.perm):
            if self.budget_exhausted():
                if bar is not None:
                    bar.close()
                return False
            started = time.perf_counter()
            batch = []
            while self.pos < len(self.perm) and len(batch) < cfg.batch_tuples:
                if self.miner.needs_refresh():
                    self.refresh_cache()
                t = self.miner.mine(int(self.perm[self.pos]), self.rng)
                self.pos += 1
                if bar is not None:
                    bar.update(1)
                if t is not None:
                    batch.append(t)
            if batch:
                losses.append(self.train_step(batch))
                window_images += len(batch) * (2 + cfg.num_neg_keep)
            self.train_seconds += time.perf_counter() - started
            if batch and self.step % 10 == 0:
                elapsed = time.perf_counter() - window_start
                self.metrics.write(
                    "step",
                    step=self.step,
                    epoch=self.epoch,
                    loss=round(float(np.mean(losses)), 5),
                    lr=self.optimizer.param_groups[0]["lr"],
                    images_per_s=round(window_images / max(elapsed, 1e-9), 1),
                    skipped_queries=self.miner.skipped,
                )
                losses, window_start, window_images = [], time.perf_counter(), 0
            if batch and cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
                self.validate("validation")
            if batch and self.step % cfg.checkpoint_every_steps == 0:
                self.save_last()
        if bar is not None:
            bar.close()
        return True

    def end_epoch(self) -> bool:
        """Scheduler, validation, best checkpoint, early stopping; True to go on."""
        cfg = self.cfg
        self.epoch += 1
        self.perm, self.pos = None, 0
        lr_before = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        lr_after = self.optimizer.param_groups[0]["lr"]
        if lr_after < lr_before:
            self.miner.scale_refresh_interval(lr_before / lr_after)
        improved = self.validate("epoch") if self.epoch % cfg.eval_every_epochs == 0 else False
        if not improved and self.epoch % cfg.eval_every_epochs == 0:
            self.bad_epochs += 1
        elif improved:
            self.bad_epochs = 0
        self.save_last()
        if self.bad_epochs >= cfg.patience:
            log.info("early stopping: no better validation recall@5 for %d epochs", self.bad_epochs)
            return False
        return self.epoch < cfg.epochs

    def finalize(self) -> Path:
        """model.pt (the best model; training-domain PCA-whitening only when asked), summary.json."""
        cfg = self.cfg
        best_path = self.out_dir / "best.pt"
        if not best_path.is_file():
            save_checkpoint(best_path, self.model)
        best = model_from_payload(load_checkpoint(best_path), str(best_path)).to(self.device)
        summary: dict[str, Any] = {
            "best_epoch": self.best_epoch, "best_step": self.best_step, "steps": self.step, "epochs": self.epoch,
        }  # fmt: skip
        summary["raw"] = {s: self.evaluate(s, best) for s in ("val", "test")}
        summary["init"] = self.metrics.first("init", which="kmeans", keys=("val", "test"))
        final = best
        if cfg.whitening_dim is not None:
            db, q = self.split_descriptors("train", best)
            sample = torch.cat([db, q]).numpy()
            if len(sample) > cfg.whitening_images:
                sample = sample[self.rng.choice(len(sample), cfg.whitening_images, replace=False)]
            cap = max(1, min(int(len(sample) * cfg.whitening_max_fraction), len(sample) - 1))
            dim = min(cfg.whitening_dim, cap)
            if dim < cfg.whitening_dim:
                log.warning(
                    "PCA-whitening: %d training descriptors allow at most %d-D (whitening_max_fraction %g), "
                    "so %d-D instead of the configured %d-D",
                    len(sample), cap, cfg.whitening_max_fraction, dim, cfg.whitening_dim,
                )  # fmt: skip
            weight, bias = fit_pca_whitening(sample, dim, cfg.whitening_shrinkage)
            final = best.with_whitening(weight, bias)
            final.provenance["whitening"] = {
                "dim": dim, "fitted_on": len(sample), "split": "train", "shrinkage": cfg.whitening_shrinkage,
            }  # fmt: skip
            summary["whitened"] = {s: self.evaluate(s, final) for s in ("val", "test")}
            # the effect of the whitening dimension: the first d whitened dimensions, re-normalised
            sweep = [d for d in (32, 64, 128, 256, 512, 1024, 2048, 4096) if d < dim] + [dim]
            summary["whitening_sweep_test"] = {
                str(d): self.evaluate("test", best.with_whitening(weight, bias, dim=d)).get("recall")
                for d in sweep
            }
        path = save_checkpoint(self.out_dir / "model.pt", final.cpu())
        summary.update(
            model=str(path), fingerprint=final.fingerprint(), descriptor_dim=final.descriptor_dim,
            train_seconds=round(self.train_seconds, 1), images_seen=self.images_seen,
            train_images_per_s=round(self.images_seen / max(self.train_seconds, 1e-9), 1),
            refresh_images_per_s=round(self.refresh_images / max(self.refresh_seconds, 1e-9), 1),
            threads=torch.get_num_threads(), device=str(self.device),
            peak_memory_mb=round(peak_memory_mb(), 1), skipped_queries=self.miner.skipped,
        )  # fmt: skip
        self.metrics.write("final", **summary)
        atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
        return path

    def run(self) -> Path:
        self._setup()
        if self.resume_payload is not None:
            self.model.load_state_dict(self.resume_payload["model_state"])
            self.model.provenance = dict(self.resume_payload.get("provenance") or {})
            self.load_state_dict(self.resume_payload["training_state"])
            log.info("resumed at epoch %d, step %d from %s", self.epoch, self.step, self.out_dir / "last.pt")
        else:
            atomic_write_text(
                self.out_dir / RUN_FILE,
                json.dumps({"config": self.cfg.to_dict(), "dataset": repr(self.dataset)}, indent=2) + "\n",
            )
            self.metrics.write("init", which="random", val=self.evaluate("val"), test=self.evaluate("test"))
            self._kmeans_init()
            val = self.evaluate("val")
            self.metrics.write(
                "init", which="kmeans", val=val, test=self.evaluate("test"),
                centroids=self.model.provenance.get("centroids"),
            )  # fmt: skip
            # the initialisation is the first candidate for best.pt: training never ends below it on val
            self.best_score, self.best_epoch, self.best_step = self.score(val), 0, 0
            save_checkpoint(self.out_dir / "best.pt", self.model)
            save_checkpoint(self.out_dir / "init.pt", self.model)  # the k-means baseline, kept for comparison
            self.save_last()
        going = not self.budget_exhausted() and self.epoch < self.cfg.epochs
        while going:
            if not self.run_epoch():
                if self.best_step != self.step:
                    self.validate("validation")  # the last steps are a candidate too
                self.save_last()
                log.info("training budget spent at step %d (%.0f s)", self.step, self.train_seconds)
                break
            going = self.end_epoch()
        return self.finalize()


__all__ = ["Trainer", "check_out_dir"]
