"""What every task shares: its data config, the model it completes from the data, its head, its assets, the
summed cross-entropy loss, evaluation loops, and the epoch seed. A task implements the engine's
`TrainTask` (train/task.py) and holds only what differs.

The life of a task: `Task(run)`; then `load_assets(folder)` when resuming or reopening a checkpoint (its
tokenizer, labels...), or `adopt(pretrained)` when fine-tuning (the pretrained model's tokenizer); then
`prepare()` reads the data and fits what is still missing; then `model_config()` is the run's model
config completed from the data (vocabulary size, number of classes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import to_dict
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError, DataError
from ..models import FamilyConfig, get_family, replace_config

if TYPE_CHECKING:
    from ..models.finetune import Pretrained
    from .run import RunConfig

IGNORE = -100  # target value that carries no loss (padding, unmasked positions)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling of one epoch: a pure function of (seed, epoch), so a resumed run replans it exactly."""
    return torch.Generator().manual_seed(seed * 10_007 + epoch)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def summed_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Summed token/example cross-entropy in fp32; IGNORE targets carry no loss."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="sum", ignore_index=IGNORE,
                           label_smoothing=label_smoothing)


def read_labels(path: Path, keys: tuple[str, ...], task: str) -> dict[str, Any]:
    """A checkpoint's labels.json with `keys`; missing, not JSON or incomplete is a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path} not found: not a {task} checkpoint")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt: {e}") from None
    missing = [k for k in keys if not isinstance(info, dict) or k not in info]
    if missing:
        raise DataError(f"{path} is not a {task} labels file: it lacks {', '.join(missing)}")
    return info


class Task:
    name: ClassVar[str]
    DataConfig: ClassVar[type]
    unit: ClassVar[str] = "examples"  # what throughput counts: examples or tokens
    headline: ClassVar[tuple[str, ...]] = ()  # metrics.json keys shown first in tables and reports
    kinds: ClassVar[tuple[str, ...]] = ()  # the model kinds (models/registry.py) the task trains
    derived: ClassVar[tuple[str, ...]] = ()  # model fields the task sets from the data
    unused_train_keys: ClassVar[dict[str, str]] = {}  # train keys the task does not use -> why

    def __init__(self, run: RunConfig):
        self.run = run
        self.data = run.data
        self.tokenizer: Tokenizer | None = None  # tasks with text set it in prepare / load_assets / adopt
        self.pretrained: Pretrained | None = None  # set by adopt(): build_model() starts from it

    # --- the recipe, checked when it is read (archlab.tasks.run) -----------------------------------
    @classmethod
    def model_family(cls, family: str, section: str = "model") -> str:
        """The family this task trains for a recipe's family (text classification turns gpt into its
        classifier); a family of the wrong kind is a ConfigError naming it."""
        kind = get_family(family, section).kind
        if kind not in cls.kinds:
            raise ConfigError(f"{section}: task {cls.name!r} trains {' or '.join(cls.kinds)} models; family "
                              f"{family!r} is a {kind} model")
        return family

    @classmethod
    def check(cls, run: RunConfig) -> None:
        """Cross-section checks of a recipe, before anything is built (ConfigError naming the keys)."""

    # --- set-up ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load (and if needed prepare) the data; fit what load_assets/adopt did not give (tokenizers)."""

    def adopt(self, pretrained: Pretrained) -> None:
        """Start from a pretrained model, and take from it what this task must share with it: its tokenizer."""
        self.pretrained = pretrained
        path = pretrained.folder / "tokenizer.json"
        if self.uses_tokenizer:
            if not path.is_file():
                raise ConfigError(f"init_from {pretrained.source}: no tokenizer.json in {pretrained.folder}; "
                                  f"the pretrained model's own tokenizer is needed")
            self.tokenizer = Tokenizer.from_file(path)

    @property
    def uses_tokenizer(self) -> bool:
        return False

    def load_tokenizer(self, folder: Path) -> None:
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{path} not found: a {self.name} checkpoint holds its tokenizer")
        self.tokenizer = Tokenizer.from_file(path)

    def fit_tokenizer(self, fit: Callable[[], Tokenizer]) -> Tokenizer:
        """The tokenizer loaded from a checkpoint or a pretrained model, else a new one fitted to the data."""
        if self.tokenizer is None:
            self.tokenizer = fit()
        return self.tokenizer

    def data_fields(self) -> dict[str, Any]:
        """Model fields found from the data (vocab_size, n_classes, pad_id ...), set after prepare()."""
        return {"vocab_size": self.tokenizer.vocab_size} if self.tokenizer is not None else {}

    def model_config(self) -> FamilyConfig:
        """The run's model config completed from the data. A field the recipe set that disagrees with the
        data is an error (a vocabulary smaller than the tokenizer, a wrong class count)."""
        cfg, changes = self.run.model, {}
        for key, value in self.data_fields().items():
            if not hasattr(cfg, key):
                continue
            given = getattr(cfg, key)
            if given is None or key in self.derived:
                changes[key] = value
            elif given != value:
                raise ConfigError(f"model.{key}={given} does not match the data ({value}); leave it out")
        return replace_config(cfg, **changes) if changes else cfg

    def build_model(self) -> nn.Module:
        """The run's model for the prepared task: built from model_config(), started from the adopted
        pretrained model (if any), with the fine-tuning structure (frozen, LoRA) set."""
        from ..models.finetune import prepare_model

        fresh = self.fresh_prefixes(self.pretrained) if self.pretrained is not None else ()
        return prepare_model(self.model_config(), self.run.finetune, self.head_prefixes(), self.pretrained, fresh)

    def head_prefixes(self) -> tuple[str, ...]:
        """Parameters of the task's head: trained in `frozen` fine-tuning, fresh when a checkpoint lacks them."""
        return ()

    def fresh_prefixes(self, pretrained: Pretrained) -> tuple[str, ...]:
        """Parameters NOT taken from the pretrained model (a classifier for other classes)."""
        return ()

    def save_assets(self, folder: Path) -> None:
        """Write what inference needs beside the weights (tokenizer.json, labels.json)."""
        if self.tokenizer is not None:
            self.tokenizer.save(folder / "tokenizer.json")

    def load_assets(self, folder: Path) -> None:
        """Read what save_assets wrote (resume, eval, predict, translate, generate, classify)."""
        if self.uses_tokenizer:
            self.load_tokenizer(folder)

    def checkpoint_info(self) -> dict[str, Any]:
        """Extra fields of the checkpoint's config.json: with them a checkpoint folder reopens on its own."""
        return {"task": self.name, "data": to_dict(self.data), "finetune": to_dict(self.run.finetune)}

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
        return summed_cross_entropy(self.forward(model, batch), batch["targets"], self.run.train.label_smoothing)

    def mean_loss(self, model: nn.Module, batches) -> float:
        """Mean cross-entropy (no label smoothing) over batches of a held-out split, moved to the model's device."""
        device = model_device(model)
        total, n = 0.0, 0
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            total += summed_cross_entropy(self.forward(model, b), b["targets"]).item()
            n += self.count(b)
        return total / max(n, 1)

    # --- evaluation and results ------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        raise NotImplementedError

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        """Final test metrics, plots under run_dir/plots; returns metrics for metrics.json."""
        return self.evaluate(model, "test")

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        """Task-specific markdown for report.md."""
        return ""


class ClassificationTask(Task):
    """A task that predicts one of `classes` per example (images, texts): the class list comes from the
    training data or a checkpoint, and decides whether a pretrained classifier head can be kept."""

    derived = ("n_classes",)

    def __init__(self, run: RunConfig):
        super().__init__(run)
        self.classes: list[str] | None = None

    def data_fields(self) -> dict[str, Any]:
        return {**super().data_fields(), "n_classes": len(self.classes)}

    def classifier_prefix(self, model_cfg: FamilyConfig) -> str:
        """The last layer that maps features to class scores (a new head when the classes change)."""
        raise NotImplementedError

    def fresh_prefixes(self, pretrained: Pretrained) -> tuple[str, ...]:
        labels = pretrained.folder / "labels.json"
        same = labels.is_file() and json.loads(labels.read_text(encoding="utf-8")).get("classes") == self.classes
        return () if same else (self.classifier_prefix(self.model_config()),)

    @staticmethod
    def accuracy_metrics(logits: Tensor, y: Tensor, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": F.cross_entropy(logits, y).item(),
                f"{prefix}_accuracy": (logits.argmax(-1) == y).float().mean().item()}
