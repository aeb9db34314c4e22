"""Recall parity across backends (``netvlad-bench parity``).

The same query set runs through the PyTorch FP32 reference and every exported artifact (ONNX Runtime
FP32, INT8 QDQ, FP16 where it runs, TensorRT where installed; skipped ones are listed with the reason).
Each candidate is judged by the export step's own parity gate (:mod:`export.parity`, not a copy):
recall@1/5/10/20 and the change against the reference, descriptor cosine (min, 1st percentile, median)
and top-1 agreement. Writes ``parity.json``, ``parity.md`` and ``parity_recall.png`` (recall@N curves).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.artifacts import BackendPlan, open_extractor, plan_backends
from benchmarks.environment import machine_info, machine_line
from benchmarks.evalset import EvalSet, load_eval_set
from benchmarks.report import markdown_table, write_report
from runtime.errors import ArtifactError, ConfigError
from runtime.evaluation.recall import rank_database, recall_at_n
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)

RECALL_NS = (1, 5, 10, 20)
CURVE_NS = tuple(range(1, 21))


@dataclass(frozen=True)
class ParityBenchConfig:
    """Options of the parity benchmark (validated)."""

    max_db: int | None = None
    max_queries: int | None = None
    batch_size: int = 16
    threads: int = 2
    radius_m: float = EVAL_RADIUS_M
    plot: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 0 or self.radius_m <= 0:
            raise ConfigError(
                f"batch_size must be >= 1, threads >= 0 and radius > 0, got {self.batch_size}, "
                f"{self.threads}, {self.radius_m}"
            )


def _check_same_model(reference_card, plan: BackendPlan, card) -> None:
    """A candidate must come from the reference's weights and take its input size."""
    if card.weights_fingerprint != reference_card.weights_fingerprint:
        raise ArtifactError(
            f"'{plan.path}' was exported from weights {card.weights_fingerprint} but the checkpoint is "
            f"{reference_card.weights_fingerprint}; compare artifacts exported from this checkpoint "
            "(netvlad-export CHECKPOINT --out DIR)"
        )
    if (card.input_height, card.input_width) != (reference_card.input_height, reference_card.input_width):
        raise ArtifactError(
            f"'{plan.path}' takes {card.input_height}x{card.input_width} images but the checkpoint "
            f"{reference_card.input_height}x{reference_card.input_width}; re-export it from this checkpoint"
        )


def recall_curve(db: np.ndarray, queries: np.ndarray, positives: Sequence[np.ndarray]) -> dict[int, float]:
    """Recall@N for N = 1..20 (runtime.evaluation.recall, the same metric everywhere)."""
    return recall_at_n(rank_database(db, queries, max(CURVE_NS)), positives, CURVE_NS)


def run_parity(
    checkpoint: str | Path,
    models: Sequence[str | Path],
    dataset: str | Path,
    out_dir: str | Path | None,
    cfg: ParityBenchConfig | None = None,
    *,
    progress: Callable | None = None,
    eval_set: EvalSet | None = None,
) -> dict[str, Any]:
    """Run every backend over ``dataset`` and compare it with the PyTorch reference from ``checkpoint``.

    ``models``: exported artifacts or folders holding them. ``eval_set``: already decoded images (else
    ``dataset`` is opened and decoded). Returns the results; with ``out_dir`` also writes the report files.
    """
    from export.parity import compare_retrieval

    cfg = cfg or ParityBenchConfig()
    plans, skipped = plan_backends(checkpoint, models)
    reference_plan = plans[0]
    t0 = time.perf_counter()
    reference = open_extractor(reference_plan, cfg.threads)
    ref_card = reference.card
    evals = eval_set or load_eval_set(
        dataset, ref_card, max_db=cfg.max_db, max_queries=cfg.max_queries, radius_m=cfg.radius_m
    )
    log.info("parity on %s", evals.describe())
    result: dict[str, Any] = {
        "benchmark": "parity",
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(),
        "dataset": evals.describe(),
        "dataset_name": evals.dataset.name,
        "num_db": evals.dataset.num_db,
        "num_queries": evals.dataset.num_queries,
        "model": {
            "checkpoint": str(checkpoint),
            "backbone": ref_card.backbone,
            "descriptor_dim": ref_card.descriptor_dim,
            "input": f"{ref_card.input_height}x{ref_card.input_width}",
            "fingerprint": ref_card.weights_fingerprint,
        },
        "backends": [],
        "skipped": list(skipped),
    }
    descriptors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for plan in plans:
        log.info("parity: %s", plan.label)
        try:
            extractor = reference if plan is reference_plan else open_extractor(plan, cfg.threads)
        except Exception as exc:  # e.g. FP16 without CPU kernels: skipped, with the reason
            if plan is reference_plan:
                raise
            reason = f"cannot run here: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:240]}"
            log.warning("parity: %s skipped (%s)", plan.label, reason)
            result["skipped"].append({"label": plan.label, "reason": reason})
            continue
        try:
            if plan is not reference_plan:
                _check_same_model(ref_card, plan, extractor.card)
            total = len(evals.db_images) + len(evals.q_images)
            bar = progress(total=total, desc="descriptors", unit="img") if progress else None
            update = bar.update if bar is not None else None
            start = time.perf_counter()
            db = extractor.infer(evals.db_images, cfg.batch_size, update)
            q = extractor.infer(evals.q_images, cfg.batch_size, update)
            seconds = time.perf_counter() - start
            if bar is not None:
                bar.close()
        finally:
            extractor.close()
        descriptors[plan.label] = (db, q)
        report = compare_retrieval(
            str(plan.path.name if plan.path else plan.label),
            plan.precision,
            descriptors[reference_plan.label],
            (db, q),
            evals.positives,
            evals.describe(),
            ns=RECALL_NS,
        )
        entry = {
            "label": plan.label,
            "kind": plan.kind,
            "provider": plan.provider if plan.kind == "onnxruntime" else None,
            "precision": plan.precision,
            "artifact": str(plan.path) if plan.path else None,
            "extract_s": seconds,
            "images_per_s": (len(db) + len(q)) / max(seconds, 1e-9),
            "is_reference": plan is reference_plan,
            "recall_curve": recall_curve(db, q, evals.positives),
            "parity": report.to_dict(),
        }
        result["backends"].append(entry)
    result["total_s"] = time.perf_counter() - t0
    if out_dir is not None:
        out_dir = Path(out_dir)
        result["files"] = {}
        if cfg.plot:
            result["files"]["plot"] = str(plot_recall_curves(result, out_dir / "parity_recall.png"))
        json_path, md_path = write_report(out_dir, "parity", result, parity_markdown(result))
        result["files"].update(json=str(json_path), markdown=str(md_path))
    return result


