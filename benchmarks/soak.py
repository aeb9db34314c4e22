"""Memory soak of the command-line run session (``netvlad-bench soak``): resident memory over N frames.

The same :func:`runtime.cli.session.run_session` that ``netvlad-run`` drives localises a folder of images
replayed until ``frames`` frames have gone through (a cheap source: decoding a few small files), with the
JSONL written when asked. The session samples its resident memory (RSS) every ``sample_every`` frames; the
report gives the samples, the growth from the first sample after warm-up to the end, and the least-squares
slope in KB per frame over the samples after warm-up (flat memory: a slope near 0).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.environment import machine_info, machine_line
from benchmarks.report import markdown_table, write_report
from runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoakConfig:
    """``frames``: frames localised; ``sample_every``: RSS sampled every this many frames; ``warmup``:
    frames before the baseline sample (allocator and ONNX Runtime arenas settle); ``threads``: inference
    threads; ``jsonl``: also write the per-frame JSONL (to ``out/soak.jsonl``)."""

    frames: int = 100_000
    sample_every: int = 2_000
    warmup: int = 5_000
    threads: int = 1
    jsonl: bool = False

    def __post_init__(self) -> None:
        if not (self.frames >= 1 and self.sample_every >= 1 and 0 <= self.warmup < self.frames):
            raise ConfigError(
                f"soak needs frames >= 1, sample_every >= 1 and 0 <= warmup < frames, got {self}"
            )
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")


def growth(samples_mb: list[float], sample_every: int, warmup: int) -> dict[str, float | None]:
    """Growth after warm-up of RSS samples taken at frames 1, 1 + k, 1 + 2k, ... (then one at the end)."""
    frames = np.array([1 + i * sample_every for i in range(len(samples_mb))], dtype=np.float64)
    rss = np.asarray(samples_mb, dtype=np.float64)
    keep = frames >= warmup
    if keep.sum() < 2:
        return {"kb_per_frame": None, "growth_mb": None, "baseline_mb": None}
    slope_mb = float(np.polyfit(frames[keep], rss[keep], 1)[0])  # MiB per frame
    return {
        "kb_per_frame": round(slope_mb * 1024, 4),
        "growth_mb": round(float(rss[keep][-1] - rss[keep][0]), 1),
        "baseline_mb": float(rss[keep][0]),
    }


def run_soak(model: Path, map_path: Path, images: Path, out: Path, cfg: SoakConfig | None = None) -> dict:
    """Localise ``images`` (replayed) for ``cfg.frames`` frames through the run session; write soak.json/.md."""
    from runtime import RunConfig, run_session
    from runtime.sources import ImageFolderSource

    cfg = cfg or SoakConfig()
    per_pass = len(ImageFolderSource(images))
    run = RunConfig(
        model=Path(model),
        map=Path(map_path),
        images=Path(images),
        threads=cfg.threads,
        jsonl=Path(out) / "soak.jsonl" if cfg.jsonl else None,
        max_frames=cfg.frames,
        loop=math.ceil(cfg.frames / per_pass),
        overwrite=True,  # the benchmark's own output folder
    )
    log.info("soak: %d frames (%d images x %d passes)", cfg.frames, per_pass, run.loop)
    summary = run_session(run, rss_every=cfg.sample_every)
    samples = summary.rss_mb[:-1]  # the last one is taken at the end, off the sampling grid
    result: dict[str, Any] = {
        "config": {**cfg.__dict__, "model": str(model), "map": str(map_path), "images": str(images)},
        "frames": summary.frames,
        "seconds": round(summary.seconds, 1),
        "fps": round(summary.fps, 1),
        "rss_mb": summary.rss_mb,
        "rss_end_mb": summary.rss_mb[-1],
        "sample_every": cfg.sample_every,
        **growth(samples, cfg.sample_every, cfg.warmup),
        "machine": machine_info(),
    }
    rows = [[1 + i * cfg.sample_every, mb] for i, mb in enumerate(samples)] + [
        [summary.frames, summary.rss_mb[-1]]
    ]
    markdown = "\n".join(
        [
            "# Memory soak of the run session",
            "",
            f"{summary.frames} frames of `{images}` (replayed) through `runtime.cli.session.run_session` "
            f"({summary.fps:.0f} FPS), {machine_line(result['machine'])}.",
            "",
            f"Growth after {cfg.warmup} warm-up frames: **{result['growth_mb']} MB**, slope "
            f"**{result['kb_per_frame']} KB/frame** (least squares over the samples).",
            "",
            markdown_table(["frame", "RSS MB"], rows, digits=1),
        ]
    )
    json_path, md_path = write_report(out, "soak", result, markdown)
    result["files"] = {"json": str(json_path), "markdown": str(md_path)}
    return result
