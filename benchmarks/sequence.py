"""``netvlad-bench sequence``: recall@1 of sequence matching (``netvlad-run --temporal``) against single
frames, and its cost per frame at two map sizes.

Recall: the dataset's queries are localised in their order, through the same code as ``netvlad-run``
(:meth:`runtime.localize.localizer.Localizer.locate` on each query's descriptor, one stream over all of them), frame
by frame without and with query-domain adaptation (:mod:`runtime.localize.adapt`), and once per sequence length. On Nordland the stream is every winter frame,
as the SeqSLAM anchor feeds it; the near-blank frames of ``near_uniform.txt`` stay in the stream but are
not scored. A query is right when its first match lies within ``radius_m`` (Nordland: +-1 frame).

Cost: the sequence matcher's update alone (the map search, which grows with the map unless the index is
compressed, is timed beside it) on maps of seeded route descriptors of two sizes, the same route of queries
against each, so the two columns differ only in the map's size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError
from runtime.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceBenchConfig:
    """``frames``: sequence lengths measured (each a TemporalConfig(frames=...)); ``cost_sizes``: map sizes
    for the cost table; ``cost_dim``: their descriptor dimension; ``cost_frames``: frames timed per size."""

    frames: tuple[int, ...] = (10, 20)
    radius_m: float = 25.0
    threads: int = 2
    batch_size: int = 16
    cost_sizes: tuple[int, ...] = (1_000, 100_000)
    cost_dim: int = 1024
    cost_frames: int = 300
    reverse: bool = False
    query_step: int = 1  # every N-th query frame: a robot N times faster than the mapping drive
    map_step: int = 1  # every N-th map place: a robot N times slower (fewer places per frame)
    query_repeat: int = 1  # each query frame N times: a camera N times faster than the map's spacing
    anchor: bool = True  # run the SeqSLAM anchor (../shared/anchors/seqslam.py) beside, on Nordland

    def __post_init__(self) -> None:
        if not self.frames or min(self.frames) < 1 or not self.cost_sizes or min(self.cost_sizes) < 100:
            raise ConfigError(f"invalid sequence benchmark config {self}: frames >= 1, cost sizes >= 100")
        if min(self.query_step, self.map_step, self.query_repeat) < 1:
            raise ConfigError(
                f"--query-step, --map-step and --query-repeat must be >= 1, got {self.query_step}, "
                f"{self.map_step}, {self.query_repeat}"
            )

    @property
    def places_per_frame(self) -> float:
        """Map places the robot passes per query frame, the speed the matcher is not told."""
        return self.query_step / self.map_step / self.query_repeat


def sequence_stream(spec: str):
    """The dataset whose queries form the stream, and which of them are scored ``(Q,) bool``.

    Nordland: every winter frame in order, near-blank ones not scored (as the SeqSLAM anchor)."""
    from runtime import open_dataset
    from runtime.datasets.aligned import load_aligned

    dataset = open_dataset(spec)
    if dataset.info.get("dataset") == "nordland":
        root = dataset.root
        full = load_aligned(root / "summer", root / "winter", name=dataset.name, frame_seconds=1.0)
        listed = root / "near_uniform.txt"
        blank = {line.strip() for line in listed.read_text().splitlines()} if listed.is_file() else set()
        scored = np.array([Path(name).name not in blank for name in full.q_images])
        return dataclasses.replace(full, info=dict(dataset.info)), scored
    return dataset, np.ones(dataset.num_queries, dtype=bool)


def query_descriptors(backend, dataset, cache: Path, batch_size: int, progress=None) -> np.ndarray:
    """The queries' descriptors ``(Q, D)``, cached in ``cache`` (keyed by model fingerprint and dataset)."""
    from runtime.map.build import extract_descriptors

    if cache.is_file():
        descriptors = np.load(cache)
        if descriptors.shape == (dataset.num_queries, backend.card.descriptor_dim):
            return descriptors
    descriptors = extract_descriptors(
        backend,
        lambda i: dataset.read_image("queries", i),
        dataset.num_queries,
        batch_size=batch_size,
        progress=progress,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, descriptors)
    return descriptors


def query_conditions(dataset) -> np.ndarray | None:
    """The queries' ``condition`` column ``(Q,)`` (e.g. the route split of ``python -m training.split --split
    all``, or the synthetic world's weather), or None when the dataset has none."""
    column = dataset.info.get("extra_columns", {}).get("queries", {}).get("condition")
    return None if column is None else np.asarray(column)


