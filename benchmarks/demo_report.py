"""The demo's report: ``report.md`` (recall per backend, parity, latency per stage, localisation) and
``route.png`` (the query route with true and estimated positions)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import markdown_table
from runtime.atomic import atomic_path, atomic_write_text
from runtime.protocol import EVAL_RADIUS_M

log = logging.getLogger(__name__)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def localisation_errors(jsonl: Path, q_utm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of a ``netvlad-run`` JSONL: query index, estimated position ``(M, 2)``, error in metres."""
    from runtime.evaluate import read_jsonl

    idx, est = [], []
    for record in read_jsonl(jsonl):
        source = record["source"]
        if "#" not in source:
            continue
        qi = int(source.rsplit("#", 1)[1])
        if qi < len(q_utm):
            idx.append(qi)
            est.append((record["easting"], record["northing"]))
    idx_arr = np.asarray(idx, dtype=np.int64)
    est_arr = np.asarray(est, dtype=np.float64).reshape(-1, 2)
    return idx_arr, est_arr, np.linalg.norm(est_arr - q_utm[idx_arr], axis=1)


def held_out_recall(jsonl: Path, dataset, query_indices: np.ndarray, ns=(1, 5, 10)) -> dict[int, float]:
    """Recall@N of a JSONL restricted to ``query_indices`` (a top-N match within 25 m of the query)."""
    from runtime.evaluate import read_jsonl

    wanted = set(int(i) for i in query_indices)
    found = {n: 0 for n in ns}
    count = 0
    for record in read_jsonl(jsonl):
        if "#" not in record["source"]:
            continue
        qi = int(record["source"].rsplit("#", 1)[1])
        if qi not in wanted:
            continue
        count += 1
        where = np.array([[m["easting"], m["northing"]] for m in record["matches"]])  # (k, 2)
        near = np.flatnonzero(np.linalg.norm(where - dataset.q_utm[qi], axis=1) <= EVAL_RADIUS_M)
        for n in ns:
            found[n] += bool(near.size and near[0] < n)
    return {n: found[n] / max(1, count) for n in ns}


