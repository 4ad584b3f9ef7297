"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), the linear-attention layer of Qwen3-Next.

Each value head keeps a (dk, dv) state S, updated per token by a decay and one step of the delta rule:

    S_t = exp(g_t) S_{t-1};   S_t += k_t beta_t (v_t - S_t^T k_t)^T;   o_t = S_t^T q_t

with q, k L2-normalised (q also scaled by dk^-0.5), beta = sigmoid(b) and g = -exp(A_log) softplus(a + dt_bias).
Training and prefill run the chunked form: within a chunk of C tokens the updates are folded into one
triangular solve (the UT/WY transform) and a few matmuls, and only the loop over chunks is sequential.
Decoding with a `GatedDeltaNetCache` runs the recurrence one token at a time; the cache has a fixed size.
Parameter names and layouts are those of Hugging Face's `Qwen3NextGatedDeltaNet`, so its weights load as they are.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


class GatedDeltaNetCache:
    """Decoding state of one GatedDeltaNet layer; its size does not grow with the sequence.

    conv_state: the last conv_kernel - 1 inputs of the short convolution, (B, conv_dim, conv_kernel - 1);
    recurrent_state: S of every value head in fp32, (B, n_v_heads, head_k_dim, head_v_dim).
    """

    def __init__(self, batch: int, conv_dim: int, conv_kernel: int, n_v_heads: int, head_k_dim: int,
                 head_v_dim: int, device=None, dtype=None):
        self.conv_state = torch.zeros(batch, conv_dim, conv_kernel - 1, device=device, dtype=dtype)
        self.recurrent_state = torch.zeros(batch, n_v_heads, head_k_dim, head_v_dim, device=device,
                                           dtype=torch.float32)
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses)."""
        self.conv_state = self.conv_state.index_select(0, index)
        self.recurrent_state = self.recurrent_state.index_select(0, index)

    @property
    def nbytes(self) -> int:
        return self.conv_state.nbytes + self.recurrent_state.nbytes


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(|x|^2 + eps), the form of the FLA kernels and HF (F.normalize clamps the norm instead)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def _decay(log_decay: Tensor) -> Tensor:
    """exp(log_decay), with factors below e^-60 (irrelevant next to fp32's 1e-7 resolution) set to exactly 0:
    the denormal floats they would otherwise produce made the chunked rule 2x slower on CPU with strong decays."""
    return log_decay.masked_fill(log_decay < -60, float("-inf")).exp()


def chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, chunk_size: int,
                           initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The gated delta rule over a whole sequence, chunk by chunk, in the inputs' dtype.

    q, k: (B, H, T, dk), already normalised and scaled; v: (B, H, T, dv); g (log decay, <= 0), beta: (B, H, T);
    initial_state: (B, H, dk, dv) or None (zeros). Returns o: (B, H, T, dv) and the final state.
    """
    B, H, T, dk = k.shape
    dv = v.size(-1)
    C = min(chunk_size, T)  # a chunk longer than the sequence would only add padding
    pad = -T % C  # padded steps have g = 0 and beta = 0: they leave the state as it is
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    N = (T + pad) // C
    q, k, v = (x.view(B, H, N, C, -1) for x in (q, k, v))
    g, beta = g.view(B, H, N, C), beta.view(B, H, N, C)

    # gamma_i = exp(G_i): the decay from the chunk's start through token i; gamma_i / gamma_j for j <= i
    G = g.cumsum(-1)
    future = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = _decay((G[..., :, None] - G[..., None, :]).masked_fill(future, float("-inf")))  # (B, H, N, C, C)
    k_beta = k * beta[..., None]

    # Within a chunk the delta-rule corrections u_i = beta_i (v_i - exp(g_i) S_{i-1}^T k_i) satisfy
    # (I + L) U = V beta - (K beta gamma) S0, with L_ij = beta_i (k_i . k_j) gamma_i / gamma_j for j < i
    # (S0: the state entering the chunk). One unit-lower-triangular solve gives both parts for every chunk.
    L = (k_beta @ k.transpose(-1, -2)) * decay
    rhs = torch.cat([v * beta[..., None], k_beta * _decay(G)[..., None]], dim=-1)
    solved = torch.linalg.solve_triangular(L, rhs, upper=False, unitriangular=True)
    u0, w = solved.split([dv, dk], dim=-1)  # U = u0 - w @ S0
    attn = (q @ k.transpose(-1, -2)) * decay  # causal within the chunk, diagonal included
    q_decayed = q * _decay(G)[..., None]  # reads S0 through the decay so far
    k_decayed = k * _decay(G[..., -1:] - G)[..., None]  # writes into the state decayed to the chunk's end
    chunk_decay = _decay(G[..., -1])[..., None, None]  # (B, H, N, 1, 1)

    # two matmuls per chunk: [w; q] @ S reads the state, [attn; k^T] @ u gives the outputs and the state update
    reads = torch.cat([w, q_decayed], dim=-2)  # (B, H, N, 2C, dk)
    writes = torch.cat([attn, k_decayed.transpose(-1, -2)], dim=-2)  # (B, H, N, C + dk, C)
    S = q.new_zeros(B, H, dk, dv) if initial_state is None else initial_state.to(q.dtype)
    out = []
    # unbind, not x[:, :, n]: each index's backward would fill a zero tensor as large as x, per chunk
    per_chunk = (x.unbind(2) for x in (reads, u0, writes, chunk_decay))
    for reads_n, u0_n, writes_n, decay_n in zip(*per_chunk, strict=True):
        wS, qS = (reads_n @ S).split(C, dim=-2)
        o_u, dS = (writes_n @ (u0_n - wS)).split([C, dk], dim=-2)
        out.append(qS + o_u)
        S = S * decay_n + dS
    o = torch.stack(out, dim=2).view(B, H, N * C, dv)[:, :, :T]
    return o, S


def recurrent_gated_delta_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                               state: Tensor) -> tuple[Tensor, Tensor]:
    """One token: q, k (B, H, dk); v (B, H, dv); g, beta (B, H); state (B, H, dk, dv). Returns o (B, H, dv), state."""
    state = state * _decay(g)[..., None, None]
    u = beta[..., None] * (v - (k.unsqueeze(-2) @ state).squeeze(-2))
    state = state + k.unsqueeze(-1) * u.unsqueeze(-2)
    return (q.unsqueeze(-2) @ state).squeeze(-2), state