def sequence_recall(
    localizer,
    descriptors: np.ndarray,
    truth_utm: np.ndarray,
    scored: np.ndarray,
    radius_m: float,
    progress=None,
    conditions: np.ndarray | None = None,
) -> dict[str, Any]:
    """R@1 of ``localizer`` over the stream of ``descriptors (Q, D)`` and the time per frame of locate();
    with ``conditions (Q,)``, also R@1 of each condition's scored frames."""
    localizer.reset()
    best = np.empty((len(descriptors), 2))
    started = time.perf_counter()
    rows = (
        progress(range(len(descriptors)), desc="frames", unit="frame")
        if progress
        else range(len(descriptors))
    )
    for i in rows:
        loc = localizer.locate(descriptors[i], timestamp=float(i), index=i)
        best[i] = loc.matches[0].easting, loc.matches[0].northing
    seconds = time.perf_counter() - started
    right = np.linalg.norm(best - truth_utm, axis=1) <= radius_m
    row = {
        "R@1": float(right[scored].mean()),
        "scored": int(scored.sum()),
        "ms_per_frame": 1000 * seconds / len(descriptors),
    }
    if conditions is not None:
        row["by_condition"] = {
            str(c): float(right[scored & (conditions == c)].mean())
            for c in dict.fromkeys(conditions[scored].tolist())
        }
    return row


def every_nth_place(map_path: Path, step: int, out: Path) -> Path:
    """A copy of the map at ``map_path`` keeping every ``step``-th place (a robot ``step`` times slower than
    the mapping drive), written once into ``out`` with ``netvlad-map remove`` (which recalibrates it)."""
    import glob
    import shutil

    from runtime.map import read_map_meta, remove_from_map
    from runtime.map.places import Places

    places = Places.read_csv(map_path / "places.csv")
    keep = len(range(0, len(places), step))
    if out.is_dir() and read_map_meta(out)["count"] == keep:
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(map_path, out)
    drop = [glob.escape(image) for i, image in enumerate(places.images) if i % step]  # names, not patterns
    remove_from_map(out, images=drop)
    return out


ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "seqslam.py"


