"""Shared pieces of the analytic compute and memory counts; each family file combines them into its own
`cost` (FLOPs per token for sequence models, per example for image models) and `memory`.

Multiply-adds count as 2 FLOPs; attention scores count the full T x T square (as PaLM's 6N + 12*L*d*T
does); norms, softmax and activations are left out. Training = 3x forward (the backward costs two).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cost:
    unit: str  # "token" or "example"
    forward_flops: float
    params: int

    @property
    def train_flops(self) -> float:
        return 3 * self.forward_flops


def ffn_flops(cfg) -> float:
    """One feed-forward layer for one token: the gated ones have three matrices; MoE counts the active experts."""
    d, f = cfg.d_model, cfg.ffn_dim
    one = 2 * (3 if cfg.activation in ("swiglu", "geglu_tanh") else 2) * d * f
    if cfg.moe is None:
        return one
    return cfg.moe.top_k * one + 2 * d * cfg.moe.experts  # active experts + router


def attn_proj_flops(cfg) -> float:
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    return 2 * d * (d + 2 * cfg.kv_heads * hd) + 2 * d * d  # qkv + out


def layer_flops(cfg, context: int) -> float:
    """Forward FLOPs of one self-attention block for one token attending to `context` keys."""
    return attn_proj_flops(cfg) + 4 * context * cfg.d_model + ffn_flops(cfg)


def transformer_activation_bytes(cfg, layers: int, batch: int, seq_len: int) -> float:
    """Activations kept for the backward: Korthikanti et al. (2022)'s per-layer count, in fp32 (2x their fp16)."""
    return layers * seq_len * batch * cfg.d_model * (34 + 5 * cfg.n_heads * seq_len / cfg.d_model) * 2


def kv_cache_bytes(cfg, layers: int, bytes_per_number: int = 4) -> float:
    """Keys and values of every layer for one token."""
    return layers * 2 * cfg.kv_heads * (cfg.d_model // cfg.n_heads) * bytes_per_number


def training_memory_bytes(cfg, batch: int, seq_len: int | None = None) -> dict[str, float]:
    """fp32 AdamW training: weights + grads + 2 optimizer moments (16 bytes a parameter), plus the
    family's estimate of the activations kept for the backward."""
    from .registry import family_of

    family = family_of(cfg)
    states = 16 * family.cost(cfg, seq_len).params
    activations = family.memory(cfg, batch, seq_len) if family.memory is not None else 0.0
    return {"parameters_and_optimizer": states, "activations": activations, "total": states + activations}


def model_cost(cfg, seq_len: int | None = None) -> Cost:
    from .registry import family_of

    return family_of(cfg).cost(cfg, seq_len)
