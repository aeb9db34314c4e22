"""Fault injection, safe outputs: nothing the kit did not write is replaced, one writer per output, no
debris from a killed run, outputs checked before the run. Real maps, real ONNX models, real files."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from runtime import build_map
from runtime.cli.map import app as map_app
from runtime.cli.run import app as run_app
from runtime.errors import OutputError
from runtime.files import check_writable_file, clean_stale, output_lock
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

runner = CliRunner()


def _one_line(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-out")
    model, _ = make_onnx_model(root / "model.onnx")
    dataset = make_stand_in_world(root / "data", places=12, seed=5)
    return root, model, dataset


def _build(model, dataset_root, out, *extra):
    args = ["build", "--model", str(model), "--dataset", str(dataset_root), "--out", str(out), "-q", *extra]
    return runner.invoke(map_app, args)


def test_map_out_equal_to_or_holding_the_dataset_is_refused_and_the_dataset_survives(world):
    root, model, dataset = world
    before = sorted(p.name for p in dataset.root.iterdir())
    result = _build(model, dataset.root, dataset.root, "--overwrite")
    assert result.exit_code == 2
    assert _one_line(result) == (
        f"error: --out '{dataset.root}' is a folder that is not a netvlad-kit map (no map.json; it holds "
        "'database', 'database.csv', 'queries', 'queries.csv' (4 entries)); netvlad-map replaces only a map "
        "it wrote; choose another --out"
    )
    result = _build(model, dataset.root, root, "--overwrite")  # a folder holding the dataset
    assert result.exit_code == 2 and "error: --out '" in result.output
    assert sorted(p.name for p in dataset.root.iterdir()) == before
    assert len(list((dataset.root / "database").iterdir())) == 12


def test_map_out_that_is_a_file_or_a_foreign_folder_is_refused(world, tmp_path):
    _, model, dataset = world
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    result = _build(model, dataset.root, notes, "--overwrite")
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: --out '{notes}' is a file, not a map folder; netvlad-map replaces only a map it wrote (a "
        "folder with map.json); choose another --out"
    )
    assert notes.read_text() == "mine"
    # --out naming the dataset's own folder with a map.json planted in it: refused as the dataset
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "map.json").write_text("{}")
    (planted / "database.csv").write_text("image,easting,northing\n")
    from runtime.files import check_not_dataset

    with pytest.raises(OutputError, match=r"is the dataset folder '.*planted'; writing it would replace"):
        check_not_dataset(planted, planted)


def test_a_map_being_written_by_another_process_is_refused_naming_its_pid(world, tmp_path):
    _, model, dataset = world
    out = tmp_path / "map"
    with output_lock(out, "map") as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        result = _build(model, dataset.root, out)
        assert result.exit_code == 2 and _one_line(result) == (
            f"error: map '{out}' is being written by another netvlad-kit process (PID {os.getpid()}); wait "
            "for it to finish or choose another output path"
        )
    assert not lock.exists() and not out.exists()
    assert _build(model, dataset.root, out).exit_code == 0  # released: the next writer goes ahead


def test_stale_temporaries_of_a_killed_build_are_removed_and_said(world, tmp_path, caplog):
    _, model, dataset = world
    out = tmp_path / "map"
    (tmp_path / ".map.k3j2.tmp").mkdir()  # what atomic_directory leaves after kill -9
    (tmp_path / ".map.k3j2.tmp" / "index.faiss").write_bytes(b"half")
    (tmp_path / ".map.old-4242").mkdir()
    (tmp_path / ".other.x.tmp").mkdir()  # another output's: not ours to touch
    with caplog.at_level("WARNING", logger="runtime.files"):  # the library, since the CLI sets up logging
        build_map(model, dataset.root, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x.tmp", "map"]
    assert [r.getMessage() for r in caplog.records] == [
        f"removed '{tmp_path / n}', left behind by an earlier run that was killed while writing"
        for n in (".map.k3j2.tmp", ".map.old-4242")
    ]
    assert json.loads((out / "map.json").read_text())["count"] == 12


def test_export_staging_of_a_killed_export_is_cleaned(tmp_path):
    out = tmp_path / "export"
    (out / ".export-abc123").mkdir(parents=True)
    (out / ".export-abc123" / "model.onnx").write_bytes(b"half")
    (out / "model.onnx").write_bytes(b"kept")
    assert clean_stale(out, (".export-*",)) == [out / ".export-abc123"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]


def test_export_to_a_folder_another_export_is_writing_is_refused(tmp_path):
    from export.pipeline import run_export

    out = tmp_path / "export"
    with output_lock(out, "export folder"), pytest.raises(OutputError) as exc:
        run_export(tmp_path / "missing.pt", out)
    assert str(exc.value) == (
        f"export folder '{out}' is being written by another netvlad-kit process (PID {os.getpid()}); wait "
        "for it to finish or choose another output path"
    )


def test_jsonl_and_summary_are_checked_before_the_run(world, tmp_path):
    _, model, dataset = world
    out = tmp_path / "map"
    assert _build(model, dataset.root, out).exit_code == 0
    base = ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(out), "-q"]
    result = runner.invoke(run_app, [*base, "--jsonl", str(tmp_path)])
    assert result.exit_code == 2 and _one_line(result) == (
        f"error: --jsonl '{tmp_path}' is a folder; give a file name, for example {tmp_path / 'run.out'}"
    )
    jsonl = tmp_path / "run.jsonl"
    result = runner.invoke(run_app, [*base, "--jsonl", str(jsonl), "--json", str(tmp_path)])
    assert result.exit_code == 2 and "error: --json '" in result.output
    assert not jsonl.exists()  # refused before the run, not after it
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"'.*afile' is a file, not a folder; choose another path"):
        check_writable_file(tmp_path / "afile" / "summary.json", "--summary")


def test_two_runs_writing_one_jsonl_the_second_is_refused(world, tmp_path):
    _, model, dataset = world
    out = tmp_path / "map"
    assert _build(model, dataset.root, out).exit_code == 0
    jsonl = tmp_path / "run.jsonl"
    args = ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(out), "-q"]
    with output_lock(jsonl, "--jsonl"):
        result = runner.invoke(run_app, [*args, "--jsonl", str(jsonl)])
    assert result.exit_code == 2 and f"--jsonl '{jsonl}' is being written by another" in result.output
    result = runner.invoke(run_app, [*args, "--jsonl", str(jsonl)])
    assert result.exit_code == 0 and len(jsonl.read_text().splitlines()) == 12


def test_training_output_checks(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'netvlad-kit[train]')")
    from runtime.errors import ArtifactError, ConfigError
    from training.config import TrainConfig
    from training.loop import RUN_FILE, check_own_run, resolve_device
    from training.train import train

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"--out '.*afile' is a file, not a training folder"):
        train(TrainConfig.preset("tiny"), afile)
    mine = TrainConfig.preset("tiny").to_dict()
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ArtifactError, match=r"has no run.json beside it, so it was not written by a run in"):
        check_own_run(run, mine)
    (run / RUN_FILE).write_text(json.dumps({"config": mine}))
    check_own_run(run, {**mine, "epochs": mine["epochs"] + 5})  # a longer budget is the same run
    with pytest.raises(ArtifactError, match=r"belongs to another run than .* \(seed differ\); it was copied"):
        check_own_run(run, {**mine, "seed": mine["seed"] + 1})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^--device cuda:1: this machine has 0 usable CUDA device"):
            resolve_device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_map_update_while_another_process_writes_the_map_is_refused(world, tmp_path):
    from runtime import add_to_map, remove_from_map

    _, model, dataset = world
    out = tmp_path / "map"
    build_map(model, dataset.root, out)
    with output_lock(out, "map"):
        with pytest.raises(
            OutputError, match=rf"^map '{out}' is being written by another netvlad-kit process"
        ):
            add_to_map(out, model, dataset.root)
        with pytest.raises(
            OutputError, match=rf"^map '{out}' is being written by another netvlad-kit process"
        ):
            remove_from_map(out, images=["database/0000.png"])
    assert remove_from_map(out, images=["database/0000.png"]) == 1  # released: it goes ahead
