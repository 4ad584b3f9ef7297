"""The one training engine: every task trains, evaluates, checkpoints and resumes through `Trainer`.

The engine receives; it does not reach. Its caller gives it a task (train/task.py: data as resumable
batch plans, a loss, evaluation, assets) and a model factory; it imports nothing from tasks/, models/
or nn/. What is model-specific reaches it through small hooks a model may define:

- ``model.config.to_dict()``: the model config stored in each checkpoint's config.json;
- ``model.extra_loss()`` -> a scalar tensor or None: added to the task's mean loss after each forward
  (e.g. the MoE load-balancing loss);
- ``model.fsdp_units()`` -> modules: sharded one by one under FSDP (e.g. the Transformer blocks).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from ..errors import CheckpointError, ConfigError, TrainingDiverged
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed, shutdown, wrap_model
from .logging import ConsoleProgress, MetricsLog, read_metrics
from .optim import build_optimizer, build_scheduler
from .task import TrainTask

UNBOUNDED = 10 ** 9  # total steps of a run stopped by its time budget alone


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def native_bf16(device: torch.device) -> str | None:
    """Why this device computes bf16 natively (AMX or AVX512-BF16 on a CPU, a bf16-capable GPU), or None."""
    if device.type == "cuda":
        return "the GPU supports bf16" if torch.cuda.is_bf16_supported() else None
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "the CPU has AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "the CPU has AVX512-BF16"
    return None


def resolve_precision(choice: str, device: torch.device) -> tuple[str, str]:
    """(fp32 | bf16, why) for train.precision; `auto` picks bf16 only where it is native (elsewhere bf16 is
    emulated and slower than fp32)."""
    if choice != "auto":
        return choice, "as configured"
    why = native_bf16(device)
    return ("bf16", f"auto: {why}") if why else ("fp32", "auto: no native bf16 on this device")


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


def steps_per_epoch(task: TrainTask, cfg: TrainConfig) -> int:
    """Optimizer steps in an epoch; none is a ConfigError (checked by the caller before a run folder is written)."""
    steps = len(task.epoch_plan(0, cfg.batch_size, cfg.seed))
    if steps == 0:
        raise ConfigError("the training set gives no batch: it is empty or smaller than one batch "
                          f"(train.batch_size={cfg.batch_size})")
    return steps


def ema_update_fn(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An exponential moving average for torch's AveragedModel: after the n-th optimizer step (n >= 1),
    ema <- d * ema + (1 - d) * w with d = min(decay, (1 + n) / (10 + n)), TensorFlow's ExponentialMovingAverage
    with num_updates: early on the average follows the fast-moving weights instead of remembering the random
    init. Integer buffers (batch-norm counters) are copied, not averaged."""
    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - d)
        else:
            torch._foreach_copy_(ema, current)
    return update


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


