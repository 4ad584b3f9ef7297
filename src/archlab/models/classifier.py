"""Sequence classification with GPT, as Hugging Face's GPT2ForSequenceClassification (BERT has its own
head: models/bert.py with n_classes > 0)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError
from .flops import Cost
from .gpt import GPT, GPTConfig, gpt_activation_bytes, gpt_cost
from .registry import Family, register_family


@dataclass
class GPTClassifierConfig(GPTConfig):
    family: ClassVar[str] = "gpt_classifier"
    n_classes: int | None = None  # None: from the data set

    def validate(self) -> None:
        super().validate()
        if self.n_classes is not None and self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")


class GPTClassifier(GPT):
    """GPT + a bias-free linear `score` on the last real token, the only one that has read the whole text."""

    def __init__(self, cfg: GPTClassifierConfig):
        if cfg.n_classes is None:
            raise ConfigError("model.n_classes is not set (a task sets it from the data set)")
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


def classifier_cost(cfg: GPTClassifierConfig, seq_len: int | None = None) -> Cost:
    cost = gpt_cost(cfg, seq_len)  # the lm_head is built (tied) but not run: the score layer is per sequence
    cost.forward_flops -= 2 * cfg.d_model * (cfg.vocab_size or 0)
    return cost


register_family(Family("gpt_classifier", GPTClassifierConfig, GPTClassifier, kind="sequence_classifier",
                       cost=classifier_cost, memory=gpt_activation_bytes, classifier="gpt_classifier"))

__all__ = ["GPTClassifier", "GPTClassifierConfig"]
