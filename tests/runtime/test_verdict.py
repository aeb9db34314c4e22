"""The unknown-place verdict and the confidence (runtime.map.calibrate) on seeded worlds with unmapped places.

Each world is localised through the real pipeline (ONNX Runtime, FAISS, Localizer) and scored from its
JSONL (runtime.evaluate): correct frames flagged unknown, unmapped-place frames flagged, AUC-PR.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.evaluate import recall_from_jsonl
from runtime.localizer import Localizer
from runtime.map import MapConfig, build_map, read_map_meta
from runtime.map.calibrate import Verdict, evidence
from runtime.sources import ImageFolderSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


def _score(model, map_dir, dataset, out) -> dict:
    """Localise the dataset's queries and unmapped places frame by frame; recall and trust from the JSONL."""
    files = []
    with Localizer.open(model, map_dir) as localizer:
        for split in ("queries", "unmapped"):
            with ImageFolderSource(dataset.root / split) as source:
                records = [loc.to_record() for loc in localizer.run(source)]
            path = out / f"{map_dir.name}.{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            files.append(path)
    return recall_from_jsonl(files, dataset, ns=(1,))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path, _ = make_onnx_model(tmp_path_factory.mktemp("model") / "model.onnx", dim=128)
    return path


@pytest.mark.parametrize(
    ("spacing_m", "contrast"),
    [(5.0, 1.0), (5.0, 0.4), (30.0, 0.4)],
    ids=["dense", "dense-dim-queries", "sparse-dim-queries"],
)
def test_verdict_holds_across_map_density_and_query_domain(model, tmp_path, spacing_m, contrast):
    """Calibrated on the map alone: queries in another domain (contrast 0.4: their similarities to the map
    drop) keep their correct answers, and the unmapped places are flagged, at 5 m and 30 m spacing."""
    dataset = make_stand_in_world(
        tmp_path / "data", places=200, spacing_m=spacing_m, seed=1, size=(48, 64), noise=40,
        unmapped=60, contrast=contrast,
    )  # fmt: skip
    map_dir = build_map(model, dataset, tmp_path / "map", MapConfig(faiss_threads=1))
    assert read_map_meta(map_dir)["calibration"]["source"] == "map"
    result = _score(model, map_dir, dataset, tmp_path)
    trust = result["trust"]
    assert result["recall"][1] == 1.0 and trust["correct_frames"] == 200 and trust["unmapped_frames"] == 60
    assert trust["correct_flagged_unknown_rate"] <= 0.05
    assert trust["unmapped_flagged_unknown_rate"] >= 0.8
    assert trust["auc_pr"] >= 0.99


def test_evidence_is_scale_free_and_confidence_is_the_impostor_cdf():
    utm = np.stack([np.arange(40) * 10.0, np.zeros(40)], axis=1)  # a place every 10 m
    ids = np.array([5, 6, 4, 20, 30, 12, 33, 25, 38, 15, 1, 28, 35])  # 5, 6, 4 within 25 m; the rest far
    sims = np.array([0.9, 0.85, 0.8, 0.6, 0.58, 0.57, 0.55, 0.54, 0.53, 0.52, 0.51, 0.50, 0.49])
    # s1 = 0.9, s2 = 0.6 (the best far one), s_10 = 0.49 (the 10th far one): (0.9 - 0.6) / (0.6 - 0.49)
    assert evidence(sims, ids, utm, 25.0) == pytest.approx(0.3 / 0.11)
    # a change of domain scales and shifts all of a frame's similarities: the evidence stays
    assert evidence(0.4 * sims - 0.1, ids, utm, 25.0) == pytest.approx(0.3 / 0.11)
    assert evidence(sims[:3], ids[:3], utm, 25.0) == 0.0  # nothing far away to compare with
    impostors = np.linspace(0.0, 2.0, 101)  # evidence quantiles of simulated unmapped places
    calibration = {
        "impostor_quantiles": impostors.tolist(),
        "tail_scale": 0.5,
        "radius_m": 25.0,
        "unknown_below_confidence": 0.9,
    }
    verdict = Verdict(calibration)
    assert verdict.confidence(1.0) == pytest.approx(0.5) and verdict.confidence(-1.0) == 0.0
    assert verdict.confidence(1.8) == pytest.approx(0.9)
    # above the impostors' 90th percentile an exponential tail: keeps rising, never reaches 1
    assert verdict.confidence(1.8 + 0.5) == pytest.approx(1 - 0.1 * np.exp(-1))
    assert verdict.confidence(1.9) < verdict.confidence(2.5) < verdict.confidence(9.0) < 1.0
    value, confidence, unknown = verdict.judge(sims, ids, utm)
    assert value == pytest.approx(0.3 / 0.11) and confidence > 0.9 and not unknown
    assert Verdict(calibration, unknown_below=0.999).judge(sims, ids, utm)[2]  # a stricter operating point
    # 30 % of the impostors show no evidence at all (tied quantiles): evidence 0 is at their top, 0.29
    tied = dict(calibration, impostor_quantiles=[0.0] * 30 + np.linspace(0.1, 2.0, 71).tolist())
    assert Verdict(tied).confidence(0.0) == pytest.approx(0.29)


def test_calibration_on_held_out_queries_is_recorded(model, tmp_path):
    dataset = make_stand_in_world(
        tmp_path / "data", places=60, spacing_m=10.0, seed=2, size=(48, 64), noise=40
    )
    map_dir = build_map(
        model,
        dataset,
        tmp_path / "map",
        MapConfig(calibration="queries", calibration_queries=30, faiss_threads=1),
    )
    calibration = read_map_meta(map_dir)["calibration"]
    assert calibration["source"] == "queries" and calibration["samples"] == 30
    assert calibration["evidence_kind"] == "distance"  # in the queries' own domain: need not be scale-free
    assert calibration["query_indices"] == "30 evenly spaced of 60"
    assert calibration["correct_flagged_on_calibration"] == 0.0
    with Localizer.open(model, map_dir) as localizer:  # the localiser judges with the map's statistic
        assert localizer.verdict.kind == "distance"
        flagged = [
            localizer.localize(dataset.read_image("queries", i), color="RGB").unknown for i in range(60)
        ]
    assert sum(flagged) == 0
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="calibration='queries' needs a map of the database split"):
        build_map(model, dataset, tmp_path / "all", MapConfig(calibration="queries", split="all"))
