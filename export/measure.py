"""CPU latency of the exported variants against PyTorch eager, side by side: ``python -m export.measure``.

``python -m export.measure CHECKPOINT EXPORT_DIR [--batch 1 --batch 8] [--rounds 15] [--threads 2]``

Every variant (PyTorch eager FP32, and each ``*.onnx`` in EXPORT_DIR on ONNX Runtime's CPU provider) runs
the same uint8 batch, interleaved round by round so that load from other processes hits all of them alike;
the median per variant and its ratio to ONNX Runtime FP32 are printed as a markdown table, with the kernels
ONNX Runtime chose for each model. Report ratios, not absolute times, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.console import command_boundary


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


@command_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--batch", type=int, action="append", default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    import torch

    from export.images import fixed_images
    from export.quantize import ort_kernels
    from runtime.backends.onnxruntime import create_session
    from runtime.card import read_onnx_card
    from training.checkpoint import load_model
    from training.model import DeployModel

    torch.set_num_threads(args.threads)
    deploy = DeployModel(load_model(args.checkpoint)).eval()
    models = sorted(args.export_dir.glob("*.onnx"), key=lambda p: (len(p.name), p.name))
    card = read_onnx_card(models[0])
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "batches": {}, "kernels": {}}
    for path in models:
        kernels = ort_kernels(path, args.threads)
        results["kernels"][path.name] = kernels
        print(f"{path.name}: ONNX Runtime CPU kernels {kernels}")
    for batch in args.batch or [1, 8]:
        images = fixed_images(card, batch, seed=batch)
        tensor = torch.from_numpy(images)
        runners: dict[str, Callable[[], Any]] = {}

        def eager(t: Any = tensor) -> Any:
            with torch.inference_mode():
                return deploy(t)

        runners["pytorch eager fp32"] = eager
        for path in models:
            session = create_session(path, threads=args.threads)
            runners[f"onnxruntime {path.name}"] = lambda s=session, x=images: s.run(None, {"image": x})
        times = time_interleaved(runners, args.rounds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        base = medians["onnxruntime model.onnx"]
        print(f"\nbatch {batch}: median of {args.rounds} interleaved rounds, {args.threads} threads")
        print("| variant | median ms | speed vs ORT FP32 | speed vs PyTorch eager |")
        print("|---|---|---|---|")
        for name, median in medians.items():
            print(
                f"| {name} | {1000 * median:.1f} | {base / median:.2f}x | "
                f"{medians['pytorch eager fp32'] / median:.2f}x |"
            )
        results["batches"][str(batch)] = {name: 1000 * m for name, m in medians.items()}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
