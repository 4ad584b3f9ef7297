"""The engine's own config: optimizer, schedule, length, precision, checkpoints, devices (a recipe's `train:`
section). The whole recipe (task, model, data, fine-tuning) is read by archlab.tasks.run."""
from __future__ import annotations

import math
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
    bn_bias_lr_scale: float = 1.0  # batch-norm biases learn at this multiple of lr (sgd, adam(w))
    schedule: Literal["constant", "cosine", "linear", "noam", "wsd"] = "constant"
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # alternative to warmup_steps: a fraction of the run (of its time, when timed)
    min_lr: float = 0.0  # where cosine / linear / wsd decay ends
    decay_fraction: float = 0.2  # wsd (warm-up, stable, decay): the last fraction of the steps decays linearly
    epochs: float | None = None  # training length: epochs or max_steps (the smaller wins)
    max_steps: int | None = None
    max_seconds: float | None = None  # a wall-clock budget (stops after the step that crosses it)
    batch_size: int = 64  # examples per optimizer step, all processes and micro-batches together
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    label_smoothing: float = 0.0
    # > 0: the weights evaluated, kept as best and saved are an exponential moving average of the trained ones
    # (the trained weights stay in the trainer state for resume); 0 = off. See Trainer._ema_update.
    ema_decay: float = 0.0
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
        """Every length, budget, count, probability and rate in range (ConfigError naming the key and range)."""
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            raise ConfigError("set train.epochs, train.max_steps or train.max_seconds")
        at_least = {"max_steps": 1, "batch_size": 1, "grad_accum": 1, "keep_last": 1, "log_every": 1,
                    "eval_batches": 1, "threads": 1, "eval_every": 0, "save_every": 0, "patience": 0,
                    "warmup_steps": 0}
        for key, low in at_least.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"{key} must be at least {low}, got {value}")
        if not 1 <= self.bn_bias_lr_scale <= 1000:
            raise ConfigError(f"bn_bias_lr_scale must be in [1, 1000], got {self.bn_bias_lr_scale}")
        for key in ("lr", "epochs", "max_seconds", "eps"):  # None: not set (epochs, max_seconds)
            value = getattr(self, key)
            if value is not None and not (0 < value < math.inf):
                raise ConfigError(f"{key} must be a positive, finite number, got {value}")
        for key in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"{key} must be >= 0 and finite, got {getattr(self, key)}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers, got {self.betas}")
        for key, value in (("warmup_fraction", self.warmup_fraction), ("momentum", self.momentum),
                           ("label_smoothing", self.label_smoothing), ("ema_decay", self.ema_decay),
                           ("betas[0]", self.betas[0]),
                           ("betas[1]", self.betas[1])):
            if not 0 <= value < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {value}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
