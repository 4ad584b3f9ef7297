"""Mamba-2 mixer: a selective state-space layer computed by state-space duality (Dao & Gu, 2024).

Each head keeps a (head_dim x d_state) state h and, per token, decays it by the scalar exp(dt*A) and
adds the outer product of dt*x with B; the output is y = h C + D x. Training and prefill use the
chunked SSD form: inside a chunk of Q tokens the recurrence is unrolled into a masked, attention-like
Q x Q matmul; across chunks only the states at chunk boundaries are carried, by a short scan over
chunks. Decoding one token with a cache is the recurrence itself, at a cost independent of the length.

Parameter names and shapes are those of Hugging Face's ``Mamba2Mixer``, so its ``state_dict`` loads
as is. Its default ``time_step_limit`` (0, inf) never clamps softplus(dt), so no clamp is applied here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


class Mamba2Cache:
    """The whole decoding state of one mixer, of a size independent of the sequence length.

    conv_state: the last d_conv inputs of the causal conv, (B, conv_dim, d_conv), in the model dtype;
    ssm_state: the recurrent state, (B, n_heads, head_dim, d_state), always fp32 (it accumulates).
    """

    def __init__(self, batch: int, conv_dim: int, d_conv: int, n_heads: int, head_dim: int, d_state: int,
                 device=None, dtype=None):
        self.conv_state = torch.zeros(batch, conv_dim, d_conv, device=device, dtype=dtype)
        self.ssm_state = torch.zeros(batch, n_heads, head_dim, d_state, device=device, dtype=torch.float32)
        self.length = 0  # tokens seen so far

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving hypotheses, or finished rows are dropped)."""
        self.conv_state = self.conv_state.index_select(0, index)
        self.ssm_state = self.ssm_state.index_select(0, index)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_state, self.ssm_state))


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * silu(z), normalised over each of n_groups equal slices of the channels
    (Mamba-2's norm_before_gate=False, grouped as HF's MambaRMSNormGated: one group per B/C group)."""

    def __init__(self, dim: int, n_groups: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.n_groups, self.eps = n_groups, eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = (y.float() * F.silu(z.float())).unflatten(-1, (self.n_groups, -1))
        y = F.rms_norm(y, y.shape[-1:], eps=self.eps).flatten(-2)
        return self.weight * y.to(z.dtype)


def segsum(a: Tensor) -> Tensor:
    """(..., T) -> (..., T, T): [i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.

    Summed directly rather than as cumsum[i] - cumsum[j], which cancels catastrophically when the
    decays are large; exp() of the result is the decay from position j to position i."""
    T = a.size(-1)
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    sums = a[..., None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0).cumsum(-2)  # [i, j]: a[i] for i > j
    return sums.masked_fill(~ones.tril(), float("-inf"))


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The SSM over a whole sequence in chunks, in fp32.

    x: (b, t, h, p); dt: (b, t, h) step sizes > 0; A: (h,) rates < 0; B, C: (b, t, g, n), each group
    shared by h/g consecutive heads; initial_state: (b, h, p, n). T need not be a multiple of the chunk.
    Returns y: (b, t, h, p) without the D skip, and the state after the last token, (b, h, p, n).
    """
    b, t, h, p = x.shape
    g, n = B.shape[2:]
    Q, pad = chunk_size, -t % chunk_size
    c = (t + pad) // Q
    # padded steps get dt = 0: no input and no decay, so the final state is left exactly as it was
    x, dt = F.pad(x.float(), (0, 0, 0, 0, 0, pad)), F.pad(dt.float(), (0, 0, 0, pad))
    B, C = (F.pad(v.float(), (0, 0, 0, 0, 0, pad)) for v in (B, C))
    # heads first and split as (group, head in group): every product below is a plain batched matmul
    x = (x * dt[..., None]).view(b, c, Q, g, h // g, p).permute(0, 3, 4, 1, 2, 5)  # (b, g, r, c, Q, p)
    a = (dt * A).view(b, c, Q, g, h // g).permute(0, 3, 4, 1, 2)  # (b, g, r, c, Q) log decay per step
    B, C = (v.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4) for v in (B, C))  # (b, g, c, Q, n)
    a_cum = a.cumsum(-1)

    # 1. inside each chunk: scores C_l . B_s (one per group) masked by the decay from s to l
    scores = C @ B.transpose(-1, -2)  # (b, g, c, Q, Q)
    y = (scores[:, :, None] * torch.exp(segsum(a))) @ x  # (b, g, r, c, Q, p)

    # 2. what each chunk adds to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, g, r, c, Q)
    chunk_states = (x * decay_to_end[..., None]).transpose(-1, -2) @ B[:, :, None]  # (b, g, r, c, p, n)

    # 3. scan over chunks: the state entering each chunk (c steps, each one elementwise multiply-add)
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]  # (b, g, r, c, 1, 1)
    state = x.new_zeros(b, g, h // g, p, n) if initial_state is None else initial_state.float().view(b, g, -1, p, n)
    entering = []
    for i in range(c):
        entering.append(state)
        state = chunk_decay[:, :, :, i] * state + chunk_states[:, :, :, i]
    entering = torch.stack(entering, dim=3)  # (b, g, r, c, p, n)

    # 4. the entering state read out by C at each position, decayed from the chunk start
    y = y + (C[:, :, None] @ entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, p)[:, :t]
    return y, state.reshape(b, h, p, n)


def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the recurrence: h = exp(dt A) h + dt x B^T, y = h C, in fp32.

    x: (b, h, p); dt: (b, h); A: (h,); B, C: (b, g, n); state: (b, h, p, n). Returns y (b, h, p), new state."""
    b, h, p = x.shape
    g, n = B.shape[1:]
    x, dt, B, C = x.float().view(b, g, -1, p), dt.float().view(b, g, -1), B.float(), C.float()
    decay = torch.exp(dt * A.view(g, -1))[..., None, None]  # (b, g, r, 1, 1)
    state = decay * state.view(b, g, -1, p, n) + (dt[..., None] * x)[..., None] * B[:, :, None, None, :]
    y = (state @ C[:, :, None, :, None]).squeeze(-1)  # (b, g, r, p)
    return y.reshape(b, h, p), state.reshape(b, h, p, n)


class Mamba2Mixer(nn.Module):
    """in_proj -> (z, xBC, dt); causal depthwise conv + SiLU on xBC; SSM per head; gated RMSNorm; out_proj."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, head_dim: int = 64,
                 n_groups: int = 1, chunk_size: int = 64, *, bias: bool = False, conv_bias: bool = True,
                 norm_eps: float = 1e-5, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % head_dim:
            raise ConfigError(f"head_dim={head_dim} must divide expand * d_model = {d_inner}")
        n_heads = d_inner // head_dim
        if n_heads % n_groups:
            raise ConfigError(f"n_groups={n_groups} must divide the number of heads {n_heads} "
                              f"(= expand * d_model / head_dim)")
        if chunk_size < 1 or d_conv < 1:
            raise ConfigError(f"chunk_size={chunk_size} and d_conv={d_conv} must be positive")
        self.d_inner, self.d_state, self.d_conv, self.head_dim = d_inner, d_state, d_conv, head_dim
        self.n_heads, self.n_groups, self.chunk_size = n_heads, n_groups, chunk_size
        self.conv_dim = d_inner + 2 * n_groups * d_state  # x, B and C go through the conv together
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + n_heads, bias=bias)  # z, xBC, dt
        # no padding: forward prepends the d_conv - 1 previous inputs (zeros, or the cache's)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.D = nn.Parameter(torch.empty(n_heads))
        self.norm = GatedRMSNorm(d_inner, n_groups, norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min: float, dt_max: float, dt_floor: float) -> None:
        """mamba_ssm's (and HF's) initialisation: dt log-uniform in [dt_min, dt_max] stored through the
        inverse of softplus, A = -(1..H) (S4D-real), D = 1; the conv bias starts at zero as in HF."""
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.A_log.copy_(torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        if self.conv1d.bias is not None:
            self.conv1d.bias.zero_()

    def new_cache(self, batch: int, device=None, dtype=None) -> Mamba2Cache:
        return Mamba2Cache(batch, self.conv_dim, self.d_conv, self.n_heads, self.head_dim, self.d_state,
                           device=device or self.A_log.device, dtype=dtype or self.conv1d.weight.dtype)

    def forward(self, x: Tensor, *, cache: Mamba2Cache | None = None) -> Tensor:
        """x: (B, T, d_model) -> (B, T, d_model). With a cache, x holds only the new tokens: one token
        takes the recurrent step, several (a prefill, or a continuation) the chunked path from the cached state."""
        if x.dim() != 3:
            raise ValueError(f"Mamba2Mixer expects input of shape (batch, seq, d_model), got {tuple(x.shape)}")
        b, t, _ = x.shape
        if cache is not None and cache.ssm_state.size(0) != b:
            raise ValueError(f"cache holds {cache.ssm_state.size(0)} rows but the input has batch {b}")
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC = F.silu(self._conv(xBC, cache))
        xs, B, C = xBC.split([self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        xs = xs.view(b, t, self.n_heads, self.head_dim)
        B, C = B.view(b, t, self.n_groups, self.d_state), C.view(b, t, self.n_groups, self.d_state)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (b, t, h)
        A = -torch.exp(self.A_log.float())
        if cache is not None and t == 1:
            y, state = ssd_step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], cache.ssm_state)
            y = y[:, None]
        else:
            y, state = ssd_chunked(xs, dt, A, B, C, self.chunk_size, None if cache is None else cache.ssm_state)
        if cache is not None:
            cache.ssm_state, cache.length = state, cache.length + t
        y = y + self.D.float()[:, None] * xs.float()
        y = self.norm(y.reshape(b, t, self.d_inner), z)
        return self.out_proj(y.to(x.dtype))

    def _conv(self, xBC: Tensor, cache: Mamba2Cache | None) -> Tensor:
        """Causal depthwise conv over time: (B, T, conv_dim) -> (B, T, conv_dim).

        With a cache the d_conv - 1 previous inputs come from it, and it keeps the last d_conv inputs
        (for one token, cat(state[1:], x) is the roll-and-insert of the recurrent conv)."""
        xBC = xBC.transpose(1, 2)
        if cache is None:
            xBC = F.pad(xBC, (self.d_conv - 1, 0))
        else:
            xBC = torch.cat([cache.conv_state[..., 1:].to(xBC.dtype), xBC], dim=-1)
            cache.conv_state = xBC[..., -self.d_conv:].to(cache.conv_state.dtype)
            if xBC.size(-1) == self.d_conv:  # one new token: a multiply-add, far cheaper than a conv call
                y = (xBC * self.conv1d.weight[:, 0]).sum(-1, keepdim=True)
                return (y if self.conv1d.bias is None else y + self.conv1d.bias[:, None]).transpose(1, 2)
        return self.conv1d(xBC).transpose(1, 2)


def mamba2_forward_flops(d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, head_dim: int = 64,
                         n_groups: int = 1, chunk_size: int = 64) -> float:
    """Forward FLOPs per token of one Mamba2Mixer on a sequence that fills whole chunks (multiply-add = 2).

    Counted: in_proj and out_proj; the depthwise conv; inside a chunk the C.B scores (per group) and the
    masked scores times dt*x (per head), both over the full Q x Q square as flops.py counts attention;
    each chunk's state (dt*x decayed) B^T, its read-out C.state, and the scan over chunk states (one
    multiply-add per state element per chunk). Left out, as for Transformers: elementwise work (decay
    mask, exp, softplus, SiLU, the D skip, the gated norm). Decoding with a cache costs instead 4*H*P*N
    for the SSM (decay-and-add, read-out) plus the same projections and conv."""
    d_inner = expand * d_model
    H, P, N, G, Q = d_inner // head_dim, head_dim, d_state, n_groups, chunk_size
    conv_dim = d_inner + 2 * G * N
    projections = 2 * d_model * (d_inner + conv_dim + H) + 2 * d_inner * d_model
    conv = 2 * conv_dim * d_conv
    within_chunk = 2 * Q * G * N + 2 * Q * H * P
    states = 2 * H * P * N + 2 * H * P * N + 2 * H * P * N / Q  # chunk states, read-out, scan
    return projections + conv + within_chunk + states
