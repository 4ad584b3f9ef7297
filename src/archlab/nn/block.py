"""One Transformer block, assembled from its config; GPT, BERT, the encoder-decoder and ViT all use it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn
from torch import Tensor

from ..config import ConfigError
from .attention import KVCache, MultiHeadAttention
from .feedforward import MLP, MoE, SwiGLU
from .norm import build_norm
from .position import Rotary


@dataclass
class MoEConfig:
    experts: int = 8
    top_k: int = 2
    aux_loss_weight: float = 0.01

    def validate(self) -> None:
        if not 1 <= self.top_k <= self.experts:
            raise ConfigError(f"moe.top_k={self.top_k} must be between 1 and moe.experts={self.experts}")


@dataclass
class BlockConfig:
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: multi-query; between: grouped-query
    d_ff: int | None = None  # None: 4 * d_model
    activation: Literal["relu", "gelu", "gelu_tanh", "swiglu"] = "gelu"
    moe: MoEConfig | None = None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_placement: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-5
    dropout: float = 0.0
    bias: bool = True

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def validate(self) -> None:
        for key in ("d_model", "n_heads", "ffn_dim", "kv_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                              f"n_heads can be one of {divisors}")
        if self.n_heads % self.kv_heads:
            allowed = [h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0]
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}; allowed: {allowed}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def build_ffn(cfg: BlockConfig) -> nn.Module:
    if cfg.moe is not None:
        return MoE(cfg.d_model, cfg.ffn_dim, cfg.moe.experts, cfg.moe.top_k, cfg.activation, cfg.bias, cfg.dropout)
    if cfg.activation == "swiglu":
        return SwiGLU(cfg.d_model, cfg.ffn_dim, cfg.bias, cfg.dropout)
    return MLP(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.bias, cfg.dropout)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each a residual branch with its norm,
    placed before the branch (pre-norm, GPT-2 and later) or after the sum (post-norm, Vaswani, BERT)."""

    def __init__(self, cfg: BlockConfig, cross_attention: bool = False):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        norm = lambda: build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)  # noqa: E731
        self.attn_norm = norm()
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads, bias=cfg.bias, dropout=cfg.dropout)
        if cross_attention:
            self.cross_norm = norm()
            self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads, bias=cfg.bias,
                                                 dropout=cfg.dropout, cross=True)
        else:
            self.cross_attn = None
        self.ffn_norm = norm()
        self.ffn = build_ffn(cfg)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None  # skipped, not called, when off

    def _drop(self, x: Tensor) -> Tensor:
        return self.dropout(x) if self.dropout is not None else x

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, causal: bool = False,
                rotary: Rotary | None = None, bias: Tensor | None = None, cache: KVCache | None = None,
                context: Tensor | None = None, context_padding_mask: Tensor | None = None,
                cross_cache: KVCache | None = None, need_weights: bool = False) -> Tensor:
        # written out rather than through a helper: this runs once per layer per decoded token
        attn_kw = dict(key_padding_mask=key_padding_mask, causal=causal, rotary=rotary, bias=bias, cache=cache,
                       need_weights=need_weights)
        if self.pre_norm:
            x = x + self._drop(self.attn(self.attn_norm(x), **attn_kw))
        else:
            x = self.attn_norm(x + self._drop(self.attn(x, **attn_kw)))
        if self.cross_attn is not None:
            cross_kw = dict(key_padding_mask=context_padding_mask, cache=cross_cache, need_weights=need_weights)
            if self.pre_norm:
                x = x + self._drop(self.cross_attn(self.cross_norm(x), context, **cross_kw))
            else:
                x = self.cross_norm(x + self._drop(self.cross_attn(x, context, **cross_kw)))
        # the FFN's own dropout already sits on its output
        if self.pre_norm:
            return x + self.ffn(self.ffn_norm(x))
        return self.ffn_norm(x + self.ffn(x))
