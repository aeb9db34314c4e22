"""The synthetic world: CLI output in the generic format, determinism, geometry, video, difficulty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import open_dataset
from runtime.errors import ConfigError
from runtime.evaluation.baseline import raw_pixel_recall
from training.synth import CONDITIONS, SynthConfig, SynthWorld, generate
from training.synth.difficulty import baseline_recall, dataset_baseline_recall
from training.synth.difficulty import main as difficulty_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = 0


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """`python -m training.synth --preset tiny` run exactly as a user would (2 rendering processes)."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [
        sys.executable,
        "-m",
        "training.synth",
        "--preset",
        "tiny",
        "--seed",
        str(SEED),
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    return out


@pytest.fixture(scope="module")
def tiny_world() -> SynthWorld:
    return SynthWorld(SynthConfig.preset("tiny", seed=SEED))


@pytest.mark.slow
def test_cli_writes_the_generic_format(tiny_dir, tiny_world):
    ds = open_dataset(tiny_dir)
    assert ds.info["source"] == "synth"
    assert (ds.num_db, ds.num_queries) == (tiny_world.num_db, tiny_world.num_queries)
    assert 150 <= ds.num_db <= 260 and ds.num_queries == pytest.approx(ds.num_db / 2, abs=2)
    assert sorted(p.name for p in tiny_dir.iterdir()) == [
        "database", "database.csv", "queries", "queries.csv", "queries.mp4", "synth.json", "unmapped",
        "unmapped.csv",
    ]  # fmt: skip
    assert ds.num_unmapped == tiny_world.num_unmapped == 48
    np.testing.assert_allclose(ds.unmapped_utm, tiny_world.unmapped.utm, atol=1e-3)
    for split, n in (("database", ds.num_db), ("queries", ds.num_queries), ("unmapped", ds.num_unmapped)):
        assert len(list((tiny_dir / split).iterdir())) == n
        image = ds.read_image(split, n - 1)
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(ds.db_utm, tiny_world.database.utm, atol=1e-3)
    np.testing.assert_allclose(ds.q_heading, tiny_world.queries.heading_deg, atol=0.01)
    assert np.all(np.diff(ds.q_time) > 0) and np.all(ds.q_time > ds.db_time.max())
    conditions = ds.info["extra_columns"]["queries"]["condition"]
    assert list(dict.fromkeys(conditions)) == list(CONDITIONS)  # the default mix, in traversal stretches


@pytest.mark.slow
def test_written_images_match_on_the_fly_rendering(tiny_dir, tiny_world):
    ds = open_dataset(tiny_dir)
    for split, index in (("database", 7), ("queries", 33)):
        on_the_fly = tiny_world.image(split, index).astype(np.int16)
        written = ds.read_image(split, index).astype(np.int16)  # JPEG (quality 93) of a noisy image
        neighbour = ds.read_image(split, index + 1).astype(np.int16)
        assert np.abs(on_the_fly - written).mean() < 5.0
        assert np.abs(on_the_fly - neighbour).mean() > 3 * np.abs(on_the_fly - written).mean()


def test_deterministic_for_a_seed_and_different_across_seeds(tiny_world):
    again = SynthWorld(SynthConfig.preset("tiny", seed=SEED))
    other = SynthWorld(SynthConfig.preset("tiny", seed=SEED + 1))
    for split, index in (("database", 3), ("queries", 40)):
        assert np.array_equal(tiny_world.image(split, index), again.image(split, index))
        assert np.abs(tiny_world.image(split, index).astype(int) - other.image(split, index)).mean() > 10
    np.testing.assert_array_equal(tiny_world.queries.utm, again.queries.utm)
    assert not np.allclose(tiny_world.city.route[:4], other.city.route[:4])


def test_unmapped_places_are_off_the_route_and_seeded_apart(tiny_world):
    """The unmapped-place queries: on streets the database drive never comes near, every condition, seeded
    on their own (turning them off changes no other image)."""
    unmapped, cfg = tiny_world.unmapped, tiny_world.cfg
    assert tiny_world.num_unmapped == cfg.unmapped_queries == 48
    nearest = np.linalg.norm(unmapped.utm[:, None] - tiny_world.database.utm[None], axis=2).min(axis=1)
    # centrelines >= 50 m from the route, the camera up to 2.5 + 3 m off it: never within 25 m of a place
    assert nearest.min() >= cfg.unmapped_min_distance_m - 2.5 - cfg.max_lateral_m and nearest.min() > 25.0
    assert list(dict.fromkeys(unmapped.conditions)) == list(CONDITIONS)
    assert len({tuple(np.round(p)) for p in unmapped.utm}) >= 40  # spread over the streets, not one spot
    without = SynthWorld(SynthConfig.preset("tiny", seed=SEED, unmapped_queries=0))
    assert without.num_unmapped == 0
    assert np.array_equal(without.image("queries", 5), tiny_world.image("queries", 5))
    np.testing.assert_array_equal(without.queries.utm, tiny_world.queries.utm)
    again = SynthWorld(SynthConfig.preset("tiny", seed=SEED))
    assert np.array_equal(again.image("unmapped", 7), tiny_world.image("unmapped", 7))
    with pytest.raises(ValueError, match="split must be 'database', 'queries' or 'unmapped'"):
        tiny_world.image("elsewhere", 0)


