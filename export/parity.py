"""The parity gate: does an exported artifact still recognise places as the FP32 PyTorch model does?

One module shared by the export step and the benchmarks. It compares descriptors of a candidate (an ONNX
model, an INT8 or FP16 variant, a TensorRT engine) with those of the FP32 reference on the same images:

- descriptor cosine per image (min, 1st percentile, median): how far each descriptor moved;
- top-1 agreement: the fraction of queries whose best database match is the same image (reported, not
  gated: in a densely sampled map the best match moves between neighbouring images of the same place, which
  changes nothing a user sees; recall is what the gate judges);
- recall@1/5/10 (``runtime.evaluation.recall``, positives within 25 m) of both, and the change in points.

Each precision has its own :class:`ParityThresholds` (:data:`THRESHOLDS`, set from measurements on the
synthetic ``small`` world, see export/README.md). A recall drop beyond the allowed points is a regression
only when it is more than sampling noise at that query count: the queries the candidate lost and gained
against the reference (the discordant pairs) go through a one-sided exact McNemar (binomial sign) test,
and the drop fails only at p < :data:`RECALL_ALPHA`. One query changed out of 96 (1.04 points) is p = 0.5:
noise. :func:`check_gate` names every failing artifact and what to do for its precision (raising
:class:`ParityError` unless forced); :func:`write_parity_json` records every report beside the artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError, ParityError
from runtime.evaluation.recall import first_hit_rank, rank_database
from runtime.files import atomic_write_text
from runtime.protocol import GATED_NS

log = logging.getLogger(__name__)

PARITY_NS = GATED_NS
# A recall drop fails the gate only when a one-sided exact McNemar test on the discordant queries gives
# p below this: the chance that a candidate no worse than the reference loses that many more queries than it
# gains, by the luck of which queries flipped.
RECALL_ALPHA = 0.05
# What to do about a failing artifact, by precision: FP16 is a cast (no calibration to change), INT8 is
# calibrated, and FP32 should reproduce PyTorch exactly.
ADVICE = {
    "fp32": "the FP32 export does not reproduce PyTorch; report it (it is a bug), or try "
    "ExportConfig(exporter='legacy')",
    "fp16": "FP16 is a plain cast, not calibrated: some layer loses too much in float16; deploy model.onnx "
    "(FP32) or an INT8 model instead",
    "int8": "calibrate on more images (--calib-images) or on images closer to the deployment's (--calib: map "
    "images of the place you will run in)",
}


@dataclass(frozen=True)
class ParityThresholds:
    """What a candidate of one precision must reach against the FP32 reference.

    Cosines are descriptor cosines (1.0 = identical);
    ``max_recall_drop`` is in recall points as a fraction (0.01 = one point) and applies to each of
    recall@1/5/10 (a gain never fails).
    """

    min_cosine: float
    p1_cosine: float
    median_cosine: float
    max_recall_drop: float

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"parity threshold {f.name} must be in [0, 1], got {value!r}")


# Set from measurements on the synthetic small world (k-means-initialised default model, 500 database images
# and 500 queries; export/README.md "Parity"), with a margin below what was measured:
#   fp32 ONNX   cos min 1.00000, top-1 1.000, recall change 0.0
#   fp16 ONNX   cos min 0.99989 p1 0.99992 median 0.99997, top-1 0.994, recall@1 +0.2
#   int8 QDQ    cos min 0.975 p1 0.977 median 0.990, top-1 0.90-0.92, recall@1 +1.4 / +1.8
# The INT8 median (0.98) and recall (1 point) gates are the goals of the export issue.
THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(
        min_cosine=0.9999,
        p1_cosine=0.9999,
        median_cosine=0.99999,
        max_recall_drop=0.005,
    ),
    "fp16": ParityThresholds(
        min_cosine=0.999,
        p1_cosine=0.9995,
        median_cosine=0.9999,
        max_recall_drop=0.01,
    ),
    "int8": ParityThresholds(min_cosine=0.95, p1_cosine=0.96, median_cosine=0.98, max_recall_drop=0.01),
    # bfloat16 inference of the FP32 model (OpenVINO's openvino-bf16: 8 bits of mantissa, fewer than FP16's
    # 10), measured on make demo's model (300 queries, 992 places): cos min 0.9936 p1 0.9959 median 0.9977,
    # top-1 0.943, recall@1 +0.0, @5 +0.7, @10 -0.7: between FP16 and INT8
    "bf16": ParityThresholds(min_cosine=0.99, p1_cosine=0.992, median_cosine=0.995, max_recall_drop=0.01),
}


def thresholds_for(precision: str) -> ParityThresholds:
    if precision not in THRESHOLDS:
        raise ConfigError(f"no parity thresholds for precision {precision!r}; known: {sorted(THRESHOLDS)}")
    return THRESHOLDS[precision]


@dataclass(frozen=True)
class ParityReport:
    """The comparison of one candidate with the FP32 reference. Recall fields are None without a dataset."""

    artifact: str
    precision: str
    images: str  # what was compared: a dataset name and split sizes, or "N fixed images"
    num_images: int
    cosine_min: float
    cosine_p1: float
    cosine_median: float
    thresholds: ParityThresholds
    top1_agreement: float | None = None
    recall_reference: Mapping[int, float] | None = None
    recall: Mapping[int, float] | None = None
    # per N: queries the candidate lost and gained against the reference, and the one-sided McNemar p
    discordance: Mapping[int, Mapping[str, float]] | None = None
    failures: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.failures

    def recall_change(self) -> dict[int, float] | None:
        """Candidate minus reference recall per N (fractions; negative = worse)."""
        if self.recall is None or self.recall_reference is None:
            return None
        return {n: self.recall[n] - self.recall_reference[n] for n in self.recall}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["thresholds"] = dataclasses.asdict(self.thresholds)
        for key in ("recall_reference", "recall", "discordance"):
            if d[key] is not None:
                d[key] = {str(n): v for n, v in d[key].items()}
        change = self.recall_change()
        d["recall_change"] = None if change is None else {str(n): v for n, v in change.items()}
        d["failures"] = list(self.failures)
        d["passed"] = self.passed
        return d


def descriptor_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(N, D)`` descriptor arrays -> ``(N,)`` float64."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ConfigError(
            f"descriptors to compare must have the same (N, D) shape, got {ref.shape} and {cand.shape}"
        )
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)


def mcnemar_p(lost: int, gained: int) -> float:
    """One-sided exact McNemar p-value: ``P(X >= lost)``, ``X ~ Binomial(lost + gained, 1/2)``.

    ``lost``: queries the reference found and the candidate missed; ``gained``: the reverse. Under "the
    candidate is no worse", each discordant query is a fair coin; a small p means the candidate really is
    worse. 1.0 when nothing is discordant.
    """
    n = lost + gained
    if n == 0 or lost == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, k) for k in range(lost, n + 1)) / 2.0**n)


def discordance(ref_rank: np.ndarray, cand_rank: np.ndarray, ns: Sequence[int]) -> dict[int, dict]:
    """Per N, the queries lost and gained by the candidate (first-positive ranks of both) and McNemar's p."""
    out = {}
    for n in ns:
        ref_hit, cand_hit = ref_rank < n, cand_rank < n  # (M,) bool
        lost = int(np.count_nonzero(ref_hit & ~cand_hit))
        gained = int(np.count_nonzero(~ref_hit & cand_hit))
        out[int(n)] = {"lost": lost, "gained": gained, "p_value": mcnemar_p(lost, gained)}
    return out


