"""netvlad-bench sequence and live on a tiny world: what they measure and write (no timing is asserted)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks.live import LiveBenchConfig, run_live_latency
from benchmarks.sequence import SequenceBenchConfig, route_descriptors, run_sequence_bench
from runtime.errors import ConfigError
from runtime.sources import VideoFileSource
from tests.runtime.helpers import make_ambiguous_route, make_stand_in_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seqbench")
    model, dataset, map_dir = make_ambiguous_route(root)
    video = root / "queries.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for i in range(dataset.num_queries):
        writer.write(cv2.imread(str(dataset.image_path("queries", i))))
    writer.release()
    return root, model, dataset, map_dir, video


def test_sequence_benchmark_measures_recall_and_cost(world, tmp_path):
    _, model, dataset, map_dir, _ = world
    config = SequenceBenchConfig(frames=(10,), cost_sizes=(200, 800), cost_dim=32, cost_frames=40, threads=1)
    result = run_sequence_bench(model, map_dir, str(dataset.root), tmp_path, config)
    runs = result["runs"]
    # measured on this world (tests/runtime/test_streaming.py): 0.700 frame by frame, 0.983 sequenced
    assert runs["single frame"]["R@1"] == pytest.approx(0.700, abs=0.02)
    assert runs["sequence 10 frames"]["R@1"] >= 0.95
    assert [c["places"] for c in result["cost"]] == [200, 800]
    assert all(
        c["whole_map"] and c["gathered_ms_p50"] > 0 for c in result["cost"]
    )  # both paths, side by side
    # the cost maps are a recognisable route (measured: 1.00 and 0.95 over 40 frames; the frame's own place
    # until the sequence locks, as the Localizer answers)
    assert all(c["R@1"] >= 0.8 for c in result["cost"])
    saved = json.loads((tmp_path / "sequence.json").read_text())
    assert saved["runs"]["sequence 10 frames"]["R@1"] == runs["sequence 10 frames"]["R@1"]
    assert "| sequence 10 frames |" in (tmp_path / "sequence.md").read_text()
    assert len(list(tmp_path.glob("queries-*.npy"))) == 1
    # the SeqSLAM anchor on the same folder, told nothing about the speed (its generic mode, 64x48 pixels)
    anchor = result["seqslam"]
    assert set(anchor["R@1"]) == {10, "raw pixels"} and anchor["velocities"] == [0.25, 4.0]
    assert 0.0 <= anchor["R@1"]["raw pixels"] <= 1.0


def test_sequence_benchmark_at_another_robot_speed(world, tmp_path):
    """Every 2nd query frame against every 2nd map place (1 place per frame), then each frame three times
    (a faster camera): the stream and the map the matcher sees, and sequences not below single frames."""
    _, model, dataset, map_dir, _ = world
    config = SequenceBenchConfig(frames=(10,), cost_sizes=(200,), cost_dim=32, cost_frames=20, threads=1,
                                 query_step=2, map_step=2)  # fmt: skip
    result = run_sequence_bench(model, map_dir, str(dataset.root), tmp_path, config)
    assert result["places_per_frame"] == 1.0 and result["frames_in_stream"] == dataset.num_queries // 2
    assert json.loads((tmp_path / "map-every-2" / "map.json").read_text())["count"] == dataset.num_db // 2
    runs = result["runs"]
    assert runs["sequence 10 frames"]["R@1"] >= runs["single frame"]["R@1"] - 0.01
    assert "every frame and place" in result["seqslam"]["skipped"]  # a folder's anchor runs at 1x only
    assert "1 places per frame, not told to the matcher" in (tmp_path / "sequence.md").read_text()
    repeated = run_sequence_bench(
        model, map_dir, str(dataset.root), tmp_path / "r",
        SequenceBenchConfig(frames=(10,), cost_sizes=(200,), cost_dim=32, cost_frames=20, threads=1, query_repeat=3),
    )  # fmt: skip
    assert repeated["frames_in_stream"] == 3 * dataset.num_queries
    assert repeated["runs"]["sequence 10 frames"]["R@1"] >= repeated["runs"]["single frame"]["R@1"] - 0.01
    with pytest.raises(ConfigError, match="--query-step, --map-step and --query-repeat must be >= 1"):
        SequenceBenchConfig(map_step=0)


def test_sequence_benchmark_needs_the_datasets_map(world, tmp_path):
    _, model, _, map_dir, _ = world
    other = make_stand_in_world(tmp_path / "other", places=20, size=(48, 64))
    with pytest.raises(ConfigError, match="has 60 places but dataset .* has 20 database images"):
        run_sequence_bench(
            model, map_dir, str(other.root), tmp_path / "out", SequenceBenchConfig(cost_sizes=(200,))
        )


def test_route_descriptors_are_a_route():
    x = route_descriptors(300, 32, seed=0)
    assert x.shape == (300, 32) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    neighbour = np.sum(x[1:] * x[:-1], axis=1).mean()
    far = np.sum(x[100:] * x[:-100], axis=1).mean()
    assert neighbour > far + 0.2


def test_live_benchmark_paces_the_video(world, tmp_path):
    _, model, dataset, map_dir, video = world
    result = run_live_latency(
        model, map_dir, video, tmp_path, LiveBenchConfig(frames=30, threads=1, infer_repeats=5)
    )
    assert result["video_fps"] == pytest.approx(30.0)
    assert (
        result["paced_frames"] + result["paced_dropped"] + result["paced_superseded"] <= dataset.num_queries
    )
    assert result["paced_frames"] == 30 and result["unpaced"]["total"]["n"] == 30
    assert result["inference_batch1"]["n"] == 10
    assert result["ratio_p50"] > 0
    assert "capture to result" in (tmp_path / "live.md").read_text()


def test_a_realtime_video_is_live_and_delivers_every_frame_to_a_fast_reader(world):
    _, _, dataset, _, video = world
    with VideoFileSource(video, realtime=True) as source:
        assert source.live
        frames = list(source)
    assert len(frames) + source.stats.dropped == dataset.num_queries
    assert [f.source for f in frames][:2] == ["queries.avi#0", "queries.avi#1"]