@pytest.mark.slow
def test_geometry_positives_loop_and_viewpoint_changes(tiny_dir, tiny_world):
    ds = open_dataset(tiny_dir)
    p10, p25 = ds.positives(10.0), ds.positives(25.0)
    assert all(len(p) >= 1 for p in p10)  # every query has a potential positive
    assert 8 <= np.mean([len(p) for p in p25]) <= 12  # a database image every 5 m: ~10 within 25 m
    # the route is a loop: the first database images are positives of the last queries
    assert any(0 in p and ds.num_db - 1 in p for p in p25)
    # queries deviate from the database drive: lateral offset <= 3 m, yaw <= 15 degrees (about a normal)
    arc, cfg = tiny_world.queries.arc_m, tiny_world.cfg
    lane, yaw = tiny_world.city.pose_at(arc)
    offset = np.linalg.norm(tiny_world.queries.utm - lane, axis=1)
    assert offset.max() <= 2.5 + cfg.max_lateral_m + 1e-6 and offset.std() > 0.3
    dyaw = np.degrees(np.angle(np.exp(1j * (tiny_world.queries.yaw - yaw))))
    assert np.abs(dyaw).max() <= cfg.max_yaw_deg + 1e-6 and np.abs(dyaw).max() > 5
    # the route has left and right turns
    d = np.diff(tiny_world.city.route, axis=0)
    turns = np.sign(d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0])
    assert (turns > 0).any() and (turns < 0).any()


@pytest.mark.slow
def test_query_video_in_traversal_order(tiny_dir):
    ds = open_dataset(tiny_dir)
    cap = cv2.VideoCapture(str(tiny_dir / "queries.mp4"))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == ds.num_queries
    for index in range(3):
        ok, frame = cap.read()
        assert ok and frame.shape == (240, 320, 3)
        expected = ds.read_image("queries", index)
        errors = [
            np.abs(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB).astype(int) - ds.read_image("queries", j)).mean()
            for j in range(5)
        ]
        assert int(np.argmin(errors)) == index and errors[index] < 8.0, errors
        assert expected.shape == frame.shape
    cap.release()


@pytest.mark.slow
def test_difficulty_raw_pixel_baseline(tiny_dir):
    """Well below perfect and far above chance on the default query mix; night is the hardest condition."""
    ds = open_dataset(tiny_dir)
    conditions = ds.info["extra_columns"]["queries"]["condition"]
    recall = raw_pixel_recall(ds, ns=(1, 5, 10), query_groups=conditions)
    chance_at_1 = np.mean([len(p) for p in ds.positives(25.0)]) / ds.num_db
    assert 0.15 <= recall["all"][1] <= 0.6, recall
    assert recall["all"][1] > 5 * chance_at_1
    assert recall["all"][10] > recall["all"][1]
    assert recall["night"][1] < recall["day"][1]


@pytest.mark.slow
def test_config_validation_and_atomic_output(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown condition\(s\) snow; choose from day, dusk, overcast, fog, night"
    ):
        SynthConfig(conditions=("day", "snow"))
    with pytest.raises(ConfigError, match=r"max_yaw_deg must be within \[0, 45\]"):
        SynthConfig.preset("tiny", max_yaw_deg=90.0)
    with pytest.raises(ConfigError, match=r"unknown synth preset 'huge'; choose from tiny, small, medium"):
        SynthConfig.preset("huge")
    out = tmp_path / "existing"
    out.mkdir()
    cfg = SynthConfig.preset(
        "tiny", route_length_m=160.0, block_m=40.0, write_video=False, conditions=("night",)
    )
    with pytest.raises(FileExistsError, match="already exists"):
        generate(cfg, out)
    assert list(out.iterdir()) == []
    generate(cfg, out, overwrite=True)
    ds = open_dataset(out)
    assert set(ds.info["extra_columns"]["queries"]["condition"]) == {"night"}
    assert not (out / "queries.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no temporary leftovers
    # PNG is lossless: the in-memory difficulty measure equals the one on the written files
    in_memory = baseline_recall(SynthWorld(cfg), ns=(1, 5))
    assert in_memory == dataset_baseline_recall(str(out), ns=(1, 5))
    assert set(in_memory) == {"all", "night"} and 0.0 <= in_memory["all"][1] <= in_memory["all"][5] <= 1.0


@pytest.mark.slow
def test_difficulty_command_prints_recall_per_condition(tiny_dir, capsys):
    difficulty_main([str(tiny_dir)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["all", *CONDITIONS]
    assert lines[0].split()[1:3] == ["R@1", f"{raw_pixel_recall(open_dataset(tiny_dir))['all'][1]:.3f}"]


def test_help_and_command_line_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "training.synth", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = run("--help")
    assert result.returncode == 0 and "--preset" in result.stdout and "--seed" in result.stdout
    result = run("--preset", "tiny", "--conditions", "day,snow", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "unknown condition(s) snow" in result.stderr
    assert not (tmp_path / "x").exists()
    result = run("--preset", "tiny", "--out", str(tmp_path))
    assert result.returncode == 2
    assert f"error: '{tmp_path}' already exists; choose another --out or pass --overwrite" in result.stderr