def _failures(
    th: ParityThresholds,
    cos: np.ndarray,
    change: Mapping[int, float] | None,
    paired: Mapping[int, Mapping[str, float]] | None = None,
) -> tuple[str, ...]:
    out = []
    if not np.all(np.isfinite(cos)):
        out.append(f"{int(np.count_nonzero(~np.isfinite(cos)))} descriptors are NaN or infinite")
    cmin, cp1, cmed = float(np.nanmin(cos)), float(np.nanpercentile(cos, 1)), float(np.nanmedian(cos))
    if cmin < th.min_cosine:
        out.append(f"worst cosine {cmin:.5f} < {th.min_cosine}")
    if cp1 < th.p1_cosine:
        out.append(f"1st-percentile cosine {cp1:.5f} < {th.p1_cosine}")
    if cmed < th.median_cosine:
        out.append(f"median cosine {cmed:.5f} < {th.median_cosine}")
    for n, delta in (change or {}).items():
        if n not in PARITY_NS:  # recall@20 and beyond are reported, not gated
            continue
        if delta >= -th.max_recall_drop - 1e-12:
            continue
        d = (paired or {}).get(n)
        if d is None:
            out.append(
                f"recall@{n} dropped {-100 * delta:.2f} points (allowed {100 * th.max_recall_drop:.2f})"
            )
        elif d["p_value"] < RECALL_ALPHA:
            out.append(
                f"recall@{n} dropped {-100 * delta:.2f} points (allowed {100 * th.max_recall_drop:.2f}): "
                f"{d['lost']} queries lost, {d['gained']} gained, McNemar p = {d['p_value']:.3g} < "
                f"{RECALL_ALPHA}"
            )
        else:
            log.info(
                "recall@%d dropped %.2f points (%d queries lost, %d gained): within sampling noise "
                "(McNemar p = %.3g >= %g), not a regression",
                n,
                -100 * delta,
                d["lost"],
                d["gained"],
                d["p_value"],
                RECALL_ALPHA,
            )
    return tuple(out)


