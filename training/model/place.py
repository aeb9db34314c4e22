"""The place-recognition model: backbone -> NetVLAD -> optional PCA-whitening, and its deployable wrapper."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from runtime.errors import ConfigError
from runtime.model.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, fingerprint_arrays
from training.model.backbones import BACKBONES, backbone_channels, build_backbone, check_backbone_name
from training.model.netvlad import NORM_EPS, NetVLAD
from training.model.whitening import PCAWhitening

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`PlaceModel`; immutable and validated on construction.

    ``trainable_stages``: how many of the backbone's last stages are trained (the rest is frozen and can be
    cached); 0 trains NetVLAD (and whitening) only. ``whitening_dim``: output dimension of the PCA-whitening
    layer, ``None`` for the raw ``num_clusters * local_dim`` NetVLAD descriptor.
    """

    backbone: str = "efficientnet_lite0"
    num_clusters: int = 64
    input_height: int = 240
    input_width: int = 320
    whitening_dim: int | None = None
    trainable_stages: int = 1
    pretrained: bool = True
    eps: float = NORM_EPS

    def __post_init__(self) -> None:
        check_backbone_name(self.backbone)
        problems = []
        for name in ("num_clusters", "input_height", "input_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        stride = BACKBONES[self.backbone][2]
        if not problems and (self.input_height < stride or self.input_width < stride):
            problems.append(
                f"input {self.input_height}x{self.input_width} is smaller than the backbone stride {stride}"
            )
        if self.whitening_dim is not None and (
            not isinstance(self.whitening_dim, int)
            or self.whitening_dim <= 0
            or self.whitening_dim > self.netvlad_dim
        ):
            problems.append(
                f"whitening_dim must be None or in 1..{self.netvlad_dim}, got {self.whitening_dim!r}"
            )
        if not isinstance(self.trainable_stages, int) or self.trainable_stages < 0:
            problems.append(f"trainable_stages must be a non-negative integer, got {self.trainable_stages!r}")
        if not self.eps > 0:
            problems.append(f"eps must be positive, got {self.eps!r}")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # the paper's network (needs torchvision): VGG16 conv5_3, trained from conv5_1 up, 4,096-D whitened
        "paper": {"backbone": "vgg16", "input_height": 480, "input_width": 640},
        # small and fast, for tests
        "tiny": {"num_clusters": 8, "input_height": 64, "input_width": 96},
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown model preset '{name}'; known presets: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def local_dim(self) -> int:
        return backbone_channels(self.backbone)

    @property
    def netvlad_dim(self) -> int:
        return self.num_clusters * self.local_dim

    @property
    def descriptor_dim(self) -> int:
        return self.whitening_dim if self.whitening_dim is not None else self.netvlad_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


def _freeze_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class PlaceModel(nn.Module):
    """``forward(x)``: float32 ``(N, 3, H, W)`` ImageNet-normalised RGB -> ``(N, D)`` L2-normalised descriptors.

    Split for training: ``frozen_features(x)`` (the frozen lower backbone, cacheable) then ``head(f)``
    (trainable backbone stages, NetVLAD, whitening). BatchNorm layers always use their ImageNet running
    statistics (they stay in eval mode even in ``train()``): place-recognition batches are tiny tuples.
    ``provenance`` records how the weights were obtained (centroid init, training run, whitening fit).
    """

    def __init__(self, config: ModelConfig | None = None, pretrained: bool | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        use_pretrained = self.config.pretrained if pretrained is None else pretrained
        bb = build_backbone(
            self.config.backbone,
            (self.config.input_height, self.config.input_width),
            pretrained=use_pretrained,
            trainable_stages=self.config.trainable_stages,
        )
        self.backbone_frozen = bb.frozen
        self.backbone_trainable = bb.trainable
        self.netvlad = NetVLAD(self.config.num_clusters, bb.out_channels, eps=self.config.eps)
        self.whitening = (
            PCAWhitening(self.netvlad.output_dim, self.config.whitening_dim, eps=self.config.eps)
            if self.config.whitening_dim is not None
            else None
        )
        self.provenance: dict[str, Any] = {"backbone_weights": "imagenet" if bb.pretrained else "random"}
        self.train(False)

    # -- forward pieces -------------------------------------------------------------------------------
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """Output of the frozen backbone layers, ``(N, C_f, h, w)``; identical every epoch."""
        return self.backbone_frozen(images)

    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """The cropped backbone's feature map ``(N, local_dim, H/16, W/16)``."""
        return self.backbone_trainable(self.backbone_frozen(images))

    def head(self, frozen: torch.Tensor) -> torch.Tensor:
        """From frozen features to descriptors: trainable stages, NetVLAD, whitening -> ``(N, D)``."""
        descriptors = self.netvlad(self.backbone_trainable(frozen))  # (N, K*local_dim)
        if self.whitening is not None:
            descriptors = self.whitening(descriptors)  # (N, whitening_dim)
        return descriptors

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen_features(images))

    def train(self, mode: bool = True) -> PlaceModel:
        super().train(mode)
        self.backbone_frozen.eval()
        _freeze_batchnorm(self)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- identity -------------------------------------------------------------------------------------
    @property
    def descriptor_dim(self) -> int:
        return self.config.descriptor_dim

    def fingerprint(self) -> str:
        """sha256 prefix over every weight and buffer (runtime.model.card.fingerprint_arrays)."""
        return fingerprint_arrays((k, v.detach().cpu().numpy()) for k, v in self.state_dict().items())

    def card(self, precision: str = "fp32", calibration: str | None = None, **extra: Any) -> ModelCard:
        """The model card of this model as exported by :class:`DeployModel` (uint8 NHWC RGB input)."""
        cfg = self.config
        return ModelCard(
            backbone=cfg.backbone,
            input_height=cfg.input_height,
            input_width=cfg.input_width,
            num_clusters=cfg.num_clusters,
            local_dim=cfg.local_dim,
            descriptor_dim=cfg.descriptor_dim,
            weights_fingerprint=self.fingerprint(),
            whitening_dim=cfg.whitening_dim,
            precision=precision,
            calibration=calibration,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            extra={"provenance": dict(self.provenance), "netvlad_eps": cfg.eps, **extra},
        )

    def with_whitening(self, weight: np.ndarray, bias: np.ndarray, dim: int | None = None) -> PlaceModel:
        """A copy of this model with a PCA-whitening layer (``weight (d', D)``, ``bias (d',)``, first ``dim`` rows)."""
        dim = int(dim or weight.shape[0])
        if weight.shape[1] != self.netvlad.output_dim or dim > weight.shape[0]:
            raise ConfigError(
                f"whitening of shape {weight.shape} does not fit a {self.netvlad.output_dim}-D NetVLAD into {dim}-D"
            )
        new_cfg = dataclasses.replace(self.config, whitening_dim=dim)
        model = PlaceModel(new_cfg, pretrained=False)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("whitening.")}
        model.load_state_dict(state, strict=False)
        model.whitening.set_parameters(weight, bias)
        model.provenance = copy.deepcopy(self.provenance)
        model.train(self.training)
        return model


