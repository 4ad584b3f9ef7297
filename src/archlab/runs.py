"""Open a finished (or running) run or checkpoint for inference and evaluation."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .models import build_model
from .tasks import TASKS, Task
from .train import checkpoint as ckpt
from .train.config import load_run_config


def find_run_dir(folder: Path) -> Path | None:
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / "config.yaml").exists():
            return candidate
    return None


def load_run(path: str | Path, prefer: str = "best", device: str = "cpu") -> tuple[Task, nn.Module, Path]:
    """(task with its assets loaded, model in eval mode with the checkpoint's weights, checkpoint folder)."""
    folder = ckpt.resolve_checkpoint(path, prefer)
    info = ckpt.read_config_json(folder)
    run_dir = find_run_dir(folder)
    if run_dir is not None:
        run = load_run_config(run_dir / "config.yaml")
    else:  # a bare checkpoint folder: its config.json names the task
        task_name = info.get("task")
        if task_name not in TASKS:
            raise ckpt.CheckpointError(f"{folder}/config.json does not name a known task ({', '.join(TASKS)})")
        run = load_run_config({"task": task_name, "model": {"family": info["family"]}, "train": {"max_steps": 1}})
    task = TASKS[run.task](run)
    task.load_assets(folder)
    model = build_model(ckpt.read_model_config(folder))
    if run.finetune.mode == "lora":
        from .nn.lora import apply_lora

        lora = run.finetune.lora
        apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout,
                   trainable_prefixes=task.head_parameter_prefixes())  # as in training: heads are not adapted
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