def compare_images(
    artifact: str,
    precision: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    images: str,
    thresholds: ParityThresholds | None = None,
) -> ParityReport:
    """Cosine-only parity on descriptors of the same images (no dataset, so no ranking)."""
    th = thresholds or thresholds_for(precision)
    cos = descriptor_cosines(reference, candidate)
    return ParityReport(
        artifact=artifact,
        precision=precision,
        images=images,
        **_cosine_summary(cos),
        thresholds=th,
        failures=_failures(th, cos, None),
    )


def _cosine_summary(cos: np.ndarray) -> dict[str, float | int]:
    """Image count and worst, 1st-percentile and median cosine of per-image descriptor cosines."""
    return {
        "num_images": int(cos.shape[0]),
        "cosine_min": float(np.nanmin(cos)),
        "cosine_p1": float(np.nanpercentile(cos, 1)),
        "cosine_median": float(np.nanmedian(cos)),
    }


def compare_retrieval(
    artifact: str,
    precision: str,
    reference: tuple[np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray],
    positives: Sequence[np.ndarray],
    images: str,
    thresholds: ParityThresholds | None = None,
    ns: Sequence[int] = PARITY_NS,
) -> ParityReport:
    """Full parity on a place-recognition set: ``(db, queries)`` descriptors of reference and candidate.

    ``positives``: per query the database indices within 25 m (queries without one must be dropped first).
    """
    th = thresholds or thresholds_for(precision)
    ref_db, ref_q = reference
    cand_db, cand_q = candidate
    cos = descriptor_cosines(np.concatenate([ref_db, ref_q]), np.concatenate([cand_db, cand_q]))
    k = max(ns)
    ranked_ref = rank_database(ref_db, ref_q, k)  # (M, k)
    ranked_cand = rank_database(cand_db, cand_q, k)
    top1 = float(np.mean(ranked_ref[:, 0] == ranked_cand[:, 0])) if ranked_ref.shape[0] else 1.0
    rank_ref = first_hit_rank(ranked_ref, positives)  # (M,) rank of the first positive
    rank_cand = first_hit_rank(ranked_cand, positives)
    total = max(1, len(positives))
    recall_ref = {int(n): float(np.count_nonzero(rank_ref < n)) / total for n in ns}
    recall = {int(n): float(np.count_nonzero(rank_cand < n)) / total for n in ns}
    change = {n: recall[n] - recall_ref[n] for n in ns}
    paired = discordance(rank_ref, rank_cand, ns)
    return ParityReport(
        artifact=artifact,
        precision=precision,
        images=images,
        **_cosine_summary(cos),
        thresholds=th,
        top1_agreement=top1,
        recall_reference=recall_ref,
        recall=recall,
        discordance=paired,
        failures=_failures(th, cos, change, paired),
    )


def gate_message(failed: Sequence[ParityReport]) -> str:
    """Each failing artifact, why it failed and what to do for its precision."""
    return "; ".join(
        f"{r.artifact} ({r.precision}): {', '.join(r.failures)}; {ADVICE.get(r.precision, '')}".rstrip("; ")
        for r in failed
    )


def check_gate(reports: Iterable[ParityReport], force: bool = False) -> list[ParityReport]:
    """The reports that missed their gate. Raises :class:`ParityError` naming each (why, and what to do for
    its precision) unless ``force``, which logs them as warnings and returns them."""
    failed = [r for r in reports if not r.passed]
    if not failed:
        return []
    if force:
        log.warning("parity gate missed but forced: %s", gate_message(failed))
        return failed
    raise ParityError(f"parity gate missed: {gate_message(failed)}")


def write_parity_json(path: str | os.PathLike, reports: Sequence[ParityReport], **context: Any) -> Path:
    """Write ``{"context": ..., "reports": [...]}`` to ``path`` atomically."""
    payload = {"context": context, "reports": [r.to_dict() for r in reports]}
    return atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def format_table(reports: Sequence[ParityReport]) -> str:
    """A markdown table: cosine min/p1/median, top-1 agreement, recall@1/5/10 with change in points."""
    head = "| artifact | precision | cos min | cos p1 | cos median | top-1 agr. | R@1 | R@5 | R@10 | gate |"
    rows = [head, "|" + "---|" * 10]
    for r in reports:
        top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}"
        recalls = []
        for n in PARITY_NS:
            if r.recall is None or r.recall_reference is None or n not in r.recall:
                recalls.append("-")
            else:
                delta = 100 * (r.recall[n] - r.recall_reference[n])
                recalls.append(f"{100 * r.recall[n]:.1f} ({delta:+.1f})")
        rows.append(
            f"| {r.artifact} | {r.precision} | {r.cosine_min:.5f} | {r.cosine_p1:.5f} | {r.cosine_median:.5f} "
            f"| {top1} | {' | '.join(recalls)} | {'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(rows)
