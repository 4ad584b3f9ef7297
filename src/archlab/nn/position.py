"""Position information: sinusoidal and learned (added to embeddings), rotary (RoPE, applied to
queries and keys, optionally stretched for long contexts as Llama 3 does) and ALiBi (a per-head linear
bias on attention scores)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..config import ConfigError


def sinusoid_table(length: int, d_model: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al. 3.5: PE[pos, 2i] = sin(pos / base^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(base) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return table


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoid_table(max_len, d_model), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # x: (B, T, d)
        end = offset + x.size(1)
        if end > self.table.size(0):  # fixed formula: extrapolates to any length
            self.table = sinusoid_table(2 * end, self.d_model).to(self.table.device)
        return x + self.table[offset:end].to(x.dtype)


class LearnedPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.size(1)
        if end > self.embedding.num_embeddings:
            raise ValueError(f"sequence of {end} positions is longer than the learned position table "
                             f"({self.embedding.num_embeddings}); use max_seq_len >= {end} or rope/alibi/sinusoidal")
        return x + self.embedding.weight[offset:end]


@dataclass
class RopeScaling:
    """RoPE for contexts longer than the pretraining one, as Hugging Face's rope_type: "linear" divides every
    frequency by `factor` (position interpolation, Chen et al. 2023); "llama3" (Llama 3.1) divides only the
    low frequencies (wavelength > original_max_seq_len / low_freq_factor), keeps the high ones (wavelength <
    original_max_seq_len / high_freq_factor) and blends smoothly in between."""
    type: Literal["linear", "llama3"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0  # llama3 only, as the next two
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192

    def validate(self) -> None:
        if not self.factor >= 1.0:
            raise ConfigError(f"rope_scaling.factor must be at least 1, got {self.factor}")
        if self.type == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ConfigError(f"rope_scaling: need 0 < low_freq_factor < high_freq_factor, got "
                                  f"{self.low_freq_factor} and {self.high_freq_factor}")
            if self.original_max_seq_len < 1:
                raise ConfigError(f"rope_scaling.original_max_seq_len must be positive, got {self.original_max_seq_len}")

    def apply(self, inv_freq: Tensor) -> Tensor:
        if self.type == "linear":
            return inv_freq / self.factor
        # Hugging Face's _compute_llama3_parameters, step for step (the same floats)
        low_wavelen = self.original_max_seq_len / self.low_freq_factor
        high_wavelen = self.original_max_seq_len / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_seq_len / wavelen - self.low_freq_factor) / (self.high_freq_factor
                                                                                 - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """RoPE (Su et al.), in the rotate-half layout of GPT-NeoX / Llama: the head dimension is split in
    two halves that form the (real, imaginary) parts of the rotated pairs."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, scaling: RopeScaling | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.head_dim, self.base, self.scaling = head_dim, base, scaling
        self._build(max_len)

    def _build(self, length: int, device=None) -> None:
        inv_freq = 1.0 / self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim)
        if self.scaling is not None:
            inv_freq = self.scaling.apply(inv_freq)
        angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)  # (T, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # x: (B, H, T, hd)
        end = offset + x.size(2)
        if end > self.cos.size(0):
            self._build(2 * end, self.cos.device)
        cos, sin = self.cos[offset:end].to(x.dtype), self.sin[offset:end].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def alibi_slopes(n_heads: int) -> Tensor:
    """Press et al.: a geometric sequence starting at 2^(-8/n); for non-powers of two, interleave."""
    def power_of_two(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    closest = 2 ** math.floor(math.log2(n_heads))
    extra = power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


class ALiBi(nn.Module):
    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(self, Tq: int, Tk: int, offset: int = 0, causal: bool = True) -> Tensor:
        """Additive bias (H, Tq, Tk): -slope * distance between query and key."""
        q_pos = torch.arange(offset, offset + Tq, device=self.slopes.device)[:, None]
        k_pos = torch.arange(Tk, device=self.slopes.device)[None, :]
        distance = (q_pos - k_pos).clamp(min=0) if causal else (q_pos - k_pos).abs()
        return -self.slopes[:, None, None] * distance
