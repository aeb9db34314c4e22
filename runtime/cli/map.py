"""``netvlad-map``: build a map from a model and a geotagged dataset; add or remove places; show a map; score
a run's JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from runtime.cli.console import command_boundary, configure_logging, progress
from runtime.cli.options import QUIET, VERBOSE, kit_app
from runtime.protocol import EVAL_RADIUS_M

app = kit_app(
    help="Build and inspect netvlad-kit maps (FAISS index + geotagged places).",
    no_args_is_help=True,
)


@app.command()
@command_boundary
def build(
    model: Path = typer.Option(..., help="Model file: .onnx, .engine or .plan (with its card)."),
    dataset: str = typer.Option(
        None, help="Dataset: a folder with database.csv/queries.csv, 'nordland', ... (or give --rosbag)."
    ),
    rosbag: Path = typer.Option(
        None, help="Build from a robot's drive: a ROS 1 .bag or ROS 2 bag with a camera and a GPS topic."
    ),
    image_topic: str = typer.Option(None, help="--rosbag: the camera topic (Image or CompressedImage)."),
    gps_topic: str = typer.Option(None, help="--rosbag: the GPS topic (sensor_msgs/NavSatFix)."),
    every: float = typer.Option(5.0, help="--rosbag: metres travelled between keyframes."),
    out: Path = typer.Option(..., help="Map directory to write (atomically)."),
    split: str = typer.Option("database", help="Images that become places: 'database' or 'all'."),
    index: str = typer.Option(
        "flat",
        help="'flat' (exact inner product, float32), 'fp16' (the same over float16: half the bytes), "
        "'sq8' (8-bit codes, a quarter, re-ranked) or 'ivfpq' (compressed, approximate, re-ranked).",
    ),
    backend: str = typer.Option("auto", help="Inference backend (auto: from the model's suffix)."),
    batch_size: int = typer.Option(16, help="Images per inference batch."),
    nprobe: int = typer.Option(16, help="IVF lists searched per query (ivfpq)."),
    rerank: int = typer.Option(
        None,
        help="sq8, ivfpq: re-rank this many of the index's candidates exactly against the full descriptors "
        "(float16, memory-mapped from the map; default 16 for sq8, 500 for ivfpq); 0: the codes alone.",
    ),
    overwrite: bool = typer.Option(
        False, help="Replace an existing map (only once the new one is complete)."
    ),
    whiten: bool = typer.Option(
        False,
        "--whiten/--no-whiten",
        help="Fit PCA-whitening on the map's own descriptors (no labels) and search in it: a tenth of the "
        "model's dimension (at most 3/4 of the places), 10x cheaper search. Off by default: measured +2 "
        "points R@1 on the synthetic world, -1 on Nordland winter vs summer.",
    ),
    whitening_dim: int = typer.Option(None, help="--whiten: the dimension (default: from the map's size)."),
    calibration: str = typer.Option(
        "map",
        help="Calibrate the unknown-place verdict on the 'map' (its images play unmapped places) or on "
        "held-out 'queries' of the dataset (in their own domain); map.json records which.",
    ),
    ray: str = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS|local",
        help="Extract descriptors as a Ray Data job on the Ray cluster at ADDRESS (e.g. ray://head:10001, "
        "auto), or 'local': a local Ray over this machine's cores. Needs netvlad-kit[cluster].",
    ),
    workers: int = typer.Option(
        None, help="--ray: backend actors (default: one per GPU with --gpus-per-worker, else one per CPU)."
    ),
    gpus_per_worker: float = typer.Option(0.0, help="--ray: GPUs per backend actor (0: CPU actors)."),
    shards: Path = typer.Option(
        None, help="--ray: folder for descriptor shards (every node must reach it; default beside --out)."
    ),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Extract descriptors of the dataset's images (or a ROS bag's keyframes) and write the map."""
    from runtime.map import MapConfig, build_map

    configure_logging(verbose, quiet)
    if (dataset is None) == (rosbag is None):
        raise typer.BadParameter("give either --dataset or --rosbag (with --image-topic and --gps-topic)")
    if ray is not None and rosbag is not None:
        raise typer.BadParameter("--ray builds from a --dataset; a --rosbag map is built in one process")
    config = MapConfig(
        split=split,
        index=index,
        batch_size=batch_size,
        nprobe=nprobe,
        rerank=rerank,
        overwrite=overwrite,
        whitening=whiten,
        whitening_dim=whitening_dim,
        calibration=calibration,
    )
    if rosbag is not None:
        from runtime.datasets.rosbag import DriveConfig
        from runtime.map.from_bag import build_map_from_bag

        drive = DriveConfig(image_topic, gps_topic, every_m=every)
        path = build_map_from_bag(model, rosbag, drive, out, config, progress=progress, backend=backend)
    elif ray is not None:
        from runtime.map.ray_build import build_map_on_ray

        path = build_map_on_ray(
            model,
            dataset,
            out,
            config,
            address=None if ray == "local" else ray,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            backend=backend,
            shards=shards,
            progress=progress,
        )
    else:
        path = build_map(model, dataset, out, config, progress=progress, backend=backend)
    typer.echo(str(path))


