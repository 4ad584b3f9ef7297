"""Runs: train a recipe into a run folder, and reopen a run or checkpoint for inference and evaluation.

Both go through the same preparation path (models/finetune.py): the task is built from the recipe, its
assets come from the checkpoint (resume, inference) or from the pretrained model (`init_from`), the model
from its config with the same fine-tuning structure (frozen, LoRA) it was trained with.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .config import brief_repr, from_dict, to_dict
from .errors import CheckpointError, ConfigError
from .models.finetune import (
    FinetuneConfig,
    apply_finetune,
    checkpoint_model_config,
    find_checkpoint,
    load_pretrained,
    read_checkpoint_config,
)
from .models.registry import FamilyConfig, build_model
from .tasks import TASKS, Task
from .tasks.run import RunConfig, dump_run_config, load_run_config
from .train import checkpoint as ckpt
from .train.config import TrainConfig
from .train.trainer import Trainer, steps_per_epoch

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


def describe(run: RunConfig) -> str:
    start = f", started from {run.init_from}" if run.init_from else ""
    mode = f" ({run.finetune.mode} fine-tuning)" if run.init_from or run.finetune.mode != "full" else ""
    return f"Task **{run.task}**, model **{run.model.family}**{start}{mode}"


def open_task(run: RunConfig, assets: Path | None = None) -> Task:
    """The run's task, prepared: its assets read from a checkpoint folder (resume), else taken from the
    pretrained model (init_from), else fitted to the data."""
    task = TASKS[run.task](run)
    if assets is not None:
        task.load_assets(assets)
    elif run.init_from:
        task.adopt(run.pretrained())
    task.prepare()
    return task


RUN_FILES = ("config.yaml", "checkpoints", "metrics.json", "metrics.jsonl")  # what makes a folder hold a run
LOCK_FILE = ".lock"


def train_run(run: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              force: bool = False, quiet: bool = False, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `run` into `run_dir` as a transaction; returns the final metrics.

    Everything is checked before the folder is touched: the folder (a run in it is continued with `resume`,
    moved aside with `overwrite`, else refused), the data, the model build (on the meta device), the
    checkpoint to resume and its fit with the WHOLE model config, the memory the training needs (refused
    when the machine lacks it, unless `force`: then `warn`). Then, holding the folder's lock: the old run
    moved aside, stale temporary folders removed, config.yaml written, the engine started. A set-up that
    fails leaves no folder behind. Under torchrun only rank 0 checks, locks and writes the folder."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite moves it aside: choose one")
    main = int(os.environ.get("RANK", "0")) == 0
    lock: RunLock | None = None
    try:
        if main:
            check_writable(run_dir)
            if (run_dir / LOCK_FILE).exists():
                lock = RunLock(run_dir)  # fail at once while another trainer works there
            if not resume and not overwrite and holds_run(run_dir):
                raise ConfigError(f"{run_dir} holds a run already; continue it with --resume, or move it aside "
                                  f"with --overwrite")
        checkpoint = resume_checkpoint(run_dir) if resume else None
        if checkpoint is not None:
            check_resume_task(run, checkpoint)
        task = open_task(run, checkpoint)
        model_cfg = task.model_config()  # data/model mismatches surface here
        if checkpoint is not None:
            check_resume_fits(run, model_cfg, checkpoint)
        skeleton = build_check(task, model_cfg)
        if checkpoint is not None:
            check_weights_fit(skeleton, checkpoint)
        steps_per_epoch(task, run.train)
        trainer = Trainer(task, task.build_model, run.train, run_dir, resume=resume, quiet=quiet,
                          title=run.name or run_dir.name, description=describe(run),
                          initial_eval=task.pretrained is not None)
        if not main:  # torchrun's other processes: rank 0 checks and writes the folder
            return trainer.fit()
        check_memory(run, task, model_cfg, trainer.device, force, quiet, warn)
        # --- everything checked: now the folder ---
        if overwrite and holds_run(run_dir):
            moved = move_aside(run_dir)
            print(f"moved the old run aside: {run_dir} -> {moved}", flush=True)
            if lock is not None:
                lock.release()
                lock = None
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock or RunLock(run_dir)
        stale = ckpt.remove_temporaries(run_dir / "checkpoints")
        if stale:
            print(f"removed {len(stale)} temporary folder(s) of interrupted saves from {run_dir / 'checkpoints'}: "
                  f"{', '.join(stale)}", flush=True)
        dump_run_config(run, run_dir / "config.yaml")
        try:
            return trainer.fit()
        except BaseException:
            if created and not any((run_dir / name).exists() for name in RUN_FILES[1:]):
                shutil.rmtree(run_dir, ignore_errors=True)  # the engine's set-up failed: no run to keep
            raise
    finally:
        if lock is not None:
            lock.release()


def holds_run(run_dir: Path) -> bool:
    """Whether a folder holds (a part of) a run: its config, checkpoints or metrics."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def check_writable(run_dir: Path) -> None:
    """The run folder, or the nearest folder above it that exists, can be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run folder")
    existing = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is not writable (read-only or not yours): cannot train into {run_dir}")


class RunLock:
    """An exclusive, non-blocking fcntl.flock on run_dir/.lock, held while a trainer works in the folder: a
    second trainer fails at once. The kernel drops it when the process ends, however it ends (kill -9)."""

    def __init__(self, run_dir: Path):
        self.fd: int | None = None
        if fcntl is None:  # not POSIX: no lock
            return
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise ConfigError(f"{run_dir} is in use by another trainer{who}; wait for it to end, or train into "
                              f"another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def move_aside(run_dir: Path) -> Path:
    """runs/x -> runs/x.old-YYYYmmdd-HHMMSS (an old run is never deleted)."""
    run_dir = run_dir.absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 2
    while target.exists():
        target, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}"), n + 1
    run_dir.rename(target)
    return target


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume starts from, chosen as the engine chooses it: the newest whose trainer state and
    weights file read (nothing is loaded: the state is mapped, the weights' header read). None: no checkpoint,
    the run starts anew."""
    errors = []
    for folder in ckpt.resumable_checkpoints(run_dir / "checkpoints"):
        try:
            ckpt.load_trainer_state(folder, mmap=True)
            ckpt.weight_shapes(folder)
            return folder
        except CheckpointError as e:
            errors.append(str(e))
    if errors:
        raise CheckpointError(f"{errors[0]}; no older intact checkpoint to resume from")
    return None


