"""The unknown-place verdict with sequence matching on, measured from cached descriptors.

``python -m benchmarks.sequence_verdict --synthetic PREFIX [--nordland PREFIX] [--json OUT]``

Each ``PREFIX`` names ``.npy`` files of descriptors already in the map's space (as the Localizer searches
them): ``PREFIX.database.npy (N, D)`` in route order and ``PREFIX.queries.npy (Q, D)``, with, for the
synthetic world, positions ``PREFIX.db_utm.npy``, ``PREFIX.q_utm.npy`` and unmapped-street frames
``PREFIX.unmapped.npy`` / ``PREFIX.u_utm.npy``; for Nordland ``PREFIX.scored.npy`` (frames scored) and no
positions: place ``i`` lies ``20 * i`` metres along the line, and a frame is right within +-1 place.

The map is calibrated as ``netvlad-map build`` does it (:func:`runtime.map.calibrate.calibrate`: per-frame
and sequence impostors from the map alone), then each stream is matched frame by frame as
:meth:`runtime.localize.localizer.Localizer._finish` does: flat inner-product search of the top 32 places, the
default :class:`~runtime.map.sequence.TemporalConfig` (20 frames), the sequence verdict once the window is
full and the per-frame verdict before. Streams: the queries followed by the unmapped frames as one sequence
(``netvlad-run --images queries,unmapped``), and the unmapped frames alone from a fresh sequence.
Reports :func:`runtime.evaluation.metrics.trust_metrics` per stream (and frame by frame, without sequence matching, for
comparison), the calibration's cost and, on Nordland, the share of winter stretches flagged when their own
neighbourhood is removed from the map (unmapped routes in the query domain).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from runtime.evaluation.metrics import trust_metrics
from runtime.map.calibrate import SEARCH_CANDIDATES, Verdict, calibrate, impostor_sequence_evidence
from runtime.map.sequence import SequenceMatcher, TemporalConfig, place_spacing

RADIUS_M = 25.0
NORDLAND_SPACING_M = 20.0


def localize_stream(
    database: np.ndarray,
    utm: np.ndarray,
    stream: np.ndarray,
    verdict: Verdict,
    config: TemporalConfig | None,
) -> dict[str, np.ndarray]:
    """Best place, confidence, unknown and whether the sequence verdict judged it, per frame of ``stream``
    (``config`` None: frame by frame, no sequence matching)."""
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    sims, ids = index.search(np.ascontiguousarray(stream, dtype=np.float32), SEARCH_CANDIDATES)  # (M, 32)
    matcher = None
    if config is not None:
        spacing = place_spacing(utm)
        matcher = SequenceMatcher(lambda x: database[x], len(database), config, place_spacing_m=spacing)
    best, confidence, unknown, by_sequence = [], [], [], []
    for i in range(len(stream)):
        ranked = matcher.update(stream[i], ids[i]) if matcher is not None else None
        top = int(ranked.ids[0]) if ranked is not None else int(ids[i][0])
        _, conf, flagged, judged_by_sequence = verdict.judge_place(top, sims[i], ids[i], utm, ranked, config)
        best.append(top)
        confidence.append(conf)
        unknown.append(flagged)
        by_sequence.append(judged_by_sequence)
    return {
        "best": np.asarray(best),
        "confidence": np.asarray(confidence),
        "unknown": np.asarray(unknown),
        "by_sequence": np.asarray(by_sequence),
    }


def _trust(correct, result, unmapped, scored=None) -> dict:
    keep = np.ones(len(correct), bool) if scored is None else scored
    metrics = trust_metrics(
        correct[keep], result["confidence"][keep], result["unknown"][keep], unmapped[keep]
    )
    metrics["recall_at_1"] = float(correct[keep & ~unmapped].mean()) if (keep & ~unmapped).any() else None
    metrics["judged_by_sequence"] = float(result["by_sequence"][keep].mean())
    return metrics


def _calibrated(database: np.ndarray, utm: np.ndarray) -> tuple[Verdict, dict]:
    t0 = time.perf_counter()
    calibration = calibrate(database, utm, RADIUS_M, 90.0, 2000)
    seconds = time.perf_counter() - t0
    sequence = calibration.get("sequence", {})
    info = {
        "calibration_s": round(seconds, 2),
        "sequence_threshold": sequence.get("unknown_threshold"),
        "sequence_impostors": sequence.get("impostors"),
        "frame_threshold": calibration["unknown_threshold"],
    }
    return Verdict(calibration), info


def synthetic(prefix: str, config: TemporalConfig) -> dict:
    db = np.load(f"{prefix}.database.npy")
    db_utm, q_utm = np.load(f"{prefix}.db_utm.npy"), np.load(f"{prefix}.q_utm.npy")
    queries, unmapped_frames = np.load(f"{prefix}.queries.npy"), np.load(f"{prefix}.unmapped.npy")
    verdict, info = _calibrated(db, db_utm)
    out: dict = {"map": info}
    stream = np.concatenate([queries, unmapped_frames])
    unmapped = np.r_[np.zeros(len(queries), bool), np.ones(len(unmapped_frames), bool)]
    for name, temporal in (("per_frame", None), ("queries_then_unmapped", config)):
        result = localize_stream(db, db_utm, stream, verdict, temporal)
        correct = np.zeros(len(stream), bool)
        found = db_utm[result["best"][: len(queries)]]
        correct[: len(queries)] = np.linalg.norm(found - q_utm, axis=1) <= RADIUS_M
        out[name] = _trust(correct, result, unmapped)
    alone = localize_stream(db, db_utm, unmapped_frames, verdict, config)
    none = np.zeros(len(unmapped_frames), bool)
    out["unmapped_alone"] = _trust(none, alone, ~none)
    return out


def nordland(prefix: str, config: TemporalConfig) -> dict:
    db, queries = np.load(f"{prefix}.database.npy"), np.load(f"{prefix}.queries.npy")
    scored = np.load(f"{prefix}.scored.npy")
    utm = np.c_[np.arange(len(db)) * NORDLAND_SPACING_M, np.zeros(len(db))]
    verdict, info = _calibrated(db, utm)
    out: dict = {"map": info}
    for name, temporal in (("per_frame", None), ("queries", config)):
        result = localize_stream(db, utm, queries, verdict, temporal)
        correct = np.abs(result["best"] - np.arange(len(queries))) <= 1
        out[name] = _trust(correct, result, np.zeros(len(queries), bool), scored)
    # unmapped routes in the winter domain: winter stretches with their own neighbourhood removed from the map
    impostors, _ = impostor_sequence_evidence(db, utm, RADIUS_M, config, seed=1, played=queries)
    flagged = [verdict.sequence.confidence(v) < verdict.unknown_below for v in impostors]
    out["winter_stretches_unmapped_flagged"] = float(np.mean(flagged))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", help="prefix of the synthetic world's cached descriptors")
    parser.add_argument("--nordland", help="prefix of Nordland's cached descriptors")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    config = TemporalConfig()
    report = {}
    if args.synthetic:
        report["synthetic"] = synthetic(args.synthetic, config)
    if args.nordland:
        report["nordland"] = nordland(args.nordland, config)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
