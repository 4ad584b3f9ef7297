"""Multi-head attention: self/cross, padding, causal and sliding-window masks, GQA/MQA, RoPE/ALiBi,
QK-norm, logit soft-capping, KV caches (full or rolling).

Masks follow one convention everywhere: a boolean ``key_padding_mask`` of shape (B, Tk) is True
at PADDED keys (as in ``torch.nn.MultiheadAttention``); ``causal=True`` lets query i see keys
j <= i (offset by the cache length when decoding); ``window=w`` (Mistral) narrows that to
i - w < j <= i (without ``causal``: |i - j| < w). The fast path is ``F.scaled_dot_product_attention``;
asking for the weights (``need_weights=True``) or soft-capping the logits (Gemma-2, which SDPA cannot
do; flex_attention has no CPU backward in torch 2.13) takes the explicit path, which computes the same
thing and keeps the softmax weights in ``self.weights`` for plots.
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


class RollingKVCache:
    """Keys/values of the last ``window`` positions only, in a ring buffer (B, n_kv_heads, window, head_dim):
    sliding-window decoding in bounded memory, however long the sequence.

    Position p lives in slot p % window. A one-token step writes its slot and attends over the whole
    ring (exactly the keys its window sees, in ring order); a chunk of several tokens attends over the
    ring in time order followed by its own keys, and ``positions()`` gives the absolute position of
    every key returned, for the mask.
    """

    def __init__(self, batch: int, n_kv_heads: int, window: int, head_dim: int, device=None, dtype=None):
        self.k = torch.zeros(batch, n_kv_heads, window, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.window = window
        self.length = 0  # positions seen so far, kept or not
        self._chunk_start: int | None = None  # first position returned by the last chunk append

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, T, W = self.length, k.size(2), self.window
        self.length = start + T
        if T == 1:
            self._chunk_start = None
            self.k[:, :, start % W] = k[:, :, 0]
            self.v[:, :, start % W] = v[:, :, 0]
            n = min(self.length, W)
            return self.k[:, :, :n], self.v[:, :, :n]
        n_past = min(start, W)
        past_k, past_v = self.k[:, :, :n_past], self.v[:, :, :n_past]
        if start > W:  # oldest kept position first
            past_k, past_v = past_k.roll(-(start % W), dims=2), past_v.roll(-(start % W), dims=2)
        self._chunk_start = start - n_past
        all_k, all_v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        kept = min(T, W)  # the chunk's last tokens overwrite the oldest slots
        slots = torch.arange(self.length - kept, self.length, device=k.device) % W
        self.k.index_copy_(2, slots, k[:, :, T - kept:])
        self.v.index_copy_(2, slots, v[:, :, T - kept:])
        return all_k, all_v

    def positions(self) -> Tensor:
        """Absolute positions of the keys the last append returned."""
        device = self.k.device
        if self._chunk_start is not None:
            return torch.arange(self._chunk_start, self.length, device=device)
        if self.length <= self.window:
            return torch.arange(self.length, device=device)
        base = self.length - self.window  # oldest kept position; slot i holds base + (i - base) mod W
        return base + (torch.arange(self.window, device=device) - base) % self.window

    def reorder(self, index: Tensor) -> None:
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


def attention_mask(B: int, Tq: int, Tk: int, past: int, key_padding_mask: Tensor | None, causal: bool,
                   bias: Tensor | None, like: Tensor, window: int | None = None,
                   key_pos: Tensor | None = None) -> Tensor | None:
    """One mask for SDPA: boolean (True = may attend) or, with a bias, additive float; None when the
    plain (or is_causal) kernel needs none. key_pos: absolute key positions when not 0..Tk-1 (rolling cache)."""
    allowed = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, Tk):
            raise ValueError(f"key_padding_mask must have shape (batch, keys) = {(B, Tk)}, "
                             f"got {tuple(key_padding_mask.shape)}")
        allowed = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, Tk)
    positional = window is not None or (causal and (allowed is not None or bias is not None or Tq != Tk
                                                    or key_pos is not None))
    if positional:
        q_pos = torch.arange(past, past + Tq, device=like.device)[:, None]
        k_pos = (torch.arange(Tk, device=like.device) if key_pos is None else key_pos)[None, :]
        if window is None:
            visible = k_pos <= q_pos  # (Tq, Tk)
        elif causal:
            visible = (k_pos <= q_pos) & (k_pos > q_pos - window)
        else:
            visible = (q_pos - k_pos).abs() < window
        allowed = visible if allowed is None else allowed & visible
    if bias is None:
        return allowed
    bias = bias.to(like.dtype)
    if causal and allowed is None:  # Tq == Tk, no padding: still need the triangle
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=like.device).tril()
    return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, is_causal: bool = False, dropout: float = 0.0,
           scale: float | None = None, softcap: float | None = None,
           need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T * scale (+ mask)) v for q: (B, H, Tq, d), k: (B, Hkv, Tk, d), v: (B, Hkv, Tk, dv), where
    Hkv divides H; scale defaults to d^-1/2. Returns (B, H, Tq, dv) and the weights if asked for."""
    if need_weights or softcap is not None:
        return _explicit(q, k, v, mask, is_causal, dropout, scale, softcap)
    return _sdpa(q, k, v, mask, is_causal, dropout, scale), None


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout: float,
          scale: float | None) -> Tensor:
    gqa = k.size(1) != q.size(1)
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
        # CPU flash attention's bf16 backward runs 2-3x slower than its fp32 one (torch 2.13 on
        # AVX512-BF16, measured): under bf16 autocast, train attention in fp32; the matmuls stay bf16
        mask = mask.float() if mask is not None and mask.is_floating_point() else mask
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout,
                                               is_causal=is_causal, scale=scale, enable_gqa=gqa)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          scale=scale, enable_gqa=gqa)


