"""netvlad-bench verdict: every set of a dataset folder built, cut and played through the kit's Localizer."""

from __future__ import annotations

import json

import pytest

from benchmarks.verdict_sets import run_verdict_sets
from runtime.errors import ConfigError
from runtime.map import open_map


def test_verdict_sets_on_the_bench_world(bench_world, tmp_path):
    result = run_verdict_sets(bench_world.models / "model.onnx", [str(bench_world.dataset)], False, tmp_path)
    sets = result["sets"]
    name = bench_world.dataset.name
    assert list(sets) == [
        f"{name}: queries then unmapped streets",
        f"{name}: unmapped streets alone",
        f"{name}: map of half the route, every query",
    ]
    full, half = open_map(tmp_path / "maps" / name / "full"), open_map(tmp_path / "maps" / name / "half")
    assert len(half) == len(full) - len(full) // 2  # netvlad-map remove's code: the second half removed
    alone = sets[f"{name}: unmapped streets alone"]
    both = sets[f"{name}: queries then unmapped streets"]
    for mode in ("per frame", "--temporal"):
        assert alone[mode]["R@1"] is None and alone[mode]["kit"]["correct_flagged"] is None
        assert alone[mode]["unmapped"] == alone[mode]["frames"] == 48
        assert both[mode]["unmapped"] == 48
    # measured (the untrained tiny model): the unmapped streets alone 90 % flagged per frame, 96 % with
    # --temporal; the half-route map leaves 20 of the 48 queries unmapped, per-frame R@1 0.536 on the rest
    assert alone["per frame"]["kit"]["unmapped_flagged"] >= 0.85
    assert alone["--temporal"]["kit"]["unmapped_flagged"] >= 0.9
    half_route = sets[f"{name}: map of half the route, every query"]["per frame"]
    assert half_route["unmapped"] == 20 and half_route["R@1"] == pytest.approx(0.536, abs=0.05)
    assert half_route["kit"]["unmapped_flagged"] >= 0.8
    assert json.loads((tmp_path / "verdict_sets.json").read_text()) == sets
    assert (tmp_path / "verdict_sets.md").read_text().startswith("| set | mode | R@1 |")


def test_verdict_sets_needs_a_set(tmp_path):
    with pytest.raises(ConfigError, match="name at least one set: --dataset FOLDER"):
        run_verdict_sets(tmp_path / "model.onnx", [], False, tmp_path)
