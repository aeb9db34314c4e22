"""Write a synthetic dataset in the kit's generic format (database.csv, queries.csv, images, queries.mp4)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from runtime.datasets.generic import write_split_csv
from runtime.files import atomic_directory
from training.synth.config import SynthConfig
from training.synth.world import SynthWorld

logger = logging.getLogger(__name__)

_WORKER_WORLD: SynthWorld | None = None


def _init_worker(cfg: SynthConfig) -> None:
    import cv2

    global _WORKER_WORLD
    cv2.setNumThreads(1)  # one process per core already
    _WORKER_WORLD = SynthWorld(cfg)


def _render_and_write(job: tuple[str, int, str]) -> np.ndarray | None:
    """Render one image and write it; return query frames (for the video, written in order)."""
    import cv2

    split, index, path = job
    assert _WORKER_WORLD is not None
    image = _WORKER_WORLD.image(split, index)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 93] if path.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(path, bgr, params):
        raise OSError(f"cannot write image '{path}'")
    return bgr if split == "queries" else None  # the video holds the query traversal only


def generate(
    cfg: SynthConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: Callable[..., Iterable] | None = None,
) -> Path:
    """Generate the dataset for ``cfg`` into ``out_dir`` atomically and return ``out_dir``.

    Layout: ``database.csv`` / ``queries.csv`` (image, easting, northing, heading, timestamp; queries also
    ``condition``), ``database/NNNNNN.jpg``, ``queries/NNNNNN.jpg``, ``queries.mp4`` (query traversal,
    mp4v), ``synth.json`` (the config) and, when ``cfg.unmapped_queries``, ``unmapped.csv`` +
    ``unmapped/uNNNNNN.jpg`` (places off the route: no database image within 25 m). ``progress``: optional wrapper such as
    :func:`runtime.cli.console.progress` (called as ``progress(iterable, total=..., desc=...)``).
    """
    import cv2

    out_dir = Path(out_dir)
    start = time.perf_counter()
    logger.info("building the synthetic '%s' world (seed %d)", cfg.name, cfg.seed)
    world = SynthWorld(cfg)
    logger.info(
        "rendering %d database + %d query + %d unmapped-place images (%dx%d) with %d process(es)%s",
        world.num_db,
        world.num_queries,
        world.num_unmapped,
        cfg.width,
        cfg.height,
        cfg.workers,
        "; each first builds the world, so the first images take a while" if cfg.workers > 1 else "",
    )
    ext = cfg.image_format
    db_names = tuple(f"database/{i:06d}.{ext}" for i in range(world.num_db))
    q_names = tuple(f"queries/{i:06d}.{ext}" for i in range(world.num_queries))
    # "u" prefix: file names stay unique across splits (a run's JSONL names frames by file name)
    u_names = tuple(f"unmapped/u{i:06d}.{ext}" for i in range(world.num_unmapped))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "database").mkdir()
        (tmp / "queries").mkdir()
        jobs = [("database", i, str(tmp / n)) for i, n in enumerate(db_names)]
        jobs += [("queries", i, str(tmp / n)) for i, n in enumerate(q_names)]
        if u_names:
            (tmp / "unmapped").mkdir()
            jobs += [("unmapped", i, str(tmp / n)) for i, n in enumerate(u_names)]
        video = None
        if cfg.write_video:
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            video = cv2.VideoWriter(str(tmp / "queries.mp4"), fourcc, cfg.video_fps, (cfg.width, cfg.height))
            if not video.isOpened():
                raise OSError(f"OpenCV cannot open an mp4v video writer for '{tmp / 'queries.mp4'}'")
        try:
            if cfg.workers > 1:
                import multiprocessing as mp

                # spawn, not fork: safe whatever threads the caller runs (torch, OpenCV pools)
                ctx = mp.get_context("spawn")
                with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
                    results = pool.imap(_render_and_write, jobs, chunksize=8)
                    _consume(results, video, progress, len(jobs))
            else:
                global _WORKER_WORLD
                _WORKER_WORLD = world
                try:
                    _consume(map(_render_and_write, jobs), video, progress, len(jobs))
                finally:
                    _WORKER_WORLD = None
        finally:
            if video is not None:
                video.release()
        db, q = world.database, world.queries
        write_split_csv(tmp / "database.csv", db_names, db.utm, db.heading_deg, db.time_s)
        write_split_csv(
            tmp / "queries.csv", q_names, q.utm, q.heading_deg, q.time_s, extra={"condition": q.conditions}
        )
        if u_names:
            u = world.unmapped
            write_split_csv(
                tmp / "unmapped.csv",
                u_names,
                u.utm,
                u.heading_deg,
                u.time_s,
                extra={"condition": u.conditions},
            )
        meta = {
            "generator": "training.synth",
            "config": _config_dict(cfg),
            "route_length_m": world.city.length_m,
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info(
        "wrote %s: %d database + %d query + %d unmapped-place images (%s preset, seed %d) in %.1f s",
        out_dir,
        world.num_db,
        world.num_queries,
        world.num_unmapped,
        cfg.name,
        cfg.seed,
        time.perf_counter() - start,
    )
    return out_dir


def _consume(results: Iterable, video, progress, total: int) -> None:
    """Write the rendered frames to the video, through ``progress`` (a bar, or log lines) when given."""
    if progress is not None:
        results = progress(results, total=total, desc="rendering", unit="img")
    for frame in results:
        if frame is not None and video is not None:
            video.write(frame)


def _config_dict(cfg: SynthConfig) -> dict:
    import dataclasses

    d = dataclasses.asdict(cfg)
    d["conditions"] = list(cfg.conditions)
    return d
