"""The unknown-place verdict and the confidence (runtime.map.calibrate) on seeded worlds with unmapped places.

Each world is localised through the real pipeline (ONNX Runtime, FAISS, Localizer) and scored from its
JSONL (runtime.evaluation.runs): correct frames flagged unknown, unmapped-place frames flagged, AUC-PR.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from runtime import Localizer
from runtime.evaluation.runs import recall_from_jsonl
from runtime.map import MapConfig, build_map, read_map_meta
from runtime.map.calibrate import Verdict, calibrate, evidence, sequence_evidence
from runtime.map.sequence import SequenceMatch, SequenceMatcher, TemporalConfig
from runtime.sources import ImageFolderSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world


def _score(model, map_dir, dataset, out, temporal: bool = False) -> dict:
    """Localise the dataset's queries and unmapped places frame by frame (``temporal``: each split one
    sequence); recall and trust from the JSONL."""
    files, by_split = [], {}
    with Localizer.open(model, map_dir) as localizer:
        for split in ("queries", "unmapped"):
            with ImageFolderSource(dataset.root / split) as source:
                records = [loc.to_record() for loc in localizer.run(source, temporal=temporal)]
            path = out / f"{map_dir.name}.{split}.{int(temporal)}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
            files.append(path)
            by_split[split] = records
    return {**recall_from_jsonl(files, dataset, ns=(1,)), "records": by_split}


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


# -- the verdict with sequence matching on -------------------------------------------------------------------
def test_sequence_verdict_keeps_correct_frames_and_flags_unmapped_places(model, tmp_path):
    """An ambiguous route (each query blends in an unrelated scene): per frame the verdict flags many correct
    answers; judged on the sequence's best line, calibrated on the map's own stretches, it keeps them and
    still flags the unmapped places (each split is one sequence; its first 19 frames are judged per frame)."""
    dataset = make_stand_in_world(
        tmp_path / "data", places=150, spacing_m=10.0, seed=5, size=(48, 64), noise=30, distract=0.6,
        unmapped=60,
    )  # fmt: skip
    map_dir = build_map(model, dataset, tmp_path / "map", MapConfig(faiss_threads=1))
    sequence = read_map_meta(map_dir)["calibration"]["sequence"]
    assert sequence["source"] == "map" and sequence["stretches"] == 64 and sequence["impostors"] == 64 * 11
    assert sequence["temporal"] == dataclasses.asdict(TemporalConfig())
    per_frame = _score(model, map_dir, dataset, tmp_path)
    sequenced = _score(model, map_dir, dataset, tmp_path, temporal=True)
    late = {  # frames with a full window, judged on the sequence
        split: np.array([r["unknown"] for r in records[TemporalConfig().frames - 1 :]])
        for split, records in sequenced["records"].items()
    }
    # measured (queries centred on their running mean): per frame R@1 0.89, 37 % of correct answers flagged,
    # 73 % of unmapped places, AUC-PR 0.88; with sequences R@1 0.993 (the frame's own answer until the
    # sequence locks), AUC-PR 0.985, and once the window is
    # full (from the 20th frame of each split) 0 of 131 correct answers flagged and 33 of 41 unmapped frames
    # (80 %); over all frames (the first 19 of each split judged per frame) 7 % and 80 %
    assert per_frame["recall"][1] == pytest.approx(0.89, abs=0.02)
    assert per_frame["trust"]["correct_flagged_unknown_rate"] >= 0.3
    assert sequenced["recall"][1] >= 0.99 and sequenced["trust"]["auc_pr"] >= 0.98
    assert late["queries"].mean() <= 0.02 and late["unmapped"].mean() >= 0.78
    assert sequenced["trust"]["correct_flagged_unknown_rate"] <= 0.1
    assert sequenced["trust"]["unmapped_flagged_unknown_rate"] >= 0.78


def _route(places: int, dim: int, seed: int) -> np.ndarray:
    """Descriptors along a route: neighbours share appearance (a 5-place moving sum), L2-normalised."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((places + 4, dim))
    x = raw[:-4] + raw[1:-3] + raw[2:-2] + raw[3:-1] + raw[4:]  # (places, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noisy(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x + noise * rng.standard_normal(x.shape) / np.sqrt(x.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def test_sequence_verdict_on_a_seeded_route_then_an_unmapped_street():
    """Matcher and verdict alone, on seeded descriptors: a 400-place map (10 m apart), calibrated as map
    building does, and one sequence of 300 noisy frames along it followed by 120 of a street it never visits."""
    x = _route(400, 64, seed=0)
    utm = np.stack([np.arange(400) * 10.0, np.zeros(400)], axis=1)
    calibration = calibrate(x, utm, 25.0, 90.0, samples=400)
    sequence = calibration["sequence"]
    assert sequence["stretches"] == 64 and sequence["impostors"] == 64 * 11
    assert sequence["unknown_threshold"] == pytest.approx(11.09, abs=0.01)  # measured (elsewhere: 30 m)
    verdict, config = Verdict(calibration), TemporalConfig()
    frames = np.concatenate([_noisy(x[50:350], 3.0, seed=1), _noisy(_route(120, 64, seed=9), 3.0, seed=2)])
    matcher = SequenceMatcher(lambda ids: x[ids], len(x), config, place_spacing_m=10.0)
    single_right, frame_flags, seq_right, seq_flags = [], [], [], []
    for i, frame in enumerate(frames):
        sims = x @ frame  # (400,)
        top = np.argsort(-sims, kind="stable")[:32]
        ranked = matcher.update(frame, top)
        judged = verdict.judge_sequence(ranked, config, utm)
        assert (judged is None) == (i < config.frames - 1)  # per frame until the window is full
        frame_flags.append(verdict.judge(sims[top], top, utm)[2])
        single_right.append(i < 300 and abs(top[0] - (50 + i)) <= 2)
        seq_right.append(i < 300 and abs(ranked.ids[0] - (50 + i)) <= 2)
        seq_flags.append(judged[2] if judged else None)
    single_right, seq_right, frame_flags = np.array(single_right), np.array(seq_right), np.array(frame_flags)
    full = np.arange(len(frames)) >= config.frames - 1
    seq_flags = np.array([bool(f) for f in seq_flags])
    street = np.arange(len(frames)) >= 300
    # measured: single-frame R@1 0.49, the per-frame verdict flags 94 % of its correct answers (98 % of the
    # street); sequence R@1 1.0 once the window is full, 1 % of its correct answers flagged, 88 % of the street
    assert single_right[:300].mean() == pytest.approx(0.49, abs=0.02)
    assert frame_flags[single_right].mean() >= 0.9
    assert seq_right[full & ~street].all()
    assert seq_flags[full & seq_right].mean() <= 0.03
    assert seq_flags[street].mean() >= 0.85


