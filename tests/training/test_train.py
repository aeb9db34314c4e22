"""The training run end to end on a micro synthetic world: files, metrics, exact resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from runtime.errors import ArtifactError, ConfigError, DatasetError  # noqa: E402
from training.checkpoint import load_checkpoint, load_model  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.train import main as train_main  # noqa: E402
from training.train import train  # noqa: E402


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory) -> Path:
    from training.synth import SynthConfig, generate

    cfg = SynthConfig(
        route_length_m=400.0, db_spacing_m=4.0, query_spacing_m=8.0, height=48, width=64, write_video=False
    )
    return generate(cfg, tmp_path_factory.mktemp("world") / "micro")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _cfg(world: Path, **changes) -> TrainConfig:
    return TrainConfig.preset("tiny", dataset=str(world), kmeans_iterations=5, **changes)


@pytest.fixture(scope="module")
def full_run(micro_world, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    train(_cfg(micro_world, max_steps=4, whitening_dim=16), out, cache_dir=cache_dir)  # explicit whitening
    return out


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_no_training_domain_whitening_unless_asked():
    assert TrainConfig().whitening_dim is None and TrainConfig.preset("tiny").whitening_dim is None


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_and_a_whitened_model(full_run):
    names = {p.name for p in full_run.iterdir()}
    assert {"run.json", "metrics.jsonl", "last.pt", "best.pt", "model.pt", "summary.json"} <= names
    events = _events(full_run)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["init", "init"] and kinds[-1] == "final"
    assert [e["which"] for e in events[:2]] == ["random", "kmeans"]
    assert kinds.count("refresh") >= 2  # refreshed every 8 queries
    for e in events[:2]:
        for split in ("val", "test"):
            report = e[split]
            assert set(report["recall"]) == {"1", "5", "10", "20"}
            assert report["descriptor_dim"] == 896 and report["resolution"] == "64x96"
            assert len(report["fingerprint"]) == 16 and report["split"] == split
    # the k-means initialisation already retrieves most places on the held-out stretch
    assert events[1]["test"]["recall"]["5"] >= 0.6
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["descriptor_dim"] == 16
    assert summary["whitened"]["test"]["descriptor_dim"] == 16
    model = load_model(full_run / "model.pt")
    assert model.config.whitening_dim == 16 and model.fingerprint() == summary["fingerprint"]
    assert model.provenance["centroids"]["source"].startswith("k-means")
    assert model.provenance["whitening"]["split"] == "train"
    refresh = next(e for e in events if e["event"] == "refresh")
    assert refresh["images_per_s"] > 0 and refresh["cache_mb"] > 0


@pytest.mark.slow
def test_resume_continues_exactly(full_run, micro_world, cache_dir, tmp_path):
    out = tmp_path / "interrupted"
    train(_cfg(micro_world, max_steps=2), out, cache_dir=cache_dir)
    assert load_checkpoint(out / "last.pt")["training_state"]["step"] == 2
    train(_cfg(micro_world, max_steps=4), out, resume=True, cache_dir=cache_dir)
    resumed, uninterrupted = load_checkpoint(out / "last.pt"), load_checkpoint(full_run / "last.pt")
    assert resumed["training_state"]["step"] == uninterrupted["training_state"]["step"] == 4
    for key, value in uninterrupted["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key
    a, b = resumed["training_state"], uninterrupted["training_state"]
    assert torch.equal(a["miner"]["memory"], b["miner"]["memory"])
    assert torch.equal(a["miner"]["db_cache"], b["miner"]["db_cache"])
    assert a["rng_numpy"] == b["rng_numpy"] and a["pos"] == b["pos"]
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    steps = [e["step"] for e in _events(out) if e["event"] == "step"]
    assert steps == sorted(steps)  # the resumed run appends to the same metrics


def test_out_dir_holding_another_run(full_run, micro_world):
    with pytest.raises(
        ConfigError,
        match=rf"output folder '{full_run}' already holds a training run \(run.json, best.pt, init.pt, last.pt, model.pt\); "
        "pass --resume to continue it or choose another --out",
    ):
        train(_cfg(micro_world), full_run)


def test_resume_with_other_settings_is_refused(full_run, micro_world, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    with pytest.raises(
        ConfigError, match=r"started with other settings \(lr differ\); only epochs, max_steps"
    ):
        train(_cfg(micro_world, lr=0.5, whitening_dim=16), out, resume=True)


def test_resume_from_corrupt_or_foreign_checkpoint(micro_world, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(ArtifactError, match=r"checkpoint '.*last\.pt' cannot be read .*truncated, corrupt"):
        train(_cfg(micro_world), out, resume=True)
    torch.save({"model": {"w": torch.zeros(1)}}, out / "last.pt")
    with pytest.raises(ArtifactError, match=r"is not a netvlad-kit checkpoint .*found \['model'\]"):
        train(_cfg(micro_world), out, resume=True)
    (out / "last.pt").unlink()
    with pytest.raises(ArtifactError, match=r"cannot resume: '.*last\.pt' does not exist"):
        train(_cfg(micro_world), out, resume=True)


def test_dataset_without_any_positive(micro_world, tmp_path):
    from runtime.datasets import load_generic
    from runtime.datasets.generic import write_split_csv

    world = load_generic(micro_world)
    far = tmp_path / "far"
    far.mkdir()
    for sub in ("database", "queries"):
        (far / sub).symlink_to(micro_world / sub)
    write_split_csv(far / "database.csv", world.db_images, world.db_utm)
    write_split_csv(far / "queries.csv", world.q_images, world.q_utm + np.array([5000.0, 0.0]))
    with pytest.raises(
        DatasetError,
        match=r"dataset 'far:train': none of its \d+ queries has a database image within 10 m \(a potential "
        r"positive\) and 4 database images beyond 25 m",
    ):
        train(_cfg(far), tmp_path / "out", cache_dir=tmp_path / "cache")


def test_unknown_backbone_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--out", str(tmp_path / "o"), "--backbone", "alexnet"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: unknown backbone 'alexnet'; known backbones: efficientnet_lite0, resnet18, resnet50, vgg16\n"
    )


def test_config_validation_and_presets():
    cfg = TrainConfig.preset("default")
    assert (cfg.margin, cfg.num_neg_samples, cfg.num_neg_keep, cfg.pos_radius_m, cfg.neg_radius_m) == (
        0.1,
        1000,
        10,
        10.0,
        25.0,
    )
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.dataset is None and cfg.synth_preset == "small"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="num_neg_keep \\(20\\) must not exceed num_neg_samples \\(10\\)"):
        TrainConfig(num_neg_samples=10, num_neg_keep=20)
    with pytest.raises(
        ConfigError, match="unknown training preset 'fast'; known presets: paper, default, tiny"
    ):
        TrainConfig.preset("fast")
    with pytest.raises(AttributeError):
        cfg.lr = 1.0  # frozen


def test_help_works():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--resume" in out and "--out" in out
    assert "Train NetVLAD (weakly supervised" in out  # a one-command app shows what it does under Usage
    assert "--both-ways / --one-way" in out


@pytest.mark.slow
def test_evaluate_cli_agrees_with_the_run_and_writes_json(full_run, micro_world, tmp_path, capsys):
    from training.evaluate import main as evaluate_main

    out = tmp_path / "eval.json"
    code = evaluate_main(
        [str(full_run / "model.pt"), "--dataset", str(micro_world), "--split", "test", "--json", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["descriptor_dim"] == 16 and report["resolution"] == "64x96"
    summary = json.loads((full_run / "summary.json").read_text())
    assert report["fingerprint"] == summary["fingerprint"]
    in_run = summary["whitened"]["test"]
    assert report["num_queries"] == in_run["num_queries"] > 0
    # full fp32 forward vs the run's float16 frozen cache: at most one query may flip at rank 1
    assert abs(report["recall"]["1"] - in_run["recall"]["1"]) <= 1.0 / report["num_queries"] + 1e-9
    assert f"model={summary['fingerprint']}" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_with_refit_centroids(full_run, micro_world, tmp_path):
    from runtime.datasets import load_generic
    from training.compare import compare_checkpoints, first_stretch

    dataset = first_stretch(load_generic(micro_world), 60)
    assert dataset.num_db == 60 and 0 < dataset.num_queries < 60
    results = compare_checkpoints({"init": full_run / "init.pt"}, dataset, tmp_path, refit=True)
    assert set(results) == {"init", "init+refit"}
    assert results["init"]["fingerprint"] != results["init+refit"]["fingerprint"]
    from training.evaluate import evaluate_model

    # the shared frozen-feature pass gives the recall a full forward pass of that checkpoint gives
    # (float16 cache against float32: at most one query may flip)
    full = evaluate_model(load_model(full_run / "init.pt"), dataset).recall
    queries = results["init"]["num_queries"]
    for n in ("1", "5", "10", "20"):
        assert abs(results["init"]["recall"][n] - full[int(n)]) <= 1.0 / queries + 1e-9, n
    assert results["init+refit"]["descriptor_dim"] == results["init"]["descriptor_dim"] == 896


def test_route_split_interleaves_stretches_and_keeps_places_apart(micro_world):
    from runtime.datasets import load_generic
    from training.data import split_along_route

    world = load_generic(micro_world)
    splits = split_along_route(world, (0.6, 0.2, 0.2))
    db = np.concatenate([s.db_indices for s in splits.values()])
    q = np.concatenate([s.q_indices for s in splits.values()])
    assert len(set(db.tolist())) == len(db) and len(set(q.tolist())) == len(q)  # no place in two splits
    # 6 stretches of 20 images 4 m apart (4/1/1): training keeps its 80, a held-out stretch loses the images
    # within 25 m of a border with another split, and only those
    assert len(splits["train"].db_indices) == 80
    assert all(5 <= len(splits[n].db_indices) < 20 for n in ("val", "test"))
    for held_out in ("val", "test"):  # the gap at a border is the guard plus at most one spacing
        others = np.concatenate([s.db_indices for n, s in splits.items() if n != held_out])
        mine = world.db_utm[splits[held_out].db_indices]
        gap = np.linalg.norm(mine[:, None] - world.db_utm[others][None], axis=2).min()
        assert 25.0 < gap <= 25.0 + 4.0 + 1e-6, (held_out, gap)
    for held_out in ("val", "test"):
        mine = splits[held_out]
        others = [s for n, s in splits.items() if n != held_out]
        other_db = np.concatenate([world.db_utm[s.db_indices] for s in others])
        other_q = np.concatenate([world.q_utm[s.q_indices] for s in others])
        for points in (world.db_utm[mine.db_indices], world.q_utm[mine.q_indices]):
            gaps = np.linalg.norm(points[:, None] - np.concatenate([other_db, other_q])[None], axis=2)
            assert gaps.min() > 25.0, held_out  # no held-out place within 25 m of another split's place
        assert mine.dataset.num_queries > 0
    assert splits["train"].dataset.name == f"{world.name}:train"
    with pytest.raises(ConfigError, match="split fractions must be three non-negative shares summing to 1"):
        split_along_route(world, (0.5, 0.2, 0.2))


def test_both_ways_split_crosses_drives(micro_world):
    from runtime.datasets import load_generic
    from training.data import both_ways, split_along_route
    from training.mining import TripletMiner

    world = load_generic(micro_world)
    one = split_along_route(world, (0.6, 0.2, 0.2))["train"]
    two = both_ways(world, one)
    n_db, n_q = len(one.db_indices), len(one.q_indices)
    assert (two.dataset.num_db, two.dataset.num_queries) == (n_db + n_q, n_q + n_db)
    assert two.dataset.db_images == one.dataset.db_images + one.dataset.q_images
    assert two.dataset.q_images == one.dataset.q_images + one.dataset.db_images
    # rows into [database, queries] of the full world: the reverse queries are the database images
    assert two.q_rows[n_q:].tolist() == one.db_indices.tolist()
    assert two.db_rows[n_db:].tolist() == (world.num_db + one.q_indices).tolist()
    miner = TripletMiner(two.dataset, db_traversal=two.db_traversal, q_traversal=two.q_traversal)
    for i in miner.trainable_queries:
        positives = miner.potential_positives[i]
        assert len(positives) and np.all(two.db_traversal[positives] != two.q_traversal[i])
    reverse = np.flatnonzero(two.q_traversal == 0)
    assert len(np.intersect1d(miner.trainable_queries, reverse)) > 0.9 * n_db  # database images as queries


def test_split_folder_holds_the_split(micro_world, tmp_path):
    """``python -m training.split`` writes a split as a dataset folder that every tool reads back."""
    from runtime.datasets import load_generic
    from training.data import split_along_route
    from training.split import main as split_main

    assert split_main(["--dataset", str(micro_world), "--split", "test", "--out", str(tmp_path / "t")]) == 0
    written = load_generic(tmp_path / "t")
    expected = split_along_route(load_generic(micro_world), (0.6, 0.15, 0.25))["test"].dataset
    assert [written.image_path("database", i).resolve() for i in range(written.num_db)] == [
        expected.image_path("database", i).resolve() for i in range(expected.num_db)
    ]
    assert [written.image_path("queries", i).resolve() for i in range(written.num_queries)] == [
        expected.image_path("queries", i).resolve() for i in range(expected.num_queries)
    ]
    assert np.allclose(written.db_utm, expected.db_utm, atol=1e-3)
    assert np.allclose(written.q_utm, expected.q_utm, atol=1e-3)
    with pytest.raises(SystemExit):
        split_main(["--dataset", str(micro_world), "--split", "nope", "--out", str(tmp_path / "u")])


def test_validation_plot_of_a_run(full_run, tmp_path):
    from runtime.errors import ArtifactError
    from training.plot import plot_run, validation_curve

    curve = validation_curve(full_run / "metrics.jsonl")
    validations = [e for e in _events(full_run) if e["event"] in ("validation", "epoch") and "val" in e]
    assert curve["steps"] == [e["step"] for e in validations]
    assert curve["recall"]["1"] == [e["val"]["recall"]["1"] for e in validations]
    assert set(curve["init"]) == {"1", "5"}
    path = plot_run(full_run)
    assert path == full_run / "validation.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(
        ArtifactError, match="does not exist; give the --out folder of python -m training.train"
    ):
        validation_curve(tmp_path / "metrics.jsonl")


def test_whole_route_folder_labels_each_image_with_its_split(micro_world, tmp_path):
    from runtime.datasets import load_generic
    from training.data import split_along_route
    from training.split import main as split_main

    assert split_main(["--dataset", str(micro_world), "--split", "all", "--out", str(tmp_path / "a")]) == 0
    whole = load_generic(tmp_path / "a")
    world = load_generic(micro_world)
    assert (whole.num_db, whole.num_queries) == (world.num_db, world.num_queries)
    labels = np.asarray(whole.info["extra_columns"]["queries"]["condition"])
    for name, split in split_along_route(world, (0.6, 0.15, 0.25)).items():
        assert np.flatnonzero(labels == name).tolist() == split.q_indices.tolist(), name
    assert set(labels) <= {"train", "val", "test", "guard"} and "guard" in set(labels)


def test_both_ways_run_resumes_exactly(micro_world, cache_dir, tmp_path):
    """A generic two-drive dataset trained ``--both-ways``: an interrupted run continues exactly as an
    uninterrupted one, and the miner's memory spans both directions' queries."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(_cfg(micro_world, max_steps=4, both_ways=True), whole, cache_dir=cache_dir)
    train(_cfg(micro_world, max_steps=2, both_ways=True), cut, cache_dir=cache_dir)
    train(_cfg(micro_world, max_steps=4, both_ways=True), cut, resume=True, cache_dir=cache_dir)
    a, b = load_checkpoint(cut / "last.pt"), load_checkpoint(whole / "last.pt")
    for key, value in b["model_state"].items():
        assert torch.equal(a["model_state"][key], value), key
    memory = b["training_state"]["miner"]["memory"]
    assert torch.equal(a["training_state"]["miner"]["memory"], memory)
    from runtime.datasets import load_generic
    from training.data import split_along_route

    train_split = split_along_route(load_generic(micro_world), (0.6, 0.15, 0.25))["train"]
    n_db, n_q = len(train_split.db_indices), len(train_split.q_indices)
    assert memory.shape[0] == n_q + n_db  # queries of both drives
    mined = memory[memory[:, 0] >= 0]
    assert len(mined) > 0 and torch.all(mined < n_db + n_q)  # negatives from the joint database
