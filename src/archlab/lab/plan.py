"""From a spec to jobs. Every (variant, size, seed, budget, lr) run is a job keyed by a hash of its resolved
run config, so its folder (runs/<key>/) is the same whoever plans it, and a run that two phases share (the
sweep's seed-0 run at the chosen lr is also the comparison's seed-0 run when the sweep uses the whole
budget) is trained once.

Budgets are comparable across structures because FLOPs are counted analytically from each variant's config
(models/flops.py): a FLOP budget becomes a step count per variant, and each budget gets its own full
schedule (warm-up and decay over its own length), never a truncated longer one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..errors import ConfigError
from .spec import Spec, apply_overrides


@dataclass
class StepCost:
    flops_per_step: float  # training FLOPs of one optimizer step (analytic)
    units_per_step: float  # loss terms per step (tokens or examples)
    unit: str
    parameters: int
    non_embedding: int  # without token and position embeddings (Kaplan et al.'s N)
    active: int  # used per token: a mixture of experts counts only its top-k experts
    lr: float  # the recipe's
    min_lr: float


@dataclass
class Point:
    """A variant at one model size: what a scaling curve or an IsoFLOP parabola is made of."""
    variant: str
    size: str | None  # the IsoFLOP level, e.g. "n_layers=4"
    run: dict[str, Any]
    cost: StepCost

    @property
    def label(self) -> str:
        return self.variant + (f" [{self.size}]" if self.size else "")


def parameter_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all, non-embedding, active) parameters of a model (meta device is fine); a tied weight counts once."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    inactive = 0
    for m in model.modules():  # a mixture of experts: each token runs top_k of its experts
        experts, top_k = getattr(m, "experts", None), getattr(m, "top_k", None)
        if isinstance(experts, torch.nn.ModuleList) and isinstance(top_k, int) and len(experts) > top_k:
            inactive += (len(experts) - top_k) * sum(p.numel() for p in experts[0].parameters())
    return total, total - embedding, total - inactive


def _defaults(section: Any) -> dict[str, Any]:
    try:
        return to_dict(type(section)())
    except TypeError:  # a section without defaults for every field: nothing is left out
        return {}


def job_identity(cfg) -> dict[str, Any]:
    """What a run computes: its resolved config without the values at their defaults (an option archlab gains
    later, at its default, computes what the runs before it did, so it must not change a finished run's key)
    and without the threads a worker uses."""
    resolved = cfg.to_dict()
    for name in ("model", "data", "train", "finetune"):
        default = _defaults(getattr(cfg, name))
        resolved[name] = {k: v for k, v in resolved[name].items()
                          if k != "threads" and (k not in default or json.dumps(v, default=str) != json.dumps(
                              default[k], default=str))}
    return resolved


def job_key(cfg) -> str:
    """The hash of a run's identity: the name of its folder, whoever plans it."""
    return hashlib.sha256(json.dumps(job_identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


class Planner:
    def __init__(self, spec: Spec, out: Path, metric: str):
        self.spec, self.out, self.metric = spec, out.resolve(), metric
        self._tasks: dict[str, Any] = {}
        self._renamed: dict[str, Path] | None = None

    def _adopt(self, key: str) -> str:
        """A folder that an older archlab keyed differently (its key hashed a config that lacked options added
        since) is renamed to the key of what it computed, so a finished run is found, not repeated."""
        runs = self.out / "runs"
        if (runs / key).exists() or not runs.is_dir():
            return key
        if self._renamed is None:
            from ..tasks.run import load_run_config

            self._renamed = {}
            for job_file in runs.glob("*/job.json"):
                try:
                    stored = json.loads(job_file.read_text())
                    current = job_key(load_run_config(stored["run"]))
                except Exception:  # a config this archlab cannot read: its run stays where it is
                    continue
                finished = (job_file.parent / "result.json").exists()
                if current != job_file.parent.name and (finished or current not in self._renamed):
                    self._renamed[current] = job_file.parent  # of two copies of one run, a finished one
        old = self._renamed.pop(key, None)
        if old is not None and not (runs / key).exists():
            for name in ("job.json", "result.json"):  # their records name the folder's key
                record = old / name
                if record.exists():
                    data = json.loads(record.read_text())
                    data["key"] = key
                    record.write_text(json.dumps(data, indent=1, default=str))
            old.rename(runs / key)
        return key

    def points(self) -> list[Point]:
        """Every variant at every size, costed; a variant that does not build is named here, before any run."""
        levels = self.spec.isoflop.levels() if self.spec.isoflop else {None: {}}
        points = []
        for v in self.spec.variants:
            for size, overrides in levels.items():
                run = apply_overrides(v.run, overrides)
                label = v.name + (f" [{size}]" if size else "")
                try:
                    cost = self.cost(run)
                except Exception as e:  # whatever a broken variant raises, the user sees which one and why
                    message = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise ConfigError(f"variant {label!r} does not build: {message}") from None
                points.append(Point(v.name, size, run, cost))
        return points

    def _task(self, cfg):
        """A prepared task for the run's data; preparing (reading, tokenizing) is the slow part, so variants
        with the same data share one, each seeing its own run (model_config() reads run.model)."""
        from ..runs import open_task

        key = json.dumps([cfg.task, to_dict(cfg.data), cfg.init_from, to_dict(cfg.finetune), cfg.train.batch_size,
                          getattr(cfg.model, "max_seq_len", None), getattr(cfg.model, "image_size", None)],
                         sort_keys=True, default=str)
        if key not in self._tasks:
            self._tasks[key] = open_task(cfg)
        task = copy.copy(self._tasks[key])
        task.run = cfg
        return task

    def cost(self, run: dict[str, Any]) -> StepCost:
        from ..models.flops import model_cost
        from ..models.registry import build_skeleton
        from ..tasks.run import load_run_config

        # a recipe may leave its length to the budget: cost it with a placeholder length
        cfg = load_run_config(apply_overrides(run, {"train.epochs": None, "train.max_seconds": None,
                                                    "train.max_steps": 1}))
        task = self._task(cfg)
        plan = task.epoch_plan(0, cfg.train.batch_size, cfg.train.seed)
        batch = task.collate(plan[0], torch.Generator().manual_seed(0), torch.device("cpu"))
        model_cfg = task.model_config()
        seq_len = batch["targets"].shape[-1] if batch["targets"].dim() > 1 else None
        cost = model_cost(model_cfg, seq_len)
        # every position is computed, masked or not
        units = float(batch["targets"].numel() if cost.unit == "token" else len(batch["targets"]))
        total, non_embedding, active = parameter_counts(build_skeleton(model_cfg))
        return StepCost(cost.train_flops * units, units, cost.unit, total, non_embedding, active,
                        cfg.train.lr, cfg.train.min_lr)

    def job(self, point: Point, seed: int, budget: float | None, lr_factor: float = 1.0,
            fraction: float = 1.0) -> dict[str, Any]:
        """One run: `point` at `seed`, trained for `fraction` of `budget` at lr_factor x the recipe's lr (the
        whole schedule scales: min_lr too)."""
        from ..tasks.run import load_run_config

        c, kind = point.cost, self.spec.budget_kind
        over: dict[str, Any] = {"train.seed": seed, "train.patience": 0}  # every run goes to the end of its schedule
        if lr_factor != 1.0:
            lr = float(f"{c.lr * lr_factor:.4g}")
            over.update({"train.lr": lr, "train.min_lr": c.min_lr * lr / c.lr})
        amount = budget * fraction if budget is not None else None
        if amount is not None:
            length = {"train.epochs": None, "train.max_seconds": None, "train.max_steps": None}
            if kind == "flops":
                length["train.max_steps"] = max(1, int(amount // c.flops_per_step))
            elif kind == "steps":
                length["train.max_steps"] = max(1, int(amount))
            else:
                length["train.max_seconds"] = amount
            over.update(length)
        cfg = load_run_config(apply_overrides(point.run, over))
        resolved = cfg.to_dict()
        steps = cfg.train.max_steps
        return {"key": self._adopt(job_key(cfg)), "run": resolved, "variant": point.variant, "size": point.size,
                "seed": seed, "budget": budget, "budget_kind": kind, "fraction": fraction,
                "lr": cfg.train.lr, "lr_factor": lr_factor, "steps": steps, "metric": self.metric,
                "flops_per_step": c.flops_per_step, "units_per_step": c.units_per_step, "unit": c.unit,
                "parameters": c.parameters, "non_embedding_parameters": c.non_embedding,
                "active_parameters": c.active, "extrapolation": list(self.spec.extrapolation),
                "work": amount if kind == "seconds" else (steps or 1) * c.flops_per_step,  # for the ETA
                "out": str(self.out), "cwd": os.getcwd(), "threads": None}