@app.command("bag-dataset")
@command_boundary
def bag_dataset(
    rosbag: Path = typer.Option(..., help="A ROS 1 .bag or ROS 2 bag (folder, .mcap or .db3) of one drive."),
    image_topic: str = typer.Option(..., help="The camera topic (Image or CompressedImage)."),
    gps_topic: str = typer.Option(..., help="The GPS topic (sensor_msgs/NavSatFix)."),
    out: Path = typer.Option(..., help="Dataset folder (generic format) to write into."),
    split: str = typer.Option("database", help="Which split this drive becomes: 'database' or 'queries'."),
    every: float = typer.Option(5.0, help="Metres travelled between keyframes."),
    overwrite: bool = typer.Option(False, help="Replace this split if the folder already has it."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Write a drive's GPS-tagged keyframes as one split of a generic dataset (for training and maps)."""
    from runtime.datasets.rosbag import DriveConfig, write_bag_dataset

    configure_logging(verbose, quiet)
    drive = DriveConfig(image_topic, gps_topic, every_m=every)
    path = write_bag_dataset(rosbag, drive, out, split, overwrite=overwrite, progress=progress)
    typer.echo(str(path))


@app.command()
@command_boundary
def add(
    map_path: Path = typer.Option(..., "--map", help="The map to grow (rewritten atomically)."),
    dataset: str = typer.Option(..., help="Dataset whose images become new places."),
    model: Path = typer.Option(..., help="The model the map was built with (its fingerprint is checked)."),
    split: str = typer.Option("database", help="Images that become places: 'database' or 'all'."),
    backend: str = typer.Option("auto", help="Inference backend (auto: from the model's suffix)."),
    batch_size: int = typer.Option(16, help="Images per inference batch."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Append a dataset's images to a map without a rebuild (the IVF quantiser and PQ codebooks are reused;
    the unknown-place calibration is updated). A running Localizer sees them after reload()."""
    from runtime.map import add_to_map

    configure_logging(verbose, quiet)
    added = add_to_map(
        map_path, model, dataset, split=split, backend=backend, batch_size=batch_size, progress=progress
    )
    typer.echo(f"{map_path}: added {added} places")


@app.command()
@command_boundary
def remove(
    map_path: Path = typer.Option(..., "--map", help="The map to shrink (rewritten atomically)."),
    image: list[str] = typer.Option(
        [],
        metavar="PATTERN",
        help="Remove places whose image (as in places.csv) matches this shell pattern; repeatable.",
    ),
    region: str = typer.Option(
        None, help="Remove places inside this UTM box: easting_min,northing_min,easting_max,northing_max (m)."
    ),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Take places out of a map, by image or by region (the rest keep their order; calibration updated)."""
    from runtime.errors import ConfigError
    from runtime.map import remove_from_map

    configure_logging(verbose, quiet)
    box = None
    if region is not None:
        try:
            box = tuple(float(v) for v in region.split(","))
        except ValueError:
            raise ConfigError(
                f"--region must be four numbers easting_min,northing_min,easting_max,northing_max, got {region!r}"
            ) from None
    removed = remove_from_map(map_path, image, box, progress=progress)
    typer.echo(f"{map_path}: removed {removed} places")


@app.command()
@command_boundary
def info(map_path: Path = typer.Argument(..., metavar="MAP", help="A map directory.")) -> None:
    """Print a map's metadata (map.json)."""
    from runtime.map import read_map_meta

    typer.echo(json.dumps(read_map_meta(map_path), indent=2))


@app.command()
@command_boundary
def recall(
    jsonl: list[Path] = typer.Option(
        ...,
        help="JSONL written by netvlad-run --jsonl; repeat it to score several runs together "
        "(e.g. the queries and the dataset's unmapped places).",
    ),
    dataset: str = typer.Option(..., help="The dataset whose queries were localised."),
    radius: float = typer.Option(
        EVAL_RADIUS_M, help="A match within this many metres of the query is correct."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print every number as JSON."),
) -> None:
    """Recall@N, precision-recall of the confidence (AUC-PR, recall at 99 % / 100 % precision) and the
    "unknown place" verdict's rates (correct frames flagged; unmapped-place frames flagged)."""
    from runtime.evaluation.runs import recall_from_jsonl

    configure_logging(quiet=True)
    result = recall_from_jsonl(jsonl, dataset, radius_m=radius)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(format_recall(result))


def format_recall(result: dict) -> str:
    """The human-readable summary of :func:`runtime.evaluation.runs.recall_from_jsonl`'s result."""

    def rate(count: int, total: int) -> str:
        return f"{count} of {total} ({100.0 * count / total:.1f} %)" if total else "n/a (none)"

    trust = result["trust"]
    recalls = "  ".join(f"R@{n} {100.0 * r:.1f} %" for n, r in result["recall"].items())
    return "\n".join(
        [
            f"{result['queries']} queries with a place within {result['radius_m']:g} m: {recalls}",
            f"confidence: AUC-PR {trust['auc_pr']:.3f}, recall at 99 % precision "
            f"{trust['recall_at_99_precision']:.3f}, at 100 % {trust['recall_at_100_precision']:.3f}",
            "correct frames flagged unknown: "
            + rate(trust["correct_flagged_unknown"], trust["correct_frames"]),
            "unmapped-place frames flagged unknown: "
            + rate(trust["unmapped_flagged_unknown"], trust["unmapped_frames"]),
        ]
    )
