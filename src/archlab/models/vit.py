"""ViT (Dosovitskiy et al.): image patches as tokens, a [CLS] token, a pre-norm Transformer encoder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError
from .flops import Cost, layer_flops, transformer_activation_bytes
from .registry import Family, build_skeleton, count_parameters, register_family
from .transformer import Positions, TransformerFamilyConfig, TransformerHooks, TransformerStack


@dataclass
class ViTConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "vit"
    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    n_classes: int | None = None  # None: from the data set
    n_layers: int = 6
    pool: Literal["cls", "mean"] = "cls"

    def validate(self) -> None:
        super().validate()
        if self.patch_size < 1 or self.image_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.n_classes is not None and self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(TransformerHooks, nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.n_classes is None:
            raise ConfigError("model.n_classes is not set (a task sets it from the data set)")
        self.config = cfg
        self.patch_embed = nn.Conv2d(cfg.in_channels, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.positions = Positions(cfg, max_len=cfg.n_patches + 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerStack(cfg, cfg.n_layers)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images: Tensor, need_weights: bool = False) -> Tensor:  # (B, C, H, W) -> (B, n_classes)
        cfg = self.config
        if images.dim() != 4 or images.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"ViT expects images of shape (batch, {cfg.in_channels}, {cfg.image_size}, "
                             f"{cfg.image_size}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, n_patches, d)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)
        T = x.size(1)
        x = self.encoder(self.dropout(self.positions.add(x)), rotary=self.positions.rotary,
                         bias=self.positions.bias(T, T, 0, causal=False), need_weights=need_weights)
        return self.head(x[:, 0] if cfg.pool == "cls" else x[:, 1:].mean(dim=1))


def vit_cost(cfg: ViTConfig, seq_len: int | None = None) -> Cost:
    n, d = cfg.n_patches + 1, cfg.d_model
    patch = 2 * cfg.in_channels * cfg.patch_size ** 2 * d * cfg.n_patches
    flops = patch + n * cfg.n_layers * layer_flops(cfg, n) + 2 * d * (cfg.n_classes or 10)
    return Cost("example", flops, count_parameters(build_skeleton(cfg)))


register_family(Family(
    "vit", ViTConfig, ViT, kind="image_classifier", cost=vit_cost,
    memory=lambda cfg, batch, seq_len=None: transformer_activation_bytes(cfg, cfg.n_layers, batch, cfg.n_patches + 1),
    presets={"vit-tiny": dict(n_classes=10, image_size=28, patch_size=4, d_model=128, n_heads=4, n_layers=6, d_ff=256,
                              dropout=0.0)}))
