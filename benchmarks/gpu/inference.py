"""Inference on the GPU: PyTorch for reference, the runtime's ONNX Runtime backend (IO binding, CUDA graphs),
ONNX Runtime's TensorRT provider (and what ``trt_int8_enable`` a QDQ model needs), TensorRT engines.

Every path is compared with the runtime's CPU backend on the same images (:func:`benchmarks.gpu.common.parity`)
and timed per batch. Where a provider or library is missing the entry says so (``{"missing": reason}``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu.common import error_entry, guarded, latency, parity

log = logging.getLogger(__name__)

# (model config overrides) of the models measured; --quick uses QUICK_MODELS
MODELS = {
    "effnet-lite0-240x320": {"backbone": "efficientnet_lite0", "pretrained": True},
    "vgg16-480x640": {"backbone": "vgg16", "input_height": 480, "input_width": 640, "pretrained": False},
}
QUICK_MODELS = {"tiny": {}}  # ModelConfig.preset("tiny") as it is


def build_models(
    out: Path, quick: bool, checkpoint: Path | None = None, names: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Export each model to ONNX FP32 and FP16 with the export step's own functions.

    ``checkpoint``: measure that trained model instead (one entry named after the file). ``names``: a
    subset of :data:`MODELS`.
    """
    import torch

    from export.config import ExportConfig
    from export.fp16 import convert_fp16, fp16_path
    from export.onnx import export_place_model
    from runtime.optional import available
    from training.checkpoint import load_model
    from training.model import ModelConfig, build_model

    exporter = "dynamo" if available("onnxscript") else "legacy"
    todo: dict[str, Any] = (
        QUICK_MODELS if quick else {k: v for k, v in MODELS.items() if k in (names or MODELS)}
    )
    if checkpoint is not None:
        todo = {Path(checkpoint).stem: None}
    models: dict[str, dict[str, Any]] = {}
    for name, overrides in todo.items():
        try:
            torch.manual_seed(0)
            if overrides is None:
                model = load_model(checkpoint).eval()
            elif quick:
                model = build_model(ModelConfig.preset("tiny")).eval()
            else:
                model = build_model(ModelConfig(**overrides)).eval()
            folder = out / "models" / name
            folder.mkdir(parents=True, exist_ok=True)
            fp32 = export_place_model(
                model, folder / "model.onnx", ExportConfig(exporter=exporter, threads=4)
            )
            models[name] = {"model": model, "fp32": fp32, "fp16": convert_fp16(fp32, fp16_path(fp32))}
        except Exception as exc:
            models[name] = error_entry(exc)
            log.error("model %s: %s", name, models[name]["error"])
    return models


def fixed_batch_copy(onnx_path: Path, batch: int) -> Path:
    """A copy of ``onnx_path`` whose input and output batch dimension is ``batch`` (for CUDA graphs)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch  # (N, ...) -> (batch, ...)
    del proto.graph.value_info[:]  # inner shapes keep the symbolic batch; ONNX Runtime re-infers them
    out = onnx_path.with_name(onnx_path.name.replace(".onnx", f".b{batch}.onnx"))
    onnx.save(proto, str(out))
    return out


def _images_of_batch(images: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))  # (B, H, W, 3)


def torch_paths(
    model: Any,
    evalset: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    batches: tuple[int, ...],
    repeats: int,
    device: str = "cuda",
) -> dict[str, Any]:
    """PyTorch eager FP32 (TF32 off) and FP16 (channels-last) on ``device``: parity with the runtime's CPU
    FP32 descriptors, then latency per batch."""
    import torch

    from training.model import DeployModel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    deploy = DeployModel(model).eval().to(device)
    # .half() casts in place: the FP16 path gets its own copy, or the FP32 path would run in FP16
    half = copy.deepcopy(deploy).half().to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    out: dict[str, Any] = {"device": device}
    with torch.inference_mode():
        for precision, module in (("fp32", deploy), ("fp16", half)):
            got = tuple(module(torch.from_numpy(part).to(device)).float().cpu().numpy() for part in evalset)
            out[f"{precision}_parity"] = parity(reference, got, precision)
        for batch in batches:
            x = torch.from_numpy(_images_of_batch(evalset[1], batch)).to(device)
            out[f"fp32_b{batch}"] = latency(lambda x=x: deploy(x), repeats, batch, sync)
            out[f"fp16_b{batch}"] = latency(lambda x=x: half(x), repeats, batch, sync)
    return out


def _describe(backend: Any, evalset: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    db, queries = evalset
    return backend.infer(db), backend.infer(queries)


def cpu_reference(models: dict[str, Path], evalset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Descriptors of ``evalset`` from the runtime's CPU backend, per precision."""
    from runtime.model.backends.onnxruntime import OnnxRuntimeBackend

    refs = {}
    for precision, path in models.items():
        with OnnxRuntimeBackend(path, provider="cpu") as backend:
            refs[precision] = _describe(backend, evalset)
    return refs


def backend_paths(
    models: dict[str, Path],
    evalset: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    provider: str,
    batches: tuple[int, ...],
    repeats: int,
    **options: Any,
) -> dict[str, Any]:
    """The runtime's :class:`OnnxRuntimeBackend` on ``provider`` for each precision: parity with the CPU
    FP32 reference, then latency per batch (IO binding on the GPU: one upload, one download)."""
    from runtime.model.backends.onnxruntime import OnnxRuntimeBackend

    out: dict[str, Any] = {}
    for precision, path in models.items():

        def one(precision=precision, path=path) -> dict[str, Any]:
            with OnnxRuntimeBackend(path, provider=provider, **options) as backend:
                entry: dict[str, Any] = {"device": backend.device}
                entry["parity"] = parity(reference, _describe(backend, evalset), precision)
                for batch in batches:
                    if backend.max_batch is not None and batch > backend.max_batch:
                        continue
                    x = _images_of_batch(evalset[1], batch)
                    entry[f"b{batch}"] = latency(lambda x=x: backend.infer(x), repeats, batch)
                return entry

        out[precision] = guarded(one)
    return out


