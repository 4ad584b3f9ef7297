"""Position-wise feed-forward layers: MLP (ReLU/ReLU²/GELU), gated GLUs (SwiGLU, GeGLU), and a top-k
mixture of experts."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu2": lambda x: F.relu(x).square(),  # Primer (So et al. 2021), modded-nanogpt
}
GATES = {  # the gate's activation in a GLU
    "swiglu": F.silu,
    "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # Gemma's gelu_pytorch_tanh
}


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(self.act(self.up(x)))
        return self.dropout(y) if self.dropout is not None else y


class GLU(nn.Module):
    """Shazeer (2020): down(act(gate(x)) * up(x)); gate and up share one matmul. act: silu (SwiGLU, Llama)
    or tanh-approximated GELU (GeGLU, Gemma)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0, activation: str = "swiglu"):
        super().__init__()
        if activation not in GATES:
            raise ValueError(f"unknown gated activation {activation!r}; allowed: {', '.join(GATES)}")
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.act = GATES[activation]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        y = self.down(self.act(gate) * up)
        return self.dropout(y) if self.dropout is not None else y


SwiGLU = GLU  # silu is the default gate


def swiglu_hidden(d_ff: int) -> int:
    """Hidden width giving a GLU the parameters of a 2-matrix MLP of width d_ff (2/3 rule), rounded to 8."""
    return max(8, int(round(2 * d_ff / 3 / 8)) * 8)


class MoE(nn.Module):
    """Top-k mixture of experts (Shazeer 2017, Switch/Mixtral style routing).

    Each token goes to its k highest-scoring experts, weighted by the renormalised router
    probabilities. ``aux_loss`` (set on every forward) is the Switch Transformer load-balancing
    loss, E * sum_i f_i * P_i, equal to 1 when routing is uniform.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int, activation: str = "gelu",
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe top_k={top_k} must be between 1 and experts={n_experts}")
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        if activation in GATES:
            self.experts = nn.ModuleList(GLU(d_model, d_ff, bias, dropout, activation) for _ in range(n_experts))
        else:
            self.experts = nn.ModuleList(MLP(d_model, d_ff, activation, bias, dropout) for _ in range(n_experts))
        self.aux_loss = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        probs = self.router(x).float().softmax(dim=-1)  # (N, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_p = (top_p / top_p.sum(dim=-1, keepdim=True)).to(x.dtype)
        n_experts = probs.size(-1)
        # fraction of routed slots per expert (f_i) and mean router probability (P_i)
        counts = torch.bincount(top_i.flatten(), minlength=n_experts).float()
        self.aux_loss = n_experts * (counts / top_i.numel() * probs.mean(dim=0)).sum()
        # group tokens by expert: one gather per expert, no loop over tokens
        flat_expert = top_i.flatten()
        order = flat_expert.argsort(stable=True)
        out = torch.zeros_like(x)
        weights = top_p.flatten()
        start = 0
        for expert, n in zip(self.experts, counts.long().tolist()):
            slots = order[start:start + n]  # routed slots of this expert (slot = token * k + choice)
            start += n
            if n:
                tokens = slots // self.top_k
                out.index_add_(0, tokens, expert(x[tokens]) * weights[slots, None])
        return out.reshape(shape)
