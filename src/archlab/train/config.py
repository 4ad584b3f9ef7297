"""A run's config: task, model, data, training, (optional) fine-tuning. Loaded from YAML, strictly."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import ConfigError, from_dict, parse_override, set_path, to_dict


@dataclass
class TrainConfig:
    seed: int = 0
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: Literal["constant", "cosine", "linear", "noam"] = "constant"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # alternative to warmup_steps: a fraction of max steps
    min_lr: float = 0.0  # where cosine / linear decay ends
    epochs: float | None = None  # training length: epochs or max_steps (the smaller wins)
    max_steps: int | None = None
    max_seconds: float | None = None  # a wall-clock budget (stops after the step that crosses it)
    batch_size: int = 64  # examples per optimizer step, all processes and micro-batches together
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    label_smoothing: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    eval_batches: int | None = None  # cap on evaluation batches during training (final eval uses all)
    save_every: int = 0  # steps; 0 = whenever evaluating
    keep_last: int = 2
    metric: str = "val_loss"  # tracked for checkpoints/best and early stopping
    metric_mode: Literal["min", "max"] = "min"
    patience: int = 0  # early stopping after this many evaluations without improvement; 0 = off
    log_every: int = 10
    threads: int | None = None  # torch CPU threads; None = torch's default
    deterministic: bool = False  # bit-for-bit reproducible kernels (slower on GPU)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used when launched by torchrun with several processes

    def validate(self) -> None:
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            raise ConfigError("set train.epochs, train.max_steps or train.max_seconds")
        for key in ("batch_size", "grad_accum", "keep_last", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers, got {self.betas}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv_proj", "out_proj"])  # Linear names to adapt


@dataclass
class FinetuneConfig:
    mode: Literal["full", "frozen", "lora"] = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class RunConfig:
    task: str
    model: dict[str, Any]
    train: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    init_from: str | None = None  # a run, checkpoint or Hugging Face folder, or "minilm" (all-MiniLM-L6-v2)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_run_config(source: str | Path | dict, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe (or a mapping), apply `--set key=value` overrides, validate."""
    if isinstance(source, dict):
        data, where = dict(source), "config"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        where = str(path)
    for text in overrides:
        key_path, value = parse_override(text)
        set_path(data, key_path, value)
    try:
        cfg = from_dict(RunConfig, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    from ..tasks import TASKS  # lazy: tasks import the trainer

    if cfg.task not in TASKS:
        raise ConfigError(f"{where}: task: unknown task {cfg.task!r}; allowed: {', '.join(TASKS)}")
    return cfg


def dump_run_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
