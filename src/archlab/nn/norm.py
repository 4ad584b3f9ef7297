"""Normalisation layers: torch's own LayerNorm and RMSNorm (fused kernels), and Gemma's RMSNorm, picked by name."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

NORMS = ("layernorm", "rmsnorm", "rmsnorm_offset")


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: scales by (1 + weight), the weight starting at zero; computed in fp32 and cast back
    after the scaling (Gemma's order, not Llama's)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps) * (1.0 + self.weight.float())
        return y.type_as(x)


def build_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":  # Zhang & Sennrich: no mean subtraction, no bias
        return nn.RMSNorm(dim, eps=eps)
    if kind == "rmsnorm_offset":
        return OffsetRMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; allowed: {', '.join(NORMS)}")
