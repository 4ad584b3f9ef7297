"""One preparation path for every model a run trains or loads: build it from its config, start it from a
pretrained model (`init_from`: an archlab run or checkpoint folder, a Hugging Face folder, or "minilm"),
and set what trains (`finetune.mode`: full, frozen backbone, or LoRA adapters). Training and `load_run`
both come through `prepare_model`, so a fine-tuned checkpoint always reopens with the structure it
was trained with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch.nn as nn
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from ..nn.lora import apply_lora
from .registry import FamilyConfig, build_model, model_config

CONFIG_FILE, MODEL_FILE = "config.json", "model.safetensors"


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv_proj", "out_proj"])  # Linear names to adapt

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("targets is empty: name the Linear layers to adapt, e.g. [qkv_proj, out_proj]")


@dataclass
class FinetuneConfig:
    mode: Literal["full", "frozen", "lora"] = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class Pretrained:
    """Where `init_from` points: our checkpoint folder or a Hugging Face folder, and its model config."""
    source: str
    kind: Literal["archlab", "hf"]
    folder: Path
    config: FamilyConfig

    def state_dict(self) -> dict[str, Tensor]:
        """Every weight under our names (a tied weight under each of its names)."""
        if self.kind == "hf":
            from .hf import read_hf_folder, state_from_hf

            return state_from_hf(self.config, read_hf_folder(self.folder)[1])
        from safetensors.torch import load_file

        model = build_model(self.config)  # safetensors stores a tied tensor once: the model re-ties it
        state = load_file(self.folder / MODEL_FILE)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{self.folder / MODEL_FILE} does not fit its own config.json: "
                                  f"{result.unexpected_keys[:4]}")
        return model.state_dict()


def find_checkpoint(path: Path, prefer: str = "best") -> Path:
    """A checkpoint folder from a run folder (its best, else last, else newest step-N) or the folder itself."""
    if (path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file():
        return path
    root = path / "checkpoints"
    if root.is_dir():
        for name in ([prefer, "last"] if prefer != "last" else ["last"]):
            if (root / name / MODEL_FILE).is_file():
                return root / name
        steps = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]) if p.name[5:].isdigit() else -1)
        if steps:
            return steps[-1]
    raise CheckpointError(f"{path} holds no checkpoint (looked for {path}/{MODEL_FILE} and "
                          f"{root}/{{best,last,step-N}})")


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a checkpoint folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None
    if not isinstance(data, dict) or "family" not in data:
        raise CheckpointError(f"{path} is not an archlab checkpoint config (a mapping with a 'family')")
    return data


def checkpoint_model_config(folder: Path) -> FamilyConfig:
    """The model config stored in a checkpoint's config.json (task and data fields left aside)."""
    data = read_checkpoint_config(folder)
    fields = {k: v for k, v in data.items() if k not in ("task", "task_info", "data", "finetune")}
    try:
        return model_config(fields, str(folder / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def resolve_pretrained(init_from: str) -> Pretrained:
    """`init_from` -> where the weights are and what architecture they have. Reads only small files."""
    from .hf import config_from_hf, minilm_path

    if init_from == "minilm":
        folder = minilm_path()
    else:
        folder = Path(init_from).expanduser()
        if not folder.exists():
            raise ConfigError(f"init_from: {folder} not found (a run or checkpoint folder, a Hugging Face folder "
                              f"with config.json + model.safetensors, or 'minilm')")
    hf_json = folder / CONFIG_FILE
    if hf_json.is_file():
        try:
            data = json.loads(hf_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"init_from: {hf_json} is not valid JSON: {e}") from None
        if isinstance(data, dict) and "model_type" in data:
            return Pretrained(init_from, "hf", folder, config_from_hf(data))
    try:
        checkpoint = find_checkpoint(folder)
        return Pretrained(init_from, "archlab", checkpoint, checkpoint_model_config(checkpoint))
    except CheckpointError as e:
        raise ConfigError(f"init_from: {e}") from None


def load_pretrained(model: nn.Module, state: dict[str, Tensor], where: str, fresh: tuple[str, ...] = (),
                    heads: tuple[str, ...] = ()) -> None:
    """Copy a pretrained model's weights into `model`, by name and shape.

    Weights under `fresh` (a new task head, e.g. a classifier for other classes) are not taken. Weights of
    a head the model does not have (a pretraining head: lm_head, mlm_head) are left aside. A model weight
    the checkpoint lacks is an error unless it is under `heads` (the task's head, trained from scratch).
    """
    own = model.state_dict()
    children = dict(model.named_children())
    state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    unexpected = [k for k in state if k not in own and k.split(".", 1)[0] in children]
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if unexpected or wrong:
        raise ConfigError(f"init_from {where} does not fit the model: " + "; ".join(
            ([f"weights with no place in it: {unexpected[:4]}"] if unexpected else []) +
            ([f"shapes differ: {wrong[:4]}"] if wrong else [])))
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=False)
    loaded = {own[k].data_ptr() for k in state}  # a tied weight is loaded under any of its names
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded and not k.startswith(heads + fresh)]
    if missing:
        raise ConfigError(f"init_from {where}: weights missing from the checkpoint: {missing[:5]}")


def apply_finetune(model: nn.Module, finetune: FinetuneConfig, heads: tuple[str, ...]) -> nn.Module:
    """Set what trains: everything (full), the task head only (frozen: a linear probe), or LoRA adapters on
    the named Linear layers plus the head (in place)."""
    if finetune.mode == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(heads)
    elif finetune.mode == "lora":
        lora = finetune.lora
        try:
            apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout, trainable_prefixes=heads)
        except ValueError as e:
            raise ConfigError(f"finetune.lora: {e}") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"finetune.mode={finetune.mode!r} leaves no trainable parameter in this model "
                          f"(its head is {', '.join(heads) or 'not declared by the task'})")
    return model


def prepare_model(cfg: FamilyConfig, finetune: FinetuneConfig, heads: tuple[str, ...] = (),
                  pretrained: Pretrained | None = None, fresh: tuple[str, ...] = ()) -> nn.Module:
    """Build, start from the pretrained weights (if any), and set what trains."""
    model = build_model(cfg)
    if pretrained is not None:
        load_pretrained(model, pretrained.state_dict(), pretrained.source, fresh, heads)
    return apply_finetune(model, finetune, heads)
