"""Precision-recall of the confidence and the verdict's rates (runtime.evaluation.metrics), by hand and from a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.cli.map import app as map_app
from runtime.evaluation.metrics import auc_pr, precision_recall_curve, recall_at_precision, trust_metrics
from runtime.evaluation.runs import recall_from_jsonl

# six frames, most confident first: right, right, wrong, right, and two frames of unmapped places
CORRECT = np.array([True, True, False, True, False, False])
CONFIDENCE = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
UNMAPPED = np.array([False, False, False, False, True, True])


def test_precision_recall_by_hand():
    precision, recall = precision_recall_curve(CORRECT, CONFIDENCE)
    np.testing.assert_allclose(precision, [1, 1, 2 / 3, 3 / 4, 3 / 5, 3 / 6])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    # trapezoids from (0, 1): 1/3 + 1/3 + 0 + 1/3 * (2/3 + 3/4) / 2
    assert auc_pr(precision, recall) == pytest.approx(2 / 3 + (2 / 3 + 3 / 4) / 6)
    assert recall_at_precision(precision, recall, 1.0) == pytest.approx(2 / 3)
    assert recall_at_precision(precision, recall, 0.7) == pytest.approx(1.0)
    # tied confidences are accepted together: one point, not an order-dependent staircase
    precision, recall = precision_recall_curve(np.array([False, True]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(precision, [0.5]) and np.testing.assert_allclose(recall, [1.0])
    assert precision_recall_curve(np.zeros(3, bool), np.ones(3))[0].size == 0


def test_trust_metrics_rates():
    result = trust_metrics(CORRECT, CONFIDENCE, CONFIDENCE < 0.65, UNMAPPED)
    assert result == {
        "frames": 6,
        "correct_frames": 3,
        "unmapped_frames": 2,
        "auc_pr": pytest.approx(2 / 3 + (2 / 3 + 3 / 4) / 6),
        "recall_at_99_precision": pytest.approx(2 / 3),
        "recall_at_100_precision": pytest.approx(2 / 3),
        "correct_flagged_unknown": 1,
        "correct_flagged_unknown_rate": pytest.approx(1 / 3),
        "unmapped_flagged_unknown": 2,
        "unmapped_flagged_unknown_rate": 1.0,
    }
    assert (
        trust_metrics(CORRECT, CONFIDENCE, CONFIDENCE < 0, np.zeros(6, bool))["unmapped_flagged_unknown_rate"]
        is None
    )  # Nordland: no unmapped queries, no rate
    with pytest.raises(ValueError, match="unmapped place cannot be correctly localised"):
        trust_metrics(CORRECT, CONFIDENCE, CONFIDENCE < 0, np.ones(6, bool))
    with pytest.raises(ValueError, match="6 correctness labels but 5 confidences"):
        precision_recall_curve(CORRECT, CONFIDENCE[:5])


def _record(source: str, easting: float, confidence: float, unknown: bool) -> dict:
    matches = [{"id": 0, "similarity": 0.9, "image": "x", "easting": easting, "northing": 0.0}] * 2
    return {"source": source, "confidence": confidence, "unknown": unknown, "matches": matches}


def test_recall_and_trust_from_jsonl(tmp_path):
    """Queries and unmapped places scored from two runs' JSONL, through the CLI as a user calls it."""
    from runtime.datasets import write_split_csv

    root = tmp_path / "data"
    root.mkdir()
    db = np.stack([np.arange(10) * 10.0, np.zeros(10)], axis=1)
    write_split_csv(root / "database.csv", [f"database/{i}.png" for i in range(10)], db)
    write_split_csv(root / "queries.csv", [f"queries/q{i}.png" for i in range(4)], db[:4] + 1.0)
    write_split_csv(root / "unmapped.csv", ["unmapped/u0.png", "unmapped/u1.png"], db[:2] + 500.0)
    for name in [f"database/{i}.png" for i in range(10)] + [f"queries/q{i}.png" for i in range(4)]:
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(b"")
    (root / "unmapped").mkdir()
    for name in ("u0.png", "u1.png"):
        (root / "unmapped" / name).write_bytes(b"")
    queries = tmp_path / "q.jsonl"
    # q0, q1 right and confident; q2 wrong (300 m away) but confident; q3 right but flagged
    rows = [_record("q0.png", 0, 0.99, False), _record("q1.png", 10, 0.95, False)]
    rows += [_record("q2.png", 320, 0.97, False), _record("q3.png", 30, 0.5, True)]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    unmapped = tmp_path / "u.jsonl"
    unmapped.write_text(
        json.dumps(_record("u0.png", 0, 0.2, True))
        + "\n"
        + json.dumps(_record("u1.png", 0, 0.96, False))
        + "\n"
    )
    result = recall_from_jsonl([queries, unmapped], str(root), ns=(1,))
    assert result["recall"] == {1: 0.75} and result["queries"] == 4 and result["unmatched"] == 0
    trust = result["trust"]
    assert (trust["frames"], trust["correct_frames"], trust["unmapped_frames"]) == (6, 3, 2)
    assert trust["correct_flagged_unknown_rate"] == pytest.approx(1 / 3)
    assert trust["unmapped_flagged_unknown_rate"] == 0.5
    # by confidence: q0 .99 right, q2 .97 wrong, u1 .96 wrong, q1 .95 right, q3 .5 right, u0 .2 wrong
    assert trust["recall_at_100_precision"] == pytest.approx(1 / 3)
    assert trust["auc_pr"] == pytest.approx(
        1 / 3 + 0 + 0 + (1 / 3) * (1 / 3 + 2 / 4) / 2 + (1 / 3) * (2 / 4 + 3 / 5) / 2
    )
    from typer.testing import CliRunner

    runner = CliRunner()
    args = ["recall", "--jsonl", str(queries), "--jsonl", str(unmapped), "--dataset", str(root)]
    out = runner.invoke(map_app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["trust"]["unmapped_flagged_unknown"] == 1
    text = runner.invoke(map_app, args).output.splitlines()
    assert text[0] == "4 queries with a place within 25 m: R@1 75.0 %"
    assert text[2:] == [
        "correct frames flagged unknown: 1 of 3 (33.3 %)",
        "unmapped-place frames flagged unknown: 1 of 2 (50.0 %)",
    ]
