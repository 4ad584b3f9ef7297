"""Tasks by name: each composes data, a model, a loss, metrics and predictions."""
from __future__ import annotations

from .base import Task
from .image_classification import ImageClassification

TASKS: dict[str, type[Task]] = {t.name: t for t in (ImageClassification,)}

__all__ = ["TASKS", "Task"]
