"""Plots (matplotlib, Agg backend: no display needed). Each function writes one PNG and returns its path."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# CJK glyphs for Chinese tokens in attention maps, when a font that has them is installed
plt.rcParams["font.sans-serif"] = ["DejaVu Sans", "Noto Sans CJK SC", "WenQuanYi Zen Hei", "AR PL UMing CN"]


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_training_curves(records: list[dict], plots: Path) -> list[Path]:
    """plots/loss.png (training loss, and every validation metric with 'loss' in its name) and plots/lr.png,
    from a run's metrics.jsonl records."""
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    if not train:
        return []
    out = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    for key in sorted({k for r in valid for k in r if "loss" in k}):
        pts = [(r["step"], r[key]) for r in valid if key in r]
        ax.plot(*zip(*pts), "o-", label=key.replace("_", " "), ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Loss")
    out.append(save_figure(fig, plots / "loss.png"))
    others = sorted({k for r in valid for k in r if k not in ("step", "epoch", "split") and "loss" not in k})
    if others:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in others:
            pts = [(r["step"], r[key]) for r in valid if key in r]
            ax.plot(*zip(*pts), "o-", label=key.replace("_", " "), ms=3)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Validation metrics")
        out.append(save_figure(fig, plots / "validation.png"))
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    ax.set_title("Learning-rate schedule")
    out.append(save_figure(fig, plots / "lr.png"))
    return out


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "Confusion matrix") -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n, 1 + 0.55 * n))
    norm = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_image_grid(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str], path: Path, title: str,
                    cols: int = 8, cmap: str = "gray", symmetric: bool = False) -> Path:
    """images: (N, H, W) or (N, 1, H, W), or a list of (H, W) panels of different sizes.
    symmetric: each panel's colour scale is centred on 0 (signed weights)."""
    images = [im.detach().float().cpu().reshape(im.shape[-2:]) for im in images]
    n = len(images)
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            limit = float(images[k].abs().max()) or 1.0
            ax.imshow(images[k].numpy(), cmap=cmap, **({"vmin": -limit, "vmax": limit} if symmetric else {}))
            ax.set_title(titles[k], fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_image_heatmaps(images: torch.Tensor, maps: torch.Tensor, titles: Sequence[str], path: Path,
                        title: str) -> Path:
    """Each image (N, H, W) above the same image overlaid with its heat map (N, h, w), stretched to the image."""
    images, maps = images.detach().float().cpu().reshape(len(images), *images.shape[-2:]), maps.detach().float().cpu()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n, 3.4), squeeze=False)
    for k in range(n):
        extent = (0, images.shape[-1], images.shape[-2], 0)
        axes[0, k].imshow(images[k].numpy(), cmap="gray", extent=extent)
        axes[0, k].set_title(titles[k], fontsize=7)
        axes[1, k].imshow(images[k].numpy(), cmap="gray", extent=extent)
        axes[1, k].imshow(maps[k].numpy(), cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
        axes[0, k].axis("off")
        axes[1, k].axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_attention(weights: torch.Tensor, query_tokens: Sequence[str], key_tokens: Sequence[str], path: Path,
                   title: str, max_heads: int = 8) -> Path:
    """weights: (H, Tq, Tk) one panel per head (or (Tq, Tk) for one averaged panel)."""
    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w[None]
    w = w[:max_heads]
    heads = w.size(0)
    cols = min(4, heads)
    rows = (heads + cols - 1) // cols
    cell = 0.28
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cols * max(2.5, cell * len(key_tokens) + 1), rows * max(2.5, cell * len(query_tokens) + 1)))
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(w[h].numpy(), cmap="viridis", vmin=0, aspect="auto")
        ax.set_xticks(range(len(key_tokens)), key_tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(query_tokens)), query_tokens, fontsize=7)
        ax.set_title(f"head {h}" if heads > 1 else "mean over heads", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
