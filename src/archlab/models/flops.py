"""Shared pieces of the analytic compute and memory counts; each family file combines them into its own
`cost` (FLOPs per token for sequence models, per example for image models) and `memory`.

Multiply-adds count as 2 FLOPs; attention scores count the full T x T square (as PaLM's 6N + 12*L*d*T
does; a sliding window T x window); norms, softmax and activations are left out. Training = 3x forward (the backward costs two).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..nn.feedforward import GATES


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
    one = 2 * (3 if cfg.activation in GATES else 2) * d * f
    if cfg.moe is None:
        return one
    return cfg.moe.top_k * one + 2 * d * cfg.moe.experts  # active experts + router


def attn_proj_flops(cfg) -> float:
    """The projections of one self-attention layer for one token. MLA: query (full or low-rank), latent + rope
    key, the latent's up-projection to per-head keys and values (as training computes it), output."""
    d, H = cfg.d_model, cfg.n_heads
    if cfg.attention == "mla":
        m = cfg.mla_config
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = d * H * qk if m.q_lora_rank is None else m.q_lora_rank * (d + H * qk)
        kv = d * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim)
        return 2 * (q + kv + H * m.v_head_dim * d)
    q_dim, kv_dim = H * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    return 2 * d * (q_dim + 2 * kv_dim) + 2 * q_dim * d  # qkv + out


def attn_score_flops(cfg, keys: int) -> float:
    """Scores q.k over `keys` keys and the weighted sum of their values, for one query (every head)."""
    if cfg.attention == "mla":
        m = cfg.mla_config
        return 2 * keys * cfg.n_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
    return 4 * keys * cfg.n_heads * cfg.attn_head_dim


def layer_flops(cfg, context: int) -> float:
    """Forward FLOPs of one self-attention block for one token attending to `context` keys (a sliding window:
    to the last `window` of them). MLA decoding with its latent cache computes the same attention another way
    (absorbed projections, over latents), at another cost; this counts the expanded form of training."""
    keys = context if cfg.window is None else min(context, cfg.window)
    return attn_proj_flops(cfg) + attn_score_flops(cfg, keys) + ffn_flops(cfg)


def cache_numbers(cfg, context: int) -> float:
    """Numbers one self-attention layer keeps in its decode cache, per token of a `context`-long sequence: keys
    and values of its kv heads, or MLA's latent and shared rope key; a sliding window keeps `window` tokens only."""
    if cfg.attention == "mla":
        m = cfg.mla_config
        return m.kv_lora_rank + m.qk_rope_head_dim
    per_token = 2 * cfg.kv_heads * cfg.attn_head_dim
    return per_token if cfg.window is None else per_token * min(cfg.window, context) / context


def transformer_activation_bytes(cfg, layers: int, batch: int, seq_len: int) -> float:
    """Activations kept for the backward: Korthikanti et al. (2022)'s per-layer count, in fp32 (2x their fp16)."""
    return layers * seq_len * batch * cfg.d_model * (34 + 5 * cfg.n_heads * seq_len / cfg.d_model) * 2


def kv_cache_bytes(cfg, layers: int, bytes_per_number: int = 4) -> float:
    """Keys and values of every layer for one token (full caches)."""
    return layers * 2 * cfg.kv_heads * cfg.attn_head_dim * bytes_per_number


def training_memory_bytes(cfg, batch: int, seq_len: int | None = None, ema: bool = False) -> dict[str, float]:
    """fp32 AdamW training: weights + grads + 2 optimizer moments (16 bytes a parameter; 20 with a moving
    average of the weights), plus the family's estimate of the activations kept for the backward."""
    from .registry import family_of

    family = family_of(cfg)
    states = (20 if ema else 16) * family.cost(cfg, seq_len).params
    activations = family.memory(cfg, batch, seq_len) if family.memory is not None else 0.0
    return {"parameters_and_optimizer": states, "activations": activations, "total": states + activations}


def model_cost(cfg, seq_len: int | None = None) -> Cost:
    from .registry import family_of

    return family_of(cfg).cost(cfg, seq_len)
