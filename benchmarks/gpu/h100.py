"""GPU benchmark in one run (``bash benchmarks/gpu/run.sh``): what the H100 test machine should measure.

Sections, each recorded as results or ``{"skipped": reason}``:

1. ``models``: export the paper's VGG16-NetVLAD at 480x640 (random weights, like GPU.md's reference rows;
   torchvision needed) and the default EfficientNet-Lite0-NetVLAD at 240x320 (its package needed) to ONNX
   FP32 and FP16 with the export step's own functions. ``--quick`` uses the tiny model instead.
2. ``parity``: PyTorch FP32 (TF32 off) against ONNX Runtime CUDA FP32 / FP16 (and CPU where there is no
   GPU) on fixed images: cosine min / p1 / median via :mod:`export.parity`.
3. ``latency``: batch 1 and 32 per image: PyTorch eager FP32 / FP16 (CUDA events), ONNX Runtime CUDA FP32 /
   FP16 with IO binding (uint8 input uploaded once, output kept on the device), and with CUDA graphs.
4. ``search``: exact search over N x 4096 FP16 places: faiss-gpu ``GpuIndexFlatIP`` (FP16) against torch
   matmul + top-k, batch 1 and 32, and their top-1 agreement with FP32 exact search.

Writes ``gpu.json`` under ``--out`` and prints a short table last. Only numbers from the same card and run
are compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.gpu")

# (name, model config overrides, input size) of the models to measure
MODELS = {
    "vgg16-480x640": {"backbone": "vgg16", "input_height": 480, "input_width": 640, "pretrained": False},
    "effnet-lite0-240x320": {"backbone": "efficientnet_lite0", "pretrained": True},
}
QUICK_MODELS = {
    "tiny-64x96": {"backbone": "efficientnet_lite0", "num_clusters": 8, "input_height": 64, "input_width": 96}
}


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"


def cuda_reason() -> str | None:
    """Why there is no CUDA device for torch here (None when there is one)."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc})"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def ort_cuda_reason() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA and cuDNN from torch's wheels (GPU.md)
        except Exception as exc:
            log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu: GPU.md)"
    return None


# -- 1. models ----------------------------------------------------------------------------------------------


def build_models(out: Path, quick: bool) -> dict[str, Any]:
    """Export each model to ONNX FP32 + FP16; returns per model its paths or the reason it was skipped."""
    import torch

    from export.config import ExportConfig
    from export.fp16 import convert_fp16, fp16_path
    from export.onnx import export_place_model
    from runtime.optional import available
    from training.model import ModelConfig, build_model

    exporter = "dynamo" if available("onnxscript") else "legacy"
    models: dict[str, Any] = {}
    for name, overrides in (QUICK_MODELS if quick else MODELS).items():
        try:
            torch.manual_seed(0)
            model = build_model(ModelConfig(**overrides)).eval()
            folder = out / "models" / name
            folder.mkdir(parents=True, exist_ok=True)
            fp32 = export_place_model(
                model, folder / "model.onnx", ExportConfig(exporter=exporter, threads=4)
            )
            fp16 = convert_fp16(fp32, fp16_path(fp32))
            models[name] = {"model": model, "fp32": fp32, "fp16": fp16, "exporter": exporter}
        except Exception as exc:
            models[name] = {"skipped": _reason(exc)}
            log.warning("model %s skipped: %s", name, _reason(exc))
    return models


# -- 2. + 3. parity and latency -------------------------------------------------------------------------------


def _time_ms(fn, repeats: int, warmup: int, sync=None) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    arr = np.asarray(samples)
    return {
        "p50_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "n": len(samples),
    }


def torch_paths(model, images: np.ndarray, batches, repeats: int) -> dict[str, Any]:
    """PyTorch eager FP32 (TF32 off) and FP16 channels-last on CUDA; descriptors of the FP32 reference."""
    import torch

    from training.model import DeployModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    deploy = DeployModel(model).eval().cuda()
    # .half() casts in place: the FP16 path gets its own copy, or the FP32 reference would run in FP16
    half = copy.deepcopy(deploy).half().to(memory_format=torch.channels_last)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        x_all = torch.from_numpy(images).cuda()
        out["reference"] = deploy(x_all).float().cpu().numpy()
        for batch in batches:
            x = (
                x_all[:batch]
                if batch <= len(x_all)
                else x_all.repeat(math.ceil(batch / len(x_all)), 1, 1, 1)[:batch]
            )
            out[f"torch_fp32_b{batch}"] = _time_ms(lambda x=x: deploy(x), repeats, 5, torch.cuda.synchronize)
            out[f"torch_fp16_b{batch}"] = _time_ms(lambda x=x: half(x), repeats, 5, torch.cuda.synchronize)
    return out


