"""Recall@N of a localisation run, from its JSONL (``netvlad-run --jsonl``) against the dataset's queries.

Each JSONL record names its frame (``source``: an image file name such as ``000123.png``, or
``video.mp4#17`` for frame 17 of a video, taken as query 17) and its top matches with their UTM positions.
A query is found at N when one of its first N matches lies within ``radius_m`` of the query's position,
which is exactly the protocol's definition (positives = database images within 25 m) when the map was
built from the dataset's database split. Queries without any database image within ``radius_m`` are left
out of recall, as in the training evaluation; with the dataset's unmapped-place frames they are where the
"unknown place" verdict is measured (:mod:`runtime.evaluation.metrics`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.errors import DatasetError
from runtime.evaluation.metrics import precision_recall_curve, trust_metrics
from runtime.evaluation.recall import recall_at_n
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file (a torn last line, from a killed run, is ignored)."""
    records = []
    if not Path(path).is_file():
        raise DatasetError(
            f"JSONL '{path}' does not exist or is not a file; write one with netvlad-run --jsonl"
        )
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"'{path}' is not a netvlad-run JSONL (not UTF-8 text: {exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise DatasetError(f"{path}:{number} is not valid JSON ({exc})") from exc
    return records


def query_index(source: str, by_name: dict[str, int]) -> int | None:
    if "#" in source:
        return int(source.rsplit("#", 1)[1])
    return by_name.get(Path(source).name)


def recall_from_jsonl(
    jsonl: str | Path | Sequence[str | Path],
    dataset,
    ns: Sequence[int] = (1, 5, 10),
    radius_m: float = EVAL_RADIUS_M,
    curve: bool = False,
) -> dict:
    """Recall@N and the trust numbers of one or more runs' JSONL (e.g. the queries' and the unmapped places').

    Returns ``{"recall": {N: fraction}, "queries": counted, "records": read, "unmatched": frames that are
    neither a query nor an unmapped place, "radius_m", "trust": runtime.evaluation.metrics.trust_metrics(...)}``.
    Trust counts every query with a positive (correct: best match within ``radius_m``) and every unmapped
    frame: a frame of the dataset's ``unmapped_images``, or a query without any database image within
    ``radius_m`` (recall leaves those out). ``curve``: also return the precision-recall curve of the
    confidence (``"pr_curve": {"precision": [...], "recall": [...]}``), e.g. to plot it.
    """
    if not hasattr(dataset, "q_images"):
        from runtime.datasets import open_dataset

        dataset = open_dataset(dataset)
    paths = [jsonl] if isinstance(jsonl, (str, Path)) else list(jsonl)
    records = [record for path in paths for record in read_jsonl(path)]
    by_name = {Path(name).name: i for i, name in enumerate(dataset.q_images)}
    unmapped_names = {Path(name).name for name in dataset.unmapped_images}
    has_positive = np.array([len(p) > 0 for p in dataset.positives(radius_m)], dtype=bool)
    k = min((len(r["matches"]) for r in records), default=0)
    ns = [n for n in ns if n <= k]
    ranked, positives, unmatched, seen, seen_unmapped = [], [], [], set(), set()
    correct, confidence, unknown, unmapped = [], [], [], []
    for record in records:
        qi = query_index(record["source"], by_name)
        if qi is None or qi >= dataset.num_queries:
            name = Path(record["source"]).name
            if name in unmapped_names and name not in seen_unmapped:
                seen_unmapped.add(name)
                correct.append(False)
                confidence.append(float(record["confidence"]))
                unknown.append(bool(record["unknown"]))
                unmapped.append(True)
            elif name not in unmapped_names:
                unmatched.append(record["source"])
            continue
        if qi in seen:
            continue
        seen.add(qi)
        confidence.append(float(record["confidence"]))
        unknown.append(bool(record["unknown"]))
        if not has_positive[qi]:  # a query of a place the map does not hold
            correct.append(False)
            unmapped.append(True)
            continue
        where = np.array([[m["easting"], m["northing"]] for m in record["matches"][:k]])  # (k, 2)
        near = np.linalg.norm(where - dataset.q_utm[qi], axis=1) <= radius_m
        ranked.append(np.arange(k))
        positives.append(np.flatnonzero(near))
        correct.append(bool(near[0]))
        unmapped.append(False)
    named = ", ".join(f"'{p}'" for p in paths)
    if len(unmatched) > len(records) // 2:  # most frames are not this dataset's: another dataset's run
        raise DatasetError(
            f"{len(unmatched)} of {len(records)} records of {named} name no query of dataset "
            f"'{dataset.name}' (for example '{unmatched[0]}', while its queries are named like "
            f"'{Path(dataset.q_images[0]).name}'); score the JSONL against the dataset whose queries were localised"
        )
    if unmatched:
        log.warning(
            "%d of %d records of %s name no query of dataset '%s' (for example '%s'); they are not scored",
            len(unmatched), len(records), named, dataset.name, unmatched[0],
        )  # fmt: skip
    if not ranked:
        raise DatasetError(
            f"no record of '{jsonl}' names a query of dataset '{dataset.name}' with a positive"
        )
    # queries whose matches are all far get an impossible positive (index k): they count as misses
    positives = [p if len(p) else np.array([k]) for p in positives]
    recall = recall_at_n(np.stack(ranked), positives, ns)
    result = {
        "recall": recall,
        "queries": len(ranked),
        "records": len(records),
        "unmatched": len(unmatched),
        "radius_m": radius_m,
        "trust": trust_metrics(
            np.array(correct), np.array(confidence), np.array(unknown), np.array(unmapped)
        ),
    }
    if curve:
        precision, recall_curve = precision_recall_curve(np.array(correct), np.array(confidence))
        result["pr_curve"] = {"precision": precision.tolist(), "recall": recall_curve.tolist()}
    return result
