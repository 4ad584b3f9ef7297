"""Hybrid language models: a stack whose layers each pick their token mixer (Jamba, Zamba, Qwen3-Next,
the MiniMax/Nemotron-H style interleavings) from one config switch,

    layers: [mamba2, mamba2, attention, mamba2]   # any of mamba2 | gated_deltanet | attention | mla

Each layer is a pre-norm residual mixer followed (ffn: true) by a pre-norm residual feed-forward, all
built from nn/: Mamba2Mixer (nn/ssm.py), GatedDeltaNet (nn/linear_attention.py), MultiHeadAttention /
MultiHeadLatentAttention and the FFN/MoE (nn/block.py). Attention layers get RoPE; the recurrent layers
need no positions (order lives in their state). Decoding keeps each layer's own cache: a fixed-size state
for the recurrent layers, keys/values (or latents) growing with the context for the attention layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..config import at_least_one
from ..errors import ConfigError
from ..nn.block import BlockConfig, MLAConfig, MoEConfig, build_ffn, build_self_attention
from ..nn.feedforward import GATES, MoE, swiglu_hidden
from ..nn.linear_attention import GatedDeltaNet, gated_deltanet_flops
from ..nn.position import Rotary
from .flops import Cost, ffn_flops
from .mamba2 import Mamba2Options
from .registry import Family, FamilyConfig, build_skeleton, count_parameters, register_family

LayerKind = Literal["mamba2", "gated_deltanet", "attention", "mla"]
ATTENTION_KINDS = ("attention", "mla")


@dataclass
class GatedDeltaNetOptions:
    """The sizes of one GatedDeltaNet (Qwen3-Next's linear_num_key_heads, linear_key_head_dim, ... scaled down:
    twice as many value heads as key heads, value width = d_model)."""
    n_k_heads: int = 2
    n_v_heads: int = 4
    head_k_dim: int = 32
    head_v_dim: int = 32
    conv_kernel: int = 4
    chunk_size: int = 32

    def validate(self) -> None:
        at_least_one(self, ("n_k_heads", "n_v_heads", "head_k_dim", "head_v_dim", "conv_kernel", "chunk_size"))
        if self.n_v_heads % self.n_k_heads:
            raise ConfigError(f"n_k_heads={self.n_k_heads} must divide n_v_heads={self.n_v_heads}")

    def state_bytes(self, bytes_per_number: int = 4) -> int:
        """One sequence's GatedDeltaNetCache (conv inputs + the dk x dv state per value head); fixed size."""
        conv_dim = 2 * self.n_k_heads * self.head_k_dim + self.n_v_heads * self.head_v_dim
        state = self.n_v_heads * self.head_k_dim * self.head_v_dim
        return (conv_dim * (self.conv_kernel - 1) + state) * bytes_per_number


@dataclass
class AttentionOptions:
    """The switches of the attention (and mla) layers, as in BlockConfig; positions are RoPE's."""
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads; 1: multi-query; between: grouped-query
    head_dim: int | None = None  # None: d_model / n_heads
    window: int | None = None  # sliding window (decoding keeps only the last `window` keys)
    qk_norm: bool = False
    softcap: float | None = None
    attn_scale: float | None = None
    rope_base: float = 10000.0

    def validate(self) -> None:
        if self.rope_base <= 1:
            raise ConfigError(f"rope_base must be greater than 1, got {self.rope_base}")


