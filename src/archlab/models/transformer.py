"""Transformer stacks (shared by GPT, BERT, ViT and the encoder-decoder) and the encoder-decoder family
(Vaswani et al., 2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError
from ..nn.attention import KVCache
from ..nn.block import BlockConfig, TransformerBlock
from ..nn.feedforward import MoE
from ..nn.norm import build_norm
from ..nn.position import ALiBi, LearnedPositions, RopeScaling, Rotary, SinusoidalPositions
from .flops import Cost, kv_cache_bytes, layer_flops, transformer_activation_bytes
from .registry import Family, FamilyConfig, build_skeleton, count_parameters, register_family

Position = Literal["sinusoidal", "learned", "rope", "alibi", "none"]


@dataclass
class TransformerFamilyConfig(BlockConfig, FamilyConfig):
    vocab_size: int | None = None  # None: from the task's tokenizer
    max_seq_len: int = 256
    position: Position = "learned"
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None  # Llama 3.1 / linear stretching of RoPE (position 'rope' only)

    def validate(self) -> None:
        super().validate()
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.max_seq_len < 1:
            raise ConfigError(f"max_seq_len must be at least 1, got {self.max_seq_len}")
        self.check_position(self.position)
        if not self.rope_base > 0:
            raise ConfigError(f"rope_base must be positive, got {self.rope_base}")
        if self.rope_scaling is not None:
            if self.position != "rope":
                raise ConfigError(f"rope_scaling needs position 'rope', got {self.position!r}")
            self.rope_scaling.validate()
        if self.window is not None and self.window > self.max_seq_len:
            raise ConfigError(f"window={self.window} is larger than max_seq_len={self.max_seq_len}: "
                              f"use a window of at most max_seq_len (or no window)")

    def require_vocab(self) -> int:
        if self.vocab_size is None:
            raise ConfigError(f"model.vocab_size is not set for family {self.family!r} (a task sets it from its "
                              f"tokenizer; give it when building a model by hand)")
        return self.vocab_size


class TransformerHooks:
    """What the training engine asks of a model built from Transformer stacks (train/trainer.py): the
    blocks to shard one by one under FSDP, and the MoE load-balancing loss to add to the task's loss."""

    def fsdp_units(self) -> list[nn.Module]:
        return [block for m in self.modules() if isinstance(m, TransformerStack) for block in m.blocks]

    def extra_loss(self) -> Tensor | None:
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MoE)]
        if not losses:
            return None
        return self.config.moe.aux_loss_weight * torch.stack(losses).sum()


class Positions(nn.Module):
    """The position scheme of a config: added to embeddings (sinusoidal/learned), rotating queries
    and keys (RoPE), or biasing attention scores (ALiBi)."""

    def __init__(self, cfg: TransformerFamilyConfig, max_len: int | None = None):
        super().__init__()
        max_len = max_len or cfg.max_seq_len
        self.kind = cfg.position
        self.additive = {"sinusoidal": lambda: SinusoidalPositions(cfg.d_model, max_len),
                         "learned": lambda: LearnedPositions(cfg.d_model, max_len)}.get(cfg.position, lambda: None)()
        self.rotary = (Rotary(cfg.rotary_dim, max_len, cfg.rope_base, cfg.rope_scaling) if cfg.position == "rope"
                       else None)
        self.alibi = ALiBi(cfg.n_heads) if cfg.position == "alibi" else None

    def add(self, x: Tensor, offset: int = 0) -> Tensor:
        return self.additive(x, offset) if self.additive is not None else x

    def bias(self, Tq: int, Tk: int, offset: int, causal: bool) -> Tensor | None:
        return self.alibi(Tq, Tk, offset, causal) if self.alibi is not None else None


class TransformerStack(nn.Module):
    """n blocks; pre-norm stacks end with a final norm (post-norm blocks already end normalised)."""

    def __init__(self, cfg: TransformerFamilyConfig, n_layers: int, cross_attention: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(cfg.layer(i), cross_attention) for i in range(n_layers))
        self.final_norm = (build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
                           if cfg.norm_placement == "pre" else nn.Identity())

    def forward(self, x: Tensor, *, caches: list | None = None, cross_caches: list | None = None, **kw) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache=caches[i] if caches else None,
                      cross_cache=cross_caches[i] if cross_caches else None, **kw)
        return self.final_norm(x)

    def attention_weights(self, cross: bool = False) -> list[Tensor | None]:
        """Per layer (B, H, Tq, Tk) weights of the last forward run with need_weights=True."""
        return [(b.cross_attn if cross else b.attn).weights for b in self.blocks]


def new_caches(cfg: TransformerFamilyConfig, n_layers: int, batch: int, max_len: int, like: Tensor) -> list[KVCache]:
    return [KVCache(batch, cfg.kv_heads, max_len, cfg.attn_head_dim, like.device, like.dtype) for _ in range(n_layers)]


@dataclass
class EncoderDecoderConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "encdec"
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    position: Position = "sinusoidal"
    norm_placement: Literal["pre", "post"] = "post"
    activation: Literal["relu", "gelu", "gelu_tanh", "swiglu"] = "relu"
    dropout: float = 0.1
    tie_embeddings: bool = True  # one embedding for source, target and the output layer (shared vocab)
    pad_id: int = 0

    def validate(self) -> None:
        super().validate()
        if self.n_encoder_layers < 1 or self.n_decoder_layers < 1:
            raise ConfigError("n_encoder_layers and n_decoder_layers must be at least 1")


