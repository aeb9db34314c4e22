"""Frames of any size and colour order -> the model card's input: ``uint8`` ``(H, W, 3)`` in card order.

The one place where frames become model input, shared by the map builder and the localiser, so that
map images and queries can never be preprocessed differently. The model does the rest (cast, /255,
mean/std, NHWC->NCHW) inside its graph.

Resize policy ``"stretch"`` (the only one a card may name today, see :data:`runtime.model.card.RESIZE_POLICIES`):
``cv2.resize`` straight to the card's ``(input_height, input_width)``, aspect ratio *not* preserved, as at
training time; ``INTER_AREA`` when shrinking in both directions (anti-aliased), ``INTER_LINEAR`` otherwise.
A frame that already has the input size is only colour-converted (no copy when nothing changes).

Colour: OpenCV decoders give BGR; the datasets' ``read_image`` gives RGB. Callers say which they pass
(``color="BGR"`` or ``"RGB"``); greyscale ``(H, W)`` / ``(H, W, 1)`` frames are expanded to 3 channels and
4-channel frames (BGRA/RGBA) lose their alpha.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.errors import ConfigError
from runtime.model.card import ModelCard

COLOR_ORDERS = ("BGR", "RGB")


class Preprocessor:
    """Turns frames into model input for one :class:`~runtime.model.card.ModelCard`. Stateless and thread-safe."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.height = card.input_height
        self.width = card.input_width
        self.channel_order = card.channel_order

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of one preprocessed frame."""
        return (self.height, self.width, 3)

    def __call__(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        """One frame ``uint8 (h, w[, c])`` in ``color`` order -> ``uint8 (H, W, 3)`` C-contiguous, card order.

        The returned array is new (or ``frame`` itself when nothing had to change) and owned by the caller.
        """
        if color not in COLOR_ORDERS:
            raise ConfigError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
        if not isinstance(frame, np.ndarray):
            raise ConfigError(f"a frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ConfigError(
                f"a frame must be uint8 (0-255), got {frame.dtype} {frame.shape}; "
                "convert it with (frame * 255).clip(0, 255).astype(np.uint8) if it is scaled to [0, 1]"
            )
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            color_in = "BGR"
        elif frame.ndim == 3 and frame.shape[2] in (3, 4):
            if frame.shape[2] == 4:
                frame = frame[:, :, :3]
            color_in = color
        else:
            raise ConfigError(
                f"a frame must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8, got shape {frame.shape}"
            )
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise ConfigError(f"a frame must not be empty, got shape {frame.shape}")
        h, w = frame.shape[:2]
        if (h, w) != (self.height, self.width):
            shrinking = h >= self.height and w >= self.width
            interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            frame = cv2.resize(frame, (self.width, self.height), interpolation=interpolation)
        if color_in != self.channel_order:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)  # the same swap both ways
        return np.ascontiguousarray(frame)

    def batch(self, frames, color: str = "BGR") -> np.ndarray:
        """Several frames -> ``uint8 (N, H, W, 3)``, the backends' input."""
        out = np.empty((len(frames), self.height, self.width, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            out[i] = self(frame, color)
        return out
