"""Training where users train: a few steps of ``python -m training.train`` on the device (mixed precision
on CUDA, as the trainer has it), a checkpoint, and a resume that continues to twice the steps.

Reports the mining-cache refresh and training-step throughput in images per second, read from the run's own
``metrics.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _train(args: list[str], timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", *args], capture_output=True, text=True, timeout=timeout_s
    )
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"training.train {' '.join(args)} exited {proc.returncode}: {' | '.join(tail)}")
    return {"seconds": seconds}


def training_steps(
    out: Path,
    device: str,
    steps: int,
    preset: str = "tiny",
    dataset: str | None = None,
    extra: tuple[str, ...] = (),
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """``steps`` optimiser steps with a checkpoint after each, then ``--resume`` up to ``2 * steps``."""
    run = out / f"train-{device.replace(':', '')}"
    common = ["--out", str(run), "--preset", preset, "--device", device, "--checkpoint-every", "1", *extra]
    if dataset:
        common += ["--dataset", str(dataset)]
    first = _train([*common, "--max-steps", str(steps)], timeout_s)
    checkpoint_steps = json.loads((run / "summary.json").read_text())["steps"]
    resumed = _train([*common, "--resume", "--max-steps", str(2 * steps)], timeout_s)
    summary = json.loads((run / "summary.json").read_text())
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    refresh = [e["images_per_s"] for e in events if e["event"] == "refresh"]
    config = json.loads((run / "run.json").read_text()).get("config", {})
    return {
        "device": device,
        "preset": preset,
        "mixed_precision": bool(config.get("amp")) and device.startswith("cuda"),
        "steps_before_resume": checkpoint_steps,
        "steps_after_resume": summary["steps"],
        "resumed": checkpoint_steps == steps and summary["steps"] == 2 * steps,
        "first_run": first,
        "resumed_run": resumed,
        "refresh_images_per_s": float(np.median(refresh)) if refresh else None,
        "refreshes": len(refresh),
        "train_images_per_s": summary["train_images_per_s"],
        "peak_memory_mb": summary.get("peak_memory_mb"),
    }
