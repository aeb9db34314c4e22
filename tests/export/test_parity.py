"""The parity gate on seeded descriptors: cosine statistics, top-1 agreement, recall change, the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export.parity import (
    THRESHOLDS,
    ParityThresholds,
    check_gate,
    compare_images,
    compare_retrieval,
    descriptor_cosines,
    format_table,
    mcnemar_p,
    write_parity_json,
)
from runtime.errors import ConfigError, ParityError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _world(seed=0, n=60, d=32):
    """Database i and query i show the same place; positives are exact indices."""
    rng = np.random.default_rng(seed)
    places = rng.normal(size=(n, d))
    db = _unit(places + 0.3 * rng.normal(size=(n, d)))
    q = _unit(places + 0.3 * rng.normal(size=(n, d)))
    positives = [np.array([i]) for i in range(n)]
    return db, q, positives


def test_identical_descriptors_pass_every_precision():
    db, q, pos = _world()
    for precision in ("fp32", "fp16", "int8"):
        r = compare_retrieval("m.onnx", precision, (db, q), (db.copy(), q.copy()), pos, "world")
        assert r.passed, r.failures
        assert r.cosine_min == pytest.approx(1.0, abs=1e-6)
        assert r.top1_agreement == 1.0
        assert r.recall_change() == {1: 0.0, 5: 0.0, 10: 0.0}


def test_perturbed_descriptors_fail_with_numbers():
    db, q, pos = _world()
    rng = np.random.default_rng(1)
    noisy = (_unit(db + 0.5 * rng.normal(size=db.shape)), _unit(q + 0.5 * rng.normal(size=q.shape)))
    r = compare_retrieval("model.int8.onnx", "int8", (db, q), noisy, pos, "world")
    cos = descriptor_cosines(np.concatenate([db, q]), np.concatenate(noisy))
    assert r.cosine_min == pytest.approx(cos.min()) and r.cosine_median == pytest.approx(np.median(cos))
    assert r.cosine_median < 0.98 and not r.passed
    assert any(f.startswith("median cosine") for f in r.failures)
    assert r.recall[1] < r.recall_reference[1]
    assert any(f.startswith("recall@1 dropped") for f in r.failures)
    with pytest.raises(ParityError, match=r"model.int8.onnx \(int8\): .*median cosine"):
        check_gate([r])
    check_gate([r], force=True)  # forced: logged, not raised
    table = format_table([r])
    assert "FAIL" in table and f"{100 * r.recall[1]:.1f}" in table


def test_nan_descriptors_fail():
    db, _, _ = _world(n=10)
    bad = db.copy()
    bad[3] = np.nan
    r = compare_images("m.onnx", "fp16", db, bad, "10 images")
    assert "1 descriptors are NaN or infinite" in r.failures


def test_thresholds_are_ordered_and_validated():
    assert THRESHOLDS["fp32"].min_cosine >= THRESHOLDS["fp16"].min_cosine >= THRESHOLDS["int8"].min_cosine
    assert THRESHOLDS["int8"].median_cosine >= 0.98 and THRESHOLDS["int8"].max_recall_drop <= 0.01
    with pytest.raises(ConfigError, match="must be in"):
        ParityThresholds(1.5, 0.9, 0.9, 0.01)


def test_parity_json(tmp_path):
    db, q, pos = _world()
    r = compare_retrieval("m.onnx", "fp32", (db, q), (db, q), pos, "world")
    path = write_parity_json(tmp_path / "parity.json", [r], checkpoint="c.pt")
    data = json.loads(path.read_text())
    assert data["context"] == {"checkpoint": "c.pt"}
    (rep,) = data["reports"]
    assert rep["passed"] and rep["recall"]["1"] == r.recall[1] and rep["recall_change"]["5"] == 0.0


def test_recall_at_20_is_reported_but_not_gated():
    db, q, pos = _world(n=40)
    loose = ParityThresholds(min_cosine=0, p1_cosine=0, median_cosine=0, max_recall_drop=0.0)
    worse = q.copy()
    worse[:5] = -db[:5]  # queries 0-4 now rank their own place last: a miss at every N (McNemar p = 1/32)
    r = compare_retrieval("m.onnx", "fp32", (db, q), (db, worse), pos, "world", loose, ns=(1, 5, 10, 20))
    assert r.recall_reference[20] == 1.0 and r.recall[20] == pytest.approx(35 / 40)
    recall_failures = [f.split(" dropped")[0] for f in r.failures if f.startswith("recall")]
    assert recall_failures == ["recall@1", "recall@5", "recall@10"]


def test_mcnemar_p_values():
    assert mcnemar_p(1, 0) == 0.5
    assert mcnemar_p(5, 0) == 1 / 32
    assert mcnemar_p(3, 1) == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2)
    assert mcnemar_p(0, 3) == 1.0 and mcnemar_p(0, 0) == 1.0


def _lose_queries(count, n=96, seed=0):
    """Reference finds all ``n`` queries at rank 1; the candidate's first ``count`` queries point elsewhere."""
    rng = np.random.default_rng(seed)
    db = _unit(rng.normal(size=(n, 32)))
    q = db.copy()
    cand_q = q.copy()
    other = db[(np.arange(count) + n // 2) % n]
    cand_q[:count] = _unit(q[:count] + 3 * other)  # query i now looks more like another place
    return (db, q), (db.copy(), cand_q), [np.array([i]) for i in range(n)]


def test_one_query_out_of_96_is_sampling_noise_not_a_regression():
    """1 lost query of 96 is 1.04 points (> the 1.00 allowed) but p = 0.5: the gate passes and says why."""
    lenient_cosines = ParityThresholds(0.0, 0.0, 0.0, max_recall_drop=0.01)
    ref, cand, pos = _lose_queries(1)
    r = compare_retrieval("model.int8.onnx", "int8", ref, cand, pos, "world", thresholds=lenient_cosines)
    assert r.recall_change()[1] == pytest.approx(-1 / 96)
    assert r.discordance[1] == {"lost": 1, "gained": 0, "p_value": 0.5}
    assert r.passed, r.failures
    assert r.to_dict()["discordance"]["1"]["p_value"] == 0.5
    ref, cand, pos = _lose_queries(6)  # 6.25 points, p = 1/64
    r = compare_retrieval("model.int8.onnx", "int8", ref, cand, pos, "world", thresholds=lenient_cosines)
    assert r.failures == (  # each still finds its place at rank 2: recall@5 and @10 unchanged
        "recall@1 dropped 6.25 points (allowed 1.00): 6 queries lost, 0 gained, McNemar p = 0.0156 < 0.05",
    )


def test_gate_advice_fits_the_precision():
    db, q, pos = _world()
    rng = np.random.default_rng(1)
    noisy = (_unit(db + 0.5 * rng.normal(size=db.shape)), _unit(q + 0.5 * rng.normal(size=q.shape)))
    fp16 = compare_retrieval("model.fp16.onnx", "fp16", (db, q), noisy, pos, "world")
    int8 = compare_retrieval("model.int8.onnx", "int8", (db, q), noisy, pos, "world")
    with pytest.raises(ParityError) as info:
        check_gate([fp16, int8])
    message = str(info.value)
    fp16_part, int8_part = message.split("; model.int8.onnx (int8): ")
    assert fp16_part.endswith(
        "FP16 is a plain cast, not calibrated: some layer loses too much in float16; deploy model.onnx "
        "(FP32) or an INT8 model instead"
    )
    assert "--calib" not in fp16_part
    assert int8_part.endswith(
        "calibrate on more images (--calib-images) or on images closer to the deployment's (--calib: map "
        "images of the place you will run in)"
    )
