"""ConvNet: a list of conv stages from the config, then a fully connected head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..nn.conv import ConvBlock, ResidualBlock
from .config import ConvNetConfig


class ConvNet(nn.Module):
    def __init__(self, cfg: ConvNetConfig):
        super().__init__()
        self.config = cfg
        stages, ch = [], cfg.in_channels
        for s in cfg.stages:
            if s.type == "conv":
                stages.append(ConvBlock(ch, s.channels, s.kernel, s.padding, s.stride, s.batch_norm, s.pool))
            else:
                blocks = [ResidualBlock(ch if i == 0 else s.channels, s.channels, s.stride if i == 0 else 1)
                          for i in range(s.blocks)]
                if s.pool != "none":
                    blocks.append(nn.MaxPool2d(2) if s.pool == "max" else nn.AvgPool2d(2))
                stages.append(nn.Sequential(*blocks))
            ch = s.channels
        self.stages = nn.ModuleList(stages)
        with torch.no_grad():  # infer the flattened size from a dummy image
            probe = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
            for stage in self.stages:
                probe = stage(probe)
        if probe.shape[-1] < 1 or probe.shape[-2] < 1:
            raise ValueError(f"the conv stages shrink a {cfg.image_size}x{cfg.image_size} image to nothing")
        width = probe.shape[1] if cfg.global_pool else probe[0].numel()
        head = []
        for h in cfg.hidden:
            head += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = h
        head.append(nn.Linear(width, cfg.n_classes))
        self.head = nn.Sequential(*head)

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
