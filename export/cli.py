"""``netvlad-export``: parse the command line, build an :class:`ExportConfig`, call :func:`run_export`.

Imports nothing heavy at module level, so ``--help`` works without torch or TensorRT.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from export.config import INT8_TARGETS, BatchRange, ExportConfig
from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app, threads_option

log = logging.getLogger("netvlad-export")

app = kit_app(
    help="Turn a trained checkpoint into deployable artifacts (ONNX, FP16, INT8 QDQ, TensorRT engines), "
    "each checked against the FP32 PyTorch model by the parity gate (parity.json).",
)


def check_export_extras() -> None:
    """A runtime-only install lacks PyTorch and onnx: say which extra brings them, not a traceback."""
    from runtime.errors import MissingDependencyError
    from runtime.optional import available

    missing = [m for m in ("torch", "onnx", "onnxscript", "onnxruntime") if not available(m)]
    if missing:
        raise MissingDependencyError(
            f"netvlad-export needs {', '.join(missing)} (it loads PyTorch checkpoints and writes ONNX), "
            "which this install lacks; install them with: pip install 'netvlad-kit[train,export]'"
        )


@app.command()
@command_boundary
def main(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="The model.pt written by python -m training.train."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="also model.fp16.onnx: FP16 backbone, float32 head and I/O"
    ),
    int8: bool = typer.Option(False, "--int8", help="also INT8 QDQ models calibrated on --calib"),
    calib: str | None = typer.Option(
        None, "--calib", help="calibration images: a folder of images or a dataset (its database images)"
    ),
    calib_images: int = typer.Option(256, "--calib-images", help="use at most this many calibration images"),
    int8_target: list[str] = typer.Option(
        list(INT8_TARGETS),
        "--int8-target",
        metavar="TARGET",
        help="tensorrt: model.int8.onnx (symmetric); cpu: model.int8-cpu.onnx (uint8, fastest on ONNX Runtime CPU)",
    ),
    engine: bool = typer.Option(
        False, "--engine", help="also TensorRT engines (needs tensorrt and a CUDA GPU)"
    ),
    batch_profile: str = typer.Option(
        "1:8:32",
        "--batch-profile",
        help="TensorRT optimisation profile of the engines' batch size, MIN:OPT:MAX (tuned for OPT)",
    ),
    val: str | None = typer.Option(
        None,
        "--val",
        help="validation dataset for the parity gate's recall (default: --calib when a dataset)",
    ),
    val_limit: int = typer.Option(500, "--val-limit", help="at most this many database images and queries"),
    out: Path = typer.Option(Path("export"), "--out", help="output folder"),
    force: bool = typer.Option(False, "--force", help="keep artifacts that miss a parity gate"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace artifacts already in --out"),
    threads: int = threads_option("PyTorch and ONNX Runtime during the parity check"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Export CHECKPOINT into --out: model.onnx [+ model.fp16.onnx] [+ model.int8*.onnx] [+ *.engine] + parity.json."""
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    cfg = ExportConfig(
        batch=BatchRange.parse(batch_profile),
        fp16=fp16,
        int8=int8,
        engine=engine,
        calibration=calib,
        calibration_images=calib_images,
        int8_targets=tuple(int8_target),
        validation=val,
        validation_limit=val_limit,
        force=force,
        overwrite=overwrite,
        threads=threads,
    )
    check_export_extras()
    from export.pipeline import run_export

    result = run_export(checkpoint, out, cfg, progress=progress)
    from export.parity import format_table

    typer.echo(format_table(result.reports))
    for path in result.artifacts.values():
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {result.parity_json}")


if __name__ == "__main__":  # python -m export.cli
    sys.exit(app())
