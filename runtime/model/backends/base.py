"""The one interface every inference backend implements; its base class validates inputs.

A backend owns its resources (sessions, engines, CUDA buffers and streams): use it in a ``with`` block or
call :meth:`Backend.close` (idempotent). Every backend takes ``uint8 (N, H, W, 3)`` images in the card's
channel order at the card's size and returns ``float32 (N, D)`` L2-normalised descriptors, so every
backend fails the same way on bad input (:meth:`Backend.validate`).
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendError, ConfigError, ModelCardError, RunFailedError
from runtime.model.card import ModelCard

log = logging.getLogger(__name__)

UNIT_NORM_TOLERANCE = 1e-2  # |norm - 1| of a descriptor; FP16 and INT8 models stay within 1e-3


class Backend(abc.ABC):
    """Runs a NetVLAD model. Subclasses implement :meth:`_infer` and :meth:`_release`."""

    #: short name used in logs, reports and ``--backend`` ("onnxruntime", "tensorrt")
    name: str = "backend"

    def __init__(self, path: str | Path, card: ModelCard) -> None:
        self.path = Path(path)
        self.card = card
        self._closed = False

    # -- capabilities ------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of one image, from the card."""
        return (self.card.input_height, self.card.input_width, 3)

    #: the batch size a model was exported with, when it is fixed (its graph's first input dimension)
    _fixed_batch: int | None = None

    @property
    def max_batch(self) -> int | None:
        """The largest batch this backend accepts (None: no limit; a fixed-batch model: its batch)."""
        return self._fixed_batch

    @property
    def min_batch(self) -> int:
        """The smallest batch this backend accepts (a fixed-batch model: its batch)."""
        return self._fixed_batch or 1

    @property
    def device(self) -> str:
        """Where inference runs, in words (e.g. ``"CPUExecutionProvider"``)."""
        return "cpu"

    def describe(self) -> str:
        return f"{self.name} on {self.device}: {self.path.name} ({self.card.precision}, {self.card.descriptor_dim}-D)"

    # -- inference ---------------------------------------------------------------------------------
    def validate(self, images: np.ndarray) -> np.ndarray:
        """Check ``images`` against the card; returns them C-contiguous. Raises ConfigError naming the problem.

        Any batch size is valid: :meth:`infer` splits and pads to the backend's batch limits.
        """
        h, w, c = self.input_shape
        expected = f"uint8 images (N, {h}, {w}, {c}) NHWC {self.card.channel_order}"
        hint = "; convert frames with runtime.model.preprocess.Preprocessor(card)"
        if not isinstance(images, np.ndarray):
            raise ConfigError(f"{self.name} backend expects {expected}, got {type(images).__name__}{hint}")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, c):
            raise ConfigError(
                f"{self.name} backend expects {expected}, got {images.dtype} {tuple(images.shape)}{hint}"
            )
        return np.ascontiguousarray(images)

    def infer(
        self,
        images: np.ndarray,
        batch_size: int | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> np.ndarray:
        """``uint8 (N, H, W, 3)`` -> ``float32 (N, D)`` descriptors (a new array owned by the caller).

        The one images-to-descriptors function of the kit: any ``N`` (0 included) runs in chunks of at most
        ``batch_size`` images (None: all at once), clipped to the backend's :attr:`max_batch`; a chunk below
        :attr:`min_batch` (a fixed-batch model) is padded by repeating its last image, and the padding's
        descriptors are dropped. ``progress(n)`` is called after each chunk with its image count (e.g. a
        progress bar's ``update``).
        """
        if self._closed:
            raise BackendError(f"{self.name} backend for '{self.path}' is closed")
        images = self.validate(images)
        n = images.shape[0]
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        chunk = n if batch_size is None else batch_size
        if self.max_batch is not None:
            chunk = min(chunk, self.max_batch)
        chunk = max(chunk, 1)
        out = np.empty((n, self.card.descriptor_dim), dtype=np.float32)
        for start in range(0, n, chunk):
            batch = images[start : start + chunk]  # (B, H, W, 3)
            real = batch.shape[0]
            if real < self.min_batch:
                pad = np.repeat(batch[-1:], self.min_batch - real, axis=0)
                batch = np.concatenate([batch, pad])  # (min_batch, H, W, 3)
            out[start : start + real] = self._checked(self._infer(batch), batch.shape[0])[:real]
            if progress is not None:
                progress(real)
        return out

    def _checked(self, out: np.ndarray, n: int) -> np.ndarray:
        d = self.card.descriptor_dim
        if out.shape != (n, d):
            raise BackendError(
                f"'{self.path}' returned descriptors of shape {out.shape}, but its card says "
                f"({n}, {d}); the card does not describe this model, re-export it"
            )
        finite = np.isfinite(out).all(axis=1)  # (N,)
        if not finite.all():
            raise RunFailedError(
                f"model '{self.path}' returned non-finite (NaN or infinite) descriptors for "
                f"{int((~finite).sum())} of {n} images; the model is broken: re-export it with netvlad-export "
                "and check its parity report"
            )
        norms = np.linalg.norm(out, axis=1)  # (N,)
        worst = float(np.abs(norms - 1.0).max()) if n else 0.0
        if worst > UNIT_NORM_TOLERANCE:
            raise RunFailedError(
                f"model '{self.path}' returned descriptors that are not L2-normalised (norm "
                f"{float(norms.min()):.4g}..{float(norms.max()):.4g}, expected 1); every netvlad-kit model "
                "ends in an L2 normalisation: re-export it with netvlad-export"
            )
        return out

    @abc.abstractmethod
    def _infer(self, images: np.ndarray) -> np.ndarray:
        """Validated ``uint8 (N, H, W, 3)``, ``min_batch <= N <= max_batch`` -> ``float32 (N, D)``."""

    # -- lifetime ----------------------------------------------------------------------------------
    def _release(self) -> None:  # noqa: B027 - optional hook
        """Free sessions, engines and device memory (called once)."""

    def close(self) -> None:
        """Release every resource; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing sensible left to do
            self.close()


def check_model_file(path: str | Path, kind: str) -> Path:
    """An existing, non-empty file, else ArtifactError naming it."""
    from runtime.errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(
            f"{kind} '{path}' does not exist; check the path or export it with netvlad-export"
        )
    if path.stat().st_size == 0:
        raise ArtifactError(f"{kind} '{path}' is empty (0 bytes); re-export it with netvlad-export")
    return path


def check_graph_input(path: str | Path, card: ModelCard, shape: Sequence[Any]) -> None:
    """The graph's input ``(N, H, W, 3)`` agrees with the card's height and width (symbolic dims pass)."""
    expected = (card.input_height, card.input_width, 3)
    fixed = [
        (dim, want) for dim, want in zip(list(shape)[1:], expected, strict=False) if isinstance(dim, int)
    ]
    if len(shape) != 4 or any(dim != want for dim, want in fixed):
        raise ModelCardError(
            f"'{path}': its model card says input (N, {card.input_height}, {card.input_width}, 3) but the graph "
            f"takes {tuple(shape)}; the card does not describe this graph: re-export it with netvlad-export"
        )
