"""``netvlad-bench``: recall parity, per-stage latency and map search benchmarks.

The commands only parse options and call one public function each; heavy packages (torch, faiss,
onnxruntime) are imported when a command runs, so ``--help`` works on a bare install.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from runtime.cli.console import command_boundary
from runtime.cli.options import QUIET, VERBOSE, kit_app, threads_option
from runtime.protocol import EVAL_RADIUS_M

app = kit_app(
    no_args_is_help=True,
    help="Benchmarks: recall parity and latency across backends, and map search at scale.",
)


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what} must name at least one integer, got {text!r}")
    return values


def _print_markdown(result: dict) -> None:
    files = result.get("files", {})
    if "markdown" in files:
        typer.echo(Path(files["markdown"]).read_text(encoding="utf-8"))
        typer.echo("written: " + ", ".join(str(v) for v in files.values()), err=True)


@app.command()
@command_boundary
def search(
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for search.json and search.md."),
    preset: str = typer.Option("default", help="default (10k-200k x 4096), full (to 1M), tiny (seconds)."),
    sizes: str = typer.Option(None, help="Map sizes, e.g. 10000,100000,1000000 (overrides the preset)."),
    dims: str = typer.Option(None, help="Descriptor dimensions, e.g. 4096,7168."),
    model: Path = typer.Option(
        None, help="An exported model (.onnx or engine): add its descriptor dimension to the sweep."
    ),
    nprobe: str = typer.Option(None, help="IVF lists visited per query, e.g. 8,32."),
    pq_bytes: int = typer.Option(None, help="IVF-PQ code bytes per vector (default 64)."),
    queries: int = typer.Option(None, help="Queries for recall."),
    rerank: str = typer.Option(
        None, help="Candidates re-ranked exactly against float16 descriptors, e.g. 0,100 (0: codes alone)."
    ),
    sq8_rerank: str = typer.Option(
        None, help="The same for the 8-bit scalar quantiser (SQ8), e.g. 0,16 (the default)."
    ),
    max_gib: float = typer.Option(
        None,
        help="RAM (GiB) for a map's float16 descriptors and for the timed exact index; larger maps are "
        "skipped, or memory-mapped under --scratch (exact search then timed on the rows that fit, scaled).",
    ),
    scratch: Path = typer.Option(
        None, help="Folder for memory-mapped descriptors of maps over --max-gib (each deleted after use)."
    ),
    cold: bool = typer.Option(
        False,
        "--cold",
        help="Memory-mapped maps: also time batch-1 re-ranking and streamed exact search with the "
        "descriptors evicted from the page cache (reads from disk, as for a map larger than RAM).",
    ),
    stream_queries: int = typer.Option(
        None,
        help="Batch-1 queries of exact search streaming a memory-mapped map, timed for real (default 3).",
    ),
    threads: int = threads_option("faiss"),
    seed: int = typer.Option(None, help="Seed of the synthetic descriptors."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Map size sweep: exact (IndexFlatIP) vs float16 / 8-bit flat (SQfp16, SQ8) and compressed (IVF-PQ)
    search: latency, bytes read per query, recall against float32 exact search, memory."""
    from benchmarks.search import SearchConfig, run_search
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    dim_list = _ints(dims, "--dims")
    if model is not None:
        from runtime import read_card

        own = read_card(model).descriptor_dim
        base = dim_list or SearchConfig.preset(preset).dims
        dim_list = tuple(dict.fromkeys((*base, own)))
    cfg = SearchConfig.preset(
        preset,
        sizes=_ints(sizes, "--sizes"),
        dims=dim_list,
        nprobe=_ints(nprobe, "--nprobe"),
        pq_bytes=pq_bytes,
        num_queries=queries,
        rerank=_ints(rerank, "--rerank"),
        sq8_rerank=_ints(sq8_rerank, "--sq8-rerank"),
        max_gib=max_gib,
        scratch=str(scratch) if scratch else None,
        cold=cold or None,
        stream_queries=stream_queries,
        threads=threads or os.cpu_count() or 1,  # faiss takes no 0
        seed=seed,
    )
    _print_markdown(run_search(cfg, out, progress=progress))


