"""The evaluation protocol's constants, in one place: radii, splits, recall cut-offs and file suffixes.

Ground truth is purely geometric (NetVLAD, Arandjelović et al. 2016, section 5; training/README.md):

- training **potential positives**: database images within :data:`POSITIVE_RADIUS_M` (10 m) of the query;
- training **definite negatives**: database images farther than :data:`NEGATIVE_RADIUS_M` (25 m);
- **evaluation positives**: database images within :data:`EVAL_RADIUS_M` (25 m); a query is found at N when
  one of its first N matches is one of them (:mod:`runtime.evaluation.recall`).

Every stage (training, export parity, the map's unknown-place calibration, benchmarks, the demo) takes its
defaults from here, so "recall@1" means the same thing everywhere.
"""

from __future__ import annotations

from typing import Literal

POSITIVE_RADIUS_M = 10.0  # training positives: within 10 m
NEGATIVE_RADIUS_M = 25.0  # training negatives: beyond 25 m
EVAL_RADIUS_M = 25.0  # evaluation positives: within 25 m (also the map's "same place" radius)

Split = Literal["database", "queries", "unmapped"]  # unmapped: queries of places not in the database
SPLITS: tuple[str, ...] = ("database", "queries")
SPLIT_FILES = {"database": "database.csv", "queries": "queries.csv"}  # the generic dataset format
UNMAPPED_FILE = "unmapped.csv"  # optional, same format: queries of places not in the database

RECALL_NS = (1, 5, 10, 20)  # recall@N reported by evaluation
GATED_NS = (1, 5, 10)  # recall@N the export parity gate checks

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")  # TensorRT engines; their card is a JSON sidecar
MODEL_SUFFIXES = ONNX_SUFFIXES + ENGINE_SUFFIXES
IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)  # what OpenCV decodes


def is_engine(path) -> bool:
    """True when ``path`` names a TensorRT engine (by suffix, case-insensitive)."""
    return str(path).lower().endswith(ENGINE_SUFFIXES)