def _explicit(q, k, v, mask, is_causal, dropout, scale, softcap) -> tuple[Tensor, Tensor]:
    B, H, Tq, d = q.shape
    Hkv, Tk = k.size(1), k.size(2)
    # each k/v head serves H/Hkv consecutive query heads: fold them into the query axis, k and v are not copied
    scores = (q.reshape(B, Hkv, -1, d) @ k.transpose(-2, -1)).view(B, H, Tq, Tk)
    scores = scores / math.sqrt(d) if scale is None else scores * scale
    if softcap is not None:  # Gemma-2: squash the logits smoothly into (-softcap, softcap)
        scores = softcap * torch.tanh(scores / softcap)
    if is_causal:
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    y = F.dropout(weights, dropout).view(B, Hkv, -1, Tk) @ v
    return y.view(B, H, Tq, v.size(-1)), weights.detach()


class MultiHeadAttention(nn.Module):
    """head_dim defaults to d_model / n_heads (Qwen3 and Gemma-2 set it apart: q_proj gives n_heads * head_dim,
    out_proj maps that back to d_model); scale defaults to head_dim^-1/2 (Gemma-2: query_pre_attn_scalar^-1/2).
    qk_norm (Qwen3, OLMo-2): RMSNorm over each head's queries and keys, before RoPE. softcap (Gemma-2):
    logits -> softcap * tanh(logits / softcap). window: sliding-window attention (see the module docstring)."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *, bias: bool = True,
                 dropout: float = 0.0, cross: bool = False, head_dim: int | None = None, window: int | None = None,
                 qk_norm: bool = False, softcap: float | None = None, scale: float | None = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads} "
                             f"(allowed: a divisor of n_heads; 1 = multi-query, n_heads = multi-head)")
        if window is not None and window < 1:
            raise ValueError(f"attention window must be at least 1, got {window}")
        if softcap is not None and softcap <= 0:
            raise ValueError(f"attention softcap must be positive, got {softcap}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads if head_dim is None else head_dim
        self.cross, self.dropout = cross, dropout
        self.window, self.softcap, self.scale = window, softcap, scale
        q_dim, kv_dim = n_heads * self.head_dim, n_kv_heads * self.head_dim
        if cross:  # queries from the decoder, keys/values from the encoder output
            self.q_proj = nn.Linear(d_model, q_dim, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * kv_dim, bias=bias)
        else:  # one matmul for q, k and v
            self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=bias)
        if qk_norm:
            self.q_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.out_proj = nn.Linear(q_dim, d_model, bias=bias)
        self.weights: Tensor | None = None  # (B, H, Tq, Tk) softmax weights of the last call with need_weights

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache | RollingKVCache:
        """For decoding: the last `window` positions (bounded memory) or all max_len."""
        if self.window is not None:
            return RollingKVCache(batch, self.n_kv_heads, self.window, self.head_dim, device, dtype)
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, device, dtype)

    def _split(self, x: Tensor, n: int) -> Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv_proj(context).chunk(2, dim=-1)
        k = self._split(k, self.n_kv_heads)
        return (self.k_norm(k) if self.k_norm is not None else k), self._split(v, self.n_kv_heads)

    def forward(self, x: Tensor, context: Tensor | None = None, *, key_padding_mask: Tensor | None = None,
                causal: bool = False, rotary: Rotary | None = None, bias: Tensor | None = None,
                cache: KVCache | RollingKVCache | None = None, need_weights: bool = False) -> Tensor:
        """x: (B, Tq, d); context: (B, Tk, d) for cross-attention; bias: additive (H, Tq, Tk) (ALiBi).

        With a cache, x holds only the new positions; key_padding_mask must then cover all positions so far.
        """
        if x.dim() != 3:
            raise ValueError(f"attention expects input of shape (batch, seq, d_model), got {tuple(x.shape)}")
        B, Tq, _ = x.shape
        if self.cross:
            if context is None and (cache is None or not cache.fixed):
                raise ValueError("cross-attention needs a context (the encoder output)")
            q = self._split(self.q_proj(x), self.n_heads)
            if self.q_norm is not None:
                q = self.q_norm(q)
            if cache is not None and cache.fixed:
                k, v = cache.k, cache.v
            else:
                k, v = self.project_kv(context)
                if cache is not None:
                    cache.set_fixed(k, v)
            past = 0
        else:
            kv_dim = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_dim, kv_dim, kv_dim], dim=-1)
            q, k, v = self._split(q, self.n_heads), self._split(k, self.n_kv_heads), self._split(v, self.n_kv_heads)
            if self.q_norm is not None:  # per head, before RoPE
                q, k = self.q_norm(q), self.k_norm(k)
            past = cache.length if cache is not None else 0
            if rotary is not None:
                q, k = rotary(q, past), rotary(k, past)
            if cache is not None:
                k, v = cache.append(k, v)
        Tk = k.size(2)
        causal = causal and Tq > 1  # a single new query sees every cached key
        window, key_pos = self.window, None
        if isinstance(cache, RollingKVCache):
            if cache.window != self.window:
                raise ValueError(f"rolling cache of window {cache.window} used by attention of window {self.window}")
            if key_padding_mask is not None or Tq > 1:
                key_pos = cache.positions()
            if key_padding_mask is not None:
                if key_padding_mask.size(-1) != cache.length:
                    raise ValueError(f"with a rolling cache, key_padding_mask must cover all {cache.length} "
                                     f"positions so far, got {key_padding_mask.size(-1)}")
                key_padding_mask = key_padding_mask[:, key_pos]
            if Tq == 1:  # the ring holds exactly the keys this query's window sees
                window = None
        mask = attention_mask(B, Tq, Tk, past, key_padding_mask, causal, bias, q, window, key_pos)
        use_causal_flag = causal and mask is None and Tq == Tk  # SDPA's own causal kernel
        dropout = self.dropout if self.training else 0.0
        y, weights = attend(q, k, v, mask, is_causal=use_causal_flag, dropout=dropout, scale=self.scale,
                            softcap=self.softcap, need_weights=need_weights)
        self.weights = weights if need_weights else None
        y = y.transpose(1, 2).reshape(B, Tq, self.n_heads * self.head_dim)
        return self.out_proj(y)
