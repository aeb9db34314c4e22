"""``python -m training.synth``: generate the synthetic geotagged street world as a dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app
from training.synth.config import CONDITIONS, PRESETS

app = kit_app(help=__doc__)


@app.command()
@command_boundary
def main(
    out: Path = typer.Option(..., "--out", help="output folder (written atomically)"),
    preset: str = typer.Option("small", "--preset", help=f"one of: {', '.join(PRESETS)}"),
    seed: int = typer.Option(0, "--seed", help="world seed: the same seed gives the same images"),
    conditions: str = typer.Option(
        None,
        "--conditions",
        help=f"comma-separated query conditions (default: all of {', '.join(CONDITIONS)})",
    ),
    workers: int = typer.Option(2, "--workers", help="rendering processes"),
    image_format: str = typer.Option("jpg", "--format", help="jpg or png"),
    no_video: bool = typer.Option(False, "--no-video", help="skip queries.mp4"),
    query_spacing: float = typer.Option(
        None,
        "--query-spacing",
        help="metres between query frames (default: the preset's); e.g. 1 renders a dense video, a camera "
        "faster than the map's 5 m spacing",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output folder"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Write DIR/database.csv, DIR/queries.csv, DIR/database/*, DIR/queries/* and DIR/queries.mp4."""
    from runtime.cli.console import configure_logging, progress
    from runtime.errors import OutputError
    from training.synth.config import SynthConfig
    from training.synth.generate import generate

    configure_logging(verbose, quiet)
    overrides: dict = {
        "seed": seed,
        "workers": workers,
        "image_format": image_format,
        "write_video": not no_video,
    }
    if query_spacing is not None:
        overrides["query_spacing_m"] = query_spacing
    if conditions:
        overrides["conditions"] = tuple(c.strip() for c in conditions.split(",") if c.strip())
    cfg = SynthConfig.preset(preset, **overrides)
    if out.exists() and not overwrite:
        raise OutputError(f"'{out}' already exists; choose another --out or pass --overwrite")
    generate(cfg, out, overwrite=overwrite, progress=None if quiet else progress)


if __name__ == "__main__":
    app()
