"""What the engine asks of a task. Tasks (archlab.tasks) implement it; a test can train a stub through the
real trainer with nothing else.

A *batch plan* is the list of global batches of one epoch, each a list of example references (indices,
offsets, ...). It must be a pure function of (epoch, batch_size, seed), so a resumed run rebuilds the
same plan and skips to its saved position instead of re-shuffling. The trainer splits each global batch
into micro-batches and process shards, and asks the task to collate them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch import Tensor


class TrainTask(Protocol):
    name: str
    unit: str  # what throughput counts: "examples" or "tokens"
    headline: tuple[str, ...]  # metrics shown first in the final table

    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[Any]]: ...

    def collate(self, refs: list[Any], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]: ...

    def count(self, batch: dict[str, Tensor]) -> int:
        """Loss terms in a batch: the summed loss is divided by their global sum."""

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The *summed* loss of the batch."""

    def evaluate(self, model: nn.Module, split: str, max_batches: int | None) -> dict[str, float]: ...

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        """Final metrics (and plots) with the best weights."""

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        """The task's section of report.md."""

    def save_assets(self, folder: Path) -> None:
        """Write what inference needs beside the weights (tokenizer.json, labels.json)."""

    def checkpoint_info(self) -> dict[str, Any]:
        """Extra fields of a checkpoint's config.json (the task and its data spec)."""
