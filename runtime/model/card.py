"""The model card: what every exported artifact says about itself (DESIGN.md, "Contracts").

The runtime reads preprocessing from the card, never from flags. An ONNX model carries the card in its
``metadata_props`` (key :data:`ONNX_METADATA_KEY`, value JSON); a TensorRT engine carries it in a JSON
sidecar beside it (:func:`sidecar_path`).

The model itself takes ``uint8`` images, NHWC, RGB at ``input_height x input_width`` and does the cast,
scaling by 1/255, ``(x - mean) / std`` normalisation and transpose inside the graph; it returns float32
descriptors ``(N, descriptor_dim)``, L2-normalised. ``mean``/``std`` are recorded here for the record and
for PyTorch-side tooling, not for the runtime to apply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ModelCardError
from runtime.files import atomic_write_text
from runtime.optional import require

CARD_FORMAT_VERSION = 1
ONNX_METADATA_KEY = "netvlad_kit.model_card"
PRECISIONS = ("fp32", "fp16", "int8")
# How the runtime maps a frame of any size onto the model input. "stretch": cv2.resize to (H, W) with
# INTER_AREA when shrinking, INTER_LINEAR when enlarging, aspect ratio not preserved (as at training time).
RESIZE_POLICIES = ("stretch",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _three_finite(values: Any) -> bool:
    """``values`` is a sequence of 3 finite real numbers (not bools)."""
    return (
        isinstance(values, (list, tuple))
        and len(values) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


@dataclass(frozen=True)
class ModelCard:
    """Self-description of an exported NetVLAD model. Immutable; validated on construction."""

    backbone: str
    input_height: int
    input_width: int
    num_clusters: int
    local_dim: int  # channels of the backbone feature map fed to NetVLAD
    descriptor_dim: int  # length of the output descriptor (whitening_dim if whitened, else K * local_dim)
    weights_fingerprint: str  # sha256 prefix of the trained weights, see fingerprint_arrays()
    whitening_dim: int | None = None  # PCA-whitening output dimension, None when the model has none
    precision: str = "fp32"
    calibration: str | None = None  # description of the INT8 calibration set (required for int8)
    input_layout: str = "NHWC"
    input_dtype: str = "uint8"
    channel_order: str = "RGB"
    resize_policy: str = "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output_name: str = "descriptor"
    input_name: str = "image"
    format_version: int = CARD_FORMAT_VERSION
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for name in ("input_height", "input_width", "num_clusters", "local_dim", "descriptor_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.whitening_dim is not None:
            if not isinstance(self.whitening_dim, int) or self.whitening_dim <= 0:
                problems.append(
                    f"whitening_dim must be a positive integer or None, got {self.whitening_dim!r}"
                )
            elif self.whitening_dim != self.descriptor_dim:
                problems.append(
                    f"descriptor_dim ({self.descriptor_dim}) must equal whitening_dim ({self.whitening_dim})"
                )
        elif (
            isinstance(self.num_clusters, int)
            and isinstance(self.local_dim, int)
            and self.descriptor_dim != self.num_clusters * self.local_dim
        ):
            problems.append(
                f"without whitening descriptor_dim must be num_clusters * local_dim = "
                f"{self.num_clusters * self.local_dim}, got {self.descriptor_dim}"
            )
        if not self.backbone or not isinstance(self.backbone, str):
            problems.append(f"backbone must be a non-empty string, got {self.backbone!r}")
        if not isinstance(self.weights_fingerprint, str) or len(self.weights_fingerprint) < 8:
            problems.append(f"weights_fingerprint must be a hex string, got {self.weights_fingerprint!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "int8" and not self.calibration:
            problems.append("an int8 card must name its calibration set (calibration=...)")
        if self.input_layout != "NHWC" or self.input_dtype != "uint8":
            problems.append(f"input must be uint8 NHWC, got {self.input_dtype} {self.input_layout}")
        if self.channel_order not in ("RGB", "BGR"):
            problems.append(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if self.resize_policy not in RESIZE_POLICIES:
            problems.append(f"resize_policy must be one of {RESIZE_POLICIES}, got {self.resize_policy!r}")
        if not (_three_finite(self.mean) and _three_finite(self.std) and all(s > 0 for s in self.std)):
            problems.append(
                f"mean and std must be 3 finite numbers each (std > 0), got {self.mean!r}, {self.std!r}"
            )
        if self.format_version != CARD_FORMAT_VERSION:
            problems.append(f"format_version must be {CARD_FORMAT_VERSION}, got {self.format_version!r}")
        if problems:
            raise ModelCardError("invalid model card: " + "; ".join(problems))
        # Normalise sequences to tuples so that equality and hashing behave after a JSON round trip.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "extra", dict(self.extra))

    # -- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ModelCard:
        """Build a card from its dict form; ``source`` names the artifact in error messages."""
        if not isinstance(data, Mapping):
            raise ModelCardError(f"{source}: model card must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if isinstance(version, int) and version > CARD_FORMAT_VERSION:
            raise ModelCardError(
                f"{source}: model card format version {version} is newer than this netvlad-kit understands "
                f"(version {CARD_FORMAT_VERSION}); upgrade netvlad-kit (pip install -U netvlad-kit) or "
                "re-export the model with this version"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(
                f"{source}: model card has unknown fields {unknown}; was it written by "
                "another tool or a newer netvlad-kit?"
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ModelCardError(f"{source}: model card is incomplete: {exc}") from exc
        except ModelCardError as exc:
            raise ModelCardError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{source}: model card is not valid JSON ({exc})") from exc
        return cls.from_dict(data, source)

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # -- ONNX metadata_props -----------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries that carry this card in an ONNX model."""
        return {ONNX_METADATA_KEY: self.to_json()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str) -> ModelCard:
        """Read the card from ONNX ``metadata_props`` (a mapping); ``source`` is the file, for errors."""
        if ONNX_METADATA_KEY not in metadata:
            raise ModelCardError(
                f"'{source}' has no netvlad-kit model card (metadata key '{ONNX_METADATA_KEY}' is missing); "
                "it was not exported by netvlad-kit. Export it with: netvlad-export CHECKPOINT --out DIR"
            )
        return cls.from_json(metadata[ONNX_METADATA_KEY], source)


