"""One Transformer block, assembled from its config; GPT, BERT, the encoder-decoder and ViT all use it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch.nn as nn
from torch import Tensor

from ..config import ConfigError
from .attention import KVCache, MultiHeadAttention, RollingKVCache
from .feedforward import GATES, GLU, MLP, MoE
from .mla import LatentCache, MultiHeadLatentAttention
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
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3); the sizes of nn.mla.MultiHeadLatentAttention."""
    kv_lora_rank: int = 64
    q_lora_rank: int | None = None  # None: full-rank query projection
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32

    def validate(self) -> None:
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"mla.{key} must be positive, got {getattr(self, key)}")
        if self.q_lora_rank is not None and self.q_lora_rank < 1:
            raise ConfigError(f"mla.q_lora_rank must be positive or null (full rank), got {self.q_lora_rank}")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"mla.qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")


@dataclass
class BlockConfig:
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (MHA); 1: multi-query; between: grouped-query
    head_dim: int | None = None  # None: d_model / n_heads (Qwen3, Gemma-2 set it apart)
    attention: Literal["mha", "mla"] = "mha"  # mha covers GQA/MQA; mla: multi-head latent attention
    mla: MLAConfig | None = None  # sizes for attention "mla" (None: MLAConfig's defaults)
    window: int | None = None  # sliding-window attention (Mistral): query i sees keys i - window < j <= i
    window_pattern: list[bool] | None = None  # which layers use the window, repeated over the layers (Gemma-2:
    # [true, false], local and global in turn); None: every layer
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE (Qwen3, OLMo-2)
    softcap: float | None = None  # attention logits -> softcap * tanh(logits / softcap) (Gemma-2: 50)
    attn_scale: float | None = None  # None: head_dim^-1/2; Gemma-2: query_pre_attn_scalar^-1/2
    d_ff: int | None = None  # None: 4 * d_model
    activation: Literal["relu", "relu2", "gelu", "gelu_tanh", "swiglu", "geglu_tanh"] = "gelu"
    moe: MoEConfig | None = None
    norm: Literal["layernorm", "rmsnorm", "rmsnorm_offset"] = "layernorm"  # rmsnorm_offset: Gemma's (1 + w)
    norm_placement: Literal["pre", "post"] = "pre"
    sandwich_norm: bool = False  # Gemma-2: one more norm on each branch's output, inside the residual (pre-norm only)
    norm_eps: float = 1e-5
    dropout: float = 0.0
    # dropout on the attention weights; None: = dropout. On a CPU any value > 0 takes SDPA off its flash kernel to
    # the math path (the weights materialised). fairseq's default is 0 (Vaswani et al. drop residual branches and
    # embeddings only); GPT-2 and BERT use dropout's value
    attention_dropout: float | None = None
    bias: bool = True

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def attn_dropout(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def attn_head_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def mla_config(self) -> MLAConfig:
        return self.mla if self.mla is not None else MLAConfig()

    @property
    def rotary_dim(self) -> int:
        """The head dimension a caller's Rotary must be built for: MLA rotates only its decoupled rope part."""
        return self.mla_config.qk_rope_head_dim if self.attention == "mla" else self.attn_head_dim

    def layer(self, i: int) -> BlockConfig:
        """The config of layer i: without the window where window_pattern makes it a global layer."""
        if self.window_pattern is None or self.window_pattern[i % len(self.window_pattern)]:
            return self
        return dataclasses.replace(self, window=None, window_pattern=None)

    def check_position(self, position: str) -> None:
        """Raise ConfigError if the attention cannot take this position scheme (positions live in models)."""
        if self.attention == "mla" and position != "rope":
            raise ConfigError(f"attention 'mla' carries positions in its decoupled RoPE key: position must be "
                              f"'rope', got {position!r}")
        if position == "rope" and self.rotary_dim % 2:
            raise ConfigError(f"position 'rope' needs an even head dimension, got {self.rotary_dim}")

    def validate(self) -> None:
        for key in ("d_model", "n_heads", "ffn_dim", "kv_heads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("head_dim", "window"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1 (or null), got {getattr(self, key)}")
        for key in ("softcap", "attn_scale"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive (or null), got {getattr(self, key)}")
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                name = "attention_dropout" if key == "attn_dropout" else key
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, key)}")
        if self.window_pattern is not None and (self.window is None or not any(self.window_pattern)):
            raise ConfigError(f"window_pattern={self.window_pattern} needs a window and at least one windowed "
                              f"layer (true); set window, or drop window_pattern")
        if self.sandwich_norm and self.norm_placement != "pre":
            raise ConfigError("sandwich_norm adds a norm inside each pre-norm branch: it needs norm_placement 'pre'")
        if self.attention == "mla":
            self._validate_mla()
            return
        if self.mla is not None:
            raise ConfigError(f"mla is set but attention is {self.attention!r}: set attention 'mla' or drop mla")
        if self.head_dim is None and self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0 and h <= 64]
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                              f"n_heads can be one of {divisors} (or set head_dim)")
        if self.n_heads % self.kv_heads:
            allowed = [h for h in range(1, self.n_heads + 1) if self.n_heads % h == 0]
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}; allowed: {allowed}")

    def _validate_mla(self) -> None:
        self.mla_config.validate()
        # all heads share one latent (no kv heads or head size of their own); the per-head keys are
        # up-projected latents, and a norm on them would break the weight absorption of decoding
        unsupported = {"n_kv_heads": self.kv_heads != self.n_heads, "head_dim": self.head_dim is not None,
                       "window": self.window is not None, "qk_norm": self.qk_norm}
        bad = [key for key, is_set in unsupported.items() if is_set]
        if bad:
            raise ConfigError(f"attention 'mla' does not combine with {', '.join(bad)}: "
                              f"use the mla.* sizes instead (or attention 'mha')")


