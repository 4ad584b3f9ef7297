"""A run's whole config (a recipe): task, model, data, training, and where fine-tuning starts from — one
typed tree, read strictly at load time. The data section takes its type from the task and the model
section from its family (or from the `init_from` checkpoint), so every key, type and range error, and
every task/model mismatch, is raised before anything is built or written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import from_dict, load_yaml, parse_override, set_path, to_dict, unknown_key_error
from ..errors import ConfigError
from ..models import FamilyConfig, model_config
from ..models.finetune import FinetuneConfig, Pretrained, resolve_pretrained
from ..models.registry import resolve_model_dict
from ..train.config import TrainConfig

TOP_KEYS = ("task", "model", "data", "train", "name", "init_from", "finetune")


@dataclass
class RunConfig:
    task: str
    model: FamilyConfig  # typed by its family; fields a task finds in the data may still be None
    train: TrainConfig
    data: Any  # the task's DataConfig
    name: str | None = None
    init_from: str | None = None  # a run, checkpoint or Hugging Face folder, or "minilm" (all-MiniLM-L6-v2)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        """The recipe, resolved (presets expanded); model fields the task finds in the data and train keys it
        does not use are left out."""
        from . import TASKS

        task = TASKS[self.task]
        model = {k: v for k, v in self.model.to_dict().items() if k not in task.derived}
        train = {k: v for k, v in to_dict(self.train).items() if k not in task.unused_train_keys}
        return {"task": self.task, "name": self.name, "init_from": self.init_from, "model": model,
                "data": to_dict(self.data), "train": train, "finetune": to_dict(self.finetune)}

    def pretrained(self) -> Pretrained | None:
        return resolve_pretrained(self.init_from) if self.init_from else None


def _model_section(raw: Any, task_cls, init_from: str | None) -> FamilyConfig:
    """The model config: the recipe's preset/family, or the init_from model's own config with the recipe's
    overrides (dropout, ...), turned into the family the task trains."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"model: expected a mapping, got {type(raw).__name__}")
    raw = dict(raw or {})
    given = [k for k in task_cls.derived if raw.get(k) is not None]
    if given:
        raise ConfigError(f"model.{given[0]}: task {task_cls.name!r} sets it from the data "
                          f"(e.g. the tokenizer's vocabulary); leave it out")
    if init_from:
        base = resolve_pretrained(init_from).config.to_dict()
        base["family"] = task_cls.model_family(base["family"])
        # a resolved config.yaml repeats the family; a recipe may only override fields such as dropout
        if "preset" in raw or raw.get("family", base["family"]) != base["family"]:
            raise ConfigError(f"model: with init_from the architecture is the pretrained model's "
                              f"({base['family']}); the model section may only override fields such as dropout")
        base.update({k: v for k, v in raw.items() if v is not None or k not in task_cls.derived})
        raw = base
    family, fields = resolve_model_dict(raw)
    return model_config({**fields, "family": task_cls.model_family(family.name)})


def load_run_config(source: str | Path | dict, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe (or a mapping), apply `--set key=value` overrides, validate everything."""
    from . import TASKS

    if isinstance(source, dict):
        import copy

        data, where = copy.deepcopy(source), "config"
    else:
        data, where = load_yaml(Path(source)), str(source)
    try:
        for text in overrides:
            key_path, value = parse_override(text)
            set_path(data, key_path, value)
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise unknown_key_error(str(unknown[0]), list(TOP_KEYS), "the recipe")
        for key in ("task", "model", "train"):
            if key not in data:
                raise ConfigError(f"{key}: missing (a recipe has task, model, train, and usually data)")
        task = data["task"]
        if task not in TASKS:
            raise ConfigError(f"task: unknown task {task!r}; allowed: {', '.join(TASKS)}")
        task_cls = TASKS[task]
        train_raw = data["train"] if isinstance(data["train"], dict) else {}
        for key, why in task_cls.unused_train_keys.items():
            if key in train_raw:
                raise ConfigError(f"train.{key}: task {task!r} does not use it ({why}); remove it")
        init_from = data.get("init_from")
        if init_from is not None and not isinstance(init_from, str):
            raise ConfigError(f"init_from: expected a path or 'minilm', got {init_from!r}")
        run = RunConfig(task=task, model=_model_section(data.get("model"), task_cls, init_from),
                        train=from_dict(TrainConfig, data["train"], "train"),
                        data=from_dict(task_cls.DataConfig, data.get("data") or {}, "data"),
                        name=_name(data.get("name")), init_from=init_from,
                        finetune=from_dict(FinetuneConfig, data.get("finetune") or {}, "finetune"))
        task_cls.check(run)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return run


def _name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"name: {name!r} is not a plain folder name (no '/', no leading '.')")
    return name


def dump_run_config(run: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
