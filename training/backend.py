"""The FP32 PyTorch model behind the runtime's :class:`~runtime.model.backends.base.Backend` interface.

The reference every exported artifact is compared with (export's parity gate, the benchmarks) runs through
the same ``infer`` as the artifacts themselves: same input validation, same batching, same output checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from runtime import Backend
from training.model.place import DeployModel, PlaceModel


class TorchBackend(Backend):
    """``DeployModel(model)`` in eval mode: ``uint8 (N, H, W, 3)`` RGB -> ``float32 (N, D)``, no autograd.

    ``model``: a :class:`PlaceModel` or a checkpoint path. ``device``: a torch device ("cpu", "cuda").
    ``threads``: torch CPU threads (None: leave torch's setting alone; it is process-wide).
    """

    name = "pytorch"

    def __init__(
        self, model: PlaceModel | str | os.PathLike, device: str = "cpu", threads: int | None = None
    ) -> None:
        path = Path("<in-memory PyTorch model>")
        if not isinstance(model, PlaceModel):
            from training.checkpoint import load_model

            path, model = Path(model), load_model(model)
        if threads:
            torch.set_num_threads(threads)
        self.place_model = model.eval()
        self._device = device
        self._deploy = DeployModel(self.place_model).eval().to(device)
        super().__init__(path, self.place_model.card(precision="fp32"))

    @property
    def device(self) -> str:
        return self._device

    def _infer(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._deploy(torch.from_numpy(images).to(self._device))  # (N, D)
            return out.float().cpu().numpy()

    def _release(self) -> None:
        self._deploy = None
