"""Tasks by name: each composes data, a model, a loss, metrics and predictions.

Imported lazily, so `archlab summary` or one task's run never pays for the others' imports."""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from .base import Task

_REGISTRY = {
    "image_classification": "image_classification:ImageClassification",
    "translation": "translation:Translation",
    "language_modeling": "language_modeling:LanguageModeling",
    "masked_lm": "language_modeling:MaskedLanguageModeling",
    "text_classification": "text_classification:TextClassification",
}


class _Tasks(Mapping):
    def __getitem__(self, name: str) -> type[Task]:
        module, cls = _REGISTRY[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)

    def __iter__(self):
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


TASKS: Mapping[str, type[Task]] = _Tasks()

__all__ = ["TASKS", "Task"]
