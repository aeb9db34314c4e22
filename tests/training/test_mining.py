"""Mining, loss and k-means initialisation on hand-made data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import requires_torch

pytestmark = requires_torch
torch = pytest.importorskip("torch")

from runtime import PlaceDataset  # noqa: E402
from runtime.errors import ConfigError  # noqa: E402
from training.loss import triplet_ranking_loss  # noqa: E402
from training.mining import TripletMiner  # noqa: E402
from training.model import fit_clusters  # noqa: E402


def _line_dataset() -> PlaceDataset:
    db = np.stack([np.arange(40) * 5.0, np.zeros(40)], axis=1)  # every 5 m along a street
    q = np.array([[2.0, 0.0], [102.0, 0.0], [1000.0, 0.0]])  # the last one has no positive
    return PlaceDataset(
        name="line", root="/nonexistent", db_images=tuple(f"d{i}.png" for i in range(40)), db_utm=db,
        q_images=("q0.png", "q1.png", "q2.png"), q_utm=q,
    )  # fmt: skip


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _miner(**kw) -> tuple[TripletMiner, torch.Tensor, torch.Tensor]:
    miner = TripletMiner(_line_dataset(), **kw)
    g = torch.Generator().manual_seed(0)
    db = _unit(torch.randn(40, 16, generator=g))
    q = _unit(torch.randn(3, 16, generator=g))
    db[1] = _unit(q[0] + 0.05 * db[1])  # the best potential positive of query 0 (3 m away; 0 and 2 are too)
    db[30] = _unit(q[0] + 0.10 * db[30])  # a hard negative, 148 m away
    miner.refresh(db, q)
    return miner, db, q


def test_best_positive_and_hardest_definite_negatives():
    miner, db, q = _miner(num_neg_samples=1000, num_neg_keep=10, margin=0.1)
    assert miner.trainable_queries.tolist() == [0, 1]  # query 2 has no database image within 10 m
    t = miner.mine(0, np.random.default_rng(0))
    assert t is not None and t.query == 0 and t.positive == 1
    assert t.negatives[0] == 30 and len(t.negatives) == 10
    dist_m = np.abs(_line_dataset().db_utm[t.negatives, 0] - 2.0)
    assert np.all(dist_m > 25.0)  # definite negatives only
    d2 = ((db[t.negatives].float() - q[0]) ** 2).sum(1)
    assert torch.all(d2[1:] >= d2[:-1] - 1e-3)  # hardest first (float16 cache)
    assert miner.memory[0].tolist() == t.negatives.tolist()
    assert miner.queries_since_refresh == 1


def test_remembered_negatives_join_the_sample():
    miner, _, _ = _miner(num_neg_samples=2, num_neg_keep=2)
    miner.memory[0] = [30, -1]
    for seed in range(5):  # whatever two negatives are sampled, the remembered hard one wins
        t = miner.mine(0, np.random.default_rng(seed))
        assert t is not None and t.negatives[0] == 30


def test_query_without_violating_negative_is_skipped():
    miner, db, q = _miner(num_neg_samples=1000, num_neg_keep=3, margin=0.1)
    far = db.clone()
    far[30] = -q[1]
    miner.refresh(far, q)
    q_easy = q.clone()
    q_easy[1] = _unit(far[20] + 0.01 * far[21])  # query 1 sits on database image 20 (its positive)
    # every negative must be further than d²(q, p) + 0.1: push them all to the opposite side
    far2 = far.clone()
    idx = [i for i in range(40) if abs(i * 5.0 - 102.0) > 10.0]
    far2[idx] = _unit(-q_easy[1] + 0.01 * far2[idx])
    miner.refresh(far2, q_easy)
    assert miner.mine(1, np.random.default_rng(0)) is None and miner.skipped == 1


def test_refresh_interval_grows_with_the_lr_drop():
    miner, _, _ = _miner(refresh_every=1000)
    assert not miner.needs_refresh()
    miner.queries_since_refresh = 1000
    assert miner.needs_refresh()
    miner.scale_refresh_interval(2.0)
    assert miner.refresh_every == 2000 and not miner.needs_refresh()


def test_triplet_ranking_loss_value():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6]])  # d² = 0.04 + 0.36 = 0.4
    n = torch.tensor([[[0.6, 0.8], [-1.0, 0.0]]])  # d² = 0.16 + 0.64 = 0.8 and 4.0
    # max(0, 0.1 + 0.4 − 0.8) + max(0, 0.1 + 0.4 − 4) = 0, then a violating one:
    assert triplet_ranking_loss(q, p, n).item() == pytest.approx(0.0)
    n2 = torch.tensor([[[0.8, -0.6], [0.6, 0.8]]])  # d² = 0.4 and 0.8
    assert triplet_ranking_loss(q, p, n2, margin=0.1).item() == pytest.approx(0.1)
    assert triplet_ranking_loss(q, p, n2, margin=0.5).item() == pytest.approx(0.5 + 0.1)


def test_kmeans_alpha_follows_the_v2_formula():
    rng = np.random.default_rng(0)
    centres = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    x = np.concatenate([c + 0.05 * rng.normal(size=(200, 3)) for c in centres]).astype(np.float32)
    init = fit_clusters(x, 3, seed=0, iterations=20)
    order = np.argsort(np.argmax(init.centroids, axis=1))
    assert np.allclose(init.centroids[order], centres, atol=0.02)
    d2 = np.sort(((x[:, None, :] - init.centroids[None]) ** 2).sum(-1), axis=1)
    assert init.alpha == pytest.approx(-math.log(0.01) / np.mean(d2[:, 1] - d2[:, 0]), rel=1e-3)
    with pytest.raises(ConfigError, match="k-means needs at least num_clusters=8 descriptors, got 3"):
        fit_clusters(x[:3], 8)


def test_refit_centroids_keeps_the_backbone():
    from training.model import ModelConfig, PlaceModel, refit_centroids

    torch.manual_seed(0)
    model = PlaceModel(ModelConfig.preset("tiny", num_clusters=4), pretrained=False).eval()
    images = [np.random.default_rng(i).integers(0, 256, size=(40, 70, 3), dtype=np.uint8) for i in range(6)]
    refit = refit_centroids(model, images, per_image=10, iterations=5)
    assert not torch.equal(refit.netvlad.centroids, model.netvlad.centroids)
    for (name, a), b in zip(
        model.backbone_trainable.state_dict().items(),
        refit.backbone_trainable.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert refit.provenance["centroids"]["source"] == "refit on 6 target images"
    assert refit.provenance["centroids"]["num_descriptors"] == 60
