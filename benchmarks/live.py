"""``netvlad-bench live``: the latency a robot sees, from capture to result, with a source paced like a
camera (a video played at its own frame rate, :class:`~runtime.sources.frames.VideoFileSource` ``realtime=True``).

Three measurements in one process, side by side:

- the model alone at batch 1 (``Backend.infer`` on one preprocessed frame), before and after the runs;
- the paced run: ``Localizer.run`` on the real-time source (live: one frame per stage, the newest frame
  goes to the model when it is free): capture-to-result ``times.total`` p50 / p99, frames dropped;
- the same video read as fast as it decodes (not live): what ``netvlad-run --video`` reports as "total",
  which is mostly time spent queueing behind earlier frames, not latency.

The goal (issue 12): paced p50 <= 1.5 x the batch-1 inference p50.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.timing import summarize_ms, time_calls
from runtime.errors import ConfigError
from runtime.files import atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveBenchConfig:
    """``frames``: frames localised per run; ``threads``: ONNX Runtime threads; ``infer_repeats``: batch-1
    inference calls timed before and after the runs; ``temporal``: sequence matching on."""

    frames: int = 300
    threads: int = 2
    infer_repeats: int = 30
    temporal: bool = False

    def __post_init__(self) -> None:
        if self.frames < 10 or self.infer_repeats < 5 or self.threads < 1:
            raise ConfigError(
                f"invalid live benchmark config {self}: frames >= 10, infer_repeats >= 5, threads >= 1"
            )


def _localise(localizer, source, frames: int) -> dict[str, list[float]]:
    stages: dict[str, list[float]] = {
        "total": [],
        "inference": [],
        "search": [],
        "preprocess": [],
        "decode": [],
    }
    for n, loc in enumerate(localizer.run(source), start=1):
        for stage, values in stages.items():
            values.append(1000 * getattr(loc.times, stage))
        if n >= frames:
            break
    return stages


def run_live_latency(
    model: str | Path,
    map_path: str | Path,
    video: str | Path,
    out: str | Path,
    config: LiveBenchConfig | None = None,
) -> dict[str, Any]:
    """Measure, write ``live.json`` and ``live.md`` into ``out``, and return the result."""
    import cv2

    from runtime import Localizer, LocalizerConfig, TemporalConfig
    from runtime.sources import VideoFileSource

    config = config or LiveBenchConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    ok, first = capture.read()
    capture.release()
    if not ok:
        raise ConfigError(f"cannot read a frame of video '{video}'")
    loc_config = LocalizerConfig(temporal=TemporalConfig() if config.temporal else None)
    with Localizer.open(model, map_path, "onnxruntime-cpu", loc_config, threads=config.threads) as localizer:
        image = localizer.preprocess(first, "BGR")[None]  # (1, H, W, 3)
        before = time_calls(lambda: localizer.backend.infer(image), config.infer_repeats)
        with VideoFileSource(video, realtime=True, queue_size=1) as source:
            paced = _localise(localizer, source, config.frames)
            dropped, superseded = source.stats.dropped, source.stats.superseded
        with VideoFileSource(video) as source:
            unpaced = _localise(localizer, source, config.frames)
        after = time_calls(lambda: localizer.backend.infer(image), config.infer_repeats)
        backend = localizer.backend.describe()
    infer = summarize_ms(before + after)
    result = {
        "video": str(video),
        "video_fps": fps,
        "backend": backend,
        "inference_batch1": infer,
        "paced": {stage: summarize_ms(v) for stage, v in paced.items()},
        "paced_frames": len(paced["total"]),
        "paced_dropped": dropped,
        "paced_superseded": superseded,
        "unpaced": {stage: summarize_ms(v) for stage, v in unpaced.items()},
        "ratio_p50": summarize_ms(paced["total"])["p50_ms"] / infer["p50_ms"],
        "config": asdict(config),
    }
    p = result["paced"]["total"]
    u = result["unpaced"]["total"]
    lines = [
        f"# Capture-to-result latency, {Path(video).name} at {fps:.0f} FPS ({backend})",
        "",
        "| measurement | p50 (ms) | p99 (ms) |",
        "|---|---|---|",
        f"| model alone, batch 1 | {infer['p50_ms']:.1f} | {infer['p99_ms']:.1f} |",
        f"| paced source ({fps:.0f} FPS, live), capture to result | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} |",
        f"| same video as fast as it decodes (queueing) | {u['p50_ms']:.1f} | {u['p99_ms']:.1f} |",
        "",
        f"Paced p50 / inference p50 = {result['ratio_p50']:.2f} (goal <= 1.5); "
        f"{result['paced_frames']} frames localised, {dropped} dropped by the source, {superseded} replaced by "
        "a newer frame before the model (stage p50 in the paced run: "
        + ", ".join(
            f"{s} {result['paced'][s]['p50_ms']:.1f} ms"
            for s in ("decode", "preprocess", "inference", "search")
        )
        + ").",
    ]
    files = {"json": out / "live.json", "markdown": out / "live.md"}
    atomic_write_text(files["json"], json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(files["markdown"], "\n".join(lines) + "\n")
    result["files"] = {k: str(v) for k, v in files.items()}
    log.info(
        "paced p50 %.1f ms = %.2f x inference p50 %.1f ms", p["p50_ms"], result["ratio_p50"], infer["p50_ms"]
    )
    return result
