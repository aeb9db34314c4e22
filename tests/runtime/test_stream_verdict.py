"""The per-frame verdict calibrated on the stream's own impostors (runtime.localize.stream_verdict)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime import Localizer, LocalizerConfig
from runtime.localize.stream_verdict import StreamVerdict, impostor_sample
from runtime.map import MapConfig, build_map
from runtime.map.calibrate import SEARCH_CANDIDATES, Verdict, calibrate, evidence, search_candidates
from runtime.sources import ImageFolderSource
from tests.runtime.helpers import make_onnx_model, make_stand_in_world
from tests.runtime.test_verdict import _noisy, _route


def test_confidence_mixes_the_maps_calibration_with_the_streams_samples():
    stream = StreamVerdict(lambda value: min(1.0, value / 10.0), prior_weight=10.0, memory=4)
    assert stream.confidence(5.0) == pytest.approx(0.5)  # the map's alone before any sample
    for sample in (1.0, 2.0, float("nan"), 3.0, 9.0):  # NaN (no candidates left): not a sample
        stream.add(sample)
    assert stream.samples == 4
    # 10 prior samples at F = 0.5 and 3 of the 4 stream samples below 5: (5 + 3) / 14
    assert stream.confidence(5.0) == pytest.approx(8 / 14)
    stream.add(8.0)  # the memory keeps the last 4: 2, 3, 9, 8
    assert stream.confidence(5.0) == pytest.approx((5 + 2) / 14)
    stream.reset()
    assert stream.samples == 0 and stream.confidence(5.0) == pytest.approx(0.5)


def test_impostor_sample_takes_the_answers_neighbourhood_out():
    utm = np.stack([np.arange(100) * 10.0, np.zeros(100)], axis=1)
    ids = np.array([50, 51, 49, 52, 80, 10, 30, 70, 90, 5, 15, 25, 35, 45, 60, 65])
    sims = np.linspace(0.9, 0.1, ids.size)
    far = np.abs(ids - 50) > 2  # beyond 25 m of place 50: 80, 10, 30, ...
    assert impostor_sample(50, sims, ids, utm, 25.0) == pytest.approx(
        evidence(sims[far], ids[far], utm, 25.0)
    )
    assert np.isnan(impostor_sample(50, sims[:8], ids[:8], utm, 25.0))  # 4 left: fewer than SPREAD_RANK + 1


def test_only_corroborated_known_answers_give_samples():
    """A sample needs the answer judged known and corroborated: by the sequence, or by the previous frame's
    answer within 4 radii (wrong answers scatter over the map)."""
    utm = np.stack([np.arange(100) * 10.0, np.zeros(100)], axis=1)
    ids = np.array([50, 51, 49, 52, 80, 10, 30, 70, 90, 5, 15, 25, 35, 45, 60, 65])
    sims = np.linspace(0.9, 0.1, ids.size)
    stream = StreamVerdict(lambda value: 0.5)

    def observe(place: int, unknown: bool = False, by_sequence: bool = False) -> bool:
        order = np.r_[place, ids[ids != place]][: ids.size]  # the reported place first
        return stream.observe(place, sims, order, utm, 25.0, "gap", unknown, by_sequence)

    assert not observe(50)  # the first answer: nothing to corroborate it
    assert observe(52)  # 20 m from the last: a sample
    assert not observe(90)  # 380 m away: a jump, not corroborated
    assert not observe(91, unknown=True)  # judged unknown: never
    assert observe(10, by_sequence=True)  # a locked line's known answer needs no corroboration
    assert stream.samples == 2


def test_search_candidates_leave_places_elsewhere_on_a_dense_map():
    line = lambda spacing: np.stack([np.arange(500) * spacing, np.zeros(500)], axis=1)  # noqa: E731
    assert search_candidates(line(20.0), 25.0) == SEARCH_CANDIDATES + 3  # Nordland: +-1 place
    assert search_candidates(line(5.0), 25.0) == SEARCH_CANDIDATES + 11
    assert search_candidates(line(1.0), 25.0) == SEARCH_CANDIDATES + 51  # a corridor mapped every metre


def test_the_stream_calibration_stops_flagging_a_noisier_domains_correct_frames():
    """A map calibrated on itself, queried by a noisier domain (another camera, season): the map's impostors
    (its own images, their neighbourhood removed) stand out more than the queries' correct answers do, so
    the map's calibration flags most correct frames. The stream's own impostors bring the threshold to the
    query domain: a drive along the route, an unmapped street, the route again."""
    x = _route(400, 64, seed=0)
    utm = np.stack([np.arange(400) * 10.0, np.zeros(400)], axis=1)
    verdict = Verdict(calibrate(x, utm, 25.0, 90.0, samples=400))
    along, street, again = (
        _noisy(x[50:350], 1.5, seed=1), _noisy(_route(120, 64, seed=9), 1.5, seed=2), _noisy(x[50:350], 1.5, seed=3)
    )  # fmt: skip
    frames = np.concatenate([along, street, again])
    truth = np.r_[50 + np.arange(300), -np.ones(120, int), 50 + np.arange(300)]
    stream = StreamVerdict(verdict.confidence)
    right, by_map, by_stream = [], [], []
    for i, frame in enumerate(frames):
        sims = x @ frame  # (400,)
        top = np.argsort(-sims, kind="stable")[:64]
        by_map.append(verdict.judge(sims[top], top, utm)[2])
        unknown = verdict.judge(sims[top], top, utm, stream)[2]
        by_stream.append(unknown)
        stream.observe(
            int(top[0]), sims[top], top, utm, 25.0, "gap", unknown, by_sequence=False
        )  # as the Localizer
        right.append(truth[i] >= 0 and abs(top[0] - truth[i]) <= 2)
    right, by_map, by_stream = np.array(right), np.array(by_map), np.array(by_stream)
    first, unmapped, second = slice(0, 300), slice(300, 420), slice(420, 720)
    # measured: R@1 0.98; the map's calibration flags 68 % of correct frames on both passes and 97 % of the
    # street; the stream's 50 % on the first pass, 29 % on the second, 93 % of the street
    assert right[first].mean() >= 0.95 and right[second].mean() >= 0.95
    assert by_map[first][right[first]].mean() >= 0.6 and by_map[second][right[second]].mean() >= 0.6
    assert by_stream[second][right[second]].mean() <= 0.35
    assert by_stream[first][right[first]].mean() < by_map[first][right[first]].mean()
    assert by_stream[unmapped].mean() >= 0.85


def test_localizer_records_say_how_many_stream_samples_the_confidence_used(tmp_path):
    """Through the real pipeline (ONNX Runtime, FAISS, Localizer): a drive along the route gathers the
    stream's impostors frame after frame (each record says how many); without adaptation there are none."""
    model, _ = make_onnx_model(tmp_path / "model.onnx", dim=128)
    dataset = make_stand_in_world(
        tmp_path / "data", places=120, spacing_m=5.0, seed=1, size=(48, 64), noise=40, contrast=0.4
    )
    map_dir = build_map(model, dataset, tmp_path / "map", MapConfig(faiss_threads=1))
    runs = {}
    for adapt in (True, False):
        config = LocalizerConfig(adapt=adapt)
        with (
            Localizer.open(model, map_dir, config=config) as localizer,
            ImageFolderSource(dataset.root / "queries") as source,
        ):
            runs[adapt] = [loc.to_record() for loc in localizer.run(source)]
    samples = [r["stream_samples"] for r in runs[True]]
    assert samples[0] == 0 and all(b >= a for a, b in itertools.pairwise(samples))
    assert samples[-1] >= 60  # most frames of a correct drive give one (measured: 119 of 120)
    assert all(r["stream_samples"] is None for r in runs[False])
