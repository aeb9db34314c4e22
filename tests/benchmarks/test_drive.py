"""netvlad-bench drive on a small world: real bags, real maps, real ONNX Runtime (no torch needed)."""

from __future__ import annotations

import json

import pytest

from benchmarks.drive import drive_benchmark
from tests.runtime.helpers import make_onnx_model, make_stand_in_world

pytest.importorskip("rosbags", reason="needs rosbags (pip install 'netvlad-kit[ros]')")


@pytest.mark.slow
def test_drive_benchmark_compares_the_bag_map_with_the_folder_map(tmp_path):
    model, _ = make_onnx_model(tmp_path / "model.onnx")
    make_stand_in_world(tmp_path / "world", places=30, spacing_m=10.0)
    result = drive_benchmark(model, tmp_path / "world", tmp_path / "out", seed=0)
    folder, bag = result["folder_map"], result["bag_map"]
    # the folder map holds every place at its true position: every query is found, within 2 sigma
    assert folder["places"] == 30 and folder["recall_at_1"] == 1.0 and folder["within_2_sigma"] == 1.0
    # the 10 s GPS outage (10 images at 1 image/s) and the image after the last fix are not in the bag's map;
    # the queries of the places it kept are all found
    assert bag["places"] == 17 and bag["recall_at_1"] == pytest.approx(17 / 30, abs=1e-3)
    assert result["gps"]["fixes"] == 95 and result["gps"]["no_fix"] == 6
    assert result["read_fps"]["bag"] > 0 and result["read_fps"]["folder"] > 0
    live = result["live_view"]  # every result was published; the client got each one or a newer one
    assert live["last_update_received"] == 30 and live["updates_sent"] + live["updates_dropped"] == 30
    assert live["event_kb_median"] > 1
    assert json.loads((tmp_path / "out" / "drive.json").read_text())["bag_map"]["places"] == 17
    assert (
        "| map from the bag (keyframes, noisy GPS) | 17 | 0.567 |"
        in (tmp_path / "out" / "drive.md").read_text()
    )
    assert not (tmp_path / "out" / "scratch").exists()
