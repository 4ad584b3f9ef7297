"""Model families: each file of this package registers itself (models/registry.py); importing the
package imports them all, so adding a family is adding a file."""
from __future__ import annotations

import importlib
import pkgutil

from .registry import (
    FAMILIES,
    PRESETS,
    Family,
    FamilyConfig,
    build_model,
    build_skeleton,
    count_parameters,
    get_family,
    model_config,
    register_family,
    replace_config,
)

_NOT_FAMILIES = {"registry", "flops", "hf", "finetune"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "PRESETS", "Family", "FamilyConfig", "build_model", "build_skeleton", "count_parameters",
           "get_family", "model_config", "register_family", "replace_config"]