class Trainer:
    """Trains `build_model()` on `task` under `train` into `run_dir` (which the caller has validated and
    holds the run's config.yaml). `build_model` is called after seeding, so the initial weights are a
    function of train.seed; under FSDP it is called again for an unsharded copy to save from."""

    def __init__(self, task: TrainTask, build_model: Callable[[], nn.Module], train: TrainConfig,
                 run_dir: str | Path, *, resume: bool = False, quiet: bool = False, title: str = "",
                 description: str = "", initial_eval: bool = False):
        self.task, self.build_model, self.cfg = task, build_model, train
        self.run_dir = Path(run_dir)
        self.resume, self.quiet, self.initial_eval = resume, quiet, initial_eval
        self.title, self.description = title or task.name, description
        self.device = pick_device(train.device)
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
        model = self.build_model()
        self.model = model.to(self.device)
        self.model_config = model_config_dict(model)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.sharded and cfg.optimizer == "muon":  # Muon orthogonalises whole matrices; FSDP holds shards
            raise ConfigError("train.optimizer: muon does not run under train.distributed: fsdp; use ddp")
        if self.sharded and cfg.ema_decay:  # the average would need the full weights on every step
            raise ConfigError("train.ema_decay does not run under train.distributed: fsdp; use ddp")
        # The weights evaluated and saved: the model itself, or a moving average of it (buffers too: batch-norm
        # statistics then describe the averaged weights, as in timm's ModelEmaV3).
        self.ema = (AveragedModel(self.model, multi_avg_fn=ema_update_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self.eval_model = self.ema.module if self.ema is not None else self.model
        units = model.fsdp_units() if hasattr(model, "fsdp_units") else []
        self.wrapped = wrap_model(self.model, self.dist, cfg.distributed, self.device, units)
        self.train_model = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self.optimizer = build_optimizer(self.model, cfg)
        self.steps_per_epoch = steps_per_epoch(self.task, cfg)
        limits = [cfg.max_steps] if cfg.max_steps else []
        if cfg.epochs:
            limits.append(math.ceil(cfg.epochs * self.steps_per_epoch))
        self.total_steps = min(limits) if limits else UNBOUNDED
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps,
                                         elapsed=lambda: getattr(self, "train_seconds", 0.0))
        self.precision, self.precision_why = resolve_precision(cfg.precision, self.device)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                         else contextlib.nullcontext())

    # --- state -----------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.dist.enabled and self.cfg.distributed == "fsdp"

    def _plain_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """An unsharded model holding `weights` (FSDP runs save and evaluate through it)."""
        plain = self.build_model()
        plain.load_state_dict(weights)
        return plain.to(self.device)

    def _full_state(self) -> tuple[nn.Module, dict | None]:
        """FSDP: gather full weights and optimizer state (every process takes part); the main process gets
        an unsharded copy of the model to write. Otherwise: the model itself."""
        if not self.sharded:
            return self.model, None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=full)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        if not self.dist.main:
            return self.model, None
        return self._plain_model(weights), optim

    def _trainer_state(self, optimizer_state: dict | None = None) -> dict[str, Any]:
        return {"optimizer": optimizer_state or self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "rng": ckpt.rng_state(),
                "best": self.best, "bad_evals": self.bad_evals, "train_seconds": self.train_seconds,
                "units": self.units, **self._ema_state()}

    def _ema_state(self) -> dict[str, Any]:
        """With an EMA the checkpoint's model file holds the average; the trained weights resume from here."""
        if self.ema is None:
            return {}
        return {"trained_weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "ema_updates": int(self.ema.n_averaged)}

    def _save(self, name: str = "last") -> None:
        """Called on every process; the main one writes, the others wait at the caller's barrier."""
        model, optimizer_state = self._full_state()
        if not self.dist.main:
            return
        if self.ema is not None:
            model = self.ema.module
        ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, model, self.model_config,
                             self._trainer_state(optimizer_state) if name == "last" else None, self.task.save_assets,
                             self.cfg.keep_last, name, self.task.checkpoint_info())

    def _load_weights(self, folder: Path) -> None:
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            plain = self.build_model()
            ckpt.load_weights(plain, folder)
            set_model_state_dict(self.model, plain.state_dict(), options=StateDictOptions(full_state_dict=True))
        else:
            ckpt.load_weights(self.model, folder)

    def _restore(self) -> bool:
        """Resume from the newest intact checkpoint; an unreadable one is skipped, and the run says so. When
        checkpoints exist but none can be read, nothing is started over them: CheckpointError."""
        errors = []
        for folder in ckpt.resumable_checkpoints(self.run_dir / "checkpoints"):
            try:
                state = ckpt.load_trainer_state(folder)  # read everything before changing anything
                if (self.ema is not None) != ("trained_weights" in state):
                    raise CheckpointError(f"{folder} was {'not ' if self.ema is not None else ''}saved with "
                                          f"train.ema_decay, and this run has {self.cfg.ema_decay}")
                self._load_weights(folder)
            except CheckpointError as e:
                self.log.print(f"[yellow]cannot resume from {folder.name}: {e}[/yellow]")
                errors.append(str(e))
                continue
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"],
                                         options=StateDictOptions(full_state_dict=True))
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:  # the folder's weights are the average; the trained ones are in the state
                self.ema.module.load_state_dict(self.model.state_dict())
                self.model.load_state_dict(state["trained_weights"])
                self.ema.n_averaged.fill_(int(state["ema_updates"]))
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self.batch_in_epoch = int(state["batch_in_epoch"])
            self.best, self.bad_evals = state["best"], int(state["bad_evals"])
            self.train_seconds, self.units = float(state["train_seconds"]), float(state["units"])
            ckpt.set_rng_state(state["rng"])
            skipped = f" (skipped {len(errors)} newer unreadable checkpoint(s))" if errors else ""
            self.log.print(f"resumed from {folder} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})"
                           f"{skipped}")
            return True
        if errors:
            raise CheckpointError(f"{errors[0]}; no older intact checkpoint to resume from")
        return False

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self._setup()
        cfg = self.cfg
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best, self.bad_evals, self.train_seconds, self.units = None, 0, 0.0, 0.0
        self.log = ConsoleProgress(self.total_steps if self.total_steps < UNBOUNDED else 0, self.task.unit,
                                   self.quiet or not self.dist.main)
        resumed = self.resume and self._restore()
        if self.resume and not resumed:
            self.log.print("no checkpoint to resume from: starting a new run")
        self.metrics_log = MetricsLog(self.run_dir, self.step if resumed else None) if self.dist.main else None
        if self.dist.main and not resumed:
            total = self.total_steps if self.total_steps < UNBOUNDED else "?"
            self.log.print(f"[bold]{self.task.name}[/bold]: {self.parameters:,} parameters ({self.trainable:,} "
                           f"trainable), {self.steps_per_epoch} steps/epoch, {total} steps, device {self.device}, "
                           f"precision {self.precision} ({self.precision_why})")
        plan, plan_epoch = None, -1
        stop = False
        try:
            try:
                if self.initial_eval and not resumed:  # a fine-tuning run shows where its checkpoint starts
                    stop = self._evaluate_and_save()
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
            return self._finish()
        finally:
            self._release_distributed()

    def _release_distributed(self) -> None:
        """DDP's reducer must not outlive the process group: freed last, it destroys the gloo group with the GIL
        held while a gloo thread waits for the GIL to free a finished broadcast (a hang, about 1 run in 6)."""
        self.wrapped = self.train_model = None
        gc.collect()
        shutdown(self.dist)

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
            raise TrainingDiverged(f"step {self.step + 1}: the batch holds no loss terms (all padding?)")
        extra_loss = getattr(self.model, "extra_loss", None)
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self.autocast:
                loss = self.task.loss(self.train_model, batch)
                extra = extra_loss() if extra_loss is not None else None
                if extra is not None:  # a mean-loss term: weighted like the main loss, per loss term
                    loss = loss + extra * self.task.count(batch)
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
        if self.ema is not None:
            self.ema.update_parameters(self.model)
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
            self.eval_model.eval()
            with torch.no_grad(), self.autocast:
                metrics = self.task.evaluate(self.eval_model, "valid", self.cfg.eval_batches)
        if self.dist.main:
            self.metrics_log.write({"step": self.step, "epoch": self.epoch, "split": "valid", **metrics})
            self.log.print(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            value = metrics.get(self.cfg.metric)
            if value is None:
                raise ConfigError(f"train.metric={self.cfg.metric!r} is not among the evaluation metrics: "
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
                model = self.build_model().to(self.device)
                ckpt.load_weights(model, best)
            else:
                ckpt.load_weights(model, best)
        model.eval()
        with torch.no_grad(), self.autocast:
            final = self.task.finish(model, self.run_dir)
        metrics = {**final, "best_" + self.cfg.metric: self.best, "steps": self.step,
                   "epochs": self.step / self.steps_per_epoch, "train_seconds": round(self.train_seconds, 2),
                   "throughput": self.units / max(self.train_seconds, 1e-9), "throughput_unit": f"{self.task.unit}/s",
                   "parameters": self.parameters, "trainable_parameters": self.trainable,
                   "precision": self.precision, "device": str(self.device)}
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.metrics_log.close()
        from ..viz import plot_training_curves
        from .report import write_report

        plot_training_curves(read_metrics(self.run_dir), self.run_dir / "plots")
        write_report(self.run_dir, self.title, self.description, metrics, self.task.report(self.run_dir, metrics))
        shown = {k: metrics[k] for k in (*self.task.headline, "train_seconds", "throughput", "parameters") if k in metrics}
        self.log.table(f"{self.title}: results", shown)
        self.log.print(f"run folder: {self.run_dir}")
        return metrics
