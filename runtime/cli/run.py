"""``netvlad-run``: localise a camera, a video, an image folder or an RTSP stream against a map."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from runtime.cli.console import EXIT_INTERRUPTED, command_boundary, configure_logging
from runtime.cli.options import QUIET, VERBOSE, json_option, kit_app, overwrite_option, threads_option

app = kit_app()


@app.command(help="Localise frames against a map; one JSONL record per frame, a live status line.")
@command_boundary
def main(
    model: Path = typer.Option(..., help="Model file: .onnx, .engine or .plan."),
    map_path: Path = typer.Option(..., "--map", help="Map directory built by netvlad-map build."),
    camera: int = typer.Option(None, help="Camera index (e.g. 0)."),
    video: Path = typer.Option(None, help="Video file."),
    images: Path = typer.Option(None, help="Folder of images (sorted by name)."),
    rtsp: str = typer.Option(None, help="RTSP (or HTTP) stream URL."),
    rosbag: Path = typer.Option(None, help="ROS 1 .bag or ROS 2 bag (folder, .mcap or .db3); needs --topic."),
    topic: str = typer.Option(None, help="The bag's image topic (Image or CompressedImage)."),
    backend: str = typer.Option(
        "auto", help="auto, onnxruntime[-cpu|-cuda|-tensorrt], openvino[-bf16] or tensorrt."
    ),
    threads: int = threads_option("inference (ONNX Runtime)"),
    jsonl: Path = typer.Option(None, help="Write one JSON record per frame here."),
    out_bag: Path = typer.Option(
        None, help="Write the results as a ROS 2 bag (MCAP): NavSatFix, pose, confidence, unknown verdict."
    ),
    show: bool = typer.Option(False, help="Show the overlay in a window (needs a GUI OpenCV)."),
    save_video: Path = typer.Option(None, help="Write the overlay video here (.mp4 or .avi)."),
    temporal: bool = typer.Option(
        False, help="Sequence matching over the last frames (a drive or walk along the map's route)."
    ),
    adapt: bool = typer.Option(
        True,
        help="Adapt to the query domain (season, light, camera): centre the stream's descriptors on their own "
        "running mean, and calibrate the unknown-place verdict on the stream's own impostors as well as the "
        "map's. --no-adapt: the map's mean and calibration alone (frames judged independently).",
    ),
    top_k: int = typer.Option(5, help="Places reported per frame."),
    min_confidence: float = typer.Option(
        None,
        "--min-confidence",
        help="Confidence below which a frame is an unknown place (default: the map's calibrated one).",
    ),
    override_map_check: bool = typer.Option(False, help="Use a map built by another model (not advised)."),
    max_frames: int = typer.Option(None, help="Stop after this many frames."),
    loop: int = typer.Option(1, help="Replay a video or folder this many times (soak test)."),
    serve: str = typer.Option(
        None,
        metavar="[HOST:]PORT",
        help="Serve a live web view (frame, best map image, confidence, track) on HOST:PORT "
        "(default host 127.0.0.1; 0.0.0.0 to watch from another machine).",
    ),
    realtime: bool = typer.Option(
        False, help="Replay a video, folder or bag at the pace of its timestamps (to watch it with --serve)."
    ),
    summary: Path = json_option("the run summary (FPS, latencies, memory)"),
    overwrite: bool = overwrite_option("the --jsonl, --json, --save-video and --out-bag files"),
    verbose: int = VERBOSE,
    quiet: bool = QUIET,
) -> None:
    from runtime.cli.session import RunConfig, run_session
    from runtime.files import atomic_write_text, check_not_replacing, check_writable_file

    configure_logging(verbose, quiet)
    tty = sys.stderr.isatty()

    def status(line: str) -> None:
        if quiet:
            return
        sys.stderr.write(("\r\033[K" + line) if tty else line + "\n")
        sys.stderr.flush()

    config = RunConfig(
        model=model,
        map=map_path,
        camera=camera,
        video=video,
        images=images,
        rtsp=rtsp,
        rosbag=rosbag,
        topic=topic,
        backend=backend,
        threads=threads,
        jsonl=jsonl,
        out_bag=out_bag,
        save_video=save_video,
        show=show,
        temporal=temporal,
        adapt=adapt,
        top_k=top_k,
        unknown_threshold=min_confidence,
        override_map_check=override_map_check,
        max_frames=max_frames,
        loop=loop,
        serve=serve,
        realtime=realtime,
        overwrite=overwrite,
    )
    check_writable_file(summary, "--json")  # before the run, not after it
    check_not_replacing({"--json": summary}, overwrite)
    try:
        result = run_session(config, on_status=status)
    finally:
        if tty:
            sys.stderr.write("\n")
    if summary:
        atomic_write_text(summary, result.to_json() + "\n")
    lat = result.latency_ms
    typer.echo(
        f"{result.frames} frames in {result.seconds:.1f} s: {result.fps:.1f} FPS end to end | "
        + " | ".join(f"{s} p50 {lat[s]['p50']:.1f} ms p99 {lat[s]['p99']:.1f} ms" for s in lat)
        + f" | dropped {result.dropped} corrupt {result.corrupt} unknown {result.unknown}"
        + (" | interrupted" if result.interrupted else ""),
        err=True,
    )
    if result.interrupted:  # the JSONL and the summary above are complete up to the last frame
        raise typer.Exit(EXIT_INTERRUPTED)