def attach_to_onnx(model_proto: Any, card: ModelCard) -> Any:
    """Write ``card`` into an ``onnx.ModelProto``'s ``metadata_props`` (replacing an older card)."""
    for key, value in card.to_metadata().items():
        for prop in list(model_proto.metadata_props):
            if prop.key == key:
                model_proto.metadata_props.remove(prop)
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    return model_proto


def _onnxruntime_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file through onnxruntime (a runtime-only install has no onnx package): a session
    that only parses the graph (no optimisation, one thread), not a backend's."""
    ort = require("onnxruntime", "reading the model card of an ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def read_onnx_card(path: str | os.PathLike) -> ModelCard:
    """Read the card of an ONNX file, with onnx if installed, else with onnxruntime (runtime-only install)."""
    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"'{path}' does not exist or is not a file")
    try:
        import onnx
    except ImportError:
        onnx = None
    try:
        if onnx is not None:
            proto = onnx.load(str(path), load_external_data=False)
            metadata = {p.key: p.value for p in proto.metadata_props}
        else:
            metadata = _onnxruntime_metadata(path)
    except ModelCardError:
        raise
    except Exception as exc:  # protobuf DecodeError, onnxruntime's Fail, ...
        raise ModelCardError(
            f"'{path}' cannot be read as an ONNX model ({type(exc).__name__}: {exc}); the file is truncated "
            "or not ONNX. Re-export it with netvlad-export"
        ) from exc
    return ModelCard.from_metadata(metadata, str(path))


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """Where an engine's card lives: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``card`` as the engine's JSON sidecar, atomically; returns the sidecar path."""
    return atomic_write_text(sidecar_path(engine_path), card.to_json() + "\n")


def read_sidecar(engine_path: str | os.PathLike) -> ModelCard:
    """Read the card beside an engine; a missing sidecar is an error that says how to get one."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise ModelCardError(
            f"engine '{engine_path}' has no model card: expected its JSON sidecar at '{side}'. Engines built "
            "by netvlad-export always have one; rebuild it with: netvlad-export CHECKPOINT --engine"
        )
    return ModelCard.from_json(side.read_text(encoding="utf-8"), str(side))


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card of any exported artifact: an ONNX file's metadata, or an engine's JSON sidecar (by suffix)."""
    from runtime.protocol import is_engine

    return read_sidecar(path) if is_engine(path) else read_onnx_card(path)


def fingerprint_arrays(named_arrays: Iterable[tuple[str, Any]], length: int = 16) -> str:
    """A stable fingerprint of model weights: sha256 over sorted (name, dtype, shape, bytes).

    Accepts numpy arrays (or anything ``np.asarray`` takes, e.g. CPU torch tensors via ``.numpy()``).
    The same weights always give the same fingerprint, whatever the order they are passed in.
    """
    digest = hashlib.sha256()
    for name, array in sorted(named_arrays, key=lambda item: item[0]):
        arr = np.ascontiguousarray(np.asarray(array))
        digest.update(name.encode())
        digest.update(str(arr.dtype).encode())
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:length]
