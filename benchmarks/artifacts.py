"""The backends a benchmark compares: the PyTorch reference and every exported artifact it is given.

Each one is opened as a runtime :class:`~runtime.model.backends.base.Backend` (``infer(uint8 (N, H, W, 3),
batch_size) -> float32 (N, D)``, ``card``, ``close()``): exported models through
``runtime.model.backends.open_backend``, so the benchmarks measure what robots run, and the PyTorch reference as
:class:`training.model.TorchBackend`. What cannot run here
(FP16 on a CPU provider without FP16 kernels, TensorRT without ``tensorrt``) is listed as skipped with
the reason, never silently replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime import read_card
from runtime.errors import ArtifactError
from runtime.optional import available
from runtime.protocol import ENGINE_SUFFIXES, MODEL_SUFFIXES, ONNX_SUFFIXES

log = logging.getLogger(__name__)

PRECISION_LABEL = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8 QDQ"}


def find_artifacts(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the ``.onnx`` / ``.engine`` / ``.plan`` files they hold (sorted, not recursive)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix.lower() in MODEL_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise ArtifactError(
                f"exported model '{p}' does not exist; pass .onnx/.engine files or the folder netvlad-export wrote"
            )
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class BackendPlan:
    """One backend to benchmark: ``kind`` is ``pytorch``, ``onnxruntime``, ``openvino`` or ``tensorrt``."""

    label: str
    kind: str
    precision: str
    path: Path | None = None
    provider: str = "cpu"  # onnxruntime: cpu or cuda; openvino: fp32 or bf16 (inference precision)
    device: str = "cpu"  # pytorch only


def plan_backends(
    checkpoint: str | Path | None, artifacts: Iterable[str | Path], *, gpu: bool | None = None
) -> tuple[list[BackendPlan], list[dict[str, str]]]:
    """The backends to run (reference first) and the ones skipped, each with its reason.

    ``gpu``: also plan ONNX Runtime's CUDA provider (default: when onnxruntime sees it).
    """
    plans: list[BackendPlan] = []
    skipped: list[dict[str, str]] = []
    if checkpoint is not None:
        plans.append(BackendPlan("PyTorch FP32 (reference)", "pytorch", "fp32", Path(checkpoint)))
    if gpu is None:
        gpu = _ort_has_cuda()
    files = find_artifacts(artifacts)
    onnx_files = [f for f in files if f.suffix.lower() in ONNX_SUFFIXES]
    engines = [f for f in files if f.suffix.lower() in ENGINE_SUFFIXES]
    order = {"fp32": 0, "int8": 1, "fp16": 2}
    cards = {f: read_card(f) for f in onnx_files}
    onnx_files = sorted(onnx_files, key=lambda f: (order.get(cards[f].precision, 9), f.name))
    for f in onnx_files:
        precision = cards[f].precision
        what = f"{PRECISION_LABEL[precision]} ({f.name})"
        plans.append(BackendPlan(f"ORT CPU {what}", "onnxruntime", precision, f, "cpu"))
        if gpu:
            plans.append(BackendPlan(f"ORT CUDA {what}", "onnxruntime", precision, f, "cuda"))
    plans += _openvino_plans(onnx_files, cards, skipped)
    if not gpu:
        skipped.append(
            {
                "label": "ORT CUDA",
                "reason": "onnxruntime has no CUDAExecutionProvider here (needs a CUDA device and onnxruntime-gpu)",
            }
        )
    trt_ok = available("tensorrt")
    for f in engines:
        label = f"TensorRT {f.name}"
        if not trt_ok:
            skipped.append({"label": label, "reason": "needs tensorrt (pip install 'netvlad-kit[tensorrt]')"})
        else:
            plans.append(BackendPlan(label, "tensorrt", read_card(f).precision, f))
    if not engines:
        reason = (
            "needs tensorrt (not installed here; TensorRT engines come from netvlad-export --engine on a GPU machine)"
            if not trt_ok
            else "no .engine file was given"
        )
        skipped.append({"label": "TensorRT FP16/INT8", "reason": reason})
    return plans, skipped


def _openvino_plans(onnx_files: list[Path], cards: dict, skipped: list[dict[str, str]]) -> list[BackendPlan]:
    """OpenVINO on every FP32 and INT8 model (FP32 inference), and BF16 inference of the FP32 model where
    the CPU has BF16; or why not."""
    if not available("openvino"):
        skipped.append(
            {"label": "OpenVINO", "reason": "needs openvino (pip install 'netvlad-kit[openvino]')"}
        )
        return []
    from runtime.model.backends.openvino import cpu_capabilities

    bf16 = "BF16" in cpu_capabilities()
    plans = []
    for f in onnx_files:
        precision = cards[f].precision
        if precision not in ("fp32", "int8"):
            continue
        plans.append(
            BackendPlan(f"OpenVINO {PRECISION_LABEL[precision]} ({f.name})", "openvino", precision, f, "fp32")
        )
        if precision == "fp32" and bf16:
            plans.append(BackendPlan(f"OpenVINO BF16 inference ({f.name})", "openvino", "bf16", f, "bf16"))
    if not bf16:
        skipped.append(
            {"label": "OpenVINO BF16", "reason": "this CPU has no BF16 (OpenVINO OPTIMIZATION_CAPABILITIES)"}
        )
    return plans


def _ort_has_cuda() -> bool:
    if not available("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def open_extractor(plan: BackendPlan, threads: int = 2):
    """Open ``plan`` as a :class:`~runtime.model.backends.base.Backend` (the PyTorch reference included)."""
    if plan.kind == "pytorch":
        from training.backend import TorchBackend

        return TorchBackend(plan.path, device=plan.device, threads=threads)
    from runtime import open_backend

    if plan.kind == "onnxruntime":
        options = {"threads": threads} if plan.provider == "cpu" else {}
        return open_backend(plan.path, backend=f"onnxruntime-{plan.provider}", **options)
    if plan.kind == "openvino":
        name = "openvino" if plan.provider == "fp32" else f"openvino-{plan.provider}"
        return open_backend(plan.path, backend=name, threads=threads)
    return open_backend(plan.path, backend="tensorrt")
