"""netvlad-export end to end (real checkpoint, real ONNX Runtime), and every bad input with its message."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.cli import app
from tests.conftest import requires_torch

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _error(result) -> str:
    assert result.exit_code == 2, result.output  # bad input (runtime.cli.console.EXIT_USAGE)
    return " ".join(result.output.split())  # un-wrap


def test_help_works_without_torch_or_tensorrt():
    code = textwrap.dedent(
        """
        import sys
        blocked = {"torch", "tensorrt", "onnx", "onnxruntime", "onnxscript", "cuda", "faiss", "scipy"}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in blocked:
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, Block())
        sys.argv = ["netvlad-export", "--help"]
        from export.cli import app
        try:
            app()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for option in (
        "--fp16",
        "--int8",
        "--calib",
        "--engine",
        "--batch-profile",
        "--out",
        "--force",
        "--overwrite",
    ):
        assert option in out.stdout
    assert "--onnx" not in out.stdout


def test_runtime_only_install_names_the_extra(tmp_path):
    """Without torch (a runtime-only install) the export names what to install, in one line."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError(f"{name} is blocked")
        sys.meta_path.insert(0, Block())
        from export.cli import app
        app(["model.pt", "--out", sys.argv[1]])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr  # bad usage: install the extra and rerun
    assert "Traceback" not in out.stderr
    assert " ".join(out.stderr.split()) == (
        "error: netvlad-export needs torch (it loads PyTorch checkpoints and writes ONNX), which this install "
        "lacks; install them with: pip install 'netvlad-kit[train,export]'"
    )


@pytest.fixture(scope="module")
def place_dir(tmp_path_factory):
    """A small generic-format dataset: 12 places, database and query image of each, 40 m apart."""
    import cv2

    from export.images import fixed_images
    from runtime import ModelCard
    from runtime.datasets import write_split_csv

    root = tmp_path_factory.mktemp("places")
    card = ModelCard("x", 80, 120, 8, 112, 896, "0123456789abcdef")
    base = fixed_images(card, 12, seed=21)
    rng = np.random.default_rng(0)
    for split in ("database", "queries"):
        (root / split).mkdir()
        for i, image in enumerate(base):
            noisy = (
                np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
                if split == "queries"
                else image
            )
            cv2.imwrite(str(root / split / f"{i:02d}.png"), noisy[:, :, ::-1])
        utm = np.stack([500000.0 + 40.0 * np.arange(12), np.full(12, 5000000.0)], axis=1)
        write_split_csv(root / f"{split}.csv", [f"{split}/{i:02d}.png" for i in range(12)], utm)
    return root


@requires_torch
@pytest.mark.slow
def test_export_onnx_fp16_int8_with_parity(tiny_checkpoint, tiny_model, place_dir, tmp_path):
    out = tmp_path / "artifacts"
    args = [str(tiny_checkpoint), "--fp16", "--int8", "--int8-target", "cpu", "--calib", str(place_dir)]
    result = runner.invoke(app, [*args, "--calib-images", "8", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.fp16.onnx", "model.int8-cpu.onnx", "model.onnx", "parity.json"]
    data = json.loads((out / "parity.json").read_text())
    assert data["context"]["weights_fingerprint"] == tiny_model.fingerprint()
    reports = {r["artifact"]: r for r in data["reports"]}
    assert set(reports) == {"model.onnx", "model.fp16.onnx", "model.int8-cpu.onnx"}
    for r in reports.values():
        assert r["passed"] and r["num_images"] == 24 and r["recall"] is not None
    assert reports["model.onnx"]["cosine_min"] >= 0.9999
    assert reports["model.int8-cpu.onnx"]["cosine_median"] >= 0.98
    assert "| model.int8-cpu.onnx | int8 |" in result.output
    # the same model again into the same folder replaces nothing without --overwrite
    msg = _error(runner.invoke(app, [str(tiny_checkpoint), "--out", str(out), "--quiet"]))
    assert msg == (
        f"error: output folder '{out}' already holds model.onnx; pass --overwrite to replace them, or "
        "choose another --out"
    )
    again = runner.invoke(app, [str(tiny_checkpoint), "--out", str(out), "--quiet", "--overwrite"])
    assert again.exit_code == 0, again.output


@requires_torch
def test_bad_checkpoints(tmp_path):
    import torch

    out = tmp_path / "out"
    missing = tmp_path / "nope.pt"
    msg = _error(runner.invoke(app, [str(missing), "--out", str(out)]))
    assert msg == (
        f"error: checkpoint '{missing}' does not exist or is not a file; train one with: python -m "
        "training.train --out DIR (it writes DIR/model.pt, the model to deploy)"
    )
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a zip" * 10)
    msg = _error(runner.invoke(app, [str(corrupt), "--out", str(out)]))
    assert msg.startswith(f"error: checkpoint '{corrupt}' cannot be read (")
    assert "it is truncated, corrupt or not a netvlad-kit checkpoint" in msg
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, foreign)
    msg = _error(runner.invoke(app, [str(foreign), "--out", str(out)]))
    assert msg == (
        f"error: '{foreign}' is not a netvlad-kit checkpoint (expected a dict with format "
        "'netvlad-kit.checkpoint', found ['epoch', 'state_dict']); train one with: python -m training.train "
        "--out DIR (it writes DIR/model.pt, the model to deploy)"
    )
    assert not out.exists()


def test_bad_batch_range_and_missing_calibration(tmp_path):
    out = tmp_path / "out"
    msg = _error(runner.invoke(app, ["x.pt", "--batch-profile", "8:4:2", "--out", str(out)]))
    assert msg == (
        "error: batch range must satisfy min <= opt <= max, got min=8 opt=4 max=2; write it as MIN:OPT:MAX, "
        "for example --batch-profile 1:8:32"
    )
    msg = _error(runner.invoke(app, ["x.pt", "--batch-profile", "1:a", "--out", str(out)]))
    assert msg == (
        "error: batch range '1:a' is not MIN:OPT:MAX with integers, for example --batch-profile 1:8:32"
    )
    msg = _error(runner.invoke(app, ["x.pt", "--int8", "--out", str(out)]))
    assert msg == (
        "error: invalid export config: int8 needs a calibration set: --calib DIR_OR_DATASET (map or training images)"
    )
    assert not out.exists()


@requires_torch
def test_empty_calibration_set_writes_nothing(tiny_checkpoint, tmp_path):
    empty = tmp_path / "calib"
    empty.mkdir()
    out = tmp_path / "out"
    msg = _error(
        runner.invoke(app, [str(tiny_checkpoint), "--int8", "--calib", str(empty), "--out", str(out)])
    )
    assert msg == (
        f"error: calibration set '{empty}' holds no images (looked for .png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .ppm, .pgm "
        "files, "
        "recursively); name a folder of map or training images, or a dataset folder with database.csv"
    )
    assert not out.exists()


@requires_torch
def test_output_folder_of_another_model(tiny_checkpoint, tiny_onnx, tiny_model, tmp_path):
    import shutil

    import torch

    from training.checkpoint import save_checkpoint

    other = tiny_model.__class__(tiny_model.config, pretrained=False)
    other.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        other.netvlad.centroids.add_(0.01)
    other_ckpt = save_checkpoint(tmp_path / "other.pt", other)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(tiny_onnx, out / "model.onnx")
    before = sorted(p.name for p in out.iterdir())
    msg = _error(runner.invoke(app, [str(other_ckpt), "--out", str(out)]))
    assert msg == (
        f"error: output folder '{out}' holds artifacts of another model: 'model.onnx' has weights fingerprint "
        f"{tiny_model.fingerprint()}, this checkpoint is {other.fingerprint()}; choose another --out, or "
        "delete the old artifacts first"
    )
    assert sorted(p.name for p in out.iterdir()) == before


@requires_torch
@pytest.mark.slow
def test_missed_gate_keeps_what_passed_and_refuses_the_rest(tiny_checkpoint, tmp_path):
    from export.config import ExportConfig
    from export.parity import ParityThresholds
    from export.pipeline import run_export
    from runtime.errors import ParityError

    strict = {"fp16": ParityThresholds(1.0, 1.0, 1.0, 0.0)}  # float16 can never reach cosine 1.0
    cfg = ExportConfig.preset("quick", fp16=True, parity_thresholds=strict)
    out = tmp_path / "out"
    with pytest.raises(ParityError) as info:
        run_export(tiny_checkpoint, out, cfg)
    message = str(info.value)
    assert message.startswith("parity gate missed: model.fp16.onnx (fp16): worst cosine")
    assert "FP16 is a plain cast, not calibrated" in message
    assert message.endswith(
        f"Refused model.fp16.onnx (see {out / 'parity.json'}); kept model.onnx in '{out}'. Pass --force to keep "
        "the refused ones anyway"
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "parity.json"]  # no staging left
    report = json.loads((out / "parity.json").read_text())["reports"]
    assert [r["passed"] for r in report] == [True, False]
    result = run_export(tiny_checkpoint, out, cfg.replace(force=True, overwrite=True))
    assert sorted(result.artifacts) == ["model.fp16.onnx", "model.onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["model.fp16.onnx", "model.onnx", "parity.json"]
    assert json.loads((out / "parity.json").read_text())["context"]["forced"] is True


@requires_torch
@pytest.mark.slow
def test_readme_export_on_a_synthetic_world_passes_the_gate(tiny_checkpoint, tmp_path):
    """The README's export (--fp16 --int8 --calib WORLD) on a small synthetic world: a dataset as --calib turns
    on the recall gate, where a query or two flipping is sampling noise, not a regression."""
    from training.synth import SynthConfig, generate

    world = generate(
        SynthConfig(
            route_length_m=400.0,
            db_spacing_m=4.0,
            query_spacing_m=8.0,
            height=48,
            width=64,
            write_video=False,
        ),
        tmp_path / "world",
    )
    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--fp16", "--int8", "--calib", str(world), "--calib-images", "32"]
    result = runner.invoke(app, [*args, "--threads", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.fp16.onnx", "model.int8-cpu.onnx", "model.int8.onnx", "model.onnx", "parity.json"]
    reports = json.loads((out / "parity.json").read_text())["reports"]
    for r in reports:
        assert r["passed"] and r["recall"] is not None, r
        queries = int(re.search(r"(\d+) queries", r["images"]).group(1))
        for n, d in r[
            "discordance"
        ].items():  # every recall change is accounted for by its discordant queries
            assert d["gained"] - d["lost"] == round(r["recall_change"][n] * queries), (n, d)
