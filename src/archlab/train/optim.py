"""Optimizers (fused/foreach, no weight decay on norms, biases and embeddings) and LR schedules."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only matrices of Linear/Conv layers; embeddings, norms and biases are left alone."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
    device_types = {p.device.type for g in groups for p in g["params"]}
    fused = device_types <= {"cpu", "cuda"}  # fused kernels exist for CPU and CUDA tensors
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """Multiplier of the base lr at optimizer step s (0-based); the scheduler steps once per optimizer step."""
    warmup = cfg.warmup_steps or int(cfg.warmup_fraction * total_steps)
    floor = cfg.min_lr / cfg.lr

    def schedule(step: int) -> float:
        s = step + 1
        if cfg.schedule == "noam":  # Vaswani 5.3: linear warm-up, then ~ 1/sqrt(step); peak = lr at `warmup`
            w = max(warmup, 1)
            return min(s / w, math.sqrt(w / s))
        if s <= warmup:
            return s / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        if cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        raise ValueError(f"unknown schedule {cfg.schedule!r}")

    return schedule


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda(cfg, total_steps))