def ort_session(path: Path, provider: str, cuda_graph: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if provider == "cuda":
        providers = [
            ("CUDAExecutionProvider", {"enable_cuda_graph": "1" if cuda_graph else "0"}),
            "CPUExecutionProvider",
        ]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def ort_iobinding_runner(session, images: np.ndarray, on_gpu: bool):
    """A callable running ``images`` through ``session`` with IO binding (fixed device buffers for CUDA graphs)."""
    import onnxruntime as ort

    inp, outp = session.get_inputs()[0].name, session.get_outputs()[0].name
    if not on_gpu:
        return (lambda: session.run([outp], {inp: images})[0]), (
            lambda: session.run([outp], {inp: images})[0]
        )
    x = ort.OrtValue.ortvalue_from_numpy(images, "cuda", 0)
    dim = session.get_outputs()[0].shape[1]
    y = ort.OrtValue.ortvalue_from_shape_and_type([images.shape[0], dim], np.float32, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input(inp, x)
    binding.bind_ortvalue_output(outp, y)

    def run():
        session.run_with_iobinding(binding)

    return run, (lambda: (session.run_with_iobinding(binding), y.numpy())[1])


def ort_paths(
    entry: dict[str, Any],
    images: np.ndarray,
    reference: np.ndarray | None,
    batches,
    repeats: int,
    provider: str,
) -> dict[str, Any]:
    """ONNX Runtime FP32 / FP16 (and with CUDA graphs on the GPU): parity on ``images``, then timings."""
    from export.parity import compare_images

    out: dict[str, Any] = {}
    variants = [("fp32", False), ("fp16", False)]
    if provider == "cuda":
        variants += [("fp32", True), ("fp16", True)]
    for precision, graph in variants:
        label = f"ort_{provider}_{precision}" + ("_cudagraph" if graph else "")
        try:
            if reference is None:
                out[f"{label}_parity"] = {"error": "no PyTorch reference (see the torch section's error)"}
            else:
                _, fetch = ort_iobinding_runner(
                    ort_session(entry[precision], provider, graph), images, provider == "cuda"
                )
                pr = compare_images(label, precision, reference, fetch(), f"{len(images)} fixed images")
                out[f"{label}_parity"] = {
                    "cosine_min": pr.cosine_min,
                    "cosine_p1": pr.cosine_p1,
                    "cosine_median": pr.cosine_median,
                    "passed": pr.passed,
                    "failures": list(pr.failures),
                }
            for batch in batches:
                x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))  # (B, H, W, 3)
                session = ort_session(entry[precision], provider, cuda_graph=graph)
                run_once, _ = ort_iobinding_runner(session, x, provider == "cuda")
                out[f"{label}_b{batch}"] = _time_ms(run_once, repeats, 5)
        except Exception as exc:
            out[label] = {"error": _reason(exc), "trace": traceback.format_exc()[-2000:]}
            log.error("%s failed: %s", label, _reason(exc))
    return out


# -- 4. search ----------------------------------------------------------------------------------------------


