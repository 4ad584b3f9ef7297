"""The study's figures (matplotlib, Agg): learning curves against FLOPs, each variant's loss-vs-learning-rate
sweep, the scaling curves with their fits, and the IsoFLOP parabolas. Each writes one PNG."""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from .. import viz

STYLES = ("-", "--", ":")


def _style(i: int) -> dict[str, Any]:
    """Past ten variants the colours repeat: the line style tells them apart."""
    return {"color": viz.plt.get_cmap("tab10").colors[i % 10], "ls": STYLES[i // 10 % 3]}


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def _grid(n: int, width: float = 4.2, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = viz.plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_learning_curves(curves: dict[str, dict[float, list[dict[float, float]]]], metric: str, path: Path) -> Path:
    """curves[variant][budget] = one {flops: value} per seed; the mean over seeds, shaded ± std."""
    fig, ax = viz.plt.subplots(figsize=(7.5, 4.5))
    for i, (name, by_budget) in enumerate(curves.items()):
        for j, (_, seeds) in enumerate(sorted(by_budget.items())):
            xs = sorted(set.intersection(*[set(c) for c in seeds])) if seeds else []
            if not xs:
                continue
            mean = [statistics.fmean(c[x] for c in seeds) for x in xs]
            std = [statistics.stdev(c[x] for c in seeds) if len(seeds) > 1 else 0.0 for x in xs]
            line, = ax.plot(xs, mean, marker="o", ms=3, label=name if j == len(by_budget) - 1 else None, **_style(i))
            ax.fill_between(xs, np.subtract(mean, std), np.add(mean, std), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training FLOPs (analytic)")
    ax.set_ylabel(_label(metric))
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{_label(metric)} during training (mean ± std over seeds)")
    return viz.save_figure(fig, path)


def plot_lr_sweeps(sweeps: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """One panel per budget: each variant's end-of-schedule metric against the learning rate, the chosen lr
    starred; a run that diverged is an x at the top of the panel."""
    budgets = list(dict.fromkeys(s["budget"] for s in sweeps))
    fig, axes = _grid(len(budgets))
    labels = list(dict.fromkeys(s["label"] for s in sweeps))
    for ax, budget in zip(axes, budgets):
        finite = [v for s in sweeps if s["budget"] == budget for v in s["values"] if math.isfinite(v)]
        top = max(finite) if finite else 1.0
        for s in (s for s in sweeps if s["budget"] == budget):
            style = _style(labels.index(s["label"]))
            ok = [(lr, v) for lr, v in zip(s["lrs"], s["values"]) if math.isfinite(v)]
            if ok:
                ax.plot(*zip(*ok), marker="o", ms=4, label=s["label"], **style)
            bad = [lr for lr, v in zip(s["lrs"], s["values"]) if not math.isfinite(v)]
            if bad:
                ax.plot(bad, [top] * len(bad), "x", color=style["color"], ms=7)
            if s["chosen"] is not None:
                ax.plot([s["chosen"]], [s["values"][s["lrs"].index(s["chosen"])]], "*", ms=14, color=style["color"],
                        markeredgecolor="black")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a sweep under a decade labels every minor tick, overlapping
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(_label(metric))
        ax.set_title(f"budget {budget:g}" if budget is not None else "the recipes' length", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("learning-rate sweeps (★ chosen, x diverged)")
    fig.tight_layout()
    # beside the panels, not over them: a dozen variants would hide the curves
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return viz.save_figure(fig, path)


def plot_scaling(series: dict[str, dict[str, Any]], fits: dict[str, dict[str, Any]], metric: str, path: Path) -> Path:
    """Left: the metric against training FLOPs (log-log), mean ± 95% CI over seeds, with the fitted law.
    Right: the same runs against training seconds (wall-clock, this machine)."""
    fig, (ax, ax_t) = viz.plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (name, s) in enumerate(series.items()):
        style = _style(i)
        ax.errorbar(s["flops"], s["mean"], yerr=np.nan_to_num(s["half"]), fmt="o", capsize=3, color=style["color"])
        ax_t.errorbar(s["seconds"], s["mean"], yerr=np.nan_to_num(s["half"]), marker="o", capsize=3, label=name,
                      **style)
        fit = fits.get(name)
        if fit is not None:
            c = np.geomspace(min(s["flops"]), 10 * max(s["flops"]), 100)
            y = fit["a"] * c ** (-fit["b"]) + fit["c"]
            law = f"{fit['b']:.3f}" + (f" ± {fit['b_std']:.3f}" if math.isfinite(fit["b_std"]) else "")
            ax.plot(c, y, label=f"{name}: b = {law}", **style)
    for a in (ax, ax_t):
        a.set_xscale("log")
        a.set_ylabel(_label(metric))
        a.grid(alpha=0.3, which="both")
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # a loss of 1.4, not 1.4 x 10^0
        axis(ScalarFormatter())
    ax.set_xlabel("training FLOPs (analytic)")
    ax.set_title("sample efficiency: loss = a·C^-b + c", fontsize=10)
    ax_t.set_xlabel("training seconds")
    ax_t.xaxis.set_minor_formatter(NullFormatter())  # a span under a decade labels every minor tick, overlapping
    ax_t.set_title("wall-clock", fontsize=10)
    ax.legend(fontsize=7)
    ax_t.legend(fontsize=7)
    return viz.save_figure(fig, path)


def plot_isoflop(curves: dict[str, list[dict[str, Any]]], metric: str, path: Path) -> Path:
    """One panel per variant: the metric against non-embedding parameters at each budget, with the parabola
    in log(parameters) and its minimum."""
    fig, axes = _grid(len(curves))
    for ax, (name, per_budget) in zip(axes, curves.items()):
        for j, b in enumerate(per_budget):
            style = _style(j)
            ax.plot(b["params"], b["mean"], "o", color=style["color"], label=f"{b['budget']:g}")
            A, B, C = b["fit"]["coef"]
            x = np.linspace(np.log10(min(b["params"])) - 0.15, np.log10(max(b["params"])) + 0.15, 60)
            ax.plot(10 ** x, A * x ** 2 + B * x + C, **style)
            if b["fit"].get("optimum"):
                ax.plot([b["fit"]["optimum"]], [b["fit"]["loss_at_optimum"]], "*", ms=12, color=style["color"],
                        markeredgecolor="black")
        ax.set_xscale("log")
        ax.set_xlabel("non-embedding parameters")
        ax.set_ylabel(_label(metric))
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="budget")
    fig.suptitle("IsoFLOP: loss against model size at equal compute (★ the parabola's minimum)")
    fig.tight_layout()
    return viz.save_figure(fig, path)
