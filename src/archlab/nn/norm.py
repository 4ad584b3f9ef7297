"""Normalisation layers: torch's own LayerNorm and RMSNorm (fused kernels), picked by name."""
from __future__ import annotations

import torch.nn as nn

NORMS = ("layernorm", "rmsnorm")


def build_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":  # Zhang & Sennrich: no mean subtraction, no bias
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; allowed: {', '.join(NORMS)}")