def gpu_search(places: int, dim: int, repeats: int) -> dict[str, Any]:
    """faiss-gpu flat FP16 vs torch matmul + top-k over ``places`` x ``dim`` FP16 descriptors."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    db = torch.randn(places, dim, device="cuda", generator=gen)
    db = torch.nn.functional.normalize(db, dim=1)
    pick = torch.randint(0, places, (32,), device="cuda", generator=gen)
    queries = torch.nn.functional.normalize(
        db[pick]
        + 0.5 * torch.nn.functional.normalize(torch.randn(32, dim, device="cuda", generator=gen), dim=1),
        dim=1,
    )
    exact = (queries @ db.T).topk(10, dim=1).indices.cpu().numpy()  # FP32 exact ids
    db16 = db.half()
    out: dict[str, Any] = {
        "places": places,
        "dim": dim,
        "bandwidth_floor_ms": places * dim * 2 / 3.35e12 * 1e3,
    }
    for batch in (1, 32):
        q16 = queries[:batch].half()
        out[f"torch_matmul_topk_fp16_b{batch}"] = _time_ms(
            lambda q=q16: (q @ db16.T).topk(10, dim=1), repeats, 5, torch.cuda.synchronize
        )
    ids = (queries.half() @ db16.T).topk(10, dim=1).indices.cpu().numpy()
    out["torch_top1_agreement"] = float(np.mean(ids[:, 0] == exact[:, 0]))
    try:
        import faiss

        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            raise RuntimeError(
                "faiss has no GPU here (faiss-cpu build or no device); install faiss-gpu (GPU.md)"
            )
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.useFloat16 = True
        index = faiss.GpuIndexFlatIP(resources, dim, config)
        host = db.cpu().numpy()
        del db
        index.add(host)
        qn = queries.cpu().numpy()
        for batch in (1, 32):
            out[f"faiss_gpu_flat_fp16_b{batch}"] = _time_ms(
                lambda b=batch: index.search(qn[:b], 10), repeats, 5
            )
        out["faiss_top1_agreement"] = float(np.mean(index.search(qn, 10)[1][:, 0] == exact[:, 0]))
    except Exception as exc:
        out["faiss_gpu"] = {"skipped": _reason(exc)}
    return out


# -- the run ------------------------------------------------------------------------------------------------


def run(out: Path, quick: bool) -> dict[str, Any]:
    """Every section; a failing section is recorded with its reason and the others still run."""
    from benchmarks.environment import machine_info
    from export.images import fixed_images

    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine_info(), "quick": quick, "models": {}, "search": None}
    no_cuda, no_ort_cuda = cuda_reason(), ort_cuda_reason()
    if not no_cuda:
        import torch

        result["device"] = torch.cuda.get_device_name(0)
    result["skipped"] = {k: v for k, v in {"torch_cuda": no_cuda, "ort_cuda": no_ort_cuda}.items() if v}
    batches = (1, 8) if quick else (1, 32)
    repeats = 10 if quick else 100
    for name, entry in build_models(out, quick).items():
        if "skipped" in entry:
            result["models"][name] = entry
            continue
        card = entry["model"].card()
        images = fixed_images(card, count=8)
        section: dict[str, Any] = {
            "input": f"{card.input_height}x{card.input_width}",
            "dim": card.descriptor_dim,
            "exporter": entry["exporter"],
        }
        reference = None
        if no_cuda:
            section["torch"] = {"skipped": no_cuda}
            import torch

            from training.model import DeployModel

            with torch.inference_mode():
                reference = DeployModel(entry["model"]).eval()(torch.from_numpy(images)).numpy()
        else:
            try:
                timings = torch_paths(entry["model"], images, batches, repeats)
                reference = timings.pop("reference")
                section["torch"] = timings
            except Exception as exc:  # a failure, not a missing capability: reported as an error
                section["torch"] = {"error": _reason(exc), "trace": traceback.format_exc()[-2000:]}
                log.error("torch paths of %s failed: %s", name, _reason(exc))
        provider = "cpu" if no_ort_cuda else "cuda"
        section["ort"] = ort_paths(entry, images, reference, batches, repeats, provider)
        result["models"][name] = section
        log.info("%s done", name)
    if no_cuda:
        result["search"] = {"skipped": no_cuda}
    else:
        try:
            result["search"] = gpu_search(100_000 if quick else 1_000_000, 4096, 20 if quick else 100)
        except Exception as exc:
            result["search"] = {"skipped": _reason(exc), "trace": traceback.format_exc()[-2000:]}
    (out / "gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def summary_table(result: dict[str, Any]) -> str:
    """The short table printed last: ms per batch p50 for every timed path."""
    rows = [f"device: {result.get('device', 'no CUDA device')}"]
    rows += [f"skipped {k}: {v}" for k, v in result.get("skipped", {}).items()]
    rows.append(f"{'model / path':58s} {'p50 ms':>9s} {'p99 ms':>9s}")
    for name, section in result["models"].items():
        if "skipped" in section:
            rows.append(f"{name}: skipped ({section['skipped']})")
            continue
        for group in ("torch", "ort"):
            for key, value in section.get(group, {}).items():
                if isinstance(value, dict) and "p50_ms" in value:
                    rows.append(f"{name + ' ' + key:58s} {value['p50_ms']:9.3f} {value['p99_ms']:9.3f}")
                elif isinstance(value, dict) and "cosine_min" in value:
                    rows.append(
                        f"{name + ' ' + key:58s} cos min {value['cosine_min']:.5f} median {value['cosine_median']:.5f}"
                    )
                elif isinstance(value, dict) and "skipped" in value:
                    rows.append(f"{name + ' ' + key:58s} skipped: {value['skipped'][:80]}")
    search = result.get("search") or {}
    if "skipped" in search:
        rows.append(f"search: skipped ({search['skipped']})")
    else:
        rows.append(
            f"search {search['places']:,} x {search['dim']} FP16 (floor ~{search['bandwidth_floor_ms']:.2f} ms)"
        )
        for key, value in search.items():
            if isinstance(value, dict) and "p50_ms" in value:
                rows.append(f"{'  ' + key:58s} {value['p50_ms']:9.3f} {value['p99_ms']:9.3f}")
            elif isinstance(value, dict) and "skipped" in value:
                rows.append(f"  {key}: skipped ({value['skipped']})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu.h100", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--quick", action="store_true", help="tiny model and map (the CPU smoke run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx", "root"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    result = run(args.out, args.quick)
    print("\n" + summary_table(result))
    print(f"\nfull results: {args.out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
