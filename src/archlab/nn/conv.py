"""Convolution blocks: conv -> (batch norm) -> activation -> (pool), and a ResNet basic block."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

POOLS = ("none", "max", "avg")


class ConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, padding: int = 0, stride: int = 1,
                 batch_norm: bool = False, pool: str = "none", pool_size: int = 2):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; allowed: {', '.join(POOLS)}")
        # a conv followed by batch norm needs no bias: the norm's shift replaces it
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_ch) if batch_norm else nn.Identity()
        self.pool = {"none": nn.Identity(), "max": nn.MaxPool2d(pool_size), "avg": nn.AvgPool2d(pool_size)}[pool]

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        y = self.norm(self.conv(x))
        if isinstance(self.pool, nn.MaxPool2d):  # max commutes with ReLU: the same values, ReLU on 4x fewer
            return F.relu(self.pool(y))
        return self.pool(F.relu(y))


class ResidualBlock(nn.Module):
    """He et al. (2016) basic block: two 3x3 convs with batch norm; a 1x1 projection when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