RESUME_FIX = "put it back, or start a new run (--overwrite, or another --run-dir)"


def check_resume_task(run: RunConfig, folder: Path) -> None:
    """The checkpoint to resume is one of the recipe's task (read before the task opens its assets)."""
    info = read_checkpoint_config(folder)
    if info.get("task", run.task) != run.task:
        raise ConfigError(f"--resume: {folder / ckpt.CONFIG_FILE} is a checkpoint of task {brief_repr(info['task'])}, "
                          f"the recipe's task is {run.task!r}; {RESUME_FIX}")


def check_resume_fits(run: RunConfig, model_cfg: FamilyConfig, folder: Path) -> None:
    """A resumed run continues the checkpoint's training: the same model config (every field, not only the
    shapes: an activation edited in config.yaml would go on under another architecture with weights trained
    for the old one) and the same fine-tuning. A difference is a ConfigError naming the key."""
    where = folder / ckpt.CONFIG_FILE
    info = read_checkpoint_config(folder)
    sections = [("model", flat(checkpoint_model_config(folder).to_dict()), flat(model_cfg.to_dict()))]
    if isinstance(info.get("finetune"), dict):
        sections.append(("finetune", flat(info["finetune"]), flat(to_dict(run.finetune))))
    for section, saved, wanted in sections:
        for key in sorted(saved.keys() | wanted.keys()):
            if saved.get(key) != wanted.get(key):
                raise ConfigError(f"--resume: {section}.{key} is {brief_repr(wanted.get(key))} in the recipe but "
                                  f"{brief_repr(saved.get(key))} in {where}, whose weights were trained with it; "
                                  f"{RESUME_FIX}")


def flat(value: Any, key: str = "") -> dict[str, Any]:
    """{'lora': {'rank': 8}} -> {'lora.rank': 8}; a list of mappings by index (CNN stages): 'stages[0].pool'."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in flat(item, f"{key}.{name}" if key else name).items()}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{key}[{i}]").items()}
    return {key: value}


def build_check(task: Task, model_cfg: FamilyConfig) -> nn.Module:
    """The run's model built on the meta device (no memory), with its fine-tuning structure; a pretrained
    model's weights are read and checked against it (names and shapes). Nothing the engine builds later can
    then fail on the config."""
    heads = task.head_prefixes()
    with torch.device("meta"):
        model = build_model(model_cfg)
    if task.pretrained is not None:
        fresh = task.fresh_prefixes(task.pretrained)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying weights into meta tensors is a no-op, which torch warns about
            load_pretrained(model, task.pretrained.state_dict(), task.pretrained.source, fresh, heads)
    with torch.device("meta"):
        return apply_finetune(model, task.run.finetune, heads)


def check_weights_fit(model: nn.Module, folder: Path) -> None:
    """Every weight in the checkpoint has a place of the same shape in the model (from the file's header)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k} {shape}" + (f" (model {own[k]})" if k in own else " (not in the model)")
             for k, shape in ckpt.weight_shapes(folder).items() if own.get(k) != shape]
    if wrong:
        raise CheckpointError(f"{folder / ckpt.MODEL_FILE} does not fit this model: {'; '.join(wrong[:4])}")


