"""Image sets the export step reads: INT8 calibration images and the fixed images of the ONNX parity check.

A calibration set is named by the user: a folder of images (searched recursively) or any dataset spec that
:func:`runtime.datasets.open_dataset` understands (then its database images: the map the model will serve).
Images are brought to the card's input exactly as the runtime does (:class:`runtime.model.preprocess.Preprocessor`),
so calibration sees what inference will see.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import ModelCard
from runtime.errors import DatasetError
from runtime.protocol import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSet:
    """An ordered list of image files and a description (recorded in the INT8 model card)."""

    paths: tuple[Path, ...]
    description: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, limit: int | None) -> ImageSet:
        """At most ``limit`` images, spread evenly over the set (deterministic)."""
        if limit is None or limit >= len(self.paths):
            return self
        if limit <= 0:
            raise DatasetError(f"the image limit must be positive, got {limit}")
        idx = np.linspace(0, len(self.paths) - 1, limit).round().astype(int)
        chosen = tuple(self.paths[i] for i in idx)
        return ImageSet(chosen, f"{self.description}, {limit} of {len(self.paths)} images evenly spaced")


def open_image_set(spec: str | Path) -> ImageSet:
    """A folder of images, or a dataset spec (its database images). :class:`DatasetError` if it holds none."""
    from runtime.datasets import SPEC_HELP, is_dataset_spec, open_dataset

    path = Path(spec)
    if not is_dataset_spec(spec) and path.is_dir():
        files = tuple(
            sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        )
        if not files:
            raise DatasetError(
                f"calibration set '{path}' holds no images (looked for {', '.join(IMAGE_SUFFIXES)} files, "
                "recursively); name a folder of map or training images, or a dataset folder with database.csv"
            )
        return ImageSet(files, f"folder '{path}' ({len(files)} images)")
    if not is_dataset_spec(spec):
        raise DatasetError(
            f"calibration set '{spec}' does not exist; name a folder of images or a dataset ({SPEC_HELP})"
        )
    dataset = open_dataset(spec)
    if dataset.num_db == 0:
        raise DatasetError(f"calibration set '{spec}': its database split is empty; it needs images")
    files = tuple(dataset.image_path("database", i) for i in range(dataset.num_db))
    return ImageSet(files, f"dataset '{spec}' database ({len(files)} images)")


def load_images(paths: Sequence[Path], card: ModelCard) -> np.ndarray:
    """Decode ``paths`` and bring them to the card's input: ``uint8 (N, H, W, 3)`` in card channel order."""
    from runtime import Preprocessor
    from runtime.datasets import read_rgb

    prep = Preprocessor(card)
    out = np.empty((len(paths), *prep.input_shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = prep(read_rgb(path), color="RGB")  # DatasetError names an unreadable file
    return out


def iter_batches(paths: Sequence[Path], card: ModelCard, batch_size: int) -> Iterator[np.ndarray]:
    """:func:`load_images` in batches of ``batch_size`` (the last one may be shorter)."""
    for start in range(0, len(paths), batch_size):
        yield load_images(paths[start : start + batch_size], card)


def fixed_images(card: ModelCard, count: int = 8, seed: int = 0) -> np.ndarray:
    """Deterministic test images at the card's size: smooth random colour fields with edges and noise.

    Used for the FP32 ONNX-vs-PyTorch check, which needs no dataset. ``uint8 (count, H, W, 3)``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = card.input_height, card.input_width
    out = np.empty((count, h, w, 3), dtype=np.uint8)
    for i in range(count):
        coarse = rng.uniform(0, 255, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):  # a few sharp rectangles, like facades and windows
            y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            y1, x1 = min(h, y0 + rng.integers(4, h // 2 + 5)), min(w, x0 + rng.integers(4, w // 2 + 5))
            image[y0:y1, x0:x1] = rng.uniform(0, 255, size=3)
        image += rng.normal(0, 6, size=image.shape).astype(np.float32)
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out