class DeployModel(nn.Module):
    """What export traces: ``uint8 (N, H, W, 3)`` RGB -> ``(N, D)`` float32 L2-normalised descriptors.

    The cast, the 1/255 scaling, the ImageNet ``(x − mean) / std`` and the NHWC -> NCHW transpose happen in
    the graph (DESIGN.md, "Model input and output"), folded into one multiply-add per channel.
    """

    def __init__(self, place_model: PlaceModel) -> None:
        super().__init__()
        self.place_model = place_model
        scale, shift = _scale_shift()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.place_model(_normalize(images, self.scale, self.shift))

    def card(self, **kwargs: Any) -> ModelCard:
        return self.place_model.card(**kwargs)


def _scale_shift() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``x * scale + shift`` equal to ``(x / 255 − mean) / std``, each ``(1, 3, 1, 1)``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    return (1.0 / (255.0 * std)).view(1, 3, 1, 1), (-mean / std).view(1, 3, 1, 1)


def _normalize(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # cast to the buffers' dtype: float32, or float16 in a DeployModel cast with .half() (GPU benchmarks)
    x = images.to(scale.dtype).permute(0, 3, 1, 2)  # (N, H, W, 3) uint8 -> (N, 3, H, W) float
    return x * scale + shift


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB -> ImageNet-normalised float32 ``(N, 3, H, W)``, exactly as DeployModel."""
    return _normalize(images, *_scale_shift())


def build_model(config: ModelConfig | None = None, **overrides: Any) -> PlaceModel:
    """Build a :class:`PlaceModel` from ``config`` (default :class:`ModelConfig`) with field ``overrides``."""
    cfg = (
        dataclasses.replace(config or ModelConfig(), **overrides) if overrides else (config or ModelConfig())
    )
    model = PlaceModel(cfg)
    log.info(
        "built %s + NetVLAD(K=%d) -> %d-D at %dx%d, %d trainable backbone stage(s), backbone weights: %s",
        cfg.backbone,
        cfg.num_clusters,
        cfg.descriptor_dim,
        cfg.input_height,
        cfg.input_width,
        cfg.trainable_stages,
        model.provenance["backbone_weights"],
    )
    return model