def available_memory(device: torch.device) -> int | None:
    """Bytes the training can still allocate: free memory of a CUDA device, or the machine's MemAvailable
    (Linux /proc/meminfo, else os.sysconf); None where it cannot be known (the check is skipped)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(run: RunConfig, task: Task, model_cfg: FamilyConfig, device: torch.device, force: bool,
                 quiet: bool, warn: Callable[[str], None] | None) -> None:
    """Print the training memory estimate (models/flops.py: weights, gradients, AdamW moments, activations of a
    micro-batch); refuse when it exceeds the memory available (or warn, with `force`)."""
    from .models.flops import training_memory_bytes

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1  # processes sharing it
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "batch_size" in task.unused_train_keys and hasattr(run.data, "max_tokens"):  # token-budget batches
        batch = max(1, run.data.max_tokens // (getattr(model_cfg, "max_seq_len", None) or 1))
    else:
        batch = max(1, run.train.batch_size // run.train.grad_accum // world)
    estimate = training_memory_bytes(model_cfg, batch, ema=run.train.ema_decay > 0)
    need, available = estimate["total"] * local, available_memory(device)
    where = f"on {device.type}" + (f", {local} processes" if local > 1 else "")
    if not quiet:
        free = f"; {_gb(available)} available" if available is not None else ""
        print(f"memory estimate: {_gb(need)} to train {where} (weights, gradients and optimizer "
              f"{_gb(estimate['parameters_and_optimizer'])}, activations {_gb(estimate['activations'])} at batch "
              f"{batch}){free}", flush=True)
    if available is None or need <= available:
        return
    message = (f"training needs about {_gb(need)} of memory {where} (estimate), more than the {_gb(available)} "
               f"available")
    if not force:
        raise ConfigError(f"{message}; make train.batch_size or the model smaller, or pass --force to try anyway")
    (warn or _warn)(f"{message}; going on (--force)")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _gb(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


def find_run_dir(folder: Path) -> Path | None:
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def checkpoint_run_config(folder: Path) -> RunConfig:
    """The run a checkpoint belongs to: its config.json says the task, data spec and fine-tuning (archlab
    checkpoints are self-contained); older checkpoints fall back to their run folder's config.yaml."""
    info = read_checkpoint_config(folder)
    run_dir = find_run_dir(folder)
    if "data" in info or (run_dir is None and "task" in info):  # a bare folder without a data spec: the defaults
        if info.get("task") not in TASKS:
            raise CheckpointError(f"{folder}/config.json does not name a known task ({', '.join(TASKS)})")
        where = f"{folder}/config.json"
        try:
            return RunConfig(task=info["task"], model=checkpoint_model_config(folder), train=TrainConfig(max_steps=1),
                             data=from_dict(TASKS[info["task"]].DataConfig, info.get("data") or {}, f"{where}: data"),
                             finetune=from_dict(FinetuneConfig, info.get("finetune") or {}, f"{where}: finetune"))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    if run_dir is None:
        raise CheckpointError(f"{folder}/config.json has no task and data spec, and no run folder holds it")
    return load_run_config(run_dir / "config.yaml")


def load_run(path: str | Path, prefer: str = "best", device: str = "cpu") -> tuple[Task, nn.Module, Path]:
    """(task with its assets loaded, model in eval mode with the checkpoint's weights, checkpoint folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    folder = find_checkpoint(path, prefer)
    run = checkpoint_run_config(folder)
    task = TASKS[run.task](run)
    task.load_assets(folder)
    model = apply_finetune(build_model(checkpoint_model_config(folder)), run.finetune, task.head_prefixes())
    ckpt.load_weights(model, folder)
    return task, model.to(torch.device(device)).eval(), folder


def default_run_dir(name: str, resume: bool) -> Path:
    """runs/NAME; a new run never overwrites an old one: runs/NAME-2, -3, ... (--resume and --overwrite take
    runs/NAME itself)."""
    base = Path("runs") / name
    if resume or not base.exists():
        return base
    n = 2
    while Path(f"{base}-{n}").exists():
        n += 1
    return Path(f"{base}-{n}")


def export_hf(run: str | Path, out: str | Path) -> Path:
    """A run as a Hugging Face folder (LoRA adapters folded in), with its tokenizer.json; a text classifier
    as BertForSequenceClassification with its labels."""
    from .models.hf import save_hf_folder
    from .nn.lora import merge_lora

    task, model, _ = load_run(run)
    folder = save_hf_folder(merge_lora(model), out, labels=getattr(task, "classes", None))
    task.save_assets(folder)
    for extra in ("labels.json", "adapters.safetensors"):  # archlab's own files: not part of an HF folder
        (folder / extra).unlink(missing_ok=True)
    return folder
