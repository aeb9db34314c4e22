"""Can a user act on the answer? Precision-recall of the confidence and the verdict's error rates.

Recall@N (:mod:`runtime.evaluation.recall`) says whether the right place is among the answers; these numbers say
whether the confidence separates right answers from wrong ones, as VPR-Bench (Zaffar et al., IJCV 2021)
and the literature report it:

- every frame's best match is one prediction, scored by its confidence; it is a *true positive* when it
  lies within the evaluation radius of the frame's true position, and a *false positive* otherwise
  (frames of unmapped places can only be false positives);
- accepting the frames whose confidence is at least ``t``: precision = TP(t) / accepted(t) and recall =
  TP(t) / (all correct frames), swept over every ``t`` (VPR-Bench's ``precision_recall_curve`` over the
  top-1 correctness labels);
- AUC-PR: the area under that curve (trapezoidal, from recall 0 at precision 1, as VPR-Bench's ``auc``);
- recall at 99 % and at 100 % precision: the largest recall whose precision reaches that level (0 when
  none does).

The verdict's rates: the share of correctly localised frames flagged "unknown place" (wrongly thrown
away), and the share of unmapped-place frames flagged (rightly). numpy only.
"""

from __future__ import annotations

import numpy as np


def precision_recall_curve(correct: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` at every distinct confidence threshold, from the most confident down.

    ``correct``: bool ``(M,)``, the frame's best match is right; ``confidence``: float ``(M,)``. Tied
    confidences are accepted together (one point per distinct value). Empty arrays when no frame is correct.
    """
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if correct.shape != confidence.shape:
        raise ValueError(f"{correct.shape[0]} correctness labels but {confidence.shape[0]} confidences")
    if not correct.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-confidence, kind="stable")
    hits = correct[order]
    ranked = confidence[order]
    last_of_tie = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # end of each tied group
    tp = np.cumsum(hits)[last_of_tie]
    accepted = last_of_tie + 1
    return tp / accepted, tp / np.count_nonzero(correct)


def auc_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    """Trapezoidal area under the curve, starting at (recall 0, precision 1); 0 for an empty curve."""
    if recall.size == 0:
        return 0.0
    r = np.r_[0.0, recall]
    p = np.r_[1.0, precision]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2.0))


def recall_at_precision(precision: np.ndarray, recall: np.ndarray, level: float) -> float:
    """The largest recall whose precision is at least ``level`` (0 when none is)."""
    ok = precision >= level - 1e-12
    return float(recall[ok].max()) if ok.any() else 0.0


def trust_metrics(
    correct: np.ndarray, confidence: np.ndarray, unknown: np.ndarray, unmapped: np.ndarray
) -> dict:
    """Every trust number of one run, JSON-able.

    Shapes ``(M,)``, one entry per frame: ``correct`` (best match within the radius; False for unmapped
    frames), ``confidence``, ``unknown`` (the verdict), ``unmapped`` (the frame's place is not in the map).
    Rates are None when their denominator is empty (e.g. no unmapped frames on Nordland).
    """
    correct = np.asarray(correct, dtype=bool)
    unknown = np.asarray(unknown, dtype=bool)
    unmapped = np.asarray(unmapped, dtype=bool)
    if np.any(correct & unmapped):
        raise ValueError("a frame of an unmapped place cannot be correctly localised")
    precision, recall = precision_recall_curve(correct, confidence)
    n_correct = int(np.count_nonzero(correct))
    n_unmapped = int(np.count_nonzero(unmapped))
    flagged_correct = int(np.count_nonzero(unknown & correct))
    flagged_unmapped = int(np.count_nonzero(unknown & unmapped))
    return {
        "frames": int(correct.size),
        "correct_frames": n_correct,
        "unmapped_frames": n_unmapped,
        "auc_pr": auc_pr(precision, recall),
        "recall_at_99_precision": recall_at_precision(precision, recall, 0.99),
        "recall_at_100_precision": recall_at_precision(precision, recall, 1.0),
        "correct_flagged_unknown": flagged_correct,
        "correct_flagged_unknown_rate": flagged_correct / n_correct if n_correct else None,
        "unmapped_flagged_unknown": flagged_unmapped,
        "unmapped_flagged_unknown_rate": flagged_unmapped / n_unmapped if n_unmapped else None,
    }
