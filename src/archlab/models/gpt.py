"""GPT: a decoder-only language model (Radford et al.), embeddings tied with the output layer."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..nn.attention import KVCache
from .config import GPTConfig
from .transformer import Positions, TransformerStack, new_caches


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # A fixed sinusoid (rms 0.7) added to GPT's N(0, 0.02) token embeddings would drown them: scale the
        # embeddings by sqrt(d) as Vaswani et al. and fairseq's transformer_lm do with sinusoidal positions.
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.position == "sinusoidal" else 1.0
        self.positions = Positions(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = TransformerStack(cfg, cfg.n_layers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so the residual stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "ffn.down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def features(self, idx: Tensor, *, key_padding_mask: Tensor | None = None, caches: list[KVCache] | None = None,
                 need_weights: bool = False) -> Tensor:
        """idx: (B, T) token ids (with caches: only the new ones) -> hidden states (B, T, d)."""
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, seq), got {tuple(idx.shape)}")
        past = caches[0].length if caches else 0
        T = idx.size(1)
        x = self.dropout(self.positions.add(self.tok_emb(idx) * self.embed_scale, past))
        return self.transformer(x, causal=True, key_padding_mask=key_padding_mask, rotary=self.positions.rotary,
                                bias=self.positions.bias(T, past + T, past, causal=True), caches=caches,
                                need_weights=need_weights)

    def forward(self, idx: Tensor, **kw) -> Tensor:
        return self.lm_head(self.features(idx, **kw))  # (B, T, vocab)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        return new_caches(self.config, self.config.n_layers, batch, max_len, self.tok_emb.weight)
