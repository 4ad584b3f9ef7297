"""Convolution blocks: conv -> (batch norm) -> activation -> (pool), a ResNet basic block, and a fixed
patch-whitening first layer."""
from __future__ import annotations

import torch
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


class PatchWhitening(nn.Module):
    """A k x k convolution whose filters whiten the image's k x k patches (Jordan 2024, airbench): the
    eigenvectors of the patch covariance over training images, each scaled by 1/sqrt(its eigenvalue) and also
    negated (2 * C * k * k channels, so that a ReLU after it keeps both signs). The filters are fixed (a buffer,
    set by `fit`); only the bias trains. Starting from decorrelated inputs, the next layers learn in fewer steps."""

    def __init__(self, in_ch: int, kernel: int, padding: int):
        super().__init__()
        self.padding = padding
        self.register_buffer("weight", torch.zeros(2 * in_ch * kernel * kernel, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(2 * in_ch * kernel * kernel))

    @torch.no_grad()
    def fit(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the filters from (N, C, H, W) normalised training images."""
        c, k = self.weight.shape[1], self.weight.shape[-1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues + eps).sqrt()[:, None]).view(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, 2*C*k*k, H', W')
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)
