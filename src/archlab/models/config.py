"""Model configs (typed dataclasses, validated strictly) and the named presets.

A model config in YAML/JSON is a mapping with ``family`` (or ``preset``) plus any field to
override, e.g. ``{preset: gpt-baby, n_layers: 6}`` or ``{family: gpt, d_model: 256, ...}``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..config import ConfigError, from_dict, to_dict, unknown_key_error
from ..nn.block import BlockConfig

Position = Literal["sinusoidal", "learned", "rope", "alibi", "none"]


@dataclass
class StageConfig:
    """One CNN stage: a plain conv block, or `blocks` ResNet basic blocks (first one strided)."""
    type: Literal["conv", "residual"] = "conv"
    channels: int = 32
    kernel: int = 3
    padding: int = 0
    stride: int = 1
    blocks: int = 1
    batch_norm: bool = False
    pool: Literal["none", "max", "avg"] = "none"


@dataclass
class ConvNetConfig:
    family: ClassVar[str] = "cnn"
    in_channels: int = 1
    image_size: int = 28
    n_classes: int = 10
    stages: list[StageConfig] = field(default_factory=list)
    global_pool: bool = False  # average over space before the head (else flatten)
    hidden: list[int] = field(default_factory=list)  # fully connected layers before the classifier
    dropout: float = 0.0

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("a ConvNet needs at least one stage")
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")


@dataclass
class TransformerFamilyConfig(BlockConfig):
    vocab_size: int = 0
    max_seq_len: int = 256
    position: Position = "learned"
    rope_base: float = 10000.0

    def validate(self) -> None:
        super().validate()
        if self.vocab_size < 1 and getattr(self, "family", "") != "vit":
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.position == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"position 'rope' needs an even head dimension, got d_model/n_heads = "
                              f"{self.d_model // self.n_heads}")


@dataclass
class GPTConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "gpt"
    n_layers: int = 4
    tie_embeddings: bool = True


@dataclass
class BertConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "bert"
    n_layers: int = 4
    max_seq_len: int = 512
    norm_placement: Literal["pre", "post"] = "post"
    norm_eps: float = 1e-12
    dropout: float = 0.1
    type_vocab_size: int = 2
    n_classes: int = 0  # > 0 adds the pooler + sequence-classification head
    pad_id: int = 0


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


@dataclass
class ViTConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "vit"
    image_size: int = 28
    patch_size: int = 4
    in_channels: int = 1
    n_classes: int = 10
    n_layers: int = 6
    pool: Literal["cls", "mean"] = "cls"

    def validate(self) -> None:
        super().validate()
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


FAMILIES: dict[str, type] = {c.family: c for c in (ConvNetConfig, GPTConfig, BertConfig, EncoderDecoderConfig, ViTConfig)}

PRESETS: dict[str, dict[str, Any]] = {
    # the article's Keras model (section 4.1): 93,322 parameters
    "seed-cnn": dict(family="cnn", stages=[
        dict(channels=32, pool="max"), dict(channels=64, pool="max"), dict(channels=64)], hidden=[64]),
    # a small ResNet for Fashion-MNIST on a CPU: 28 -> 14 -> 7, global pooling
    "resnet-small": dict(family="cnn", stages=[
        dict(channels=32, padding=1, batch_norm=True),
        dict(type="residual", channels=32, blocks=1),
        dict(type="residual", channels=64, blocks=1, stride=2),
        dict(type="residual", channels=128, blocks=1, stride=2)], global_pool=True),
    # Vaswani et al. (2017) base: ~65M parameters with a 37k shared BPE vocabulary
    "transformer-base": dict(family="encdec", vocab_size=37000, d_model=512, n_heads=8, d_ff=2048,
                             n_encoder_layers=6, n_decoder_layers=6, dropout=0.1, max_seq_len=256),
    "transformer-small": dict(family="encdec", vocab_size=8000, d_model=256, n_heads=4, d_ff=1024,
                              n_encoder_layers=3, n_decoder_layers=3, dropout=0.1, max_seq_len=256),
    "transformer-tiny": dict(family="encdec", vocab_size=1000, d_model=64, n_heads=4, d_ff=256,
                             n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_seq_len=128),
    # nanoGPT's CPU "baby GPT" (shakespeare_char on a laptop)
    "gpt-baby": dict(family="gpt", vocab_size=96, d_model=128, n_heads=4, n_layers=4, max_seq_len=64,
                     bias=False, dropout=0.0),
    # nanoGPT's shakespeare_char GPU shape
    "gpt-mini": dict(family="gpt", vocab_size=96, d_model=384, n_heads=6, n_layers=6, max_seq_len=256,
                     bias=False, dropout=0.2),
    "gpt2-small": dict(family="gpt", vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024,
                       activation="gelu_tanh"),
    "bert-mini": dict(family="bert", vocab_size=8000, d_model=256, n_heads=4, n_layers=4, max_seq_len=256),
    "bert-base": dict(family="bert", vocab_size=30522, d_model=768, n_heads=12, n_layers=12, d_ff=3072),
    # the shape of all-MiniLM-L6-v2 (load the real weights with archlab.models.hf)
    "minilm-l6": dict(family="bert", vocab_size=30522, d_model=384, n_heads=12, n_layers=6, d_ff=1536),
    "vit-tiny": dict(family="vit", image_size=28, patch_size=4, d_model=128, n_heads=4, n_layers=6, d_ff=256,
                     dropout=0.0),
}


def resolve_model_dict(data: dict[str, Any], section: str = "model") -> tuple[type, dict[str, Any]]:
    """Merge a preset with overrides and pick the family's config class."""
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{section}.preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
        base = copy.deepcopy(PRESETS[preset])
        if "family" in data and data["family"] != base["family"]:
            raise ConfigError(f"{section}: preset {preset!r} is family {base['family']!r}, not {data['family']!r}")
        base.update(data)
        data = base
    family = data.pop("family", None)
    if family is None:
        raise ConfigError(f"{section}: give a 'preset' ({', '.join(PRESETS)}) or a 'family' ({', '.join(FAMILIES)})")
    if family not in FAMILIES:
        raise ConfigError(f"{section}.family: unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[family], data


def model_config(data: dict[str, Any] | str, section: str = "model"):
    """A validated model config from a preset name or a mapping."""
    if isinstance(data, str):
        data = {"preset": data}
    cls, fields = resolve_model_dict(data, section)
    return from_dict(cls, fields, section)


def config_to_dict(cfg) -> dict[str, Any]:
    return {"family": cfg.family, **to_dict(cfg)}


__all__ = ["ConfigError", "unknown_key_error", "model_config", "config_to_dict", "PRESETS", "FAMILIES",
           "ConvNetConfig", "GPTConfig", "BertConfig", "EncoderDecoderConfig", "ViTConfig", "StageConfig"]
