"""ViT (Dosovitskiy et al.): image patches as tokens, a [CLS] token, a pre-norm Transformer encoder."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .config import ViTConfig
from .transformer import Positions, TransformerStack


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
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
