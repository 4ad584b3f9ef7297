"""ConvNet: a list of conv stages from the config, then a fully connected head."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..config import at_least_one
from ..errors import ConfigError
from ..nn.conv import ConvBlock, PatchWhitening, ResidualBlock
from .flops import Cost
from .registry import Family, FamilyConfig, build_skeleton, count_parameters, register_family


@dataclass
class StageConfig:
    """One CNN stage: a plain conv block, `blocks` ResNet basic blocks (first one strided), or (first stage only)
    a fixed patch-whitening conv fitted to the training images, whose channels are 2 x in_channels x kernel²."""
    type: Literal["conv", "residual", "whiten"] = "conv"
    channels: int = 32
    kernel: int = 3
    padding: int = 0
    stride: int = 1
    blocks: int = 1
    batch_norm: bool = False
    pool: Literal["none", "max", "avg"] = "none"

    def validate(self) -> None:
        at_least_one(self, ("channels", "kernel", "stride", "blocks"))
        if self.padding < 0:
            raise ConfigError(f"padding must be at least 0, got {self.padding}")


@dataclass
class ConvNetConfig(FamilyConfig):
    family: ClassVar[str] = "cnn"
    in_channels: int = 1
    image_size: int = 28
    n_classes: int | None = None  # None: from the data set
    stages: list[StageConfig] = field(default_factory=list)
    global_pool: bool = False  # average over space before the head (else flatten)
    hidden: list[int] = field(default_factory=list)  # fully connected layers before the classifier
    dropout: float = 0.0
    # each conv's first min(in, out) filters start as the identity (torch.nn.init.dirac_), the rest as usual:
    # the net starts close to passing its input through, and learns in fewer epochs (airbench, Jordan 2024)
    dirac_init: bool = False

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("a ConvNet needs at least one stage")
        if self.n_classes is not None and self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.in_channels < 1 or self.image_size < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("in_channels, image_size and hidden sizes must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for i, s in enumerate(self.stages):
            if s.type != "whiten":
                continue
            if i > 0:
                raise ConfigError(f"stages[{i}]: a whiten stage whitens image patches, so it must be the first stage")
            if s.channels != 2 * self.in_channels * s.kernel ** 2 or s.stride != 1 or s.batch_norm:
                raise ConfigError(f"stages[0] (whiten): channels must be 2 x in_channels x kernel² = "
                                  f"{2 * self.in_channels * s.kernel ** 2}, stride 1 and no batch_norm, got "
                                  f"channels {s.channels}, stride {s.stride}, batch_norm {s.batch_norm}")


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        if cfg.n_classes is None:
            raise ConfigError("model.n_classes is not set (a task sets it from the data set)")
        self.config = cfg
        stages, ch = [], cfg.in_channels
        for s in cfg.stages:
            if s.type == "conv":
                stages.append(ConvBlock(ch, s.channels, s.kernel, s.padding, s.stride, s.batch_norm, s.pool))
            elif s.type == "whiten":
                layers = [PatchWhitening(ch, s.kernel, s.padding), nn.ReLU()]
                if s.pool == "max":  # before the ReLU: max commutes with it (the same values, ReLU on 4x fewer)
                    layers.insert(1, nn.MaxPool2d(2))
                elif s.pool == "avg":
                    layers.append(nn.AvgPool2d(2))
                stages.append(nn.Sequential(*layers))
            else:
                blocks = [ResidualBlock(ch if i == 0 else s.channels, s.channels, s.stride if i == 0 else 1)
                          for i in range(s.blocks)]
                if s.pool != "none":
                    blocks.append(nn.MaxPool2d(2) if s.pool == "max" else nn.AvgPool2d(2))
                stages.append(nn.Sequential(*blocks))
            ch = s.channels
        self.stages = nn.ModuleList(stages)
        shape = self.feature_shape()
        if shape[-1] < 1 or shape[-2] < 1:
            raise ConfigError(f"the conv stages shrink a {cfg.image_size}x{cfg.image_size} image to nothing")
        width = shape[0] if cfg.global_pool else shape[0] * shape[1] * shape[2]
        head = []
        for h in cfg.hidden:
            head += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        head.append(nn.Linear(width, cfg.n_classes))
        self.head = nn.Sequential(*head)
        if cfg.dirac_init:
            for conv in self.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.dirac_(conv.weight.data[:conv.in_channels])
        # oneDNN's (and cuDNN's) convolutions run faster in NHWC; 1-channel inputs are NCHW and NHWC at once
        self.to(memory_format=torch.channels_last)

    def fit_to_data(self, images: Tensor) -> None:
        """Set what is computed from the training images rather than trained: a whiten stage's filters."""
        for m in self.modules():
            if isinstance(m, PatchWhitening):
                m.fit(images)

    def feature_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) after the last stage, from a probe image (on the meta device when the
        model is built there: shapes only)."""
        probe = torch.zeros(1, self.config.in_channels, self.config.image_size, self.config.image_size,
                            device=next(self.parameters()).device)
        with torch.no_grad():
            for stage in self.stages:
                probe = stage(probe)
        return tuple(probe.shape[1:])

    def features(self, x: Tensor) -> list[Tensor]:
        """The feature map after every stage (for plots)."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> logits (B, n_classes)
        cfg = self.config
        if x.dim() != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"ConvNet expects images of shape (batch, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(x.shape)}")
        for stage in self.stages:
            x = stage(x)
        x = x.mean(dim=(2, 3)) if cfg.global_pool else x.flatten(1)
        return self.head(x)


