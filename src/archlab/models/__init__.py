"""Model families built by name (preset) or config."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from .bert import Bert
from .cnn import ConvNet
from .config import FAMILIES, PRESETS, config_to_dict, model_config
from .gpt import GPT
from .transformer import EncoderDecoder
from .vit import ViT

MODEL_CLASSES: dict[str, type[nn.Module]] = {"cnn": ConvNet, "gpt": GPT, "bert": Bert, "encdec": EncoderDecoder, "vit": ViT}

from .classifier import GPTClassifier, GPTClassifierConfig  # noqa: E402  (a GPT subclass: after .gpt)

FAMILIES[GPTClassifierConfig.family] = GPTClassifierConfig
MODEL_CLASSES[GPTClassifierConfig.family] = GPTClassifier


def build_model(config: Any) -> nn.Module:
    """A model from a config object, a preset name, or a mapping ({preset: ..., overrides} or {family: ...})."""
    if isinstance(config, (str, dict)):
        config = model_config(config)
    return MODEL_CLASSES[config.family](config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["build_model", "count_parameters", "model_config", "config_to_dict", "PRESETS", "FAMILIES",
           "ConvNet", "GPT", "Bert", "EncoderDecoder", "ViT"]