def parity_rows(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the parity table (recall in %, change in points against the reference)."""
    headers = [
        "backend",
        *[f"R@{n} % (Δ)" for n in RECALL_NS],
        "cos min",
        "cos p1",
        "cos median",
        "top-1 agr.",
        "gate",
    ]
    rows = []
    for b in result["backends"]:
        p = b["parity"]
        recalls = []
        for n in RECALL_NS:
            r, d = p["recall"][str(n)], p["recall_change"][str(n)]
            recalls.append(f"{100 * r:.1f}" if b["is_reference"] else f"{100 * r:.1f} ({100 * d:+.1f})")
        gate = (
            "reference"
            if b["is_reference"]
            else ("pass" if p["passed"] else "FAIL: " + "; ".join(p["failures"]))
        )
        rows.append(
            [
                b["label"],
                *recalls,
                f"{p['cosine_min']:.5f}",
                f"{p['cosine_p1']:.5f}",
                f"{p['cosine_median']:.5f}",
                f"{p['top1_agreement']:.3f}",
                gate,
            ]
        )
    return headers, rows


def parity_markdown(result: dict[str, Any]) -> str:
    """The parity report as Markdown."""
    model = result["model"]
    headers, rows = parity_rows(result)
    lines = [
        f"# Recall parity across backends: {result['dataset_name']}",
        "",
        f"{result['dataset']}. Model {model['backbone']}, {model['descriptor_dim']}-D at {model['input']}, "
        f"weights {model['fingerprint']}. Gates: export.parity thresholds per precision.",
        "",
        markdown_table(headers, rows),
        "",
        *[f"- skipped {s['label']}: {s['reason']}" for s in result["skipped"]],
        "",
        machine_line(result["machine"]),
    ]
    if "files" in result and "plot" in result["files"]:
        lines += ["", f"![recall@N]({Path(result['files']['plot']).name})"]
    return "\n".join(lines)


def plot_recall_curves(result: dict[str, Any], path: str | Path) -> Path:
    """Recall@N (N = 1..20) of every backend on one chart (matplotlib, Agg), written atomically."""
    from runtime.files import atomic_path
    from runtime.optional import require

    matplotlib = require("matplotlib", "the recall@N plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    markers = "osD^vP*X"
    for i, b in enumerate(result["backends"]):
        ns = sorted(int(n) for n in b["recall_curve"])
        ax.plot(
            ns,
            [100 * b["recall_curve"][n] for n in ns],
            marker=markers[i % len(markers)],
            markersize=4,
            linewidth=2.2 if b["is_reference"] else 1.3,
            linestyle="-" if b["is_reference"] else "--",
            label=b["label"],
        )
    ax.set_xlabel("N (top-N database images)")
    ax.set_ylabel("recall@N (%)")
    ax.set_title(f"recall@N per backend: {result['dataset_name']} ({result['num_queries']} queries)")
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