@dataclass
class HybridConfig(FamilyConfig):
    family: ClassVar[str] = "hybrid"
    vocab_size: int | None = None  # None: from the task's tokenizer
    d_model: int = 128
    layers: list[LayerKind] = field(default_factory=lambda: ["mamba2", "mamba2", "attention", "mamba2"])
    max_seq_len: int = 256  # the training context: RoPE's table and the attention caches' length
    # each mixer's options; None: its defaults. Setting one without a layer of its kind is an error.
    mamba2: Mamba2Options | None = None
    gated_deltanet: GatedDeltaNetOptions | None = None
    attention: AttentionOptions | None = None  # for attention and mla layers
    mla: MLAConfig | None = None  # the latent sizes of mla layers
    ffn: bool = True  # a feed-forward after every mixer (Jamba, Qwen3-Next); false: mixers only (Mamba)
    d_ff: int | None = None  # None: 4 * d_model, or 2/3 of it for a gated activation (Llama's rule)
    activation: Literal["relu", "relu2", "gelu", "gelu_tanh", "swiglu", "geglu_tanh"] = "swiglu"
    moe: MoEConfig | None = None  # every feed-forward a top-k mixture of experts
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return swiglu_hidden(4 * self.d_model) if self.activation in GATES else 4 * self.d_model

    @property
    def mamba2_options(self) -> Mamba2Options:
        return self.mamba2 or Mamba2Options()

    @property
    def gdn_options(self) -> GatedDeltaNetOptions:
        return self.gated_deltanet or GatedDeltaNetOptions()

    def block_config(self, kind: str) -> BlockConfig:
        """The BlockConfig nn/block.py builds an attention layer of this kind (and every feed-forward) from."""
        a = self.attention or AttentionOptions()
        return BlockConfig(d_model=self.d_model, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, head_dim=a.head_dim,
                           attention="mla" if kind == "mla" else "mha", mla=self.mla if kind == "mla" else None,
                           window=a.window, qk_norm=a.qk_norm, softcap=a.softcap, attn_scale=a.attn_scale,
                           d_ff=self.ffn_dim, activation=self.activation, moe=self.moe, norm="rmsnorm",
                           norm_eps=self.norm_eps, bias=False)

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("layers must list at least one layer (mamba2, gated_deltanet, attention or mla)")
        at_least_one(self, ("d_model", "max_seq_len"))
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        kinds = set(self.layers)
        users = {"mamba2": ("mamba2",), "gated_deltanet": ("gated_deltanet",), "attention": ATTENTION_KINDS,
                 "mla": ("mla",)}
        for key, used_by in users.items():
            options = getattr(self, key)
            if options is None:
                continue
            if not kinds & set(used_by):
                raise ConfigError(f"{key} options are set but layers has no {' or '.join(used_by)} layer: "
                                  f"drop {key} or add such a layer")
            try:
                options.validate()
            except ConfigError as e:
                raise ConfigError(f"{key}.{e}") from None
        if "mamba2" in kinds:
            self.mamba2_options.check_width(self.d_model, "mamba2.")
        if self.ffn:
            if self.d_ff is not None and self.d_ff < 1:
                raise ConfigError(f"d_ff must be at least 1 (or null), got {self.d_ff}")
            if self.moe is not None:
                self.moe.validate()
        else:
            given = [key for key in ("d_ff", "moe") if getattr(self, key) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} set but ffn is false: drop them or set ffn true")
        for kind in kinds & set(ATTENTION_KINDS):
            block = self.block_config(kind)
            try:
                block.validate()
                block.check_position("rope")
            except ConfigError as e:
                raise ConfigError(f"{kind} layers: {e}") from None
        window = self.attention.window if self.attention else None
        if window is not None and window > self.max_seq_len:
            raise ConfigError(f"attention.window={window} exceeds max_seq_len={self.max_seq_len}: every key is "
                              f"then in the window; drop the window or lengthen max_seq_len")

    def require_vocab(self) -> int:
        if self.vocab_size is None:
            raise ConfigError("model.vocab_size is not set for family 'hybrid' (a task sets it from its tokenizer; "
                              "give it when building a model by hand)")
        return self.vocab_size


def build_mixer(kind: str, cfg: HybridConfig) -> nn.Module:
    if kind == "mamba2":
        return cfg.mamba2_options.mixer(cfg.d_model, cfg.norm_eps)
    if kind == "gated_deltanet":
        g = cfg.gdn_options
        return GatedDeltaNet(cfg.d_model, g.n_k_heads, g.n_v_heads, g.head_k_dim, g.head_v_dim, g.conv_kernel,
                             g.chunk_size, norm_eps=cfg.norm_eps)
    return build_self_attention(cfg.block_config(kind))


class HybridLayer(nn.Module):
    """x + mixer(RMSNorm(x)), then (with ffn) x + ffn(RMSNorm(x))."""

    def __init__(self, kind: str, cfg: HybridConfig):
        super().__init__()
        self.kind = kind
        self.mixer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = build_mixer(kind, cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.ffn else None
        self.ffn = build_ffn(cfg.block_config(kind)) if cfg.ffn else None

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None):
        """KVCache / RollingKVCache / LatentCache (attention: grows up to max_len, or the window) or the fixed-size
        Mamba2Cache / GatedDeltaNetCache of a recurrent mixer."""
        if self.kind in ATTENTION_KINDS:
            return self.mixer.new_cache(batch, max_len, device, dtype)
        return self.mixer.new_cache(batch, device=device, dtype=dtype)

    def forward(self, x: Tensor, *, rotary: Rotary | None = None, cache=None, need_weights: bool = False) -> Tensor:
        h = self.mixer_norm(x)
        if self.kind in ATTENTION_KINDS:
            h = self.mixer(h, causal=True, rotary=rotary, cache=cache, need_weights=need_weights)
        else:
            h = self.mixer(h, cache=cache)
        x = x + h
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x