def plot_route(dataset, runs: dict[str, Path], out: Path) -> Path:
    """One panel per run: the map route, true query positions, estimates coloured by error (<= 25 m green)."""
    from runtime.optional import require

    matplotlib = require("matplotlib", "the route plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 6.6), dpi=110, squeeze=False)
    origin = dataset.db_utm.min(axis=0)
    db = dataset.db_utm - origin
    for ax, (name, jsonl) in zip(axes[0], runs.items(), strict=True):
        idx, est, err = localisation_errors(jsonl, dataset.q_utm)
        truth = dataset.q_utm[idx] - origin
        est = est - origin
        good = err <= EVAL_RADIUS_M
        ax.plot(
            db[:, 0],
            db[:, 1],
            color="0.8",
            linewidth=6,
            solid_capstyle="round",
            label="map (database drive)",
            zorder=1,
        )
        ax.plot(
            truth[:, 0], truth[:, 1], color="black", linewidth=1.0, label="true query positions", zorder=2
        )
        bad_lines = np.stack([truth[~good], est[~good]], axis=1)  # (B, 2, 2) segments truth -> estimate
        for seg in bad_lines:
            ax.plot(seg[:, 0], seg[:, 1], color="tab:red", linewidth=0.5, alpha=0.35, zorder=3)
        ax.scatter(
            est[good, 0],
            est[good, 1],
            s=7,
            color="tab:green",
            label=f"estimate within {EVAL_RADIUS_M:g} m ({good.mean():.0%})",
            zorder=4,
        )
        ax.scatter(
            est[~good, 0],
            est[~good, 1],
            s=9,
            color="tab:red",
            marker="x",
            label=f"estimate off by > {EVAL_RADIUS_M:g} m",
            zorder=5,
        )
        ax.scatter(*truth[0], s=60, color="black", marker="^", zorder=6, label="start")
        median = float(np.median(err)) if err.size else float("nan")
        title = {"raw": "frame by frame", "temporal": "with the temporal filter"}.get(name, name)
        ax.set_title(f"{title}: {len(idx)} frames, median error {median:.1f} m")
        ax.set_xlabel("easting (m, from the map's corner)")
        ax.set_ylabel("northing (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, alpha=0.25)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"Localising the query video of '{dataset.name}' against the map", fontsize=12)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def _status_table(steps: dict[str, Any]) -> str:
    rows = []
    for name, s in steps.items():
        note = s.get("reason", "")
        rows.append([name, s["status"], s["seconds"], note[:160]])
    return markdown_table(["step", "status", "seconds", "note"], rows, digits=1)


def write_demo_report(cfg, paths, steps: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.md`` and ``route.png`` from the artifacts the other steps left; returns what was written."""
    from benchmarks.latency import latency_rows
    from benchmarks.parity import parity_rows
    from runtime.datasets import open_dataset

    lines = [
        "# netvlad-kit demo: the synthetic world, end to end",
        "",
        f"World: synthetic `{cfg.synth_preset}` (seed {cfg.synth_seed}) in `{paths.synth}`. "
        f"Everything below ran offline on this machine by `make demo` (`python -m benchmarks.demo --out {paths.root}`).",
        "",
    ]
    written: dict[str, Any] = {}
    dataset = open_dataset(str(paths.synth)) if (paths.synth / "database.csv").is_file() else None

    # -- localisation ------------------------------------------------------------------------------------
    loc = steps.get("localize", {})
    runs = {n: Path(loc[n]["jsonl"]) for n in ("raw", "temporal") if n in loc}
    if runs and dataset is not None:
        lines += ["## Localising the query video (runtime, ONNX Runtime FP32 on the CPU)", ""]
        split = None
        try:
            from training.data import split_along_route

            split = split_along_route(dataset, _train_fractions(paths))["test"].q_indices
        except Exception as exc:  # training not installed: no held-out column
            log.info("no held-out split (%s)", exc)
        rows = []
        for name, jsonl in runs.items():
            r = loc[name]
            s = r["summary"]
            _, _, err = localisation_errors(jsonl, dataset.q_utm)
            held = held_out_recall(jsonl, dataset, split) if split is not None and len(split) else None
            lat = s["latency_ms"]
            rows.append(
                [
                    "frame by frame" if name == "raw" else "temporal filter",
                    s["frames"],
                    *(
                        100 * r["recall"]["recall"][str(n)]
                        if str(n) in r["recall"]["recall"]
                        else 100 * r["recall"]["recall"][n]
                        for n in (1, 5, 10)
                    ),
                    "—" if held is None else f"{100 * held[1]:.1f}",
                    float(np.median(err)) if err.size else None,
                    s["fps"],
                    lat["inference"]["p50"],
                    lat["search"]["p50"],
                    lat["total"]["p50"],
                    lat["total"]["p99"],
                ]
            )
        lines += [
            markdown_table(
                [
                    "mode",
                    "frames",
                    "R@1 %",
                    "R@5 %",
                    "R@10 %",
                    "R@1 % held-out stretch",
                    "median error m",
                    "FPS",
                    "inference p50 ms",
                    "search p50 ms",
                    "total p50 ms",
                    "total p99 ms",
                ],
                rows,
                digits=1,
            ),
            "",
            "Recall: a frame counts as found at N when one of its top-N places lies within 25 m of where it was "
            "taken. The model trained on the first 60% of this route (the training's route split); the "
            "held-out column counts only the queries of the last 25% (its test stretch), which it never saw.",
            "",
        ]
        try:
            written["route_png"] = str(plot_route(dataset, runs, paths.route_png))
            lines += [f"![route]({paths.route_png.name})", ""]
        except Exception as exc:
            lines += [f"(route plot unavailable: {exc})", ""]

    # -- parity ------------------------------------------------------------------------------------------
    parity = _load(paths.bench / "parity.json")
    if parity:
        headers, rows = parity_rows(parity)
        lines += [
            f"## Recall per backend and parity against PyTorch ({parity['dataset']})",
            "",
            markdown_table(headers, rows),
            "",
            *[f"- skipped {s['label']}: {s['reason']}" for s in parity["skipped"]],
            "",
            "![recall@N](bench/parity_recall.png)",
            "",
        ]
    # -- latency -----------------------------------------------------------------------------------------
    latency = _load(paths.bench / "latency.json")
    if latency:
        headers, rows = latency_rows(latency)
        lines += [
            "## Latency per stage (ms per batch; one run, backends one after another)",
            "",
            markdown_table(headers, rows),
            "",
        ]
        forms = latency.get("netvlad_forms")
        if forms:
            for batch, e in forms["by_batch"].items():
                lines.append(
                    f"- NetVLAD layer, batch {batch}: loop-free {e['layer_loop_free']['p50_ms']:.2f} ms vs per-cluster "
                    f"loop {e['layer_loop']['p50_ms']:.2f} ms ({e['layer_speedup']:.1f}x); whole model "
                    f"{e['model_speedup']:.2f}x; outputs equal to {e['max_abs_diff']:.1e}"
                )
            lines.append("")
        from benchmarks.environment import machine_line

        lines += [
            machine_line(latency["machine"]) + " The machine was shared: read ratios, not absolute times.",
            "",
        ]
    lines += ["## Steps", "", _status_table(steps), ""]
    written["report"] = str(atomic_write_text(paths.report, "\n".join(lines)))
    return written


def _train_fractions(paths) -> tuple[float, float, float]:
    run = _load(paths.train / "run.json") or {}
    cfg = run.get("config", run)
    return tuple(cfg.get("split_fractions", (0.6, 0.15, 0.25)))
