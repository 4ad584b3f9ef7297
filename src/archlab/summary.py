"""`archlab summary`: layers, parameters, FLOPs, training memory and decode cache of a preset, recipe or
checkpoint. The model is built on the meta device: nothing is allocated, so any size can be summarised."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch.nn as nn
from rich.console import Console
from rich.table import Table

from .errors import ConfigError
from .models import build_skeleton, count_parameters, get_family, model_config
from .models.flops import training_memory_bytes


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def load_config_any(target: str):
    """A model config from a preset name, a YAML recipe (its model section), or a run/checkpoint folder."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        from .tasks.run import load_run_config

        return load_run_config(path).model
    if path.exists():
        from .models.finetune import checkpoint_model_config, find_checkpoint

        return checkpoint_model_config(find_checkpoint(path))
    return model_config(target)


def layer_rows(model: nn.Module) -> list[tuple[str, str, int]]:
    rows = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            for i, sub in enumerate(child):
                rows.append((f"{name}.{i}", type(sub).__name__, sum(p.numel() for p in sub.parameters())))
        else:
            rows.append((name, type(child).__name__, sum(p.numel() for p in child.parameters())))
    return rows


def summarize(target: str, batch: int = 32, seq_len: int | None = None, console: Console | None = None) -> dict:
    if batch < 1 or (seq_len is not None and seq_len < 1):
        raise ConfigError(f"--batch and --seq-len must be at least 1, got {batch} and {seq_len}")
    console = console or Console()
    cfg = load_config_any(target)
    family = get_family(cfg.family)
    notes = []
    for key, placeholder in (("vocab_size", 256), ("n_classes", 10)):
        if getattr(cfg, key, 0) is None:  # a recipe leaves it to the data: count with a placeholder
            cfg = dataclasses.replace(cfg, **{key: placeholder})
            notes.append(f"{key} comes from the data; counted here as {placeholder}")
    model = build_skeleton(cfg)
    params = count_parameters(model)
    cost = family.cost(cfg, seq_len)
    memory = training_memory_bytes(cfg, batch, seq_len)
    table = Table(title=f"{target} ({cfg.family})")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("parameters", justify="right")
    for name, kind, n in layer_rows(model):
        table.add_row(name, kind, f"{n:,}")
    table.add_row("[bold]total[/bold] (tied weights once)", "", f"[bold]{params:,}[/bold]")
    console.print(table)
    context = seq_len or getattr(cfg, "max_seq_len", None)
    at = "" if cost.unit == "example" else f" at context {context}"
    console.print(f"FLOPs per {cost.unit}{at}: forward {_human(cost.forward_flops)}, "
                  f"training {_human(cost.train_flops)}")
    console.print(f"training memory (fp32 AdamW, batch {batch}): weights+grads+optimizer "
                  f"{_human(memory['parameters_and_optimizer'], 'B')}, activations ~{_human(memory['activations'], 'B')}, "
                  f"total ~{_human(memory['total'], 'B')}")
    result = {"parameters": params, "forward_flops": cost.forward_flops, "train_flops": cost.train_flops,
              "unit": cost.unit, "memory_bytes": memory["total"]}
    if family.cache_bytes is not None and context:
        per_token = family.cache_bytes(cfg, context)
        console.print(f"decode cache (fp32): {_human(per_token, 'B')} per token, {_human(per_token * context, 'B')} "
                      f"per sequence at context {context}")
        result["cache_bytes_per_token"] = per_token
    for note in notes:
        console.print(f"[dim]note: {note}[/dim]")
    return result
