"""Optimizers (fused/foreach, no weight decay on norms, biases and embeddings; Muon for hidden matrices)
and LR schedules."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError
from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float, bn_bias_lr_scale: float = 1.0) -> list[dict]:
    """Decay only matrices of Linear/Conv layers; embeddings, norms and biases are left alone. Batch-norm
    biases learn at bn_bias_lr_scale x lr (airbench's 64: they set where each ReLU opens, and move little at
    the lr of the weights, whose scale a batch norm after them cancels)."""
    no_decay_ids, bn_bias_ids = set(), set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None and bn_bias_lr_scale != 1:
            bn_bias_ids.add(id(module.bias))
    decay, no_decay, bn_bias, seen = [], [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in bn_bias_ids:
            bn_bias.append(p)
        else:
            (decay if p.dim() >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
            {"params": bn_bias, "weight_decay": 0.0, "lr": lr * bn_bias_lr_scale}]


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that map features to outputs (LM head, classifier): the model's `output_layers()` hook, else
    its last Linear (the head of every archlab family)."""
    if hasattr(model, "output_layers"):
        return list(model.output_layers())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden 2-D weight matrices for Muon, everything else for AdamW): embeddings, output layers, norms,
    biases and non-2-D weights (convolutions) stay on AdamW, as in modded-nanogpt and Moonlight."""
    adamw_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    adamw_ids |= {id(p) for m in output_layers(model) for p in m.parameters()}
    hidden, rest, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (hidden if p.dim() == 2 and id(p) not in adamw_ids else rest).append(p)
    return hidden, rest


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, on a stack (n, A, B) of same-shape matrices at
    once in g's dtype: one batched product per iteration instead of one per matrix."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same hyper-parameters, update and state dict) with the matrices of one shape orthogonalised
    together (torch's loops over the matrices one by one: on a 2-core CPU with AVX512-BF16 its baby-GPT step took
    ~100 ms against ~64 ms for AdamW; this one ~70 ms) and the Newton-Schulz iteration in `ns_dtype`: torch's runs it
    in bf16, which a CPU without native bf16 emulates, so build_optimizer asks for fp32 there."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kw):
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            lr, momentum, wd = float(group["lr"]), group["momentum"], group["weight_decay"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            shapes: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                shapes.setdefault(tuple(p.shape), []).append(i)
            for shape, idx in shapes.items():
                ortho = newton_schulz(torch.stack([updates[i] for i in idx]).to(self.ns_dtype),
                                      group["ns_coefficients"], group["ns_steps"], group["eps"])
                adjusted = torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], torch.Size(shape))
                for k, i in enumerate(idx):
                    params[i].mul_(1 - lr * wd)
                    params[i].add_(ortho[k].to(params[i].dtype), alpha=-adjusted)
        return loss


def newton_schulz_dtype(params: list[nn.Parameter]) -> torch.dtype:
    """bf16 where the device computes it natively (as torch's Muon always does), fp32 where it would be emulated."""
    from .trainer import native_bf16  # lazy: trainer imports this module

    device = params[0].device if params else torch.device("cpu")
    return torch.bfloat16 if native_bf16(device) else torch.float32


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (Newton-Schulz orthogonalised momentum) for hidden matrices, AdamW for the rest, stepped together.

    One optimizer to the engine: its param_groups are both optimizers' own group dicts, so a scheduler scales
    every learning rate, and its state dict holds both. Muon's update is rescaled to AdamW's RMS
    (adjust_lr_fn="match_rms_adamw", Liu et al. 2025), so both take the recipe's lr and weight decay."""

    def __init__(self, hidden: list[nn.Parameter], rest: list[nn.Parameter], cfg: TrainConfig, fused: bool):
        self.muon = Muon(hidden, ns_dtype=newton_schulz_dtype(hidden), lr=cfg.lr, weight_decay=cfg.weight_decay,
                         momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw")
        adamw_groups = [g for g in param_groups_of(rest, cfg.weight_decay) if g["params"]]
        self.adamw = torch.optim.AdamW(adamw_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
        self.defaults = {"lr": cfg.lr}
        self.param_groups = self.muon.param_groups + self.adamw.param_groups
        self.state = {}  # the two optimizers keep their own
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self._optimizer_state_dict_pre_hooks, self._optimizer_state_dict_post_hooks = {}, {}
        self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = {}, {}

    @torch.no_grad()
    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def param_groups_of(params: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Decay matrices only (2-D and up); vectors (norms, biases) are left alone."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [g for g in param_groups(model, cfg.weight_decay, cfg.lr, cfg.bn_bias_lr_scale) if g["params"]]
    device_types = {p.device.type for g in groups for p in g["params"]}
    fused = device_types <= {"cpu", "cuda"}  # fused kernels exist for CPU and CUDA tensors
    if cfg.optimizer == "muon":
        if cfg.bn_bias_lr_scale != 1:
            raise ConfigError("train.bn_bias_lr_scale is for sgd and adam(w); muon keeps one lr for its AdamW part")
        hidden, rest = muon_split(model)
        if not hidden:
            raise ConfigError("train.optimizer: muon trains hidden 2-D weight matrices and this model has none "
                              "(all its weights are embeddings, output layers, norms, biases or convolutions); "
                              "use adamw or sgd")
        return MuonWithAdamW(hidden, rest, cfg, fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def lr_lambda(cfg: TrainConfig, total_steps: int, elapsed: Callable[[], float] | None = None):
    """Multiplier of the base lr at optimizer step s (0-based); the scheduler steps once per optimizer step.
    A decaying schedule (linear, cosine, wsd) spans the run's length in steps: its step limit or, when
    train.max_seconds may end it first, the steps its time budget holds at the pace so far (steps done /
    `elapsed()` training seconds x max_seconds), whichever is smaller, so a run stopped by its time budget
    ends its decay at min_lr rather than midway (the budgeted-training rule of Li et al., 2020)."""
    floor = cfg.min_lr / cfg.lr

    def length(s: int) -> float:
        seconds = elapsed() if elapsed is not None and cfg.max_seconds else 0.0
        return min(total_steps, s * cfg.max_seconds / seconds) if seconds > 0 else total_steps

    def schedule(step: int) -> float:
        s = step + 1
        total = length(s)
        warmup = cfg.warmup_steps or int(cfg.warmup_fraction * total)  # a fraction of a time budget: of its time
        if cfg.schedule == "noam":  # Vaswani 5.3: linear warm-up, then ~ 1/sqrt(step); peak = lr at `warmup`
            w = max(warmup, 1)
            return min(s / w, math.sqrt(w / s))
        if s <= warmup:
            return s / warmup
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "wsd":  # stable at the peak, then a linear decay over the last decay_fraction
            decay = max(1, round(cfg.decay_fraction * total))
            start = max(warmup, total - decay)
            return 1.0 if s <= start else floor + (1 - floor) * max(0.0, 1 - (s - start) / max(1.0, total - start))
        progress = min(1.0, (s - warmup) / max(1.0, total - warmup))
        if cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        if cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        raise ValueError(f"unknown schedule {cfg.schedule!r}")

    return schedule


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int,
                    elapsed: Callable[[], float] | None = None) -> LambdaLR:
    """`elapsed`: the run's training seconds so far (a time-budgeted run's decay follows it; see lr_lambda)."""
    return LambdaLR(optimizer, lr_lambda(cfg, total_steps, elapsed))
