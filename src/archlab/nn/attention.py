"""Multi-head attention: self/cross, padding and causal masks, GQA/MQA, RoPE/ALiBi, KV cache.

Masks follow one convention everywhere: a boolean ``key_padding_mask`` of shape (B, Tk) is True
at PADDED keys (as in ``torch.nn.MultiheadAttention``); ``causal=True`` lets query i see keys
j <= i (offset by the cache length when decoding). The fast path is
``F.scaled_dot_product_attention``; asking for the weights (``need_weights=True``) takes the explicit
path, which computes the same thing and keeps the softmax weights in ``self.weights`` for plots.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .position import Rotary


class KVCache:
    """Pre-allocated keys/values of one attention layer: (B, n_kv_heads, max_len, head_dim).

    A static buffer (no torch.cat per token) keeps each decoding step to a slice-assign.
    For cross-attention the encoder's keys/values are computed once and stored with ``fixed=True``.
    """

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.fixed = False

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(f"KV cache full: {end} positions needed, {self.k.size(2)} allocated")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def set_fixed(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v, self.length, self.fixed = k, v, k.size(2), True

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, bias: bool = True,
                 dropout: float = 0.0, cross: bool = False):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads} "
                             f"(allowed: a divisor of n_heads; 1 = multi-query, n_heads = multi-head)")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.cross, self.dropout = cross, dropout
        q_dim, kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        if cross:  # queries from the decoder, keys/values from the encoder output
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * kv_dim, bias=bias)
        else:  # one matmul for q, k and v
            self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)
        self.weights: Tensor | None = None  # (B, H, Tq, Tk) softmax weights of the last call with need_weights

    def _split(self, x: Tensor, n: int) -> Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv_proj(context).chunk(2, dim=-1)
        return self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)

    def forward(self, x: Tensor, context: Tensor | None = None, *, key_padding_mask: Tensor | None = None,
                causal: bool = False, rotary: Rotary | None = None, bias: Tensor | None = None,
                cache: KVCache | None = None, need_weights: bool = False) -> Tensor:
        """x: (B, Tq, d); context: (B, Tk, d) for cross-attention; bias: additive (H, Tq, Tk) (ALiBi).

        With a cache, x holds only the new positions; key_padding_mask must then cover all keys.
        """
        if x.dim() != 3:
            raise ValueError(f"attention expects input of shape (batch, seq, d_model), got {tuple(x.shape)}")
        B, Tq, _ = x.shape
        if self.cross:
            if context is None and (cache is None or not cache.fixed):
                raise ValueError("cross-attention needs a context (the encoder output)")
            q = self._split(self.q_proj(x), self.n_heads)
            if cache is not None and cache.fixed:
                k, v = cache.k, cache.v
            else:
                k, v = self.project_kv(context)
                if cache is not None:
                    cache.set_fixed(k, v)
            past = 0
        else:
            q, k, v = self.qkv_proj(x).split(
                [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim], dim=-1)
            q, k, v = self._split(q, self.n_heads), self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)
            past = cache.length if cache is not None else 0
            if rotary is not None:
                q, k = rotary(q, past), rotary(k, past)
            if cache is not None:
                k, v = cache.append(k, v)
        Tk = k.size(2)
        causal = causal and Tq > 1  # a single new query sees every cached key
        mask = self._mask(B, Tq, Tk, past, key_padding_mask, causal, bias, q)
        use_causal_flag = causal and mask is None and Tq == Tk  # SDPA's own causal kernel
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            y = self._explicit(q, k, v, mask, use_causal_flag, dropout)
        else:
            self.weights = None
            y = self._sdpa(q, k, v, mask, use_causal_flag, dropout)
        y = y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.head_dim)
        return self.out_proj(y)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout: float) -> Tensor:
        gqa = self.n_kv_heads != self.n_heads
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            # CPU flash attention's bf16 backward runs 2-3x slower than its fp32 one (torch 2.13 on
            # AVX512-BF16, measured): under bf16 autocast, train attention in fp32; the matmuls stay bf16
            mask = mask.float() if mask is not None and mask.is_floating_point() else mask
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                   dropout_p=dropout, is_causal=is_causal, enable_gqa=gqa)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                              enable_gqa=gqa)

    @staticmethod
    def _mask(B, Tq, Tk, past, key_padding_mask, causal, bias, like) -> Tensor | None:
        """One mask for SDPA: boolean (True = may attend) or, with a bias, additive float."""
        allowed = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, Tk):
                raise ValueError(f"key_padding_mask must have shape (batch, keys) = {(B, Tk)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
            allowed = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
        if causal and (allowed is not None or bias is not None or Tq != Tk):
            q_pos = torch.arange(past, past + Tq, device=like.device)[:, None]
            visible = torch.arange(Tk, device=like.device)[None, :] <= q_pos  # (Tq, Tk)
            allowed = visible if allowed is None else allowed & visible
        if bias is None:
            return allowed
        bias = bias.to(like.dtype)
        if causal and allowed is None:  # Tq == Tk, no padding: still need the triangle
            allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=like.device).tril()
        return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))

    def _explicit(self, q, k, v, mask, causal, dropout) -> Tensor:
        if self.n_kv_heads != self.n_heads:  # share each k/v head across its group of query heads
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk)
        if causal:
            Tq, Tk = scores.shape[-2:]
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = scores.softmax(dim=-1)
        self.weights = weights.detach()
        return F.dropout(weights, dropout) @ v
