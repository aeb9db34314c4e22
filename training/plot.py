"""``python -m training.plot RUN``: validation recall per step of a training run, against the untrained model.

Reads ``RUN/metrics.jsonl`` (training.loop's events) and writes ``RUN/validation.png``: validation R@1 and
R@5 at every validation, the k-means initialisation's as dashed lines, the model kept (``best``) marked.
A run whose curves never rise above the dashed lines deployed its initialisation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app, run_app

log = logging.getLogger(__name__)


def validation_curve(metrics_path: Path) -> dict[str, Any]:
    """``{"init": {"1": r, "5": r}, "steps": [...], "recall": {"1": [...], "5": [...]}, "best": [steps]}``."""
    from runtime.errors import ArtifactError

    if not metrics_path.is_file():
        raise ArtifactError(
            f"'{metrics_path}' does not exist; give the --out folder of python -m training.train"
        )
    curve: dict[str, Any] = {"init": {}, "steps": [], "recall": {"1": [], "5": []}, "best": []}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        recall = (event.get("val") or {}).get("recall")
        if not recall:
            continue
        if event["event"] == "init" and event.get("which") == "kmeans":
            curve["init"] = {n: recall[n] for n in ("1", "5")}
        elif event["event"] in ("validation", "epoch"):
            curve["steps"].append(event["step"])
            for n in ("1", "5"):
                curve["recall"][n].append(recall[n])
            if event.get("best"):
                curve["best"].append(event["step"])
    return curve


def plot_run(run: Path) -> Path:
    """Write ``run/validation.png`` from ``run/metrics.jsonl``; returns its path."""
    from runtime.files import atomic_path
    from runtime.optional import require

    matplotlib = require("matplotlib", "the validation plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = validation_curve(Path(run) / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4))
    for n, color in (("1", "tab:blue"), ("5", "tab:orange")):
        ax.plot(curve["steps"], [100 * r for r in curve["recall"][n]], color=color, label=f"R@{n}")
        if n in curve["init"]:
            ax.axhline(100 * curve["init"][n], color=color, ls="--", label=f"R@{n} untrained (k-means)")
    best = [(s, r) for s, r in zip(curve["steps"], curve["recall"]["1"], strict=True) if s in curve["best"]]
    if best:
        ax.scatter(
            *zip(*[(s, 100 * r) for s, r in best], strict=True), color="tab:blue", s=12, label="new best"
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("validation recall (%)")
    ax.set_title(f"{Path(run).name}: validation recall per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(run) / "validation.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


app = kit_app(
    help="Plot a training run's validation recall per step against the untrained model (validation.png)."
)


@app.command()
@command_boundary
def cli(
    run: Path = typer.Argument(..., metavar="RUN", help="The --out folder of python -m training.train."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    typer.echo(str(plot_run(run)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.plot RUN``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m training.plot")


if __name__ == "__main__":
    raise SystemExit(main())
