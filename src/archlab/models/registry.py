"""The model-family registry. A family is one file that registers itself (as timm's `@register_model`):
its config dataclass, its module, what it does (`kind`), its presets, its analytic cost and, where it
has one, its Hugging Face conversion. Nothing else is edited to add a family.

A model config in YAML/JSON is a mapping with ``family`` (or ``preset``) plus any field to override,
e.g. ``{preset: gpt-baby, n_layers: 6}`` or ``{family: gpt, d_model: 256, ...}``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
import torch.nn as nn

from ..config import from_dict, to_dict
from ..errors import ConfigError, HFImportError

# What a family's model does, so a task can tell whether it fits (and say so at load time)
Kind = Literal["image_classifier", "causal_lm", "masked_lm", "seq2seq", "sequence_classifier"]


@dataclass
class FamilyConfig:
    """Base of every family's config: `family` names the registry entry; `to_dict` is what checkpoints store."""
    family: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **to_dict(self)}

    def validate(self) -> None:
        """Ranges and combinations of the fields; ConfigError naming the key."""


@dataclass(frozen=True)
class HFConversion:
    """Hugging Face interop of a family: its `model_type`s, config and weights both ways (our names <-> theirs)."""
    model_types: tuple[str, ...]
    config_from_hf: Callable[[dict], FamilyConfig]
    state_from_hf: Callable[[FamilyConfig, dict], dict]  # their state dict -> ours
    to_hf: Callable[[nn.Module, list[str] | None], tuple[dict, dict]] | None = None  # -> (config.json, state)
    takes: Callable[[Any], bool] | None = None  # the configs it converts, when its family has several (None: all)


@dataclass(frozen=True)
class HFFormats:
    """Several Hugging Face conversions of one family (gpt: GPT-2, Llama, Qwen3, ...) behind HFConversion's
    interface: config.json goes by its model_type; weights and export to the first conversion taking the config."""
    conversions: tuple[HFConversion, ...]

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(t for c in self.conversions for t in c.model_types)

    def config_from_hf(self, hf: dict) -> FamilyConfig:
        return next(c for c in self.conversions if hf["model_type"] in c.model_types).config_from_hf(hf)

    def state_from_hf(self, cfg: FamilyConfig, state: dict) -> dict:
        return self._taking(cfg).state_from_hf(cfg, state)

    def to_hf(self, model: nn.Module, labels: list[str] | None = None) -> tuple[dict, dict]:
        conversion = self._taking(model.config)
        if conversion.to_hf is None:
            raise HFImportError(f"Hugging Face {'/'.join(conversion.model_types)} models are read, not written")
        return conversion.to_hf(model, labels)

    def _taking(self, cfg: FamilyConfig) -> HFConversion:
        for conversion in self.conversions:
            if conversion.takes is None or conversion.takes(cfg):
                return conversion
        raise HFImportError(f"no Hugging Face format ({', '.join(self.model_types)}) fits this {cfg.family} config")


@dataclass(frozen=True)
class Family:
    name: str
    config: type[FamilyConfig]
    module: Callable[[Any], nn.Module]
    kind: Kind
    cost: Callable[..., Any]  # (config, seq_len | None) -> flops.Cost
    memory: Callable[..., float] | None = None  # (config, batch, seq_len | None) -> activation bytes kept for backward
    cache_bytes: Callable[..., float] | None = None  # (config, context) -> decode cache bytes per token (fp32)
    classifier: str | None = None  # the family that classifies sequences with this body (gpt -> gpt_classifier)
    hf: HFConversion | HFFormats | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}
PRESETS: dict[str, dict[str, Any]] = {}


def register_family(family: Family) -> Family:
    if family.config.family != family.name:
        raise ValueError(f"family {family.name!r}: its config class says family {family.config.family!r}")
    FAMILIES[family.name] = family
    for name, preset in family.presets.items():
        PRESETS[name] = {"family": family.name, **preset}
    return family


def add_hf_conversion(name: str, conversion: HFConversion) -> None:
    """One more Hugging Face format for a registered family, from another file (models/llama.py: gpt)."""
    family = get_family(name)
    known = family.hf.conversions if isinstance(family.hf, HFFormats) else (family.hf,) if family.hf else ()
    FAMILIES[name] = dataclasses.replace(family, hf=HFFormats((*known, conversion)))


def get_family(name: str, section: str = "model") -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"{section}.family: unknown family {name!r}; allowed: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def family_of(cfg_or_model: Any) -> Family:
    cfg = getattr(cfg_or_model, "config", cfg_or_model)
    return get_family(cfg.family)


def resolve_model_dict(data: dict[str, Any], section: str = "model") -> tuple[Family, dict[str, Any]]:
    """Merge a preset with overrides; -> (family, fields without `family`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping with a 'preset' or a 'family', got {type(data).__name__}")
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{section}.preset: unknown preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
        base = copy.deepcopy(PRESETS[preset])
        if "family" in data and data["family"] != base["family"]:
            raise ConfigError(f"{section}: preset {preset!r} is family {base['family']!r}, not {data['family']!r}")
        base.update(data)
        data = base
    name = data.pop("family", None)
    if name is None:
        raise ConfigError(f"{section}: give a 'preset' ({', '.join(sorted(PRESETS))}) or a 'family' "
                          f"({', '.join(sorted(FAMILIES))})")
    return get_family(str(name), section), data


def model_config(data: dict[str, Any] | str | FamilyConfig, section: str = "model") -> FamilyConfig:
    """A validated model config from a preset name, a mapping, or a config (returned as it is)."""
    if isinstance(data, FamilyConfig):
        return data
    if isinstance(data, str):
        data = {"preset": data}
    family, fields = resolve_model_dict(data, section)
    return from_dict(family.config, fields, section)


def replace_config(cfg: FamilyConfig, section: str = "model", **changes: Any) -> FamilyConfig:
    """A copy with some fields changed, validated again (e.g. the vocabulary size a task found)."""
    new = dataclasses.replace(cfg, **changes)
    try:
        new.validate()
    except ConfigError as e:
        raise ConfigError(f"{section}: {e}") from None
    return new


def build_model(config: Any) -> nn.Module:
    """A model from a config object, a preset name, or a mapping ({preset: ..., overrides} or {family: ...})."""
    cfg = model_config(config)
    return get_family(cfg.family).module(cfg)


def build_skeleton(config: Any) -> nn.Module:
    """The model on the meta device: its structure and parameter shapes, no memory (summary, FLOPs, counts)."""
    with torch.device("meta"):
        return build_model(config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def hf_family(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.hf is not None and model_type in family.hf.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() if f.hf for t in f.hf.model_types)
    raise ConfigError(f"Hugging Face model_type {model_type!r} is not supported; supported: {', '.join(known)}")
