"""Checkpoints: one ``.pt`` file with the model's config, weights and provenance, and (for ``--resume``) the
training state. Written atomically (runtime.files): a crash never leaves a half-written checkpoint.

Layout (a plain dict, loaded with ``torch.load(weights_only=True)`` so a foreign pickle cannot run code)::

    {"format": "netvlad-kit.checkpoint", "format_version": 1,
     "model_config": ModelConfig.to_dict(), "model_state": state_dict, "provenance": {...},
     "fingerprint": str, "training_state": {...} | None}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from runtime.errors import ArtifactError, ConfigError
from runtime.files import atomic_path
from training.model import ModelConfig, PlaceModel

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "netvlad-kit.checkpoint"
CHECKPOINT_VERSION = 1
HOW_TO_GET_ONE = (
    "train one with: python -m training.train --out DIR (it writes DIR/model.pt, the model to deploy)"
)


def save_checkpoint(
    path: str | os.PathLike, model: PlaceModel, training_state: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (and optionally the ``training_state`` that ``--resume`` needs) to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": dict(model.provenance),
        "fingerprint": model.fingerprint(),
        "training_state": training_state,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.debug("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint file; :class:`ArtifactError` if missing, corrupt or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint '{path}' does not exist or is not a file; {HOW_TO_GET_ONE}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors, truncated or empty files, unsafe foreign pickles
        first_line = next(iter(str(exc).splitlines()), "") or f"{path.stat().st_size} bytes"
        raise ArtifactError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {first_line[:200]}); "
            f"it is truncated, corrupt or not a netvlad-kit checkpoint. Use another checkpoint or {HOW_TO_GET_ONE}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(
            f"'{path}' is not a netvlad-kit checkpoint (expected a dict with format '{CHECKPOINT_FORMAT}', "
            f"found {found}); {HOW_TO_GET_ONE}"
        )
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise ArtifactError(
            f"checkpoint '{path}' has format version {version!r}, this netvlad-kit reads version "
            f"{CHECKPOINT_VERSION}; use the netvlad-kit that wrote it or retrain"
        )
    for key in ("model_config", "model_state"):
        if not isinstance(payload.get(key), dict):
            raise ArtifactError(f"checkpoint '{path}' has no '{key}' entry; it is damaged. {HOW_TO_GET_ONE}")
    return payload


def model_from_payload(payload: dict[str, Any], source: str = "<checkpoint>") -> PlaceModel:
    """Rebuild the :class:`PlaceModel` stored in a loaded checkpoint ``payload`` (eval mode)."""
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except ConfigError as exc:
        raise ArtifactError(f"checkpoint '{source}' has an invalid model config: {exc}") from exc
    model = PlaceModel(config, pretrained=False)  # weights come from the checkpoint, not from ImageNet
    try:
        model.load_state_dict(payload["model_state"], strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"checkpoint '{source}' weights do not fit its model config {config}: {str(exc)[:300]}"
        ) from exc
    model.provenance = dict(payload.get("provenance") or {})
    model.eval()
    return model


def load_model(path: str | os.PathLike) -> PlaceModel:
    """Load the :class:`PlaceModel` of checkpoint ``path``, in eval mode, on the CPU."""
    return model_from_payload(load_checkpoint(path), str(path))
