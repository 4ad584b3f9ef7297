"""Runs: train a recipe into a run folder, and reopen a run or checkpoint for inference and evaluation.

Both go through the same preparation path (models/finetune.py): the task is built from the recipe, its
assets come from the checkpoint (resume, inference) or from the pretrained model (`init_from`), the model
from its config with the same fine-tuning structure (frozen, LoRA) it was trained with.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import from_dict
from .errors import CheckpointError, ConfigError
from .models.finetune import (
    FinetuneConfig,
    apply_finetune,
    checkpoint_model_config,
    find_checkpoint,
    read_checkpoint_config,
)
from .models.registry import build_model
from .tasks import TASKS, Task
from .tasks.run import RunConfig, dump_run_config, load_run_config
from .train import checkpoint as ckpt
from .train.config import TrainConfig
from .train.trainer import Trainer


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


def train_run(run: RunConfig, run_dir: str | Path, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train `run` into `run_dir`: the task's data and assets first, then the run's config.yaml, then the
    engine. Returns the final metrics."""
    run_dir = Path(run_dir)
    task = open_task(run, ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None)
    task.model_config()  # data/model mismatches surface before the folder is written
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_run_config(run, run_dir / "config.yaml")
    trainer = Trainer(task, task.build_model, run.train, run_dir, resume=resume, quiet=quiet,
                      title=run.name or run_dir.name, description=describe(run),
                      initial_eval=task.pretrained is not None)
    return trainer.fit()


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
    """runs/NAME; a new run never overwrites an old one: runs/NAME-2, -3, ... (--resume reuses runs/NAME)."""
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
