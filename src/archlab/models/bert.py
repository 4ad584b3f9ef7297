"""BERT (Devlin et al.): a bidirectional encoder with a masked-LM head or a sequence-classification head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..nn.norm import build_norm
from .config import BertConfig
from .transformer import Positions, TransformerStack


class MLMHead(nn.Module):
    """dense -> GELU -> norm -> vocabulary logits (decoder tied with the word embeddings)."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


class Bert(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.positions = Positions(cfg)
        self.emb_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerStack(cfg, cfg.n_layers)
        if cfg.n_classes > 0:  # as Hugging Face's BertForSequenceClassification: pooled [CLS] -> linear
            self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
            self.classifier = nn.Linear(cfg.d_model, cfg.n_classes)
            self.mlm_head = None
        else:
            self.mlm_head = MLMHead(cfg, self.word_emb)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, ids: Tensor, *, key_padding_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                need_weights: bool = False) -> Tensor:
        """ids: (B, T) -> hidden states (B, T, d). Padding defaults to ids == pad_id."""
        if ids.dim() != 2:
            raise ValueError(f"BERT expects token ids of shape (batch, seq), got {tuple(ids.shape)}")
        if key_padding_mask is None:
            key_padding_mask = ids == self.config.pad_id
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        x = self.positions.add(self.word_emb(ids) + self.type_emb(token_type_ids))
        x = self.dropout(self.emb_norm(x))
        T = ids.size(1)
        return self.encoder(x, key_padding_mask=key_padding_mask, rotary=self.positions.rotary,
                            bias=self.positions.bias(T, T, 0, causal=False), need_weights=need_weights)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        return self.mlm_head(hidden)

    def pooled(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, ids: Tensor, **kw) -> Tensor:
        """(B, T) -> class logits (B, n_classes), from the pooled first ([CLS]) token."""
        if self.config.n_classes <= 0:
            raise ValueError("this BERT has no classification head (n_classes=0)")
        return self.classifier(self.dropout(self.pooled(self.forward(ids, **kw))))
