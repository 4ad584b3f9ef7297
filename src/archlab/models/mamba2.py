"""Mamba-2 language model (Dao & Gu, 2024): embeddings, a stack of pre-norm residual Mamba2Mixer layers
(nn/ssm.py), a final RMSNorm and an output layer tied to the embeddings, as Hugging Face's
``Mamba2ForCausalLM`` (whose folders load into it and which it saves back) and mamba_ssm's
``MambaLMHeadModel``. No attention and no position table: order lives in the recurrence, and decoding
keeps a fixed-size state per layer instead of a cache that grows with the context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from ..config import at_least_one
from ..errors import ConfigError, HFImportError
from ..nn.ssm import Mamba2Cache, Mamba2Mixer, mamba2_forward_flops
from .flops import Cost
from .registry import Family, FamilyConfig, HFConversion, build_skeleton, count_parameters, register_family

HF_CONTEXT = 2048  # the training context of state-spaces' Mamba-2 checkpoints; HF configs do not record one


@dataclass
class Mamba2Options:
    """The sizes of one Mamba2Mixer (names as mamba_ssm's Mamba2; HF: state_size, conv_kernel)."""
    d_state: int = 64  # N: state size per head
    d_conv: int = 4  # causal depthwise conv width
    expand: int = 2  # d_inner = expand * d_model
    head_dim: int = 64  # P; heads = d_inner / head_dim
    n_groups: int = 1  # B and C are shared by the heads of a group (like GQA's keys)
    chunk_size: int = 64  # SSD chunk Q (HF and mamba_ssm: 256, for GPUs; the math does not depend on it)

    def validate(self) -> None:
        at_least_one(self, ("d_state", "d_conv", "expand", "head_dim", "n_groups", "chunk_size"))

    def check_width(self, d_model: int, prefix: str = "") -> None:
        """The head split of expand * d_model; ConfigError naming the keys (prefix: 'mamba2.' in a hybrid)."""
        d_inner = self.expand * d_model
        if d_inner % self.head_dim:
            raise ConfigError(f"{prefix}head_dim={self.head_dim} must divide {prefix}expand * d_model = {d_inner}")
        if (d_inner // self.head_dim) % self.n_groups:
            raise ConfigError(f"{prefix}n_groups={self.n_groups} must divide the number of heads "
                              f"{d_inner // self.head_dim} ({prefix}expand * d_model / {prefix}head_dim)")

    def mixer(self, d_model: int, norm_eps: float, bias: bool = False, conv_bias: bool = True) -> Mamba2Mixer:
        return Mamba2Mixer(d_model, self.d_state, self.d_conv, self.expand, self.head_dim, self.n_groups,
                           self.chunk_size, bias=bias, conv_bias=conv_bias, norm_eps=norm_eps)

    def flops(self, d_model: int, seq_len: int | None = None) -> float:
        """Forward FLOPs per token of one mixer (nn/ssm.py: matmuls, conv and the chunk-state scan). A sequence
        that does not fill its last chunk is padded to it: that chunk's work is done for the padding too."""
        whole = mamba2_forward_flops(d_model, self.d_state, self.d_conv, self.expand, self.head_dim, self.n_groups,
                                     self.chunk_size)
        if seq_len is None or seq_len % self.chunk_size == 0:
            return whole
        Q, G, N = self.chunk_size, self.n_groups, self.d_state
        HP = self.expand * d_model  # heads x head_dim
        per_chunk_token = 2 * Q * G * N + 2 * Q * HP + 4 * HP * N + 2 * HP * N / Q  # the terms of ssm.py's count
        padded = -(-seq_len // Q) * Q
        return whole + per_chunk_token * (padded - seq_len) / seq_len

    def state_bytes(self, d_model: int, bytes_per_number: int = 4) -> int:
        """One sequence's Mamba2Cache: the conv window and the SSM state; fixed, however long the sequence."""
        d_inner = self.expand * d_model
        conv_dim = d_inner + 2 * self.n_groups * self.d_state
        return (conv_dim * self.d_conv + d_inner * self.d_state) * bytes_per_number

    def activation_numbers(self, d_model: int) -> float:
        """Numbers per token one mixer keeps for the backward (fp32), tallied from nn/ssm.py's forward with
        saved-tensor hooks: in_proj's input and output, the conv's padded input, output and SiLU, ~7 d_inner-wide
        tensors (SSD input and output, D skip, gated norm, out_proj's input), per head Q-wide rows of decayed
        chunk scores (two to six, as torch's batched matmuls copy their operands or not: four counted), B and
        C broadcast to the heads, and two chunk-boundary states per chunk."""
        d_inner = self.expand * d_model
        G, N, Q = self.n_groups, self.d_state, self.chunk_size
        conv_dim = d_inner + 2 * G * N
        heads = d_inner // self.head_dim
        return (d_model + 4 * conv_dim + 7 * d_inner + 4 * heads * Q + G * Q + 2 * heads * N + 2 * d_inner * N / Q
                + 2 * G * N + 5 * heads)


@dataclass
class Mamba2Config(Mamba2Options, FamilyConfig):
    family: ClassVar[str] = "mamba2"
    vocab_size: int | None = None  # None: from the task's tokenizer
    d_model: int = 128  # HF: hidden_size
    n_layers: int = 4  # HF: num_hidden_layers
    max_seq_len: int = 256  # the training context (generation restarts from half of it when full); no table
    norm_eps: float = 1e-5  # HF: layer_norm_epsilon
    tie_embeddings: bool = True  # mamba_ssm ties; HF's config.json says tie_word_embeddings
    residual_in_fp32: bool = True  # HF/mamba_ssm: the residual stream stays fp32 under low-precision weights
    bias: bool = False  # in_proj/out_proj biases (HF: use_bias)
    conv_bias: bool = True  # HF: use_conv_bias

    def validate(self) -> None:
        super().validate()
        at_least_one(self, ("d_model", "n_layers", "max_seq_len"))
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        self.check_width(self.d_model)

    def require_vocab(self) -> int:
        if self.vocab_size is None:
            raise ConfigError("model.vocab_size is not set for family 'mamba2' (a task sets it from its tokenizer; "
                              "give it when building a model by hand)")
        return self.vocab_size


class Mamba2Layer(nn.Module):
    """HF's Mamba2Block: x + mixer(RMSNorm(x)), the residual added in fp32 when residual_in_fp32."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = cfg.mixer(cfg.d_model, cfg.norm_eps, cfg.bias, cfg.conv_bias)
        self.residual_in_fp32 = cfg.residual_in_fp32

    def forward(self, x: Tensor, cache: Mamba2Cache | None = None) -> Tensor:
        h = self.mixer(self.norm(x.to(self.norm.weight.dtype)), cache=cache)
        return (x.float() if self.residual_in_fp32 else x) + h


class Mamba2LM(nn.Module):
    """Module names are HF's Mamba2ForCausalLM's without its `backbone.` prefix, so weights map 1:1."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.config = cfg
        self.embeddings = nn.Embedding(cfg.require_vocab(), cfg.d_model)
        self.layers = nn.ModuleList(Mamba2Layer(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        """mamba_ssm's _init_weights: embeddings N(0, 0.02), Linear biases zero, other matrices torch's default
        (kaiming-uniform), and out_proj divided by sqrt(n_layers) (GPT-2's scheme, one residual branch per
        layer) so the residual stream stays O(1). dt, A, D and the conv bias: the mixer's own init."""
        nn.init.normal_(self.embeddings.weight, 0.0, 0.02)
        for layer in self.layers:
            for linear in (layer.mixer.in_proj, layer.mixer.out_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layers)

    def forward(self, idx: Tensor, *, caches: list[Mamba2Cache] | None = None) -> Tensor:
        """idx: (B, T) token ids (with caches: only the new ones) -> logits (B, T, vocab)."""
        if idx.dim() != 2:
            raise ValueError(f"Mamba2LM expects token ids of shape (batch, seq), got {tuple(idx.shape)}")
        x = self.embeddings(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, caches[i] if caches else None)
        return self.lm_head(self.norm_f(x.to(self.norm_f.weight.dtype)))

    def new_caches(self, batch: int, max_len: int) -> list[Mamba2Cache]:
        """One fixed-size state per layer; max_len is not needed (the state does not grow with the context)."""
        return [layer.mixer.new_cache(batch) for layer in self.layers]

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.layers)


def mamba2_cost(cfg: Mamba2Config, seq_len: int | None = None) -> Cost:
    """Per token: the mixers and the output layer; the embedding is a lookup. Independent of the context
    (unlike attention's scores), except for the padding of a last partial chunk."""
    T = seq_len or cfg.max_seq_len
    per_token = cfg.n_layers * cfg.flops(cfg.d_model, T) + 2 * cfg.d_model * (cfg.vocab_size or 0)
    return Cost("token", per_token, count_parameters(build_skeleton(cfg)))


def mamba2_activation_bytes(cfg: Mamba2Config, batch: int, seq_len: int | None = None) -> float:
    """fp32 activations kept for the backward: per layer the RMSNorm's input and normalised output and the
    mixer's tally; the final norm and output layer's inputs, and the logits (the loss keeps their softmax)."""
    T = seq_len or cfg.max_seq_len
    per_token = cfg.n_layers * (2 * cfg.d_model + cfg.activation_numbers(cfg.d_model)) + 3 * cfg.d_model
    return 4 * batch * T * (per_token + (cfg.vocab_size or 0))


def mamba2_cache_bytes(cfg: Mamba2Config, context: int) -> float:
    """Decode cache per token: the fixed state spread over the context (it does not grow: at context 8x
    longer, the same bytes in all, so 8x fewer per token)."""
    return cfg.n_layers * cfg.state_bytes(cfg.d_model) / context


# --- Hugging Face Mamba-2 --------------------------------------------------------------------------

def mamba2_from_hf_config(hf: dict) -> Mamba2Config:
    if hf.get("hidden_act", "silu") != "silu":
        raise HFImportError(f"Mamba-2 with hidden_act {hf['hidden_act']!r}: only silu is supported")
    if [float(v) for v in hf.get("time_step_limit", (0.0, math.inf))] != [0.0, math.inf]:
        raise HFImportError(f"time_step_limit {hf['time_step_limit']} clamps dt; only (0, inf) (no clamp) "
                            "is supported")
    d, expand = hf["hidden_size"], hf.get("expand", 2)
    head_dim = hf.get("head_dim", 64)
    if hf["num_heads"] * head_dim != expand * d:
        raise HFImportError(f"num_heads * head_dim = {hf['num_heads'] * head_dim} must equal expand * hidden_size "
                            f"= {expand * d}")
    return Mamba2Config(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
                        d_state=hf.get("state_size", 128), d_conv=hf.get("conv_kernel", 4), expand=expand,
                        head_dim=head_dim, n_groups=hf.get("n_groups", 8), chunk_size=hf.get("chunk_size", 256),
                        max_seq_len=HF_CONTEXT, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                        tie_embeddings=hf.get("tie_word_embeddings", False),
                        residual_in_fp32=hf.get("residual_in_fp32", True), bias=hf.get("use_bias", False),
                        conv_bias=hf.get("use_conv_bias", True))


def mamba2_from_hf_state(cfg: Mamba2Config, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF's names less `backbone.` (mamba_ssm's `embedding.` is HF's `embeddings.`)."""
    out = {}
    for name, t in sd.items():
        name = name.removeprefix("backbone.")
        out["embeddings.weight" if name == "embedding.weight" else name] = t
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def mamba2_to_hf(model: nn.Module, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    cfg = model.config
    hf = {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"], "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers, "state_size": cfg.d_state,
          "conv_kernel": cfg.d_conv, "expand": cfg.expand, "head_dim": cfg.head_dim,
          "num_heads": cfg.expand * cfg.d_model // cfg.head_dim, "n_groups": cfg.n_groups,
          "chunk_size": cfg.chunk_size, "layer_norm_epsilon": cfg.norm_eps, "use_bias": cfg.bias,
          "use_conv_bias": cfg.conv_bias, "residual_in_fp32": cfg.residual_in_fp32, "hidden_act": "silu",
          "tie_word_embeddings": cfg.tie_embeddings}
    # tied: no lm_head.weight (safetensors refuses shared tensors; Hugging Face re-ties it on load)
    state = {("backbone." + k if not k.startswith("lm_head.") else k): v for k, v in model.state_dict().items()
             if not (cfg.tie_embeddings and k.startswith("lm_head."))}
    return hf, state


register_family(Family(
    "mamba2", Mamba2Config, Mamba2LM, kind="causal_lm", cost=mamba2_cost, memory=mamba2_activation_bytes,
    cache_bytes=mamba2_cache_bytes,
    hf=HFConversion(("mamba2",), mamba2_from_hf_config, mamba2_from_hf_state, mamba2_to_hf),
    presets={
        # gpt-baby's width, context and parameters (0.80M with the Bible's characters): 7 layers of 4 heads of
        # 64 (expand 2), a 48-wide state, chunks of 32 (on CPU 64-wide heads trained ~25% faster than 32-wide)
        "mamba2-baby": dict(vocab_size=96, d_model=128, n_layers=7, d_state=48, head_dim=64, chunk_size=32,
                            max_seq_len=64),
        # mamba2-130m (state-spaces): GPT-2 small's width and depth
        "mamba2-130m": dict(vocab_size=50280, d_model=768, n_layers=24, d_state=128, head_dim=64, chunk_size=256,
                            max_seq_len=2048),
    }))