class GatedDeltaNet(nn.Module):
    """Qwen3-Next's linear-attention layer: x (B, T, d_model) -> (B, T, d_model).

    Each key head serves n_v_heads // n_k_heads value heads (as GQA shares keys among queries).
    chunk_size=32 is the CPU default: on 2 cores it was as fast as or faster than 16 and 64 (HF and FLA use 64).
    """

    def __init__(self, d_model: int, n_k_heads: int, n_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_kernel: int = 4, chunk_size: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        for key, value in (("n_k_heads", n_k_heads), ("n_v_heads", n_v_heads), ("head_k_dim", head_k_dim),
                           ("head_v_dim", head_v_dim), ("conv_kernel", conv_kernel), ("chunk_size", chunk_size)):
            if value < 1:
                raise ConfigError(f"{key} must be positive, got {value}")
        if n_v_heads % n_k_heads:
            raise ConfigError(f"n_k_heads={n_k_heads} must divide n_v_heads={n_v_heads}")
        self.n_k_heads, self.n_v_heads, self.head_k_dim, self.head_v_dim = n_k_heads, n_v_heads, head_k_dim, head_v_dim
        self.conv_kernel, self.chunk_size = conv_kernel, chunk_size
        self.key_dim, self.value_dim = n_k_heads * head_k_dim, n_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim  # q, k and v go through the short convolution
        # HF's layout: per key head, [q | k | its value heads' v | their z], and [their b | their a]
        self.in_proj_qkvz = nn.Linear(d_model, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(d_model, 2 * n_v_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(n_v_heads))
        # A in [0.01, 16]: decay rates from slow to fast; the lower bound keeps log A finite
        self.A_log = nn.Parameter(torch.empty(n_v_heads).uniform_(0.01, 16).log())
        self.norm = nn.RMSNorm(head_v_dim, eps=norm_eps)  # gated by silu(z) in forward
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        for m in (self.in_proj_qkvz, self.in_proj_ba, self.conv1d, self.out_proj):
            nn.init.normal_(m.weight, 0.0, 0.02)  # HF's initializer_range

    def new_cache(self, batch: int, device=None, dtype=None) -> GatedDeltaNetCache:
        return GatedDeltaNetCache(batch, self.conv_dim, self.conv_kernel, self.n_v_heads, self.head_k_dim,
                                  self.head_v_dim, device=device, dtype=dtype)

    def forward(self, x: Tensor, *, cache: GatedDeltaNetCache | None = None) -> Tensor:
        """x: (B, T, d_model). With a cache, x holds only the new positions: T == 1 takes the recurrent step,
        T > 1 the chunked path starting from the cached state."""
        if x.dim() != 3:
            raise ValueError(f"GatedDeltaNet expects input of shape (batch, seq, d_model), got {tuple(x.shape)}")
        B, T, _ = x.shape
        nk, nv, dk, dv = self.n_k_heads, self.n_v_heads, self.head_k_dim, self.head_v_dim
        r = nv // nk
        q, k, v, z = self.in_proj_qkvz(x).view(B, T, nk, -1).split([dk, dk, r * dv, r * dv], dim=-1)
        b, a = self.in_proj_ba(x).view(B, T, nk, 2 * r).chunk(2, dim=-1)
        b, a = b.reshape(B, T, nv), a.reshape(B, T, nv)

        # causal depthwise convolution + SiLU over time, fed on the left by the cached inputs (or zeros)
        qkv = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], dim=-1).transpose(1, 2)
        past = cache.conv_state if cache is not None else qkv.new_zeros(B, self.conv_dim, self.conv_kernel - 1)
        qkv = torch.cat([past, qkv], dim=-1)  # (B, conv_dim, K - 1 + T)
        if cache is not None:
            cache.conv_state = qkv[:, :, qkv.size(-1) - (self.conv_kernel - 1):].clone()  # not a view of all T
        if T == 1:  # one new token: a multiply-add, far cheaper than a conv call
            qkv = F.silu((qkv * self.conv1d.weight[:, 0]).sum(-1, keepdim=True)).transpose(1, 2)
        else:
            qkv = F.silu(self.conv1d(qkv)).transpose(1, 2)  # (B, T, conv_dim)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)

        # the recurrence runs in fp32 (as HF and the FLA kernels do): its state sums over the whole sequence
        with torch.autocast(x.device.type, enabled=False):
            q = (l2norm(q.float().view(B, T, nk, dk)) / math.sqrt(dk)).transpose(1, 2)  # (B, nk, T, dk)
            k = l2norm(k.float().view(B, T, nk, dk)).transpose(1, 2)
            q, k = q.repeat_interleave(r, dim=1), k.repeat_interleave(r, dim=1)  # (B, nv, T, dk)
            v = v.float().view(B, T, nv, dv).transpose(1, 2)
            beta = b.float().sigmoid().transpose(1, 2)  # (B, nv, T)
            g = (-self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())).transpose(1, 2)
            if cache is not None and T == 1:
                o, state = recurrent_gated_delta_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0], beta[:, :, 0],
                                                      cache.recurrent_state)
                o = o.unsqueeze(2)
            else:
                initial = cache.recurrent_state if cache is not None else None
                o, state = chunk_gated_delta_rule(q, k, v, g, beta, self.chunk_size, initial)
        if cache is not None:
            cache.recurrent_state, cache.length = state, cache.length + T

        o = o.transpose(1, 2).to(x.dtype)  # (B, T, nv, dv)
        o = self.norm(o) * F.silu(z.reshape(B, T, nv, dv))
        return self.out_proj(o.reshape(B, T, self.value_dim))