class HybridLM(nn.Module):
    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.require_vocab(), cfg.d_model)
        self.layers = nn.ModuleList(HybridLayer(kind, cfg) for kind in cfg.layers)
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        base = (cfg.attention or AttentionOptions()).rope_base
        # one RoPE table per attention kind (MLA rotates only its rope part); no parameters, nothing saved
        self.rotary = nn.ModuleDict({kind: Rotary(cfg.block_config(kind).rotary_dim, cfg.max_seq_len, base)
                                     for kind in ATTENTION_KINDS if kind in cfg.layers})
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Jamba's and GPT-2's: every Linear and the embedding N(0, 0.02) (the mixers keep their own dt, A, D and
        conv init), and each residual branch's output projection N(0, 0.02 / sqrt(branches)), so the residual
        stream stays O(1) however deep."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        branches = len(self.layers) * (2 if self.config.ffn else 1)
        for name, p in self.named_parameters():
            if name.endswith(("mixer.out_proj.weight", "mixer.o_proj.weight", ".down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(branches))

    def forward(self, idx: Tensor, *, caches: list | None = None, need_weights: bool = False) -> Tensor:
        """idx: (B, T) token ids (with caches: only the new ones) -> logits (B, T, vocab). need_weights keeps
        the attention layers' softmax weights (and runs them on the explicit, countable path)."""
        if idx.dim() != 2:
            raise ValueError(f"HybridLM expects token ids of shape (batch, seq), got {tuple(idx.shape)}")
        x = self.tok_emb(idx)
        for i, layer in enumerate(self.layers):
            rotary = self.rotary[layer.kind] if layer.kind in self.rotary else None
            x = layer(x, rotary=rotary, cache=caches[i] if caches else None, need_weights=need_weights)
        return self.lm_head(self.final_norm(x))

    def new_caches(self, batch: int, max_len: int) -> list:
        like = self.tok_emb.weight
        return [layer.new_cache(batch, max_len, like.device, like.dtype) for layer in self.layers]

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.layers)

    def extra_loss(self) -> Tensor | None:
        """The MoE load-balancing loss (as TransformerHooks), None without experts."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MoE)]
        if not losses:
            return None
        return self.config.moe.aux_loss_weight * torch.stack(losses).sum()


# --- analytic costs, per layer kind ---------------------------------------------------------------

def attention_flops(block: BlockConfig, context: int) -> float:
    """One attention layer, one token attending to `context` keys (the full square, as flops.py counts; a
    window masks keys but the kernels still compute them)."""
    d, H, kv, hd = block.d_model, block.n_heads, block.kv_heads, block.attn_head_dim
    return 2 * d * (H + 2 * kv) * hd + 2 * H * hd * d + 4 * context * H * hd


def mla_flops(block: BlockConfig, context: int) -> float:
    """One MLA layer as trained (latents expanded into per-head keys and values)."""
    d, H, m = block.d_model, block.n_heads, block.mla_config
    dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
    q = 2 * d * H * dqk if m.q_lora_rank is None else 2 * d * m.q_lora_rank + 2 * m.q_lora_rank * H * dqk
    kv = 2 * d * (m.kv_lora_rank + m.qk_rope_head_dim) + 2 * m.kv_lora_rank * H * (m.qk_nope_head_dim + m.v_head_dim)
    return q + kv + 2 * H * m.v_head_dim * d + 2 * context * H * (dqk + m.v_head_dim)


def mixer_flops(cfg: HybridConfig, kind: str, T: int) -> float:
    if kind == "mamba2":
        return cfg.mamba2_options.flops(cfg.d_model, T)
    if kind == "gated_deltanet":
        g = cfg.gdn_options  # a chunk longer than the sequence is cut to it (nn/linear_attention.py)
        return gated_deltanet_flops(cfg.d_model, g.n_k_heads, g.n_v_heads, g.head_k_dim, g.head_v_dim,
                                    g.conv_kernel, min(g.chunk_size, T))
    block = cfg.block_config(kind)
    return mla_flops(block, T) if kind == "mla" else attention_flops(block, T)


def hybrid_cost(cfg: HybridConfig, seq_len: int | None = None) -> Cost:
    """Per token: each layer's mixer and feed-forward (MoE: the active experts and the router), the output layer."""
    T = seq_len or cfg.max_seq_len
    ffn = ffn_flops(cfg) if cfg.ffn else 0.0
    per_token = sum(mixer_flops(cfg, kind, T) + ffn for kind in cfg.layers) + 2 * cfg.d_model * (cfg.vocab_size or 0)
    return Cost("token", per_token, count_parameters(build_skeleton(cfg)))


def _activation_numbers(cfg: HybridConfig, kind: str, T: int) -> float:
    """Numbers per token one layer keeps for the backward (fp32), tallied from the forwards with saved-tensor
    hooks: each norm's input and output (2 d), then the mixer's and the feed-forward's own tensors. Attention
    runs the fused kernel, which keeps its output and a log-sum-exp per head, not the T x T scores."""
    d = cfg.d_model
    if kind == "mamba2":
        mixer = cfg.mamba2_options.activation_numbers(d)
    elif kind == "gated_deltanet":
        g = cfg.gdn_options
        nv, dk, dv, C = g.n_v_heads, g.head_k_dim, g.head_v_dim, min(g.chunk_size, T)
        v = nv * dv
        conv_dim = 2 * g.n_k_heads * dk + v
        # conv input/output/SiLU; per value head ~9 C-wide rows (decays, K K^T, Q K^T, the solve), the solve's
        # and the per-chunk reads/writes, two states per chunk; the gated norm and out_proj's input
        mixer = (d + 3 * conv_dim + 6 * v + nv * (9.25 * C + 4 * dk + dv + 9) + 2 * g.n_k_heads
                 + 2 * nv * dk * dv / C)
    else:
        block = cfg.block_config(kind)
        H = block.n_heads
        if kind == "mla":
            m = block.mla_config
            dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
            projected = H * dqk + m.kv_lora_rank + m.qk_rope_head_dim + H * (m.qk_nope_head_dim + m.v_head_dim)
            mixer = d + projected + 3 * H * max(dqk, m.v_head_dim) + H * m.v_head_dim + H
        else:  # qkv's output, the roped q and k, the kernel's output and out_proj's input, the log-sum-exp
            hd, kv = block.attn_head_dim, block.kv_heads
            mixer = d + (H + 2 * kv) * hd + (H + kv) * hd + 2 * H * hd + H
    ffn = 0.0
    if cfg.ffn:
        f = cfg.ffn_dim * (cfg.moe.top_k if cfg.moe else 1)
        hidden = 4 * f if cfg.activation in GATES else 2 * f  # GLU: gate|up, the product, down's input
        ffn = 3 * d + hidden
    return 2 * d + mixer + ffn


def hybrid_activation_bytes(cfg: HybridConfig, batch: int, seq_len: int | None = None) -> float:
    T = seq_len or cfg.max_seq_len
    # + the final norm's input and output, the output layer's input, and the logits (the loss keeps their softmax)
    per_token = sum(_activation_numbers(cfg, kind, T) for kind in cfg.layers) + 3 * cfg.d_model + (cfg.vocab_size or 0)
    return 4 * batch * T * per_token


def hybrid_cache_bytes(cfg: HybridConfig, context: int) -> float:
    """Decode cache per token (fp32), summed over the layers: attention's keys and values (a window keeps
    only its last `window`) or latents grow with the context; a recurrent layer's state is a fixed size,
    spread here over the context."""
    total = 0.0
    for kind in cfg.layers:
        if kind == "mamba2":
            total += cfg.mamba2_options.state_bytes(cfg.d_model) / context
        elif kind == "gated_deltanet":
            total += cfg.gdn_options.state_bytes() / context
        elif kind == "mla":
            m = cfg.block_config(kind).mla_config
            total += 4 * (m.kv_lora_rank + m.qk_rope_head_dim)
        else:
            block = cfg.block_config(kind)
            kept = min(block.window, context) / context if block.window else 1.0
            total += 4 * 2 * block.kv_heads * block.attn_head_dim * kept
    return total


register_family(Family(
    "hybrid", HybridConfig, HybridLM, kind="causal_lm", cost=hybrid_cost, memory=hybrid_activation_bytes,
    cache_bytes=hybrid_cache_bytes,
    presets={
        # gpt-baby's width, context and parameters (~0.8M with the Bible's characters); SwiGLU feed-forwards
        "hybrid-baby": dict(vocab_size=96, d_model=128, layers=["mamba2", "mamba2", "attention", "mamba2"],
                            d_ff=256, max_seq_len=64),
        "gdn-baby": dict(vocab_size=96, d_model=128, layers=["gated_deltanet"] * 4, max_seq_len=64),
    }))
