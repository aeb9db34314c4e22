"""What every section of the GPU run shares: how a failure is recorded, latency, parity against the CPU.

A section's result is a dict. A capability that is missing is ``{"missing": reason}`` (expected on a machine
without it); a step that failed is ``{"error": reason, "trace": ...}``, which the run counts and reports,
so that a failure is never mistaken for a skip or lost as a None.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.timing import summarize_ms, time_calls


def reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def error_entry(exc: BaseException) -> dict[str, str]:
    return {"error": reason(exc), "trace": traceback.format_exc()[-2000:]}


def guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or its failure as an error entry."""
    try:
        return fn()
    except Exception as exc:
        return error_entry(exc)


def latency(fn: Callable[[], Any], repeats: int, batch: int = 1, sync: Callable | None = None) -> dict:
    """p50/p90/p99 in ms of ``fn`` (after warm-up; ``sync`` waits for the device before each clock read)."""

    def call() -> None:
        fn()
        if sync is not None:
            sync()

    return summarize_ms(time_calls(call, repeats, warmup=5), items_per_sample=batch)


def top1(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of the most similar database descriptor for each query (exact inner product)."""
    return np.argmax(queries.astype(np.float64) @ db.astype(np.float64).T, axis=1)


def parity(
    reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], precision: str
) -> dict[str, Any]:
    """Cosines of ``candidate``'s (database, query) descriptors against ``reference``'s, whether they meet
    the export gate's cosine thresholds for ``precision`` (:data:`export.parity.THRESHOLDS`), and the share
    of queries whose top-1 database match agrees (reported, not gated: like the export gate, which judges
    retrieval by recall; with random weights near-ties make top-1 flip under any rounding)."""
    from export.parity import descriptor_cosines, thresholds_for

    ref_db, ref_q = reference
    cand_db, cand_q = candidate
    cos = descriptor_cosines(np.concatenate([ref_db, ref_q]), np.concatenate([cand_db, cand_q]))
    agreement = float(np.mean(top1(ref_db, ref_q) == top1(cand_db, cand_q)))
    limits = thresholds_for(precision)
    failures = []
    for name, value, limit in (
        ("min", cos.min(), limits.min_cosine),
        ("p1", np.percentile(cos, 1), limits.p1_cosine),
        ("median", np.median(cos), limits.median_cosine),
    ):
        if value < limit:
            failures.append(f"cosine {name} {value:.5f} < {limit}")
    return {
        "precision": precision,
        "images": len(cos),
        "cosine_min": float(cos.min()),
        "cosine_p1": float(np.percentile(cos, 1)),
        "cosine_median": float(np.median(cos)),
        "top1_agreement": agreement,
        "passed": not failures,
        "failures": failures,
    }


def collect_errors(result: Any, where: str = "") -> list[str]:
    """Every ``error`` entry in a nested result, as ``path: message`` lines."""
    found: list[str] = []
    if isinstance(result, dict):
        if isinstance(result.get("error"), str):
            found.append(f"{where or '<run>'}: {result['error']}")
        for key, value in result.items():
            if key not in ("error", "trace"):
                found += collect_errors(value, f"{where}/{key}" if where else str(key))
    return found