def cuda_graph_paths(
    models: dict[str, Path], evalset, reference, repeats: int, caps: dict[str, str | None]
) -> dict[str, Any]:
    """Batch-1 copies of the models through the CUDA provider with a CUDA graph (fixed device buffers).

    Without CUDA the fixed-batch copies still run on the CPU, so the copy itself is checked."""
    fixed = {}
    for precision, path in models.items():
        try:
            fixed[precision] = fixed_batch_copy(path, 1)
        except Exception as exc:
            return {"error": f"fixed-batch copy of {path.name}: {error_entry(exc)['error']}"}
    if caps["ort_cuda"]:
        out = backend_paths(fixed, evalset, reference, "cpu", (1,), max(3, repeats // 10))
        return {
            "missing": f"CUDA graphs need the CUDA provider: {caps['ort_cuda']}",
            "fixed_batch_on_cpu": out,
        }
    return backend_paths(fixed, evalset, reference, "cuda", (1,), repeats, cuda_graph=True)


def ort_tensorrt_paths(
    models: dict[str, Path], evalset, reference, cache: Path, repeats: int, caps: dict[str, str | None]
) -> dict[str, Any]:
    """ONNX Runtime's TensorRT provider through the runtime backend (its options follow the card)."""
    if caps["ort_tensorrt"]:
        return {"missing": caps["ort_tensorrt"]}
    return backend_paths(models, evalset, reference, "tensorrt", (1, 8), repeats, cache_dir=cache)


def qdq_int8_flag(
    int8_onnx: Path, evalset, int8_cpu_reference, cache: Path, repeats: int, caps: dict[str, str | None]
) -> dict[str, Any]:
    """Does TensorRT (through ONNX Runtime) need ``trt_int8_enable`` for a QDQ model? Run it both ways.

    For each setting: whether the session starts on the TensorRT provider, parity with the same QDQ model
    on ONNX Runtime's CPU provider (int8 thresholds), and batch-1 latency. Verdict: ``needed`` when only
    the flagged session runs or only it is faster by > 20 % (TensorRT ran the Q/DQ layers in float
    without it), ``not needed`` when both run alike, else ``inconclusive``.
    """
    if caps["ort_tensorrt"]:
        return {"missing": caps["ort_tensorrt"]}
    from runtime.model.backends.onnxruntime import PROVIDER_NAMES, create_session, tensorrt_provider_options
    from runtime.model.card import read_onnx_card

    card = read_onnx_card(int8_onnx)
    out: dict[str, Any] = {}
    for flag in (False, True):

        def one(flag=flag) -> dict[str, Any]:
            options = {**tensorrt_provider_options(card, cache), "trt_int8_enable": str(flag)}
            options["trt_engine_cache_enable"] = "False"  # build both, never reuse one for the other
            session = create_session(int8_onnx, [(PROVIDER_NAMES["tensorrt"], options)])
            if session.get_providers()[0] != PROVIDER_NAMES["tensorrt"]:
                return {"error": f"the session runs on {session.get_providers()}, not TensorRT"}
            name = session.get_inputs()[0].name

            def run(x: np.ndarray) -> np.ndarray:
                return session.run(None, {name: x})[0]

            got = tuple(
                np.concatenate([run(part[i : i + 8]) for i in range(0, len(part), 8)]) for part in evalset
            )
            x = _images_of_batch(evalset[1], 1)
            return {"parity": parity(int8_cpu_reference, got, "int8"), "b1": latency(lambda: run(x), repeats)}

        entry = guarded(one)
        if not flag and "error" in entry:  # an answer to the question, not a failure of the run
            entry = {"failed_without_flag": entry["error"]}
        out[f"trt_int8_enable={flag}"] = entry
    off, on = out["trt_int8_enable=False"], out["trt_int8_enable=True"]
    if "failed_without_flag" in off and "error" not in on:
        out["verdict"] = "needed (the QDQ model does not run on TensorRT without it)"
    elif "failed_without_flag" in off or "error" in on:
        out["verdict"] = "inconclusive (see the errors)"
    elif off["b1"]["p50_ms"] > 1.2 * on["b1"]["p50_ms"]:
        out["verdict"] = "needed (without it TensorRT runs the Q/DQ layers in float: slower)"
    else:
        out["verdict"] = "not needed (TensorRT runs the QDQ model alike without the flag)"
    return out


def tensorrt_engine_paths(
    models: dict[str, Path], evalset, reference, repeats: int, caps: dict[str, str | None]
) -> dict[str, Any]:
    """Engines built by :func:`export.tensorrt.build_engine`, run by the runtime's TensorRT backend."""
    missing = caps["tensorrt"] or caps["cuda_python"] or caps["torch_cuda"]
    if missing:
        return {"missing": missing}
    from export.config import BatchRange
    from export.tensorrt import build_engine
    from runtime.model.backends.tensorrt import TensorRTBackend

    out: dict[str, Any] = {}
    for precision, path in models.items():

        def one(precision=precision, path=path) -> dict[str, Any]:
            engine = build_engine(path, batch=BatchRange(1, 1, 32))
            with TensorRTBackend(engine) as backend:
                entry = {"parity": parity(reference, _describe(backend, evalset), precision)}
                for batch in (1, 32):
                    x = _images_of_batch(evalset[1], batch)
                    entry[f"b{batch}"] = latency(lambda x=x: backend.infer(x), repeats, batch)
                return entry

        out[precision] = guarded(one)
    return out