def build_ffn(cfg: BlockConfig) -> nn.Module:
    if cfg.moe is not None:
        return MoE(cfg.d_model, cfg.ffn_dim, cfg.moe.experts, cfg.moe.top_k, cfg.activation, cfg.bias, cfg.dropout)
    if cfg.activation in GATES:
        return GLU(cfg.d_model, cfg.ffn_dim, cfg.bias, cfg.dropout, cfg.activation)
    return MLP(cfg.d_model, cfg.ffn_dim, cfg.activation, cfg.bias, cfg.dropout)


def build_self_attention(cfg: BlockConfig) -> nn.Module:
    if cfg.attention == "mla":
        m = cfg.mla_config
        return MultiHeadLatentAttention(cfg.d_model, cfg.n_heads, kv_lora_rank=m.kv_lora_rank,
                                        qk_nope_head_dim=m.qk_nope_head_dim, qk_rope_head_dim=m.qk_rope_head_dim,
                                        v_head_dim=m.v_head_dim, q_lora_rank=m.q_lora_rank, bias=cfg.bias,
                                        dropout=cfg.attn_dropout, scale=cfg.attn_scale, softcap=cfg.softcap,
                                        norm_eps=cfg.norm_eps)
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads, bias=cfg.bias, dropout=cfg.attn_dropout,
                              head_dim=cfg.head_dim, window=cfg.window, qk_norm=cfg.qk_norm, softcap=cfg.softcap,
                              scale=cfg.attn_scale, norm_eps=cfg.norm_eps)


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each a residual branch with its norm,
    placed before the branch (pre-norm, GPT-2 and later) or after the sum (post-norm, Vaswani, BERT)."""

    def __init__(self, cfg: BlockConfig, cross_attention: bool = False):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        norm = lambda: build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)  # noqa: E731
        self.attn_norm = norm()
        self.attn = build_self_attention(cfg)
        if cross_attention:  # multi-head (no window: the whole source is visible), whatever the self-attention
            self.cross_norm = norm()
            self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.kv_heads, bias=cfg.bias,
                                                 dropout=cfg.attn_dropout, cross=True, head_dim=cfg.head_dim,
                                                 qk_norm=cfg.qk_norm, softcap=cfg.softcap, scale=cfg.attn_scale,
                                                 norm_eps=cfg.norm_eps)
        else:
            self.cross_attn = None
        self.ffn_norm = norm()
        self.ffn = build_ffn(cfg)
        if cfg.sandwich_norm:  # Gemma-2: each branch's output normalised before it joins the residual
            self.post_attn_norm, self.post_ffn_norm = norm(), norm()
            self.post_cross_norm = norm() if cross_attention else None
        else:
            self.post_attn_norm = self.post_ffn_norm = self.post_cross_norm = None
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else None  # skipped, not called, when off

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache | RollingKVCache | LatentCache:
        """The cache the self-attention decodes with: latents (MLA), the last `window` positions, or all."""
        return self.attn.new_cache(batch, max_len, device, dtype)

    def _drop(self, x: Tensor) -> Tensor:
        return self.dropout(x) if self.dropout is not None else x

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, causal: bool = False,
                rotary: Rotary | None = None, bias: Tensor | None = None,
                cache: KVCache | RollingKVCache | LatentCache | None = None,
                context: Tensor | None = None, context_padding_mask: Tensor | None = None,
                cross_cache: KVCache | None = None, need_weights: bool = False) -> Tensor:
        # written out rather than through a helper: this runs once per layer per decoded token
        attn_kw = dict(key_padding_mask=key_padding_mask, causal=causal, rotary=rotary, bias=bias, cache=cache,
                       need_weights=need_weights)
        if self.pre_norm:
            h = self.attn(self.attn_norm(x), **attn_kw)
            x = x + self._drop(h if self.post_attn_norm is None else self.post_attn_norm(h))
        else:
            x = self.attn_norm(x + self._drop(self.attn(x, **attn_kw)))
        if self.cross_attn is not None:
            cross_kw = dict(key_padding_mask=context_padding_mask, cache=cross_cache, need_weights=need_weights)
            if self.pre_norm:
                h = self.cross_attn(self.cross_norm(x), context, **cross_kw)
                x = x + self._drop(h if self.post_cross_norm is None else self.post_cross_norm(h))
            else:
                x = self.cross_norm(x + self._drop(self.cross_attn(x, context, **cross_kw)))
        # the FFN's own dropout already sits on its output
        if self.pre_norm:
            h = self.ffn(self.ffn_norm(x))
            return x + (h if self.post_ffn_norm is None else self.post_ffn_norm(h))
        return self.ffn_norm(x + self.ffn(x))
