"""Sequence classification with GPT, as Hugging Face's GPT2ForSequenceClassification (BERT has its
own head: models/bert.py with n_classes > 0), and mean-pooled sentence embeddings (all-MiniLM-L6-v2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError
from .config import GPTConfig
from .gpt import GPT


@dataclass
class GPTClassifierConfig(GPTConfig):
    family: ClassVar[str] = "gpt_classifier"
    n_classes: int = 2

    def validate(self) -> None:
        super().validate()
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")


class GPTClassifier(GPT):
    """GPT + a bias-free linear `score` on the last real token, the only one that has read the whole text."""

    def __init__(self, cfg: GPTClassifierConfig):
        super().__init__(cfg)
        self.score = nn.Linear(cfg.d_model, cfg.n_classes, bias=False)
        nn.init.normal_(self.score.weight, 0.0, 0.02)

    def classify(self, ids: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """ids: (B, T), padded on the right (key_padding_mask True there) -> logits (B, n_classes)."""
        # causal attention: no real token ever sees the padding after it, so no mask is needed
        h = self.features(ids)  # (B, T, d)
        last = (ids.size(1) - 1 if key_padding_mask is None
                else (~key_padding_mask).sum(1).clamp(min=1) - 1)  # (B,) or a scalar
        rows = torch.arange(ids.size(0), device=ids.device)
        return self.score(h[rows, last])


def mean_pool(hidden: Tensor, key_padding_mask: Tensor) -> Tensor:
    """(B, T, d) -> (B, d): the mean over real tokens (sentence-transformers' pooling)."""
    real = (~key_padding_mask).unsqueeze(-1).to(hidden.dtype)
    return (hidden * real).sum(1) / real.sum(1).clamp(min=1e-9)


def sentence_embeddings(bert: nn.Module, ids: Tensor, key_padding_mask: Tensor) -> Tensor:
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised. (B, T) -> (B, d)."""
    return F.normalize(mean_pool(bert(ids, key_padding_mask=key_padding_mask), key_padding_mask), dim=-1)