def gated_deltanet_flops(d_model: int, n_k_heads: int, n_v_heads: int, head_k_dim: int, head_v_dim: int,
                         conv_kernel: int = 4, chunk_size: int = 32) -> float:
    """Forward FLOPs per token of one GatedDeltaNet layer (multiply-add = 2 FLOPs, as in models/flops.py).

    Counted: the three projections; the depthwise convolution; per value head and chunk of C tokens,
    the C x C products K beta K^T and Q K^T (full squares, as flops.py counts attention), the triangular
    solve (C^2 (dk + dv): C^2 / 2 multiply-adds per right-hand column), attn @ U, and the three
    (C, dk) x (dk, dv) state products (W S, Q S, K^T U). Left out: norms, activations, decays, gates and
    the padding of a last partial chunk. Per token the rule costs 6 dk dv + C (5 dk + 3 dv) per value head:
    the state products match the token-by-token recurrence, the C terms are the price of parallelism.
    """
    key_dim, value_dim = n_k_heads * head_k_dim, n_v_heads * head_v_dim
    dk, dv, C = head_k_dim, head_v_dim, chunk_size
    projections = 2 * d_model * (2 * key_dim + 2 * value_dim) + 2 * d_model * 2 * n_v_heads + 2 * value_dim * d_model
    conv = 2 * conv_kernel * (2 * key_dim + value_dim)
    rule = n_v_heads * (6 * dk * dv + C * (5 * dk + 3 * dv))
    return float(projections + conv + rule)
