"""`archlab summary`: layers, parameters, FLOPs and training memory of a preset, config or checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from rich.console import Console
from rich.table import Table

from .models import build_model, count_parameters, model_config
from .models.flops import model_cost, training_memory_bytes


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def load_config_any(target: str):
    """A model config from a preset name, a YAML recipe (its model section), or a run/checkpoint folder."""
    path = Path(target)
    if path.exists():
        from .train.checkpoint import read_model_config  # lazy: only needed for files

        return read_model_config(path)
    return model_config(target)


def layer_rows(model: nn.Module) -> list[tuple[str, str, int]]:
    rows = []
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        if isinstance(child, nn.ModuleList):
            for i, sub in enumerate(child):
                rows.append((f"{name}.{i}", type(sub).__name__, sum(p.numel() for p in sub.parameters())))
        else:
            rows.append((name, type(child).__name__, n))
    return rows


def summarize(target: str, batch: int = 32, seq_len: int | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    cfg = load_config_any(target)
    model = build_model(cfg)
    params = count_parameters(model)
    cost = model_cost(cfg, seq_len)
    memory = training_memory_bytes(cfg, batch, seq_len)
    table = Table(title=f"{target} ({cfg.family})")
    table.add_column("layer")
    table.add_column("type")
    table.add_column("parameters", justify="right")
    for name, kind, n in layer_rows(model):
        table.add_row(name, kind, f"{n:,}")
    table.add_row("[bold]total[/bold] (tied weights once)", "", f"[bold]{params:,}[/bold]")
    console.print(table)
    context = "" if cost.unit == "example" else f" at context {seq_len or cfg.max_seq_len}"
    console.print(f"FLOPs per {cost.unit}{context}: forward {_human(cost.forward_flops)}, "
                  f"training {_human(cost.train_flops)}")
    console.print(f"training memory (fp32 AdamW, batch {batch}): weights+grads+optimizer "
                  f"{_human(memory['parameters_and_optimizer'], 'B')}, activations ~{_human(memory['activations'], 'B')}, "
                  f"total ~{_human(memory['total'], 'B')}")
    return {"parameters": params, "forward_flops": cost.forward_flops, "train_flops": cost.train_flops,
            "unit": cost.unit, "memory_bytes": memory["total"]}
