import numpy as np
import pytest

from runtime.evaluation.recall import rank_database, recall_at_n


def test_rank_database_is_exact_and_breaks_ties_by_index():
    db = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    ranked = rank_database(db, q, k=3)
    assert ranked.tolist() == [[0, 2, 3], [1, 3, 0]]
    assert rank_database(db, q, k=10).shape == (2, 4)


def test_recall_at_n_counts_first_hit():
    ranked = np.array([[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 0, 1]])
    positives = [np.array([1]), np.array([0, 3]), np.array([1])]
    assert recall_at_n(ranked, positives, ns=(1, 2, 4)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        4: 1.0,
    }


def test_recall_refuses_queries_without_positives_and_bad_shapes():
    with pytest.raises(ValueError, match="1 queries have no positive"):
        recall_at_n(np.zeros((2, 3), dtype=int), [np.array([0]), np.array([], dtype=int)])
    with pytest.raises(ValueError, match="same dimension"):
        rank_database(np.zeros((3, 4)), np.zeros((2, 5)), 1)


def test_recall_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    q = db[:50] + 0.8 * rng.normal(size=(50, 16)).astype(np.float32)
    ranked = rank_database(db, q, k=20)
    positives = [np.array([i]) for i in range(50)]
    r = recall_at_n(ranked, positives)
    full = np.argsort(-(q @ db.T), axis=1)
    expected = [np.mean([i in full[i, :n] for i in range(50)]) for n in (1, 5, 10, 20)]
    assert [r[n] for n in (1, 5, 10, 20)] == pytest.approx(expected)
    assert 0.2 < r[1] < r[20] <= 1.0
