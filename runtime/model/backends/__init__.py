"""Inference backends behind one interface (:class:`~runtime.model.backends.base.Backend`).

``open_backend(path, backend="auto")`` picks the backend from the model file's suffix (``.onnx`` ->
ONNX Runtime, ``.engine``/``.plan`` -> TensorRT) or from ``backend``:

=========================  =========================================================
``auto``                   by suffix; ONNX Runtime picks CUDA when available, else CPU
``onnxruntime``            ONNX Runtime, provider ``auto``
``onnxruntime-cpu``        ONNX Runtime, CPUExecutionProvider
``onnxruntime-cuda``       ONNX Runtime, CUDAExecutionProvider (IO binding)
``onnxruntime-tensorrt``   ONNX Runtime, TensorrtExecutionProvider
``tensorrt``               TensorRT engine + card sidecar (cuda-python)
``openvino``               OpenVINO on the CPU, FP32 inference (INT8 QDQ models: INT8)
``openvino-bf16``          OpenVINO on the CPU, bfloat16 inference of the FP32 model
=========================  =========================================================

``onnxruntime-cuda`` with ``cuda_graph=True`` replays the model as a CUDA graph over fixed device buffers
(models exported with a fixed batch size only); ``onnxruntime-tensorrt`` takes its precision, engine-cache
key and batch profile from the model card (:func:`runtime.model.backends.onnxruntime.tensorrt_provider_options`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError, ConfigError
from runtime.model.backends.base import Backend

log = logging.getLogger(__name__)

# backend name -> (module, class, keyword arguments, model suffixes it accepts)
_ONNX = (".onnx",)
_ENGINE = (".engine", ".plan")
BACKENDS: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
    "onnxruntime": ("runtime.model.backends.onnxruntime", "OnnxRuntimeBackend", {"provider": "auto"}, _ONNX),
    "onnxruntime-cpu": (
        "runtime.model.backends.onnxruntime",
        "OnnxRuntimeBackend",
        {"provider": "cpu"},
        _ONNX,
    ),
    "onnxruntime-cuda": (
        "runtime.model.backends.onnxruntime",
        "OnnxRuntimeBackend",
        {"provider": "cuda"},
        _ONNX,
    ),
    "onnxruntime-tensorrt": (
        "runtime.model.backends.onnxruntime",
        "OnnxRuntimeBackend",
        {"provider": "tensorrt"},
        _ONNX,
    ),
    "tensorrt": ("runtime.model.backends.tensorrt", "TensorRTBackend", {}, _ENGINE),
    "openvino": ("runtime.model.backends.openvino", "OpenVINOBackend", {"precision": "fp32"}, _ONNX),
    "openvino-bf16": ("runtime.model.backends.openvino", "OpenVINOBackend", {"precision": "bf16"}, _ONNX),
}
BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
BACKEND_CHOICES = ("auto", *BACKENDS)


def open_backend(path: str | Path, backend: str = "auto", **options: Any) -> Backend:
    """Open the model at ``path`` with ``backend`` (see the table above). Use the result in a ``with`` block.

    ``options`` go to the backend class (e.g. ``threads=2`` for ONNX Runtime).
    """
    import importlib

    path = Path(path)
    suffix = path.suffix.lower()
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    if backend == "auto":
        if suffix not in BY_SUFFIX:
            raise ArtifactError(
                f"cannot tell the backend of '{path}' from its suffix '{suffix}': expected one of "
                f"{sorted(BY_SUFFIX)}; rename the file or pass --backend"
            )
        backend = BY_SUFFIX[suffix]
        log.info("backend auto -> %s (from the suffix of '%s')", backend, path.name)
    module, cls, kwargs, suffixes = BACKENDS[backend]
    if suffix not in suffixes:
        raise ConfigError(f"backend '{backend}' opens {list(suffixes)} files, got '{path}'")
    factory = getattr(importlib.import_module(module), cls)
    return factory(path, **{**kwargs, **options})


__all__ = ["BACKENDS", "BACKEND_CHOICES", "Backend", "open_backend"]
