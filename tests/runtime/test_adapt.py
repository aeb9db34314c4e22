"""Query-domain adaptation (runtime.localize.adapt): a stream centred on its own running mean, against the map's."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ConfigError
from runtime.localize.adapt import PRIOR_VIEWS, QueryCentre
from runtime.map.index import faiss_module
from runtime.map.whitening import MapProjection


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_the_centre_starts_at_the_map_mean_and_follows_the_stream():
    map_mean = np.zeros(4, np.float32)
    centre = QueryCentre(map_mean)
    first = np.array([1.0, 0, 0, 0], np.float32)
    # the map's mean counts as PRIOR_VIEWS views: the first frame moves the centre by 1 / (PRIOR_VIEWS + 1)
    np.testing.assert_allclose(centre.update(first, first), first / (PRIOR_VIEWS + 1), atol=1e-7)
    rng = np.random.default_rng(0)
    offset = np.array([0, 2.0, 0, 0], np.float32)
    for _ in range(1000):
        x = offset + rng.normal(0, 0.1, 4).astype(np.float32)
        c = centre.update(x, _unit(x - offset))
    assert centre.views == 1001
    np.testing.assert_allclose(c, offset, atol=0.05)  # the stream's own mean
    centre.reset()
    assert centre.views == 0
    np.testing.assert_allclose(centre.update(first, first), first / (PRIOR_VIEWS + 1), atol=1e-7)


def test_a_frame_that_did_not_move_leaves_the_centre_alone():
    """A robot standing still: its frames must not pull the centre onto the current view."""
    centre = QueryCentre(np.zeros(3, np.float32), still_similarity=0.99)
    view = np.array([0.0, 1.0, 0.0], np.float32)
    c1 = centre.update(view, view)
    for _ in range(500):
        c = centre.update(view, _unit(view + np.array([0.01, 0, 0], np.float32)))
    assert centre.views == 1
    np.testing.assert_array_equal(c, c1)
    moved = np.array([1.0, 0.0, 0.0], np.float32)
    assert not np.array_equal(centre.update(moved, moved), c1) and centre.views == 2


def test_bad_rates_are_refused():
    with pytest.raises(ConfigError, match=r"0 < rate <= 1 and prior_views >= 0, got 0.0, 20"):
        QueryCentre(np.zeros(3), rate=0.0)


def test_adaptation_recovers_a_domain_shift():
    """Seeded: 300 places; the map sees each with one domain's offset (summer), the queries with another,
    larger one (winter) and noise. Centring the queries on the map's mean leaves the winter offset in every
    query; centring them on their own running mean removes it."""
    rng = np.random.default_rng(7)
    n, d = 300, 64
    places = rng.standard_normal((n, d)).astype(np.float32)
    summer, winter = 1.5 * rng.standard_normal(d), 4.0 * rng.standard_normal(d)
    map_descriptors = _unit(places + summer)
    queries = _unit(places + winter + 0.8 * rng.standard_normal((n, d)))
    projection = MapProjection.centring(map_descriptors, "0123456789abcdef")
    index = faiss_module().IndexFlatIP(d)
    index.add(projection.apply(map_descriptors))
    truth = np.arange(n)

    def recall(prepared: np.ndarray) -> float:
        return float(np.mean(index.search(prepared, 1)[1][:, 0] == truth))

    uncentred = faiss_module().IndexFlatIP(d)
    uncentred.add(map_descriptors)
    stream = QueryCentre(projection.mean)
    adapted = np.stack(
        [projection.apply(q[None], stream.update(q, projection.apply(q[None])[0]))[0] for q in queries]
    )  # (n, d)
    assert float(np.mean(uncentred.search(queries, 1)[1][:, 0] == truth)) == pytest.approx(64 / 300)
    assert recall(projection.apply(queries)) == pytest.approx(53 / 300)  # the map's mean: worse
    assert recall(adapted) == pytest.approx(285 / 300)  # the stream's own mean
