"""The engine's own config: optimizer, schedule, length, precision, checkpoints, devices (a recipe's `train:`
section). The whole recipe (task, model, data, fine-tuning) is read by archlab.tasks.run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError


@dataclass
class TrainConfig:
    seed: int = 0
    optimizer: Literal["adamw", "adam", "sgd", "muon"] = "adamw"  # muon: hidden matrices, AdamW for the rest
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    muon_momentum: float = 0.95  # muon (Jordan et al. 2024; Liu et al. 2025)
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
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # auto: bf16 where the hardware computes it natively
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
