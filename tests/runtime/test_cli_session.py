"""netvlad-map and netvlad-run end to end on real files; a full localisation with torch blocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from runtime import RunConfig, run_session
from runtime.cli.map import app as map_app
from runtime.cli.run import app as run_app
from runtime.errors import ConfigError
from runtime.evaluation.runs import recall_from_jsonl
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, _ = make_onnx_model(root / "model.onnx")
    dataset = make_stand_in_world(root / "data", places=30, seed=2)
    result = runner.invoke(
        map_app,
        ["build", "--model", str(model), "--dataset", str(dataset.root), "--out", str(root / "map"), "-q"],
    )
    assert result.exit_code == 0, result.output
    return root, model, dataset


def test_run_replaces_its_outputs_only_with_overwrite(built, tmp_path):
    root, model, dataset = built
    jsonl = tmp_path / "run.jsonl"
    jsonl.write_text("an earlier run\n")
    args = ["--images", str(dataset.root / "queries"), "--model", str(model), "--map", str(root / "map")]
    result = runner.invoke(run_app, [*args, "--jsonl", str(jsonl), "--max-frames", "2", "-q"])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (
        f"error: --jsonl '{jsonl}' already exists; pass --overwrite to replace, or choose another path"
    )
    assert jsonl.read_text() == "an earlier run\n"
    result = runner.invoke(run_app, [*args, "--jsonl", str(jsonl), "--max-frames", "2", "--overwrite", "-q"])
    assert result.exit_code == 0, result.output
    assert len(jsonl.read_text().splitlines()) == 2


def test_map_info_and_run_with_jsonl_and_overlay(built):
    root, model, dataset = built
    info = runner.invoke(map_app, ["info", str(root / "map")])
    assert info.exit_code == 0 and json.loads(info.output)["count"] == 30
    jsonl, video = root / "run.jsonl", root / "overlay.avi"
    result = runner.invoke(
        run_app,
        [
            "--images",
            str(dataset.root / "queries"),
            "--model",
            str(model),
            "--map",
            str(root / "map"),
            "--jsonl",
            str(jsonl),
            "--save-video",
            str(video),
            "--json",
            str(root / "summary.json"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 30 and records[4]["source"] == "0004.png"
    assert records[4]["matches"][0]["image"] == "database/0004.png"
    assert set(records[0]["times_ms"]) == {"decode", "preprocess", "inference", "search", "total"}
    capture = cv2.VideoCapture(str(video))
    ok, first = capture.read()
    assert ok and first.shape == (240, 880, 3)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    summary = json.loads((root / "summary.json").read_text())
    assert summary["frames"] == 30 and summary["latency_ms"]["inference"]["p50"] > 0
    # recall computed from the JSONL equals recall computed from the dataset's own positives
    result = runner.invoke(
        map_app, ["recall", "--jsonl", str(jsonl), "--dataset", str(dataset.root), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recall"] == {"1": 1.0, "5": 1.0}


def test_recall_from_jsonl_counts_misses(built, tmp_path):
    root, _, dataset = built
    lines = (root / "run.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records[:10]:  # make the first 10 answers wrong: a place 300 m away
        for match in record["matches"]:
            match["easting"] += 300.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in records) + '\n{"torn')
    result = recall_from_jsonl(bad, dataset, ns=(1, 5))
    assert result["recall"] == {1: 20 / 30, 5: 20 / 30} and result["queries"] == 30


def test_run_errors_and_clean_stop(built, tmp_path):
    root, model, dataset = built
    result = runner.invoke(
        run_app, ["--images", str(tmp_path), "--model", str(model), "--map", str(root / "map")]
    )
    assert result.exit_code == 2 and f"image folder '{tmp_path}' contains no images" in result.output
    with pytest.raises(ConfigError, match="give exactly one source"):
        RunConfig(model=model, map=root / "map", camera=0, images=tmp_path)
    # max_frames stops early; everything written so far is in the JSONL
    summary = run_session(
        RunConfig(
            model=model,
            map=root / "map",
            images=dataset.root / "queries",
            jsonl=tmp_path / "part.jsonl",
            max_frames=7,
            loop=2,
        )
    )
    assert summary.frames == 7 and len((tmp_path / "part.jsonl").read_text().splitlines()) == 7


def test_ctrl_c_flushes_outputs(built, tmp_path):
    root, model, dataset = built
    script = textwrap.dedent(
        f"""
        import os, signal, threading, time
        from pathlib import Path
        from runtime.cli.session import RunConfig, run_session
        out = Path({str(tmp_path / "i.jsonl")!r})

        def interrupt_once_running():  # Ctrl-C after a few frames have been written
            while not (out.is_file() and len(out.read_text().splitlines()) >= 5):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        # A background job of a non-interactive shell inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: restore it so the test means the same wherever pytest was started.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=interrupt_once_running, daemon=True).start()
        s = run_session(RunConfig(model=Path({str(model)!r}), map=Path({str(root / "map")!r}),
                        images=Path({str(dataset.root / "queries")!r}), jsonl=out,
                        loop=100000))
        print("frames", s.frames, "interrupted", s.interrupted)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    frames = int(out.stdout.split()[1])
    assert "interrupted True" in out.stdout and frames > 0
    lines = (tmp_path / "i.jsonl").read_text().splitlines()
    assert frames - 1 <= len(lines) <= frames and json.loads(lines[-1])["index"] >= 0  # every line complete


BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "tensorrt"):
                raise ImportError(f"{name} is blocked for this test")
    sys.meta_path.insert(0, Block())
    import runtime
    from runtime.localize.localizer import Localizer
    from runtime.sources import open_source
    with Localizer.open(sys.argv[1], sys.argv[2]) as localizer, open_source(sys.argv[3]) as source:
        found = [loc.best.image.rsplit("/", 1)[1] == loc.source for loc in localizer.run(source, temporal=True)]
    assert not [m for m in sys.modules if m.split(".")[0] == "torch"]
    print(sum(found), len(found))
    """
)


def test_full_localisation_without_torch(built):
    root, model, dataset = built
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, str(model), str(root / "map"), str(dataset.root / "queries")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["30", "30"]


def test_help_works_without_torch():
    for module in ("runtime.cli.map", "runtime.cli.run"):
        code = (
            "import sys\n"
            "class B:\n"
            "    def find_spec(self, n, p=None, t=None):\n"
            "        if n.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'faiss', 'tensorrt'): raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            f"from {module} import app\n"
            "sys.argv = ['x', '--help']\n"
            "app()\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        )
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout


def test_overlay_frame_of_unknown_place_renders(built):
    from runtime import Localizer
    from runtime.outputs.overlay import Overlay

    root, model, _ = built
    with Localizer.open(model, root / "map") as localizer:
        noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        loc = localizer.localize(noise)
        image = Overlay(localizer.map).render(loc, noise, fps=12.0)
    assert loc.unknown and image.shape == (240, 880, 3)


@pytest.mark.slow
def test_memory_stays_flat_over_thousands_of_frames(built, tmp_path):
    root, model, dataset = built
    video = tmp_path / "loop.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for i in range(100):
        writer.write(cv2.imread(str(dataset.root / "queries" / f"{i % 30:04d}.png")))
    writer.release()
    summary = run_session(
        RunConfig(
            model=model, map=root / "map", video=video, loop=30, temporal=True, jsonl=tmp_path / "soak.jsonl"
        ),
        rss_every=500,
    )
    assert summary.frames == 3000 and summary.dropped == 0
    # resident memory after warm-up (frame 501) vs at the end: no growth per frame
    assert len(summary.rss_mb) == 7
    assert summary.rss_mb[-1] - summary.rss_mb[1] < 15.0, summary.rss_mb


def test_live_source_results_stay_recent(built, tmp_path):
    """A slow consumer of a live source gets results about recent frames; the source drops the rest."""
    import time

    from runtime import Localizer
    from runtime.sources import VideoFileSource

    root, model, dataset = built
    video = tmp_path / "live.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for i in range(120):
        writer.write(cv2.imread(str(dataset.root / "queries" / f"{i % 30:04d}.png")))
    writer.release()
    with (
        Localizer.open(model, root / "map") as localizer,
        VideoFileSource(video, live=True, queue_size=1) as source,
    ):
        results = []
        for loc in localizer.run(source):
            results.append(loc)
            time.sleep(0.03)  # a consumer slower than decoding
    assert source.stats.dropped + source.stats.superseded > 0
    # every frame is either localised, dropped by the source, or replaced by a newer one before the model
    assert len(results) + source.stats.dropped + source.stats.superseded == 120
    assert results[-1].index == 119 and [r.index for r in results] == sorted(r.index for r in results)