class EncoderDecoder(TransformerHooks, nn.Module):
    """Shared source/target vocabulary: one embedding for both sides, tied with the output layer."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.require_vocab(), cfg.d_model, padding_idx=cfg.pad_id)
        self.positions = Positions(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerStack(cfg, cfg.n_encoder_layers)
        self.decoder = TransformerStack(cfg, cfg.n_decoder_layers, cross_attention=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.scale = math.sqrt(cfg.d_model)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        # N(0, 1/(3 sqrt(d))) everywhere (0.02 at d=256, as BART/Marian), not fairseq's xavier + N(0, d^-1/2):
        # small residual branches let the (scaled) embeddings through early. With it archlab learns per step
        # as fast as Marian on the Bible recipe (it trailed before, BENCHMARKS.md); a fixed 0.02 left the
        # d=64 model of the tests stuck (token embeddings drowned by the sinusoid, uniform attention).
        std = 1 / (3 * math.sqrt(self.config.d_model))
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.normal_(p, 0.0, std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.embed.weight[self.config.pad_id].zero_()

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        if ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, seq), got {tuple(ids.shape)}")
        return self.dropout(self.positions.add(self.embed(ids) * self.scale, offset))

    def padding_mask(self, ids: Tensor) -> Tensor:
        return ids == self.config.pad_id

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None, need_weights: bool = False) -> Tensor:
        """src: (B, S) -> memory (B, S, d)."""
        if src_padding_mask is None:
            src_padding_mask = self.padding_mask(src)
        S = src.size(1)
        return self.encoder(self._embed(src), key_padding_mask=src_padding_mask, rotary=self.positions.rotary,
                            bias=self.positions.bias(S, S, 0, causal=False), need_weights=need_weights)

    def decode(self, tgt: Tensor, memory: Tensor, src_padding_mask: Tensor, caches: list | None = None,
               need_weights: bool = False) -> Tensor:
        """tgt: (B, T) decoder input (shifted right); with caches, only the new positions. -> logits (B, T, V)."""
        past = caches[0][0].length if caches else 0
        T = tgt.size(1)
        x = self.decoder(self._embed(tgt, past), causal=True, rotary=self.positions.rotary,
                         bias=self.positions.bias(T, past + T, past, causal=True),
                         caches=[c[0] for c in caches] if caches else None,
                         cross_caches=[c[1] for c in caches] if caches else None,
                         context=memory, context_padding_mask=src_padding_mask, need_weights=need_weights)
        return self.lm_head(x)

    def forward(self, src: Tensor, tgt: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        if src_padding_mask is None:
            src_padding_mask = self.padding_mask(src)
        return self.decode(tgt, self.encode(src, src_padding_mask), src_padding_mask)

    def new_caches(self, batch: int, max_len: int) -> list[tuple[KVCache, KVCache]]:
        """Per decoder layer: (self-attention cache, cross-attention cache filled on first use)."""
        like = self.embed.weight
        selfs = new_caches(self.config, self.config.n_decoder_layers, batch, max_len, like)
        cross = new_caches(self.config, self.config.n_decoder_layers, batch, 0, like)
        return list(zip(selfs, cross))


def encdec_cost(cfg: EncoderDecoderConfig, seq_len: int | None = None, src_len: int | None = None) -> Cost:
    """Per target token, with a source as long as the target (the usual translation setting)."""
    T = seq_len or cfg.max_seq_len
    S = src_len or T
    d, hd = cfg.d_model, cfg.attn_head_dim
    enc = cfg.n_encoder_layers * layer_flops(cfg, S) * S / T
    q_dim = cfg.n_heads * hd
    cross = 2 * d * q_dim + 2 * q_dim * d + 4 * S * q_dim + 2 * d * 2 * cfg.kv_heads * hd * S / T
    dec = cfg.n_decoder_layers * (layer_flops(cfg, T) + cross)
    return Cost("token", enc + dec + 2 * d * (cfg.vocab_size or 0), count_parameters(build_skeleton(cfg)))


register_family(Family(
    "encdec", EncoderDecoderConfig, EncoderDecoder, kind="seq2seq", cost=encdec_cost,
    memory=lambda cfg, batch, seq_len=None: transformer_activation_bytes(
        cfg, cfg.n_encoder_layers + cfg.n_decoder_layers, batch, seq_len or cfg.max_seq_len),
    cache_bytes=lambda cfg, context: kv_cache_bytes(cfg, cfg.n_decoder_layers),
    presets={
        # Vaswani et al. (2017) base: ~65M parameters with a 37k shared BPE vocabulary
        "transformer-base": dict(vocab_size=37000, d_model=512, n_heads=8, d_ff=2048, n_encoder_layers=6,
                                 n_decoder_layers=6, dropout=0.1, max_seq_len=256),
        "transformer-small": dict(vocab_size=8000, d_model=256, n_heads=4, d_ff=1024, n_encoder_layers=3,
                                  n_decoder_layers=3, dropout=0.1, max_seq_len=256),
        "transformer-tiny": dict(vocab_size=1000, d_model=64, n_heads=4, d_ff=256, n_encoder_layers=2,
                                 n_decoder_layers=2, dropout=0.0, max_seq_len=128),
    }))
