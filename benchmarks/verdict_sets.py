"""The "unknown place" verdict across the sets it has to hold on, measured with the kit's own Localizer.

``netvlad-bench verdict --model M.onnx --out DIR [--dataset D ...] [--nordland]``

For each dataset folder ``D`` (``database.csv``, ``queries.csv`` and, when present, ``unmapped.csv``: e.g.
a synthetic world, ``python -m training.synth``) and for Nordland (``../shared/data/nordland``: the summer
map, the winter drive), the map is built once with ``netvlad-map build``'s code and cut into the sets below
with ``netvlad-map remove``'s (each recalibrated as the command does). Each set's stream is played through
:class:`~runtime.localize.Localizer` (``locate``: the same search, sequence matching and verdict as
``netvlad-run``, from descriptors computed once per image), frame by frame and with ``--temporal``:

- a dataset: its queries followed by its unmapped streets as one drive; the unmapped streets alone; a map
  of the first half of the route with every query;
- Nordland: the winter drive at 1x, every 2nd and 3rd frame (a robot 2x, 3x as fast), every summer place
  but every 2nd (0.5x: a slower robot); a fifth of the route (40-60 %) removed from the map, so that its
  winter frames are a continuous unmapped drive; a map of the first half of the route.

A frame is unmapped when no map place lies within 25 m of it, correct when its reported place lies within
25 m. Per set and mode: R@1 (mapped frames), the share of correct frames flagged "unknown place", the share
of unmapped frames flagged, AUC-PR of the confidence (:func:`runtime.evaluation.metrics.trust_metrics`), and
the same rates with the map's calibration alone (the stream's own impostors not mixed in:
:mod:`runtime.localize.stream_verdict`; the confidence of the frames judged per frame recomputed from the
same evidence). Writes ``DIR/verdict_sets.json`` and ``DIR/verdict_sets.md``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from runtime.datasets import open_dataset
from runtime.errors import ConfigError
from runtime.evaluation.metrics import trust_metrics
from runtime.files import atomic_directory, atomic_write_bytes, atomic_write_text
from runtime.localize import Localizer, LocalizerConfig
from runtime.map import MapConfig, build_map, open_map, remove_from_map
from runtime.map.build import META_FILE, PLACES_FILE
from runtime.map.places import Places
from runtime.map.sequence import TemporalConfig
from runtime.model.backends import open_backend
from runtime.model.preprocess import Preprocessor
from runtime.protocol import EVAL_RADIUS_M
from runtime.sources.frames import decode_bgr

log = logging.getLogger(__name__)
BATCH = 16


def describe(backend, root: Path, images, cache: Path) -> np.ndarray:
    """The model's descriptors of ``images`` (relative to ``root``) ``(M, D)``, cached in ``cache``."""
    if cache.is_file():
        return np.load(cache)
    pre = Preprocessor(backend.card)
    out = []
    for start in range(0, len(images), BATCH):
        batch = [decode_bgr(root / image) for image in images[start : start + BATCH]]
        out.append(backend.infer(np.stack([pre(image) for image in batch])))
    descriptors = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    buffer = io.BytesIO()
    np.save(buffer, descriptors)
    atomic_write_bytes(cache, buffer.getvalue())  # an interrupted run leaves no partial cache
    return descriptors


def cut_map(full: Path, out: Path, remove: np.ndarray) -> Path:
    """A copy of the map ``full`` at ``out`` without the places where ``remove (N,) bool`` (kept when it
    exists: a rerun resumes), written whole or not at all."""
    if (out / META_FILE).is_file():
        return out
    images = Places.read_csv(full / PLACES_FILE).images
    with atomic_directory(out, overwrite=True) as staging:
        shutil.copytree(full, staging, dirs_exist_ok=True)
        remove_from_map(staging, images=[images[i] for i in np.flatnonzero(remove)])
    return out


def play(backend, map_dir: Path, stream: np.ndarray, truth: np.ndarray, temporal: bool) -> dict:
    """One stream through a Localizer on ``map_dir``: the trust numbers of the kit's verdict and of the map's
    calibration alone."""
    place_map = open_map(map_dir, backend.card)
    config = LocalizerConfig(temporal=TemporalConfig() if temporal else None)
    localizer = Localizer(backend, place_map, config)
    utm = place_map.places.utm
    found, confidence, unknown, map_confidence, locked = [], [], [], [], []
    t0 = time.perf_counter()
    for i, descriptor in enumerate(stream):
        result = localizer.locate(descriptor, timestamp=float(i), index=i)
        found.append((result.matches[0].easting, result.matches[0].northing))
        confidence.append(result.confidence)
        unknown.append(result.unknown)
        locked.append(bool(result.locked))
        by_map = (
            result.confidence
            if result.verdict == "sequence"
            else localizer.verdict.confidence(result.evidence)
        )
        map_confidence.append(by_map)
    seconds = time.perf_counter() - t0
    nearest = np.array([np.linalg.norm(utm - p, axis=1).min() for p in truth])  # (M,) metres
    unmapped = nearest > EVAL_RADIUS_M
    correct = (np.linalg.norm(np.asarray(found) - truth, axis=1) <= EVAL_RADIUS_M) & ~unmapped
    threshold = localizer.threshold
    out = {
        "frames": len(stream),
        "unmapped": int(unmapped.sum()),
        "ms_per_frame": round(1000 * seconds / max(1, len(stream)), 2),
    }
    out["R@1"] = round(float(correct[~unmapped].mean()), 3) if (~unmapped).any() else None
    for name, conf in (
        ("kit", np.asarray(confidence)),
        ("map calibration alone", np.asarray(map_confidence)),
    ):
        flags = np.asarray(unknown) if name == "kit" else conf < threshold
        m = trust_metrics(correct, conf, flags, unmapped)
        out[name] = {
            "correct_flagged": _round(m["correct_flagged_unknown_rate"]),
            "unmapped_flagged": _round(m["unmapped_flagged_unknown_rate"]),
            "auc_pr": _round(m["auc_pr"]) if correct.any() else None,
        }
    if temporal:
        out["locked"] = round(float(np.mean(locked)), 3)
    return out