def seqslam_anchor(stream, config: SequenceBenchConfig, out: Path) -> dict[str, Any]:
    """SeqSLAM (the shared anchor, run as it is) on the same frames and speeds, told nothing about the speed
    (velocities 0.25-4 map places per frame), per sequence length; or why it was not run.

    Nordland runs as the anchor's own Nordland protocol; a dataset folder (database.csv and queries.csv,
    e.g. a held-out split written by ``python -m training.split``) through its generic mode at the images'
    own size, which searches 0.25-4 times the ratio of query to database spacing (1 for such a split)."""
    import subprocess
    import sys

    if not config.anchor:
        return {"skipped": "--no-anchor"}
    if not ANCHOR.is_file():
        return {"skipped": f"the SeqSLAM anchor is not at {ANCHOR}"}
    if config.query_repeat > 1:
        return {"skipped": "the anchor has no repeated frames (--query-repeat)"}
    result_file = out / f"seqslam-q{config.query_step}-m{config.map_step}.json"
    common = ["--ds", *map(str, config.frames), "--out", str(result_file)]
    if stream.info.get("dataset") == "nordland":
        args = [
            "--nordland", str(stream.root), "--skip", "synth", "--nordland-step", str(config.query_step),
            "--nordland-map-step", str(config.map_step), "--nordland-v", "0.25", "4.0",
        ]  # fmt: skip
    elif "folder" in stream.info and config.query_step == config.map_step == 1:
        h, w = stream.read_image("database", 0).shape[:2]
        size = f"{w - w % 8}x{h - h % 8}"  # the anchor's 8x8 patches
        args = ["--synth", str(stream.info["folder"]), "--skip", "nordland", "--synth-size", size,
                "--synth-vspan", "0.25", "4.0"]  # fmt: skip
    else:
        return {"skipped": "the anchor runs on Nordland, or on a dataset folder at every frame and place"}
    done = subprocess.run(
        [sys.executable, str(ANCHOR), *args, *common], capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        return {"skipped": f"the anchor failed: {done.stderr.strip().splitlines()[-1:]}"}
    found: dict[Any, float] = {}
    by_condition: dict[Any, dict[str, float]] = {}  # the anchor's per-condition R@1 (its generic mode)
    for row in json.loads(result_file.read_text())["results"]:  # the anchor's own result file
        key = row["ds"] if row.get("mode") == "causal" and "ds" in row else None
        if key is None and row["method"].startswith("single-frame raw pixels"):
            key = "raw pixels"
        if key is not None:
            found[key] = row["R@1"]
            if "by_group" in row:
                by_condition[key] = row["by_group"]
    return {"R@1": found, "by_condition": by_condition, "velocities": [0.25, 4.0], "file": str(result_file)}


def route_descriptors(places: int, dim: int, seed: int, width: int = 5) -> np.ndarray:
    """Seeded map descriptors along a route ``(places, dim)`` float32, L2-normalised: each place is the sum of
    ``width`` consecutive draws of white noise, so neighbours share appearance and places farther apart than
    ``width`` are unrelated, the same all along the route (a stationary route, whatever its length)."""
    rng = np.random.default_rng(seed)
    out = np.empty((places, dim), dtype=np.float32)
    carry = rng.standard_normal((width - 1, dim)).astype(np.float32)
    for start in range(0, places, 4096):  # in blocks: bounded temporary memory
        raw = np.concatenate(
            [carry, rng.standard_normal((min(4096, places - start), dim)).astype(np.float32)]
        )
        window = np.cumsum(raw, axis=0)  # (width - 1 + B, dim)
        block = window[width - 1 :] - np.concatenate([np.zeros((1, dim), np.float32), window[:-width]])
        out[start : start + len(block)] = block  # (B, dim): sums of `width` consecutive draws
        carry = raw[-(width - 1) :]
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def matcher_cost(sizes, dim: int, frames: int, temporal_config, seed: int = 0) -> list[dict[str, Any]]:
    """Per map size: the sequence matcher's update time per frame (p50, p99) and the flat search's; for a
    map small enough to be held whole (SequenceMatcher.DENSE_PLACES) also the update that gathers the
    descriptors around its candidates instead (``gathered_ms_p50``), measured side by side."""
    from runtime.map.index import build_index, search
    from runtime.map.sequence import SequenceMatcher

    class GatheringMatcher(SequenceMatcher):
        DENSE_PLACES = 0  # never the whole map: the descriptors around the candidates only

    rows = []
    for size in sizes:
        places = route_descriptors(size, dim, seed)
        index, _ = build_index(places, "flat")
        rng = np.random.default_rng(seed + 1)
        path = (np.arange(frames) * 1.0 + size // 3).astype(np.int64) % size
        queries = places[path] + 1.2 / np.sqrt(dim) * rng.standard_normal((frames, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        whole = size <= SequenceMatcher.DENSE_PLACES and size * dim <= SequenceMatcher.DENSE_VALUES
        kinds = [SequenceMatcher] + [GatheringMatcher] * whole
        matchers = [kind(lambda ids, p=places: p[ids], size, temporal_config) for kind in kinds]
        update_ms: list[list[float]] = [[] for _ in matchers]
        search_ms, right = [], 0
        for t, q in enumerate(queries):
            t0 = time.perf_counter()
            _, ids = search(index, q[None], temporal_config.candidates)
            search_ms.append(1000 * (time.perf_counter() - t0))
            for m, matcher in enumerate(matchers):  # alternating: the same load for both
                t1 = time.perf_counter()
                ranked = matcher.update(q, ids[0])
                update_ms[m].append(1000 * (time.perf_counter() - t1))
                if m == 0:
                    best = ranked.ids[0] if ranked.locked else ids[0][0]  # as the Localizer answers
                    right += abs(int(best) - int(path[t])) <= 1
        row = {
            "places": size,
            "dim": dim,
            "update_ms_p50": float(np.percentile(update_ms[0], 50)),
            "update_ms_p99": float(np.percentile(update_ms[0], 99)),
            "flat_search_ms_p50": float(np.percentile(search_ms, 50)),
            "flat_search_ms_p99": float(np.percentile(search_ms, 99)),
            "R@1": right / frames,
            "whole_map": len(matchers) > 1,
        }
        if len(matchers) > 1:
            row["gathered_ms_p50"] = float(np.percentile(update_ms[1], 50))
        rows.append(row)
        log.info("cost at %d places: update p50 %.2f ms", size, row["update_ms_p50"])
        del index, places
    return rows


def condition_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: R@1 per query condition of every run and of the anchor (none without conditions)."""
    runs = {n: r["by_condition"] for n, r in result["runs"].items() if "by_condition" in r}
    if not runs:
        return []
    names = list(next(iter(runs.values())))
    anchor = result.get("seqslam", {}).get("by_condition", {})
    rows = [
        *runs.items(),
        *((f"SeqSLAM {k}" + (" frames" if k != "raw pixels" else ""), v) for k, v in anchor.items()),
    ]
    return [
        "",
        "R@1 per query condition (the dataset's `condition` column):",
        "",
        "| run | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {n} | " + " | ".join(f"{r.get(c, float('nan')):.4f}" for c in names) + " |" for n, r in rows),
    ]


def run_sequence_bench(
    model: str | Path,
    map_path: str | Path,
    dataset: str,
    out: str | Path,
    config: SequenceBenchConfig | None = None,
    progress=None,
) -> dict[str, Any]:
    """Measure, write ``sequence.json`` and ``sequence.md`` into ``out``, and return the result."""
    from runtime import Localizer, LocalizerConfig, TemporalConfig, open_backend, open_map

    config = config or SequenceBenchConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stream, scored = sequence_stream(dataset)
    result: dict[str, Any] = {"dataset": stream.name, "queries": stream.num_queries, "runs": {}}
    with open_backend(model, "onnxruntime-cpu", threads=config.threads) as backend:
        place_map = open_map(map_path, backend.card, model_name=str(model))
        if len(place_map) != stream.num_db:
            raise ConfigError(
                f"map '{map_path}' has {len(place_map)} places but dataset '{dataset}' has {stream.num_db} "
                "database images; build the map from this dataset's database"
            )
        cache = out / f"queries-{backend.card.weights_fingerprint}-{stream.name}.npy"
        descriptors = query_descriptors(backend, stream, cache, config.batch_size, progress)
        # the robot's speed, which the matcher is not told: every N-th frame, every N-th place, repeats
        frame_rows = np.repeat(np.arange(0, stream.num_queries, config.query_step), config.query_repeat)
        descriptors, truth, scored = descriptors[frame_rows], stream.q_utm[frame_rows], scored[frame_rows]
        conditions = query_conditions(stream)
        conditions = None if conditions is None else conditions[frame_rows]
        if config.map_step > 1:
            sub_map = every_nth_place(Path(map_path), config.map_step, out / f"map-every-{config.map_step}")
            place_map = open_map(sub_map, backend.card, model_name=str(model))
        result.update(
            query_step=config.query_step,
            map_step=config.map_step,
            query_repeat=config.query_repeat,
            places_per_frame=config.places_per_frame,
            frames_in_stream=len(frame_rows),
        )
        runs = [("single frame, map's mean (--no-adapt)", None, False), ("single frame", None, True)] + [
            (f"sequence {f} frames", TemporalConfig(frames=f, reverse=config.reverse), True)
            for f in config.frames
        ]
        for name, temporal, adapt in runs:
            localizer = Localizer(backend, place_map, LocalizerConfig(temporal=temporal, adapt=adapt))
            row = sequence_recall(
                localizer, descriptors, truth, scored, config.radius_m, progress, conditions
            )
            result["runs"][name] = row
            log.info("%s: R@1 %.4f (%.2f ms per frame)", name, row["R@1"], row["ms_per_frame"])
    result["seqslam"] = seqslam_anchor(stream, config, out)
    result["cost"] = matcher_cost(
        config.cost_sizes, config.cost_dim, config.cost_frames, TemporalConfig(reverse=config.reverse)
    )
    result["config"] = dataclasses.asdict(config)
    anchor = result.get("seqslam", {})
    anchor_rows = [f"| SeqSLAM {ds} frames, speed unknown (0.25-4), raw pixels | {r:.4f} | |"
                   for ds, r in anchor.get("R@1", {}).items() if ds != "raw pixels"]  # fmt: skip
    lines = [
        f"# Sequence matching on {stream.name} ({int(scored.sum())} scored frames of {len(frame_rows)}: every "
        f"{config.query_step}. query frame x{config.query_repeat}, every {config.map_step}. map place; "
        f"{config.places_per_frame:.3g} places per frame, not told to the matcher)",
        "",
        "| run | R@1 | ms per frame (search + sequence) |",
        "|---|---|---|",
        *(f"| {n} | {r['R@1']:.4f} | {r['ms_per_frame']:.2f} |" for n, r in result["runs"].items()),
        *anchor_rows,
        *([f"\nSeqSLAM anchor: {anchor['skipped']}"] if "skipped" in anchor else []),
        "",
        f"Cost per frame, {config.cost_dim}-D seeded route maps, TemporalConfig() defaults:",
        "",
        "| places | sequence update p50 / p99 (ms) | gathering around candidates p50 (ms) | flat search p50 (ms) "
        "| R@1 |",
        "|---|---|---|---|---|",
        *(
            f"| {c['places']:,} | {c['update_ms_p50']:.2f} / {c['update_ms_p99']:.2f} | "
            f"{c.get('gathered_ms_p50', float('nan')):.2f} | {c['flat_search_ms_p50']:.2f} | {c['R@1']:.3f} |"
            for c in result["cost"]
        ),
        "",
        f"Load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) after the cost runs. A map "
        "held whole (SequenceMatcher.DENSE_PLACES, DENSE_VALUES) costs one matrix-vector product per frame; "
        "the gathering column is the same matcher reading only the places around its candidates.",
    ]
    lines += condition_table(result)
    files = {"json": out / "sequence.json", "markdown": out / "sequence.md"}
    atomic_write_text(files["json"], json.dumps(result, indent=2) + "\n")
    atomic_write_text(files["markdown"], "\n".join(lines) + "\n")
    result["files"] = {k: str(v) for k, v in files.items()}
    return result
