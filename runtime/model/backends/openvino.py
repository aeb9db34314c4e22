"""OpenVINO on the CPU over the same exported ``.onnx`` files as ONNX Runtime (``pip install
'netvlad-kit[openvino]'``; ``--backend openvino`` or ``openvino-bf16``).

The model card is read from the ONNX metadata as for ONNX Runtime, so the parity gate and the map check
treat both backends alike. ``precision="bf16"`` runs the FP32 model with OpenVINO's bfloat16 inference
precision (no calibration; needs a CPU with BF16: AVX-512 BF16 or AMX, ``OPTIMIZATION_CAPABILITIES``);
the INT8 QDQ models the kit exports run on OpenVINO's INT8 kernels as they are.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError, ConfigError
from runtime.model.backends.base import Backend, check_graph_input, check_model_file
from runtime.model.card import read_onnx_card
from runtime.optional import require

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # the kit's name -> OpenVINO's INFERENCE_PRECISION_HINT


def cpu_capabilities(core=None) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of this CPU, e.g. ``['BF16', 'FP32', 'INT8', ...]`` (from
    ``core``, an ``openvino.Core``, when the caller has one)."""
    if core is None:
        core = require("openvino", "running ONNX models with OpenVINO (--backend openvino)").Core()
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINOBackend(Backend):
    """An OpenVINO model compiled for the CPU from an exported ``.onnx`` file (card in its metadata)."""

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        """Open ``path``. ``precision``: ``fp32`` or ``bf16`` (inference precision; the file stays as it is).
        ``threads``: inference threads (None or 0: one per core)."""
        ov = require("openvino", "running ONNX models with OpenVINO (--backend openvino)")
        if precision not in PRECISIONS:
            raise ConfigError(f"OpenVINO precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        path = check_model_file(path, "ONNX model")
        card = read_onnx_card(path)
        super().__init__(path, card)
        core = ov.Core()
        capabilities = cpu_capabilities(core)
        if precision == "bf16" and "BF16" not in capabilities:
            raise ConfigError(
                f"this CPU has no BF16 support (OpenVINO reports {capabilities}); use --backend openvino (FP32)"
            )
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO's own exception for a graph it cannot read
            raise ArtifactError(
                f"OpenVINO cannot read '{path}' ({exc}); re-export it with netvlad-export"
            ) from exc
        inputs = model.inputs
        if len(inputs) != 1 or inputs[0].get_element_type() != ov.Type.u8:
            raise ArtifactError(
                f"'{path}' must take one uint8 NHWC image tensor, it takes "
                f"{[(i.get_any_name(), str(i.get_element_type())) for i in inputs]}; re-export it with netvlad-export"
            )
        shape = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()]
        check_graph_input(path, card, shape)
        self._fixed_batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.precision = precision
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time
        log.info("opened %s", self.describe())

    @property
    def device(self) -> str:
        return f"CPU ({self.precision} inference)"

    def _infer(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self._request.infer({0: images})
            return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)  # a copy we own

    def _release(self) -> None:
        self._request = None
        self._compiled = None