def cnn_cost(cfg: ConvNetConfig, seq_len: int | None = None) -> Cost:
    flops, ch, size = 0.0, cfg.in_channels, cfg.image_size

    def conv(cin, cout, k, stride, pad):
        nonlocal size
        size = (size + 2 * pad - k) // stride + 1
        return 2 * cin * cout * k * k * size * size

    for s in cfg.stages:
        if s.type in ("conv", "whiten"):
            flops += conv(ch, s.channels, s.kernel, s.stride, s.padding)
        else:
            for i in range(s.blocks):
                cin, stride = (ch, s.stride) if i == 0 else (s.channels, 1)
                flops += conv(cin, s.channels, 3, stride, 1)
                flops += conv(s.channels, s.channels, 3, 1, 1)
                if cin != s.channels or stride != 1:
                    flops += 2 * cin * s.channels * size * size  # 1x1 projection
        if s.pool != "none":
            size //= 2
        ch = s.channels
    width = ch if cfg.global_pool else ch * size * size
    for h in [*cfg.hidden, cfg.n_classes or 10]:
        flops += 2 * width * h
        width = h
    return Cost("example", flops, count_parameters(build_skeleton(cfg)))


def cnn_activation_bytes(cfg: ConvNetConfig, batch: int, seq_len: int | None = None) -> float:
    """Each stage keeps its input, pre-activation and output maps: a rough 3 fp32 tensors per conv."""
    acts, size = 0.0, cfg.image_size
    for s in cfg.stages:
        size = (size + 2 * s.padding - s.kernel) // s.stride + 1 if s.type == "conv" else size // s.stride
        acts += 3 * s.channels * size * size * (2 * s.blocks if s.type == "residual" else 1)
        size = size // 2 if s.pool != "none" else size
    return 4 * acts * batch


register_family(Family(
    "cnn", ConvNetConfig, ConvNet, kind="image_classifier", cost=cnn_cost, memory=cnn_activation_bytes,
    presets={
        # the article's Keras model (section 4.1): 93,322 parameters with 10 classes
        "seed-cnn": dict(n_classes=10, stages=[dict(channels=32, pool="max"), dict(channels=64, pool="max"), dict(channels=64)],
                         hidden=[64]),
        # a small ResNet for Fashion-MNIST on a CPU: 28 -> 14 -> 7, global pooling
        "resnet-small": dict(stages=[dict(channels=32, padding=1, batch_norm=True),
                                     dict(type="residual", channels=32, blocks=1),
                                     dict(type="residual", channels=64, blocks=1, stride=2),
                                     dict(type="residual", channels=128, blocks=1, stride=2)], global_pool=True,
                             n_classes=10),
    }))
