"""How good the answers are: recall@N against the protocol's radii (:mod:`runtime.evaluation.recall`), the
unknown-place verdict's precision-recall and trust numbers (:mod:`runtime.evaluation.metrics`), recall of a
``netvlad-run`` JSONL against a dataset's ground truth (:mod:`runtime.evaluation.runs`) and the raw-pixel
baseline every learned descriptor is compared with (:mod:`runtime.evaluation.baseline`). Pure numpy over
arrays and datasets: may import datasets and the shared top-level modules, never models, maps or the
Localizer, so training, export and benchmarks measure with the same code.
"""

from runtime.evaluation.metrics import auc_pr, precision_recall_curve, trust_metrics
from runtime.evaluation.recall import DEFAULT_NS, first_hit_rank, rank_database, recall_at_n
from runtime.evaluation.runs import read_jsonl, recall_from_jsonl

__all__ = [
    "DEFAULT_NS",
    "auc_pr",
    "first_hit_rank",
    "precision_recall_curve",
    "rank_database",
    "read_jsonl",
    "recall_at_n",
    "recall_from_jsonl",
    "trust_metrics",
]