def test_sequence_evidence_and_fallbacks(caplog):
    """The evidence is the gap between the best line and the best valid line elsewhere; the verdict stays per
    frame, saying why once, on a map without sequence calibration or under another TemporalConfig."""
    utm = np.stack([np.arange(60) * 10.0, np.zeros(60)], axis=1)
    match = SequenceMatch(
        ids=np.array([20, 21, 19, 40, 3, 50]),
        scores=np.array([-30.0, -28.0, -27.0, -19.0, -12.0, np.inf]),
        speeds=np.ones(6),
        similarities=np.zeros(6, np.float32),
        frames=20,
    )
    assert sequence_evidence(match, utm, 25.0) == pytest.approx(11.0)  # -19 (place 40) - (-30)
    near_only = dataclasses.replace(match, scores=np.array([-30.0, -28.0, -27.0, np.inf, np.inf, np.inf]))
    assert sequence_evidence(near_only, utm, 25.0) == 0.0  # no valid line elsewhere: no evidence
    frame = {**_FRAME, "impostor_quantiles": np.linspace(0.0, 2.0, 101).tolist()}
    sequence = {**frame, "impostor_quantiles": np.linspace(0.0, 10.0, 101).tolist(), "tail_scale": 2.0}
    config = TemporalConfig()
    verdict = Verdict({**frame, "sequence": {**sequence, "temporal": dataclasses.asdict(config)}})
    value, confidence, unknown = verdict.judge_sequence(match, config, utm)
    assert value == pytest.approx(11.0) and confidence == pytest.approx(1 - 0.1 * np.exp(-1)) and not unknown
    assert (
        verdict.judge_sequence(dataclasses.replace(match, frames=19), config, utm) is None
    )  # window not full
    with caplog.at_level("WARNING", logger="runtime.map.calibrate"):
        assert verdict.judge_sequence(match, TemporalConfig(frames=10), utm) is None
        assert verdict.judge_sequence(match, TemporalConfig(frames=10), utm) is None
        old = Verdict(frame)  # a map built before the sequence calibration
        assert (
            old.judge_sequence(match, config, utm) is None and old.judge_sequence(match, config, utm) is None
        )
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "calibrated for TemporalConfig" in messages[0] and "no sequence calibration" in messages[1]
    assert all("the verdict stays per frame" in m for m in messages)


