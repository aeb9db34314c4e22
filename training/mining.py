"""Weak supervision: best potential positive and hardest negatives, mined from a descriptor cache.

For each training query (training/README.md, trainWeakly.m):

- potential positives: database images within ``pos_radius_m`` (10 m); the *best* one, the nearest in
  descriptor space, is the tuple's positive (GPS is only weak supervision: the nearest image may not see
  the same scene). A split trained both ways (training.data.both_ways) holds both drives in its database:
  there a query's potential positives are the other drive's images only (its own drive's image of the
  same place is the query itself, or nearly), which is neither positive nor negative;
- definite negatives: database images farther than ``neg_radius_m`` (25 m); ``num_neg_samples`` (1,000)
  are sampled at random, joined with the query's remembered hardest negatives from its last visit, and the
  ``num_neg_keep`` (10) hardest are kept (and remembered);
- a query none of whose negatives violates the margin contributes no gradient and is skipped.

Distances come from a cache of all training descriptors (float16, refreshed every ``refresh_every``
queries; the interval grows by the factor the learning rate shrinks by, so a slower model refreshes
less often).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runtime import PlaceDataset
from runtime.errors import DatasetError
from runtime.protocol import NEGATIVE_RADIUS_M

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tuple:
    query: int  # index into the split's queries
    positive: int  # index into the split's database
    negatives: np.ndarray  # (num_neg_keep,) indices into the split's database, hardest first


class TripletMiner:
    """Mining state of one training split: descriptor cache, negative memory, refresh schedule."""

    def __init__(
        self,
        dataset: PlaceDataset,
        pos_radius_m: float = 10.0,
        neg_radius_m: float = NEGATIVE_RADIUS_M,
        num_neg_samples: int = 1000,
        num_neg_keep: int = 10,
        margin: float = 0.1,
        refresh_every: int = 1000,
        db_traversal: np.ndarray | None = None,
        q_traversal: np.ndarray | None = None,
    ) -> None:
        self.potential_positives = dataset.positives(pos_radius_m)
        if db_traversal is not None and q_traversal is not None:  # positives from the other drive only
            self.potential_positives = [
                p[db_traversal[p] != q_traversal[i]] for i, p in enumerate(self.potential_positives)
            ]
        self.non_negatives = dataset.positives(neg_radius_m)
        self.num_db = dataset.num_db
        self.num_neg_samples = num_neg_samples
        self.num_neg_keep = num_neg_keep
        self.margin = margin
        self.trainable_queries = np.array(
            [
                i
                for i, (p, nn_) in enumerate(zip(self.potential_positives, self.non_negatives, strict=True))
                if len(p) > 0 and self.num_db - len(nn_) >= num_neg_keep
            ],
            dtype=np.int64,
        )
        if self.trainable_queries.size == 0:
            raise DatasetError(
                f"dataset '{dataset.name}': none of its {dataset.num_queries} queries has a database image within "
                f"{pos_radius_m:g} m (a potential positive) and {num_neg_keep} database images beyond "
                f"{neg_radius_m:g} m (definite negatives); training needs both. Check the positions in the CSV "
                "files (same UTM zone for database and queries?) or use a larger dataset"
            )
        self.memory = np.full((dataset.num_queries, num_neg_keep), -1, dtype=np.int64)
        self.db_cache: torch.Tensor | None = None  # (N_db, D) float16
        self.q_cache: torch.Tensor | None = None  # (N_q, D) float16
        self.refresh_every = int(refresh_every)
        self.queries_since_refresh = 0
        self.skipped = 0

    # -- cache -----------------------------------------------------------------------------------------
    def needs_refresh(self) -> bool:
        return self.db_cache is None or self.queries_since_refresh >= self.refresh_every

    def refresh(self, db_descriptors: torch.Tensor, q_descriptors: torch.Tensor) -> None:
        self.db_cache = db_descriptors.to(torch.float16).cpu()
        self.q_cache = q_descriptors.to(torch.float16).cpu()
        self.queries_since_refresh = 0

    def scale_refresh_interval(self, factor: float) -> None:
        """Called when the learning rate shrinks by ``1/factor``: refresh ``factor`` times less often."""
        self.refresh_every = max(1, round(self.refresh_every * factor))
        log.info("descriptor cache refresh interval is now %d queries", self.refresh_every)

    # -- mining ----------------------------------------------------------------------------------------
    def mine(self, query: int, rng: np.random.Generator) -> Tuple | None:
        """The tuple for ``query`` from the current cache, or None when no negative violates the margin."""
        assert self.db_cache is not None and self.q_cache is not None, "refresh() the cache first"
        self.queries_since_refresh += 1
        q = self.q_cache[query].float()  # (D,)
        pos = self.potential_positives[query]
        d2_pos = (self.db_cache[torch.from_numpy(pos)].float() - q).pow(2).sum(1)  # (P,)
        best = int(pos[int(torch.argmin(d2_pos))])
        d2_best = float(d2_pos.min())
        # sample definite negatives: draw a few more than needed and drop the non-negatives
        excluded = self.non_negatives[query]
        draw = min(self.num_db, self.num_neg_samples + len(excluded))
        candidates = rng.choice(self.num_db, size=draw, replace=False)
        candidates = candidates[~np.isin(candidates, excluded)][: self.num_neg_samples]
        remembered = self.memory[query][self.memory[query] >= 0]
        candidates = np.unique(np.concatenate([candidates, remembered]))
        d2_neg = (self.db_cache[torch.from_numpy(candidates)].float() - q).pow(2).sum(1)  # (M,)
        order = torch.argsort(d2_neg)[: self.num_neg_keep].numpy()
        hardest = candidates[order]
        self.memory[query, : len(hardest)] = hardest
        if float(d2_neg[order[0]]) >= d2_best + self.margin:
            self.skipped += 1
            return None
        return Tuple(query, best, hardest)

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "memory": torch.from_numpy(self.memory.copy()),
            "db_cache": self.db_cache,
            "q_cache": self.q_cache,
            "refresh_every": self.refresh_every,
            "queries_since_refresh": self.queries_since_refresh,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state["memory"].numpy().copy()
        self.db_cache, self.q_cache = state["db_cache"], state["q_cache"]
        self.refresh_every = int(state["refresh_every"])
        self.queries_since_refresh = int(state["queries_since_refresh"])
        self.skipped = int(state["skipped"])
