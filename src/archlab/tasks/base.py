"""What a task gives the trainer: data in resumable batch plans, a model, a loss, evaluation, a report.

A *batch plan* is the list of global batches of one epoch, each a list of example references
(indices, offsets, ...). It must be a pure function of (seed, epoch), so a resumed run rebuilds
the same plan and skips to its saved position instead of re-shuffling. The trainer splits each
global batch into micro-batches and process shards, and asks the task to collate them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import from_dict
from ..train.config import RunConfig

IGNORE = -100  # target value that carries no loss (padding, unmasked positions)


class Task:
    name: ClassVar[str]
    DataConfig: ClassVar[type]
    unit: ClassVar[str] = "examples"  # what throughput counts: examples or tokens
    headline: ClassVar[tuple[str, ...]] = ()  # metrics.json keys shown first in tables and reports

    def __init__(self, run: RunConfig):
        self.run = run
        self.data = from_dict(self.DataConfig, run.data, "data")

    # --- set-up ----------------------------------------------------------------------------------
    def prepare(self, run_dir: Path | None) -> None:
        """Load (and if needed prepare) the training data; fit tokenizers. Called before build_model."""

    def model_config(self):
        """The model config, completed from the data (vocabulary size, number of classes, ...)."""
        from ..models.config import model_config

        return model_config(self.run.model)

    def build_model(self) -> nn.Module:
        from ..models import build_model

        return build_model(self.model_config())

    def head_parameter_prefixes(self) -> tuple[str, ...]:
        """Parameters trained in `frozen` (linear probe) fine-tuning."""
        return ()

    def save_assets(self, folder: Path) -> None:
        """Write what inference needs beside the weights (tokenizer.json, labels.json)."""

    def load_assets(self, folder: Path) -> None:
        """Read what save_assets wrote (for predict / translate / generate / classify / eval)."""

    def checkpoint_info(self) -> dict[str, Any]:
        """Extra fields for the checkpoint's config.json (e.g. the task name)."""
        return {"task": self.name}

    # --- training data ---------------------------------------------------------------------------
    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[Any]]:
        raise NotImplementedError

    def collate(self, refs: list[Any], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        raise NotImplementedError

    def count(self, batch: dict[str, Tensor]) -> int:
        """Loss terms in a batch (examples or target tokens): the loss is normalised by their global sum."""
        return int((batch["targets"] != IGNORE).sum())

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Summed (not averaged) loss: the trainer divides by the count over all micro-batches and processes."""
        logits = self.forward(model, batch)
        return F.cross_entropy(logits.flatten(0, -2).float(), batch["targets"].flatten(), reduction="sum",
                               ignore_index=IGNORE, label_smoothing=self.run.train.label_smoothing)

    # --- evaluation and results ------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        """Final test metrics, plots under run_dir/plots; returns metrics for metrics.json."""
        return self.evaluate(model, "test")

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        """Task-specific markdown for report.md."""
        return ""
