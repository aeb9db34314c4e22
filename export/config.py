"""The export configuration: one frozen, validated dataclass that the CLI builds and every step reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from runtime.errors import ConfigError

EXPORTERS = ("dynamo", "legacy")
INT8_TARGETS = ("tensorrt", "cpu")


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes an artifact must serve: TensorRT's optimisation profile ``min <= opt <= max``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"batch {name} must be a positive integer, got {value!r}")
        if not self.min <= self.opt <= self.max:
            raise ConfigError(
                f"batch range must satisfy min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}; "
                "write it as MIN:OPT:MAX, for example --batch-profile 1:8:32"
            )

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"MIN:OPT:MAX"``, ``"MIN:MAX"`` (opt = max) or ``"N"`` (fixed)."""
        parts = str(text).strip().split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"batch range {text!r} is not MIN:OPT:MAX with integers, for example --batch-profile 1:8:32"
            ) from None
        if len(values) == 1:
            values = values * 3
        elif len(values) == 2:
            values = [values[0], values[1], values[1]]
        elif len(values) != 3:
            raise ConfigError(f"batch range {text!r} has {len(values)} fields; expected MIN:OPT:MAX")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how. Immutable; validated on construction; presets in :attr:`PRESETS`.

    ``calibration``: folder of images or dataset spec for INT8 (required with ``int8``).
    ``validation``: dataset spec for the parity gate's recall (default: the calibration set when it is a
    dataset; without one only descriptor cosines are gated). ``validation_limit``: at most this many
    database and query images are used for parity. ``int8_targets``: ``"tensorrt"`` writes
    ``model.int8.onnx`` (symmetric int8 activations, what TensorRT consumes), ``"cpu"`` writes
    ``model.int8-cpu.onnx`` (unsigned activations, what ONNX Runtime's x86 kernels run fastest).
    """

    opset: int = 18
    exporter: str = "dynamo"
    batch: BatchRange = field(default_factory=BatchRange)
    fp16: bool = False
    int8: bool = False
    engine: bool = False
    calibration: str | None = None
    calibration_images: int = 256
    int8_targets: tuple[str, ...] = INT8_TARGETS
    validation: str | None = None
    validation_limit: int = 500
    fixed_images: int = 8
    onnx_min_cosine: float = 0.9999
    force: bool = False
    overwrite: bool = False
    threads: int = 2
    workspace_mib: int = 2048
    # per-precision gate overrides (export.parity.ParityThresholds); None: export.parity.THRESHOLDS
    parity_thresholds: Mapping[str, Any] | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # everything a deployment needs, CPU and GPU
        "full": {"fp16": True, "int8": True, "engine": True},
        # small and quick (tests, smoke runs)
        "quick": {"calibration_images": 16, "validation_limit": 40, "fixed_images": 4},
    }

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.opset, int) or self.opset < 17:
            problems.append(f"opset must be an integer >= 17, got {self.opset!r}")
        if self.exporter not in EXPORTERS:
            problems.append(f"exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        if not isinstance(self.batch, BatchRange):
            problems.append(f"batch must be a BatchRange, got {type(self.batch).__name__}")
        if self.int8 and not self.calibration:
            problems.append("int8 needs a calibration set: --calib DIR_OR_DATASET (map or training images)")
        for name in ("calibration_images", "validation_limit", "fixed_images", "workspace_mib"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not self.int8_targets or any(t not in INT8_TARGETS for t in self.int8_targets):
            problems.append(
                f"int8_targets must be a non-empty subset of {INT8_TARGETS}, got {self.int8_targets!r}"
            )
        if not 0.0 < self.onnx_min_cosine <= 1.0:
            problems.append(f"onnx_min_cosine must be in (0, 1], got {self.onnx_min_cosine!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            problems.append(f"threads must be >= 0 (0: all cores), got {self.threads!r}")
        if problems:
            raise ConfigError("invalid export config: " + "; ".join(problems))
        object.__setattr__(self, "int8_targets", tuple(self.int8_targets))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ExportConfig:
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown export preset '{name}'; known presets: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> ExportConfig:
        return dataclasses.replace(self, **changes)