@app.command()
@command_boundary
def parity(
    checkpoint: Path = typer.Option(..., help="The PyTorch checkpoint the artifacts were exported from."),
    models: list[Path] = typer.Option(
        ...,
        "--models",
        metavar="PATH",
        help="Exported artifacts or folders holding them (.onnx, .engine); repeatable.",
    ),
    dataset: str = typer.Option(
        ...,
        help="Dataset: a folder with database.csv (e.g. a synthetic world), 'nordland', 'aligned:DB,Q' or a .mat file.",
    ),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for parity.json/.md/.png."),
    max_db: int = typer.Option(None, help="Use only the first N database images (with their queries)."),
    max_queries: int = typer.Option(
        None, help="Use N queries with a positive, evenly spaced along the traversal."
    ),
    batch: int = typer.Option(16, help="Inference batch size."),
    threads: int = threads_option("PyTorch and ONNX Runtime"),
    radius: float = typer.Option(EVAL_RADIUS_M, help="Positive radius in metres."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """The same query set through PyTorch FP32 and every exported backend: recall@N, cosine, top-1 agreement."""
    from benchmarks.parity import ParityBenchConfig, run_parity
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    cfg = ParityBenchConfig(
        max_db=max_db,
        max_queries=max_queries,
        batch_size=batch,
        threads=threads,
        radius_m=radius,
    )
    _print_markdown(run_parity(checkpoint, models, dataset, out, cfg, progress=progress))


@app.command()
@command_boundary
def latency(
    checkpoint: Path = typer.Option(
        None, help="PyTorch checkpoint (adds PyTorch eager and the NetVLAD loop comparison)."
    ),
    models: list[Path] = typer.Option(
        [],
        "--models",
        metavar="PATH",
        help="Exported artifacts or folders holding them (.onnx, .engine); repeatable.",
    ),
    dataset: str = typer.Option(..., help="Dataset whose images are decoded and whose database is the map."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for latency.json/.md."),
    batches: str = typer.Option("1,8", help="Batch sizes, e.g. 1,8,32."),
    frames: int = typer.Option(40, help="Timed frames per backend and batch size."),
    map_size: int = typer.Option(None, help="Places in the search map (default: the dataset's database)."),
    threads: int = threads_option("PyTorch, ONNX Runtime and faiss"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Per-stage latency (decode, preprocess, inference, search, end to end) per backend and batch size."""
    from benchmarks.latency import LatencyConfig, run_latency
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    cfg = LatencyConfig(
        batch_sizes=_ints(batches, "--batches"),
        frames=frames,
        map_size=map_size,
        threads=threads,
    )
    _print_markdown(run_latency(checkpoint, models, dataset, out, cfg, progress=progress))


@app.command()
@command_boundary
def drive(
    model: Path = typer.Option(..., help="An exported model (.onnx or engine)."),
    dataset: str = typer.Option(..., help="Dataset: database = the mapping drive, queries = a later drive."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for drive.json and drive.md."),
    zone: str = typer.Option("18T", help="UTM zone the dataset's easting/northing are taken to lie in."),
    every: float = typer.Option(5.0, help="Metres between keyframes of the map built from the bag."),
    noise: float = typer.Option(1.5, help="GPS noise (metres, one sigma)."),
    outage: float = typer.Option(10.0, help="Length of one GPS outage mid-drive (seconds; 0: none)."),
    limit: int = typer.Option(None, help="Use only the first N database and query images."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """A drive through ROS bags: map from a bag vs from the folder, uncertainty coverage, bag read rate."""
    from benchmarks.drive import drive_benchmark
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    result = drive_benchmark(
        model,
        dataset,
        out,
        zone=zone,
        every_m=every,
        noise_m=noise,
        outage_s=outage,
        limit=limit,
        progress=progress,
    )
    _print_markdown(result)


@app.command()
@command_boundary
def soak(
    model: Path = typer.Option(..., help="Model file (.onnx or engine) the map was built with."),
    map_path: Path = typer.Option(..., "--map", help="Map directory (netvlad-map build)."),
    images: Path = typer.Option(..., help="Folder of images, replayed until --frames frames have run."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for soak.json and soak.md."),
    frames: int = typer.Option(100_000, help="Frames to localise."),
    sample_every: int = typer.Option(2_000, help="Sample resident memory every this many frames."),
    warmup: int = typer.Option(5_000, help="Frames before the baseline sample."),
    threads: int = typer.Option(1, help="Inference threads."),
    jsonl: bool = typer.Option(False, help="Also write the per-frame JSONL (out/soak.jsonl)."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Resident memory of the netvlad-run session over N frames (flat memory: slope near 0 KB/frame)."""
    from benchmarks.soak import SoakConfig, run_soak
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    cfg = SoakConfig(frames=frames, sample_every=sample_every, warmup=warmup, threads=threads, jsonl=jsonl)
    _print_markdown(run_soak(model, map_path, images, out, cfg))


@app.command()
@command_boundary
def sequence(
    model: Path = typer.Option(..., help="Model file (.onnx) the map was built with."),
    map_path: Path = typer.Option(..., "--map", help="Map of the dataset's database (netvlad-map build)."),
    dataset: str = typer.Option(..., help="Dataset whose queries are a sequence in order, e.g. nordland."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for sequence.json and sequence.md."),
    frames: str = typer.Option("10,20", help="Sequence lengths to measure, e.g. 10,20."),
    cost_sizes: str = typer.Option("1000,100000", help="Map sizes for the cost per frame."),
    cost_dim: int = typer.Option(1024, help="Descriptor dimension of the cost maps."),
    reverse: bool = typer.Option(False, help="Also score backward lines (a robot that reverses)."),
    query_step: int = typer.Option(1, min=1, help="Every N-th query frame (a robot N times faster)."),
    map_step: int = typer.Option(1, min=1, help="Every N-th map place (a robot N times slower)."),
    query_repeat: int = typer.Option(1, min=1, help="Each query frame N times (a faster camera)."),
    anchor: bool = typer.Option(True, help="Run the SeqSLAM anchor beside (Nordland)."),
    threads: int = typer.Option(2, help="Inference threads."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Sequence matching (--temporal): recall@1 against single frames at any robot speed, SeqSLAM beside, and
    its cost per frame at two map sizes."""
    from benchmarks.sequence import SequenceBenchConfig, run_sequence_bench
    from runtime.cli.console import configure_logging, progress

    configure_logging(verbose, quiet)
    cfg = SequenceBenchConfig(
        frames=_ints(frames, "--frames"),
        cost_sizes=_ints(cost_sizes, "--cost-sizes"),
        cost_dim=cost_dim,
        reverse=reverse,
        threads=threads,
        query_step=query_step,
        map_step=map_step,
        query_repeat=query_repeat,
        anchor=anchor,
    )
    _print_markdown(run_sequence_bench(model, map_path, dataset, out, cfg, progress=progress))


@app.command()
@command_boundary
def verdict(
    model: Path = typer.Option(..., help="Model file (.onnx) to build the maps with."),
    dataset: list[str] = typer.Option(
        [], help="Dataset folder (database.csv, queries.csv, unmapped.csv when present); repeatable."
    ),
    nordland: bool = typer.Option(
        False, help="Also Nordland's sets: speeds, a stretch removed, half a route."
    ),
    out: Path = typer.Option(
        Path("runs/bench/verdict"), "--out", help="Folder for maps, verdict_sets.json/.md."
    ),
    threads: int = typer.Option(2, help="Inference threads."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """The unknown-place verdict on every set it must hold on: correct and unmapped frames flagged, AUC-PR,
    frame by frame and with --temporal, beside the map's calibration alone."""
    from benchmarks.verdict_sets import run_verdict_sets
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    _print_markdown(run_verdict_sets(model, dataset, nordland, out, threads))


@app.command()
@command_boundary
def floor(
    model: list[Path] = typer.Option(
        ..., help="Model file (.onnx); repeatable (e.g. model.onnx, model.int8-cpu.onnx)."
    ),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for floor.json and floor.md."),
    places: int = typer.Option(1000, min=1, help="Map places searched and sequence-matched (float32)."),
    repeats: int = typer.Option(100, min=1, help="Timed calls per stage."),
    threads: int = typer.Option(2, min=1, help="Inference, BLAS and faiss threads."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Each per-frame stage (inference on every installed backend, exact search, the sequence update) against
    its floor: FLOPs over the GEMM peak, bytes over the memory bandwidth, both measured here."""
    from benchmarks.floor import FloorConfig, run_floor
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    _print_markdown(run_floor(model, out, FloorConfig(places=places, repeats=repeats, threads=threads)))


@app.command()
@command_boundary
def live(
    model: Path = typer.Option(..., help="Model file (.onnx) the map was built with."),
    map_path: Path = typer.Option(..., "--map", help="Map directory (netvlad-map build)."),
    video: Path = typer.Option(..., help="Video played at its own frame rate, as a camera delivers it."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Folder for live.json and live.md."),
    frames: int = typer.Option(300, help="Frames localised per run."),
    threads: int = typer.Option(2, help="Inference threads."),
    temporal: bool = typer.Option(False, help="Sequence matching on."),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    """Capture-to-result latency (p50/p99) with a paced source, against the model's batch-1 inference time."""
    from benchmarks.live import LiveBenchConfig, run_live_latency
    from runtime.cli.console import configure_logging

    configure_logging(verbose, quiet)
    cfg = LiveBenchConfig(frames=frames, threads=threads, temporal=temporal)
    _print_markdown(run_live_latency(model, map_path, video, out, cfg))


if __name__ == "__main__":
    app()
