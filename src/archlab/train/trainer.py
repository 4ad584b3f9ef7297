"""The one training engine: every task trains, evaluates, checkpoints and resumes through `Trainer`."""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import TrainingDiverged
from ..models.config import config_to_dict
from . import checkpoint as ckpt
from .config import RunConfig, dump_run_config
from .distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed, shutdown,
                          wrap_model)
from .logging import ConsoleProgress, MetricsLog
from .optim import build_optimizer, build_scheduler




def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    from ..nn.feedforward import MoE

    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoE)]
    return torch.stack(losses).sum() if losses else None


def split_refs(refs: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, near-equal pieces (the first ones one longer when it does not divide)."""
    q, r = divmod(len(refs), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + q + (i < r)
        out.append(refs[start:end])
        start = end
    return out


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Collation randomness (augmentation, masking) from (seed, rank, step) alone: resume needs no state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2 ** 63))


class Trainer:
    def __init__(self, run: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False):
        from ..tasks import TASKS

        self.run, self.cfg = run, run.train
        self.run_dir = Path(run_dir)
        self.resume, self.quiet = resume, quiet
        self.task = TASKS[run.task](run)
        self.device = pick_device(self.cfg.device)
        self.dist = DistInfo()

    # --- set-up ----------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.dist = init_distributed(self.device.type)
        torch.manual_seed(cfg.seed)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            dump_run_config(self.run, self.run_dir / "config.yaml")
        self.task.prepare(self.run_dir)
        model = self.task.build_model()
        self._apply_finetune(model)
        self.model = model.to(self.device)
        self.model_config = config_to_dict(self.model.config) if hasattr(self.model, "config") else {}
        self.parameters = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.wrapped = wrap_model(self.model, self.dist, cfg.distributed, self.device)
        self.train_model = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self.optimizer = build_optimizer(self.model, cfg)
        self.steps_per_epoch = len(self.task.epoch_plan(0, cfg.batch_size, cfg.seed))
        if self.steps_per_epoch == 0:
            raise RuntimeError("the training set gives no batch: it is empty or smaller than one batch")
        limits = [cfg.max_steps] if cfg.max_steps else []
        if cfg.epochs:
            limits.append(math.ceil(cfg.epochs * self.steps_per_epoch))
        self.total_steps = min(limits) if limits else 10 ** 9  # a time budget alone: stop on time
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps if limits else 10 ** 6)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                         else contextlib.nullcontext())

    def _plain_model(self, folder: Path) -> nn.Module:
        """An unsharded model with a checkpoint's weights (FSDP runs)."""
        from ..models import build_model

        model = build_model(self.model.config).to(self.device)
        ckpt.load_weights(model, folder)
        return model

    def _apply_finetune(self, model: nn.Module) -> None:
        mode = self.run.finetune.mode
        if mode == "full":
            return
        if mode == "frozen":
            heads = self.task.head_parameter_prefixes()
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith(heads)
        elif mode == "lora":
            from ..nn.lora import apply_lora

            lora = self.run.finetune.lora
            apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout,
                       trainable_prefixes=self.task.head_parameter_prefixes())
        if not any(p.requires_grad for p in model.parameters()):
            raise RuntimeError(f"finetune.mode={mode!r} left no trainable parameter")

    # --- state -----------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.dist.enabled and self.cfg.distributed == "fsdp"

    def _full_state(self) -> tuple[nn.Module, dict | None]:
        """FSDP: gather full weights and optimizer state (every process takes part); the main process
        gets an unsharded copy of the model to write. Otherwise: the model itself."""
        if not self.sharded:
            return self.model, None
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=full)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        if not self.dist.main:
            return self.model, None
        from ..models import build_model

        plain = build_model(self.model.config)
        plain.load_state_dict(weights)
        return plain, optim

    def _trainer_state(self, optimizer_state: dict | None = None) -> dict[str, Any]:
        return {"optimizer": optimizer_state or self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": ckpt.rng_state(),
                "best": self.best, "bad_evals": self.bad_evals, "train_seconds": self.train_seconds,
                "units": self.units}

    def _save(self, name: str = "last") -> None:
        """Called on every process; the main one writes, the others wait at the caller's barrier."""
        model, optimizer_state = self._full_state()
        if not self.dist.main:
            return
        ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, model, self.model_config,
                             self._trainer_state(optimizer_state) if name == "last" else None, self.task.save_assets,
                             self.cfg.keep_last, name, self.task.checkpoint_info())

    def _restore(self) -> bool:
        folder = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
        if folder is None:
            return False
        state = ckpt.load_trainer_state(folder)  # read everything before changing anything
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            plain = self._plain_model(folder)
            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, plain.state_dict(), options=full)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=full)
        else:
            ckpt.load_weights(self.model, folder)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        self.best, self.bad_evals = state["best"], int(state["bad_evals"])
        self.train_seconds, self.units = float(state["train_seconds"]), float(state["units"])
        ckpt.set_rng_state(state["rng"])
        self.log.print(f"resumed from {folder} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        return True

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self._setup()
        cfg = self.cfg
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best, self.bad_evals, self.train_seconds, self.units = None, 0, 0.0, 0.0
        self.log = ConsoleProgress(self.total_steps if self.total_steps < 10 ** 9 else 0, self.task.unit,
                                   self.quiet or not self.dist.main)
        resumed = self.resume and self._restore()
        if self.resume and not resumed:
            self.log.print("no checkpoint to resume from: starting a new run")
        self.metrics_log = MetricsLog(self.run_dir, self.step if resumed else None) if self.dist.main else None
        if self.dist.main and not resumed:
            self.log.print(f"[bold]{self.run.task}[/bold]: {self.parameters:,} parameters "
                           f"({self.trainable:,} trainable), {self.steps_per_epoch} steps/epoch, "
                           f"{self.total_steps if self.total_steps < 10 ** 9 else '?'} steps, device {self.device}")
        plan, plan_epoch = None, -1
        stop = False
        try:
            while not stop and self.step < self.total_steps:
                if plan_epoch != self.epoch:
                    plan, plan_epoch = self.task.epoch_plan(self.epoch, cfg.batch_size, cfg.seed), self.epoch
                if self.batch_in_epoch >= len(plan):
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if cfg.eval_every == 0:
                        stop = self._evaluate_and_save()
                    continue
                t0 = time.perf_counter()
                loss, units = self._train_step(plan[self.batch_in_epoch])
                self.train_seconds += time.perf_counter() - t0
                self.units += units
                self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
                self._log_train(loss, write=self.step % cfg.log_every == 0 or self.step == 1)
                at_end = self.step >= self.total_steps
                if cfg.max_seconds and self.train_seconds >= cfg.max_seconds:
                    at_end = stop = True
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or at_end:
                    stop = self._evaluate_and_save() or stop
                elif cfg.save_every and self.step % cfg.save_every == 0:
                    self._save()
                    barrier(self.dist)
                stop = broadcast_object(stop, self.dist)
        finally:
            self.log.stop()
        result = self._finish()
        shutdown(self.dist)
        return result

    def _train_step(self, refs: list[Any]) -> tuple[float, float]:
        cfg, world = self.cfg, self.dist.world
        self.train_model.train()
        pieces = split_refs(refs, cfg.grad_accum * world)
        mine = [pieces[m * world + self.dist.rank] for m in range(cfg.grad_accum)]
        gen = step_generator(cfg.seed, self.dist.rank, self.step)
        batches = [self.task.collate(p, gen, self.device) for p in mine if p]
        local = float(sum(self.task.count(b) for b in batches))
        total, = all_reduce_sum([local], self.dist, self.device)
        if total == 0:
            raise RuntimeError(f"step {self.step + 1}: the batch holds no loss terms (all padding?)")
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self.autocast:
                loss = self.task.loss(self.train_model, batch)
                aux = moe_aux_loss(self.model)
                if aux is not None:  # weighted like the main loss: per loss term
                    loss = loss + self.model.config.moe.aux_loss_weight * aux * self.task.count(batch)
            # DDP averages gradients over processes: scale by world to get sum / global count
            (loss * (world / total)).backward()
            loss_sum += float(loss.detach())
        if not batches:  # this process got no share (tiny last batch): join the gradient sync with zeros
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        global_loss, = all_reduce_sum([loss_sum], self.dist, self.device)
        mean = global_loss / total
        if not math.isfinite(mean):
            last = ckpt.latest_checkpoint(self.run_dir / "checkpoints")
            kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"loss is {mean} at step {self.step + 1}; training stopped, {kept}")
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return mean, total

    def _log_train(self, loss: float, write: bool) -> None:
        lr = self.scheduler.get_last_lr()[0]
        throughput = self.units / max(self.train_seconds, 1e-9)
        self.log.update(self.step, loss, lr, throughput)
        if write and self.metrics_log is not None:
            self.metrics_log.write({"step": self.step, "epoch": self.epoch, "split": "train", "loss": loss, "lr": lr,
                                    "throughput": throughput, "train_seconds": self.train_seconds})

    def _evaluate_and_save(self) -> bool:
        """Evaluate (main process; every process under FSDP, whose forward is collective), track the
        best, save; True when early stopping says stop."""
        stop = better = False
        if self.dist.main or self.sharded:
            self.model.eval()
            with torch.no_grad(), self.autocast:
                metrics = self.task.evaluate(self.model, "valid", self.cfg.eval_batches)
        if self.dist.main:
            self.metrics_log.write({"step": self.step, "epoch": self.epoch, "split": "valid", **metrics})
            self.log.print(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            value = metrics.get(self.cfg.metric)
            if value is None:
                raise RuntimeError(f"train.metric={self.cfg.metric!r} is not among the evaluation metrics: "
                                   f"{', '.join(metrics)}")
            better = self.best is None or (value < self.best if self.cfg.metric_mode == "min" else value > self.best)
            if better:
                self.best, self.bad_evals = value, 0
            else:
                self.bad_evals += 1
                stop = bool(self.cfg.patience) and self.bad_evals >= self.cfg.patience
                if stop:
                    self.log.print(f"early stopping: {self.cfg.metric} has not improved for {self.bad_evals} evaluations")
        better, stop = broadcast_object((better, stop), self.dist)
        if better:
            self._save("best")
        self._save("last")
        barrier(self.dist)
        return stop

    def _finish(self) -> dict[str, Any]:
        if not self.dist.main:
            return {}
        best = self.run_dir / "checkpoints" / "best"
        model = self.model
        if (best / ckpt.MODEL_FILE).exists():
            if self.sharded:
                model = self._plain_model(best)
            else:
                ckpt.load_weights(model, best)
        model.eval()
        with torch.no_grad(), self.autocast:
            final = self.task.finish(model, self.run_dir)
        metrics = {**final, "best_" + self.cfg.metric: self.best, "steps": self.step, "epochs": self.step / self.steps_per_epoch,
                   "train_seconds": round(self.train_seconds, 2),
                   "throughput": self.units / max(self.train_seconds, 1e-9), "throughput_unit": f"{self.task.unit}/s",
                   "parameters": self.parameters, "trainable_parameters": self.trainable}
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.metrics_log.close()
        from ..viz import plot_training_curves
        from .report import write_report

        plot_training_curves(self.run_dir)
        write_report(self.run_dir, self.run, metrics, self.task.report(self.run_dir, metrics))
        shown = {k: metrics[k] for k in (*self.task.headline, "train_seconds", "throughput", "parameters") if k in metrics}
        self.log.table(f"{self.run.name or self.run.task}: results", shown)
        self.log.print(f"run folder: {self.run_dir}")
        return metrics