def _round(value):
    return None if value is None else round(float(value), 3)


def dataset_sets(name: str, spec: str, backend, out: Path) -> list[tuple[str, Path, np.ndarray, np.ndarray]]:
    """``(set name, map folder, stream descriptors, stream positions)`` for a dataset folder."""
    dataset = open_dataset(spec)
    full = out / "maps" / name / "full"
    if not (full / "map.json").is_file():
        build_map(backend, dataset, full, MapConfig())
    queries = describe(backend, dataset.root, dataset.q_images, out / f"{name}.queries.npy")
    sets = []
    if dataset.unmapped_images:
        unmapped = describe(backend, dataset.root, dataset.unmapped_images, out / f"{name}.unmapped.npy")
        sets.append((f"{name}: queries then unmapped streets", full, np.r_[queries, unmapped],
                     np.r_[dataset.q_utm, dataset.unmapped_utm]))  # fmt: skip
        sets.append((f"{name}: unmapped streets alone", full, unmapped, dataset.unmapped_utm))
    order = np.arange(len(dataset.db_images))
    half = cut_map(full, out / "maps" / name / "half", order >= len(order) // 2)
    sets.append((f"{name}: map of half the route, every query", half, queries, dataset.q_utm))
    return sets


def nordland_sets(backend, out: Path) -> list[tuple[str, Path, np.ndarray, np.ndarray]]:
    dataset = open_dataset("nordland")
    full = out / "maps" / "nordland" / "full"
    if not (full / "map.json").is_file():
        build_map(backend, dataset, full, MapConfig())
    winter = describe(backend, dataset.root, dataset.q_images, out / "nordland.queries.npy")
    n = len(dataset.db_images)
    order = np.arange(n)
    maps = out / "maps" / "nordland"
    return [
        ("nordland 1x", full, winter, dataset.q_utm),
        ("nordland 2x (every 2nd winter frame)", full, winter[::2], dataset.q_utm[::2]),
        ("nordland 3x (every 3rd winter frame)", full, winter[::3], dataset.q_utm[::3]),
        ("nordland 0.5x (every 2nd summer place)", cut_map(full, maps / "every-2nd", order % 2 == 1), winter,
         dataset.q_utm),
        ("nordland, 40-60 % of the route removed", cut_map(full, maps / "stretch-removed",
         (order >= 0.4 * n) & (order < 0.6 * n)), winter, dataset.q_utm),
        ("nordland, map of half the route", cut_map(full, maps / "half", order >= n // 2), winter, dataset.q_utm),
    ]  # fmt: skip


def report(results: dict) -> str:
    lines = [
        "| set | mode | R@1 | correct flagged | unmapped flagged | AUC-PR | map calibration alone: correct / unmapped flagged, AUC-PR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, modes in results.items():
        for mode, r in modes.items():
            kit, alone = r["kit"], r["map calibration alone"]
            lines.append(
                f"| {name} | {mode} | {_fmt(r['R@1'])} | {_fmt(kit['correct_flagged'])} | "
                f"{_fmt(kit['unmapped_flagged'])} | {_fmt(kit['auc_pr'])} | {_fmt(alone['correct_flagged'])} / "
                f"{_fmt(alone['unmapped_flagged'])}, {_fmt(alone['auc_pr'])} |"
            )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def run_verdict_sets(model: Path, datasets: list[str], nordland: bool, out: Path, threads: int = 2) -> dict:
    """Every set of the module doc for ``model``; returns ``{"sets": results, "files": {...}}``."""
    if not datasets and not nordland:
        raise ConfigError("name at least one set: --dataset FOLDER (repeatable) and/or --nordland")
    out.mkdir(parents=True, exist_ok=True)
    backend = open_backend(model, "auto", threads=threads)
    try:
        sets = []
        for spec in datasets:
            sets += dataset_sets(Path(spec).name, spec, backend, out)
        if nordland:
            sets += nordland_sets(backend, out)
        results: dict = {}
        for name, map_dir, stream, truth in sets:
            for mode, temporal in (("per frame", False), ("--temporal", True)):
                log.info("%s, %s: %d frames", name, mode, len(stream))
                results.setdefault(name, {})[mode] = play(backend, map_dir, stream, truth, temporal)
    finally:
        backend.close()
    files = {"json": out / "verdict_sets.json", "markdown": out / "verdict_sets.md"}
    atomic_write_text(files["json"], json.dumps(results, indent=2) + "\n")
    atomic_write_text(files["markdown"], report(results) + "\n")
    return {"sets": results, "files": {k: str(v) for k, v in files.items()}}
