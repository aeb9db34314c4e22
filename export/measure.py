"""CPU latency of the exported variants against PyTorch eager, side by side: ``python -m export.measure``.

``python -m export.measure CHECKPOINT EXPORT_DIR [--batch-size 1 --batch-size 8] [--rounds 15] [--threads 2]``

Every variant (PyTorch eager FP32, and each ``*.onnx`` in EXPORT_DIR on ONNX Runtime's CPU provider) runs
the same uint8 batch, interleaved round by round so that load from other processes hits all of them alike;
the median per variant and its ratio to ONNX Runtime FP32 are printed as a markdown table, with the kernels
ONNX Runtime chose for each model. Report ratios, not absolute times, on a shared machine.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import json_option, kit_app, overwrite_option, run_app, threads_option


def time_interleaved(
    runners: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Run each runner ``warmup`` times, then ``rounds`` rounds of one call each; seconds per call."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


app = kit_app(help=(__doc__ or "").split("\n\n")[0])


@app.command()
@command_boundary
def cli(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="The model.pt the artifacts came from."
    ),
    export_dir: Path = typer.Argument(..., metavar="EXPORT_DIR", help="The folder netvlad-export wrote."),
    batch_size: list[int] = typer.Option(
        [1, 8], "--batch-size", metavar="N", help="Batch sizes to time; repeatable."
    ),
    rounds: int = typer.Option(15, min=1, help="Interleaved rounds per batch size."),
    threads: int = threads_option("PyTorch and ONNX Runtime"),
    json_out: Path = json_option("the numbers"),
    overwrite: bool = overwrite_option("the --json file"),
) -> None:
    """Print the median per variant and its ratios to ONNX Runtime FP32 and to PyTorch eager."""
    import torch

    from export.images import fixed_images
    from export.quantize import ort_kernels
    from runtime.files import atomic_write_text, check_not_replacing
    from runtime.model.backends.onnxruntime import create_session
    from runtime.model.card import read_onnx_card
    from training.checkpoint import load_model
    from training.model import DeployModel

    check_not_replacing({"--json": json_out}, overwrite)
    if threads:
        torch.set_num_threads(threads)
    deploy = DeployModel(load_model(checkpoint)).eval()
    models = sorted(export_dir.glob("*.onnx"), key=lambda p: (len(p.name), p.name))
    card = read_onnx_card(models[0])
    results: dict[str, Any] = {"threads": threads, "rounds": rounds, "batches": {}, "kernels": {}}
    for path in models:
        kernels = ort_kernels(path, threads)
        results["kernels"][path.name] = kernels
        typer.echo(f"{path.name}: ONNX Runtime CPU kernels {kernels}")
    for batch in batch_size:
        images = fixed_images(card, batch, seed=batch)
        tensor = torch.from_numpy(images)
        runners: dict[str, Callable[[], Any]] = {}

        def eager(t: Any = tensor) -> Any:
            with torch.inference_mode():
                return deploy(t)

        runners["pytorch eager fp32"] = eager
        for path in models:
            session = create_session(path, threads=threads)
            runners[f"onnxruntime {path.name}"] = lambda s=session, x=images: s.run(None, {"image": x})
        times = time_interleaved(runners, rounds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["onnxruntime model.onnx"]
        typer.echo(f"\nbatch {batch}: median of {rounds} interleaved rounds, {threads} threads")
        typer.echo("| variant | median ms | speed vs ORT FP32 | speed vs PyTorch eager |")
        typer.echo("|---|---|---|---|")
        for name, median in medians.items():
            typer.echo(
                f"| {name} | {1000 * median:.1f} | {base / median:.2f}x | "
                f"{medians['pytorch eager fp32'] / median:.2f}x |"
            )
        results["batches"][str(batch)] = {name: 1000 * m for name, m in medians.items()}
    if json_out:
        atomic_write_text(json_out, json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m export.measure ARGS``; returns 0, or exits with the command's exit code."""
    return run_app(app, argv, "python -m export.measure")


if __name__ == "__main__":
    raise SystemExit(main())