_FRAME = {"impostor_quantiles": [], "tail_scale": 0.5, "radius_m": 25.0, "unknown_below_confidence": 0.9}


def _calibration_before_one_pass(queries, query_utm, descriptors, utm, radius_m, candidates, kind):
    """The sweep calibration used before the one-pass change (a copy, as the reference): blocks of queries,
    each against the whole map read a chunk at a time; ``(impostor (M,), genuine (M,), correct (M,))``."""
    from runtime.map.calibrate import _top_candidates

    def blocks(batch):  # (start, sims (B, N))
        for start in range(0, len(queries), batch):
            q = np.asarray(queries[start : start + batch], dtype=np.float32)
            sims = np.empty((len(q), len(descriptors)), np.float32)
            for row in range(0, len(descriptors), 32_768):
                sims[:, row : row + 32_768] = q @ np.asarray(descriptors[row : row + 32_768], np.float32).T
            yield start, sims

    batch = int(np.clip(2**26 // len(descriptors), 8, 256))
    impostor = np.full(len(queries), np.nan)
    for start, sims in blocks(batch):
        stop = start + len(sims)
        sims[np.linalg.norm(query_utm[start:stop, None, :] - utm[None, :, :], axis=2) <= radius_m] = -np.inf
        values, ids = _top_candidates(sims, candidates + 1)
        for b in range(len(sims)):
            ok = np.isfinite(values[b])
            if ok.sum() >= 2:
                impostor[start + b] = evidence(values[b][ok], ids[b][ok], utm, radius_m, kind)
    genuine, correct = np.zeros(len(queries)), np.zeros(len(queries), bool)
    for start, sims in blocks(batch):
        values, ids = _top_candidates(sims, candidates)
        for b in range(len(sims)):
            genuine[start + b] = evidence(values[b], ids[b], utm, radius_m, kind)
            correct[start + b] = np.linalg.norm(utm[ids[b, 0]] - query_utm[start + b]) <= radius_m
    return impostor, genuine, correct


class _RowsRead:
    """A map's descriptors that count the rows read from them (a memory map's reads from disk)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.rows_read = array, array.shape, 0

    def __getitem__(self, rows):
        out = self.array[rows]
        self.rows_read += len(out)
        return out


@pytest.mark.parametrize("kind", ["gap", "distance"])
def test_one_pass_calibration_sweep_equals_the_per_block_sweep(kind, tmp_path):
    from runtime.map.calibrate import genuine_evidence, impostor_evidence

    # a seeded route of 70,000 float16 places (memory-mapped, as a large map's descriptors.f16.npy) at 2 m
    # spacing, read in 3 chunks (the last one partial), and 700 queries near random places: the old sweep
    # took them in 3 blocks of up to 256 and read the whole map once per block
    rng = np.random.default_rng(3)
    n, dim, m = 70_000, 32, 700
    stored = np.lib.format.open_memmap(tmp_path / "d.f16.npy", "w+", np.float16, (n, dim))
    stored[:] = rng.standard_normal((n, dim)).astype(np.float16)
    utm = np.stack([np.arange(n) * 2.0, np.zeros(n)], axis=1)  # (N, 2)
    truth = rng.integers(0, n, m)
    queries = stored[truth].astype(np.float32) + 0.3 * rng.standard_normal((m, dim), dtype=np.float32)
    query_utm = utm[truth] + rng.uniform(-5, 5, (m, 2))
    queries[:5], query_utm[:5] = queries[5], query_utm[5]  # repeated queries: equal rows, equal answers

    descriptors = _RowsRead(stored)
    impostor = impostor_evidence(queries, query_utm, descriptors, utm, 25.0, kind=kind)
    assert descriptors.rows_read == n  # one sweep over the map for all 700 queries
    genuine, correct = genuine_evidence(queries, query_utm, descriptors, utm, 25.0, kind=kind)
    old_impostor, old_genuine, old_correct = _calibration_before_one_pass(
        queries, query_utm, stored, utm, 25.0, 32, kind
    )
    np.testing.assert_array_equal(impostor, old_impostor)  # bit for bit
    np.testing.assert_array_equal(genuine, old_genuine)
    np.testing.assert_array_equal(correct, old_correct)
    assert np.isfinite(impostor).all() and correct.mean() > 0.9  # a real comparison, not two empty ones
    assert len(np.unique(impostor[:6])) == 1 and len(np.unique(impostor)) > 600
