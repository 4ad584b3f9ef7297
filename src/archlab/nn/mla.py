"""Multi-head latent attention (DeepSeek-V2, section 2.1; DeepSeek-V3), with its latent cache.

Keys and values come from one low-rank latent per token, c_kv = RMSNorm(W_dkv x) (kv_lora_rank wide):
k_nope, v = kv_b_proj(c_kv) per head. RoPE cannot pass through that up-projection, so positions ride
on a separate ("decoupled") rope key of qk_rope_head_dim, shared by all heads, concatenated to each
head's key; queries get a rope part per head. The cache keeps only c_kv and the roped shared key.

Two ways to compute the same attention: training and uncached calls expand the latents into per-head
keys and values (``_expanded``); with a cache, kv_b_proj's key part is folded into the queries and
its value part applied after attention (``_absorbed``), so each step attends over the cached
latents directly, as a single key/value head that every query head shares.

Parameter names and layouts are HF ``DeepseekV3Attention``'s. HF DeepSeek-V3 checkpoints rotate
interleaved pairs (rope_interleave=True); ``deinterleave_rope`` converts their weights to the
rotate-half layout of ``Rotary`` (exactly: a permutation of the rope rows).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import attend, attention_mask
from .position import Rotary


class LatentCache:
    """Per token the normalised latent c_kv (kv_lora_rank) and the roped shared key (qk_rope_head_dim),
    side by side in one pre-allocated buffer (B, max_len, kv_lora_rank + qk_rope_head_dim): the keys of the
    absorbed attention, whose values are the first kv_lora_rank columns."""

    def __init__(self, batch: int, max_len: int, kv_lora_rank: int, qk_rope_head_dim: int, device=None,
                 dtype=None):
        self.kv = torch.zeros(batch, max_len, kv_lora_rank + qk_rope_head_dim, device=device, dtype=dtype)
        self.kv_lora_rank = kv_lora_rank
        self.length = 0

    def append(self, c_kv: Tensor, k_rope: Tensor) -> Tensor:
        """c_kv: (B, T, kv_lora_rank), k_rope: (B, T, qk_rope_head_dim) -> all cached latents (B, length, r + dr)."""
        start, end = self.length, self.length + c_kv.size(1)
        if end > self.kv.size(1):
            raise ValueError(f"latent cache full: {end} positions needed, {self.kv.size(1)} allocated")
        self.kv[:, start:end, :self.kv_lora_rank] = c_kv
        self.kv[:, start:end, self.kv_lora_rank:] = k_rope
        self.length = end
        return self.kv[:, :end]

    @property
    def c_kv(self) -> Tensor:
        return self.kv[:, :self.length, :self.kv_lora_rank]

    @property
    def k_rope(self) -> Tensor:
        return self.kv[:, :self.length, self.kv_lora_rank:]

    @property
    def bytes_per_token(self) -> int:  # per sequence and layer
        return self.kv.size(-1) * self.kv.element_size()

    def reorder(self, index: Tensor) -> None:
        self.kv = self.kv.index_select(0, index)


class MultiHeadLatentAttention(nn.Module):
    """q_lora_rank: None for a full-rank query projection (q_proj, DeepSeek-V2-Lite), else a low-rank one
    (q_a_proj, q_a_layernorm, q_b_proj). scale defaults to (qk_nope_head_dim + qk_rope_head_dim)^-1/2 (HF
    multiplies in YaRN's mscale^2 when it extends the context: pass the product). softcap as in
    MultiHeadAttention. ``rotary`` in forward must be built for qk_rope_head_dim."""

    def __init__(self, d_model: int, n_heads: int, *, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, q_lora_rank: int | None = None, bias: bool = False,
                 dropout: float = 0.0, scale: float | None = None, softcap: float | None = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.n_heads, self.dropout, self.softcap = n_heads, dropout, softcap
        self.kv_lora_rank, self.q_lora_rank = kv_lora_rank, q_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.scale = qk_head_dim ** -0.5 if scale is None else scale
        if q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, n_heads * qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d_model, q_lora_rank, bias=bias)
            self.q_a_layernorm = nn.RMSNorm(q_lora_rank, eps=norm_eps)
            self.q_b_proj = nn.Linear(q_lora_rank, n_heads * qk_head_dim, bias=False)
        # one matmul gives the latent and the shared rope key ("mqa": a single key head)
        self.kv_a_proj_with_mqa = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = nn.RMSNorm(kv_lora_rank, eps=norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=bias)
        self.weights: Tensor | None = None  # (B, H, Tq, Tk) softmax weights of the last call with need_weights

    def cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Per sequence: kv_lora_rank + qk_rope_head_dim numbers (multi-head attention: 2 * heads * head_dim)."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) * torch.empty((), dtype=dtype).element_size()

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> LatentCache:
        return LatentCache(batch, max_len, self.kv_lora_rank, self.qk_rope_head_dim, device, dtype)

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, causal: bool = False,
                rotary: Rotary | None = None, bias: Tensor | None = None, cache: LatentCache | None = None,
                need_weights: bool = False) -> Tensor:
        """x: (B, T, d). With a cache, x holds only the new positions; key_padding_mask then covers all keys."""
        if x.dim() != 3:
            raise ValueError(f"attention expects input of shape (batch, seq, d_model), got {tuple(x.shape)}")
        if bias is not None:
            raise ValueError("multi-head latent attention takes no additive bias (ALiBi): its positions are RoPE's")
        B, Tq, _ = x.shape
        H, r, dr = self.n_heads, self.kv_lora_rank, self.qk_rope_head_dim
        q = self.q_proj(x) if self.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rope = q.view(B, Tq, H, -1).transpose(1, 2).split([self.qk_nope_head_dim, dr], dim=-1)
        c_kv, k_rope = self.kv_a_proj_with_mqa(x).split([r, dr], dim=-1)
        c_kv, k_rope = self.kv_a_layernorm(c_kv), k_rope[:, None]  # (B, Tq, r), (B, 1, Tq, dr)
        past = cache.length if cache is not None else 0
        if rotary is not None:
            q_rope, k_rope = rotary(q_rope, past), rotary(k_rope, past)
        causal = causal and Tq > 1  # a single new query sees every cached key
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            mask = attention_mask(B, Tq, Tq, 0, key_padding_mask, causal, None, q)
            y, weights = self._expanded(q_nope, q_rope, c_kv, k_rope, mask, causal and mask is None, dropout,
                                        need_weights)
        else:
            latents = cache.append(c_kv, k_rope[:, 0])  # (B, Tk, r + dr)
            Tk = latents.size(1)
            mask = attention_mask(B, Tq, Tk, past, key_padding_mask, causal, None, q)
            if causal and mask is None:  # heads share the query axis below: no is_causal kernel
                mask = torch.ones(Tq, Tk, dtype=torch.bool, device=x.device).tril()
            y, weights = self._absorbed(q_nope, q_rope, latents, mask, dropout, need_weights)
        self.weights = weights if need_weights else None
        return self.o_proj(y.transpose(1, 2).reshape(B, Tq, H * self.v_head_dim))

    def _expanded(self, q_nope, q_rope, c_kv, k_rope, mask, is_causal, dropout, need_weights):
        """Per-head keys [k_nope, shared k_rope] and values from the latents; (B, H, Tq, v_head_dim)."""
        B, Tk, _ = c_kv.shape
        H = self.n_heads
        kv = self.kv_b_proj(c_kv).view(B, Tk, H, -1).transpose(1, 2)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, H, -1, -1)), dim=-1)
        # CPU flash attention wants one head size for q, k and v (else SDPA falls back to its math kernel,
        # 1.5-2x slower in training, measured): zero-pad the smaller; scores and outputs are unchanged
        dqk, dv = q.size(-1), self.v_head_dim
        if dv < dqk:
            v = F.pad(v, (0, dqk - dv))
        elif dv > dqk:
            q, k = F.pad(q, (0, dv - dqk)), F.pad(k, (0, dv - dqk))
        y, weights = attend(q, k, v, mask, is_causal=is_causal, dropout=dropout, scale=self.scale,
                            softcap=self.softcap, need_weights=need_weights)
        return y[..., :dv], weights

    def _absorbed(self, q_nope, q_rope, latents, mask, dropout, need_weights):
        """q_nope . (W_uk c) = (W_uk^T q_nope) . c and sum_j p_j W_uv c_j = W_uv sum_j p_j c_j: attend over the
        latents with every head's query on one axis (no copy of the cache per head); (B, H, Tq, v_head_dim)."""
        B, H, Tq, _ = q_nope.shape
        r, Tk = self.kv_lora_rank, latents.size(1)
        w_uk, w_uv = self.kv_b_proj.weight.view(H, -1, r).split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
        q = torch.cat((q_nope @ w_uk, q_rope), dim=-1).reshape(B, 1, H * Tq, -1)  # (B, 1, H*Tq, r + dr)
        kv = latents[:, None]  # (B, 1, Tk, r + dr)
        if mask is not None:
            mask = mask.expand(B, H, Tq, Tk).reshape(B, 1, H * Tq, Tk)
        # the values are the latents c_kv; attending over the whole rows (and dropping the rope columns of the
        # result) keeps q, k, v one size, which CPU flash attention needs (2.7x faster than a sliced v, measured)
        y, weights = attend(q, kv, kv, mask, dropout=dropout, scale=self.scale, softcap=self.softcap,
                            need_weights=need_weights)
        y = y[..., :r].reshape(B, H, Tq, r) @ w_uv.transpose(1, 2)  # (B, H, Tq, v_head_dim)
        return y, (weights.view(B, H, Tq, Tk) if weights is not None else None)


def deinterleave_rope(state_dict: dict[str, Tensor], n_heads: int, qk_nope_head_dim: int, qk_rope_head_dim: int,
                      kv_lora_rank: int) -> dict[str, Tensor]:
    """HF DeepseekV3Attention weights with rope_interleave=True -> weights for this module (a new dict).

    HF's interleaved RoPE rotates the pairs (x0, x1), (x2, x3), ... and returns the result in the rotate-half
    layout; Rotary rotates (x_i, x_{i + d/2}). Reordering the rope output rows of the query and latent
    projections as [0, 2, 4, ..., 1, 3, 5, ...] therefore gives bit-for-bit the same roped queries and keys."""
    perm = torch.cat((torch.arange(0, qk_rope_head_dim, 2), torch.arange(1, qk_rope_head_dim, 2)))
    out = dict(state_dict)
    qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
    head_rows = torch.cat((torch.arange(qk_nope_head_dim), qk_nope_head_dim + perm))
    q_rows = (torch.arange(n_heads)[:, None] * qk_head_dim + head_rows).flatten()
    kv_rows = torch.cat((torch.arange(kv_lora_rank), kv_lora_rank + perm))
    for name, rows in (("q_proj.weight", q_rows), ("q_b_proj.weight", q_rows),
                       ("kv_a_proj_with_mqa.weight", kv_rows), ("kv_a_proj_with_mqa.bias", kv_rows)):
        if name in out:
            out[name] = out[name][rows]
    return out
