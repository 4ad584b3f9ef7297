"""Checkpoint folders: config.json, model.safetensors, task assets (tokenizer.json, labels.json),
trainer_state/ for exact resume. Written atomically: a temporary folder, then renames.

Layout under a run's ``checkpoints/``: ``last`` (newest, with trainer state), ``step-N`` (older ones,
the last ``keep_last`` kept) and ``best`` (weights of the best evaluation). Nothing here unpickles
arbitrary objects: tensors come from safetensors, the trainer state from
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from ..errors import CheckpointError

MODEL_FILE, CONFIG_FILE, STATE_DIR = "model.safetensors", "config.json", "trainer_state"
TEMPORARY = (".tmp-*", ".trash-*")  # a save's folders until it is committed (left behind by a kill)


def write_model_folder(folder: Path, model: nn.Module, model_config: dict[str, Any],
                       save_assets: Callable[[Path], None] | None = None, extra_config: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({**model_config, **(extra_config or {})}, indent=2))
    # save_model drops the duplicate names of tied tensors (safetensors refuses shared memory);
    # load_model copies into the module, whose tied parameters stay one tensor
    save_model(model, str(folder / MODEL_FILE))
    if save_assets is not None:
        save_assets(folder)


def load_weights(model: nn.Module, folder: Path, strict: bool = True) -> None:
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from None
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path} does not fit this model: {e}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path} does not fit this model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's weights, from the safetensors header alone (nothing is loaded);
    a truncated or corrupt file is a CheckpointError."""
    path = Path(folder) / MODEL_FILE
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from None


# --- trainer state ------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_DIR / "state.pt")


def load_trainer_state(folder: Path, mmap: bool = False) -> dict[str, Any]:
    """The trainer state of a checkpoint (mmap: its tensors mapped, not read: a cheap check that it loads).
    Only tensors and plain values are accepted (weights_only): a file holding pickled objects is refused."""
    path = Path(folder) / STATE_DIR / "state.pt"
    if not path.exists():
        raise CheckpointError(f"{path} not found: the checkpoint has no trainer state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a class or function to import and call: code, not data
            raise CheckpointError(f"{path} refused: it contains code (pickled objects), which archlab never loads; "
                                  f"do not load it with weights_only=False") from None
        raise CheckpointError(f"{path} is corrupt or truncated: {_load_problem(e)}") from None
    except Exception as e:  # a truncated zip, a bad record, ...
        raise CheckpointError(f"{path} is corrupt or truncated: {_load_problem(e)}") from None


def _load_problem(e: Exception) -> str:
    """What torch.load found, without its advice (reloading with weights_only=False would run the file's code)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0].split(". ")[0] if lines else type(e).__name__)[:200]


# --- atomic folder swaps ------------------------------------------------------------------------

def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def commit_folder(tmp: Path, final: Path, keep_old_as: Path | None = None) -> None:
    """Put a fully written `tmp` at `final`; the old `final` is kept as `keep_old_as` or removed."""
    _fsync_tree(tmp)
    if final.exists():
        if keep_old_as is not None and not keep_old_as.exists():
            final.rename(keep_old_as)
        else:
            trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
    tmp.rename(final)


def save_checkpoint(root: Path, step: int, model: nn.Module, model_config: dict, trainer_state: dict | None,
                    save_assets: Callable[[Path], None] | None, keep_last: int, name: str = "last",
                    extra_config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_model_folder(tmp, model, model_config, save_assets, extra_config)
        if trainer_state is not None:
            save_trainer_state(tmp, {**trainer_state, "step": step})
        (tmp / "step.txt").write_text(str(step))
    except (OSError, RuntimeError) as e:  # disk full, quota, ... (torch.save reports a failed write as RuntimeError)
        shutil.rmtree(tmp, ignore_errors=True)
        why = getattr(e, "strerror", None) or _load_problem(e)
        raise CheckpointError(f"cannot write checkpoint {name!r} (step {step}) in {root}: {why}; the checkpoints "
                              f"already there are unchanged (free space, then train with --resume)") from None
    final = root / name
    keep = None
    if name == "last" and final.exists() and keep_last > 1:
        old_step = (final / "step.txt").read_text().strip() if (final / "step.txt").exists() else "0"
        keep = root / f"step-{int(old_step):07d}"
    commit_folder(tmp, final, keep)
    if name == "last":
        olds = step_folders(root)[::-1]
        for old in olds[: max(0, len(olds) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_temporaries(root: Path) -> list[str]:
    """Remove the temporary folders of saves that never finished (a kill mid-save); their names. Only
    called by the one trainer that holds the run folder's lock: no save of another process is under way."""
    stale = sorted(p for pattern in TEMPORARY for p in Path(root).glob(pattern))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return [p.name for p in stale]


def step_folders(root: Path) -> list[Path]:
    """The `step-N` folders, newest first."""
    return sorted((p for p in root.glob("step-*") if p.name[5:].isdigit()), key=lambda p: -int(p.name[5:]))


def resumable_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints with trainer state, newest first (`last`, then the kept `step-N`)."""
    return [c for c in [root / "last", *step_folders(root)]
            if (c / STATE_DIR / "state.pt").is_file() and (c / MODEL_FILE).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    candidates = resumable_checkpoints(root)
    return candidates[0] if candidates else None
