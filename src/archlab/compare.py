"""The structure lab: train variants of a recipe under the same compute budget, several seeds each,
and compare them with error bars (`archlab compare`).

Budgets are comparable across architectures because FLOPs are counted analytically from each
variant's config (models/flops.py): a FLOP budget becomes a step count per variant. A comparison
folder holds one run folder per (variant, seed); an interrupted compare resumes where it stopped.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import load_yaml, loads_yaml, parse_override, set_path
from .errors import ConfigError

if TYPE_CHECKING:
    from .tasks.run import RunConfig


@dataclass
class Variant:
    name: str
    run: dict[str, Any]  # a complete run config (plain data)


@dataclass
class Spec:
    name: str
    variants: list[Variant]
    seeds: int = 3
    budget: dict[str, float] = field(default_factory=dict)  # one of flops / seconds / steps
    metric: str | None = None  # default: the base recipe's train.metric
    metric_mode: str | None = None
    extrapolation: list[int] = field(default_factory=list)  # context multiples for language models


def _apply(run: dict, overrides: dict[str, Any]) -> dict:
    run = copy.deepcopy(run)
    for key, value in overrides.items():
        set_path(run, key.split("."), value)
    return run


def _factor_from_vary(text: str) -> tuple[str, dict[str, dict]]:
    """--vary model.position=rope,alibi -> ("model.position", {"rope": {...}, "alibi": {...}})."""
    if "=" not in text:
        raise ConfigError(f"--vary expects key=v1,v2,..., got {text!r}")
    key, raw = text.split("=", 1)
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise ConfigError(f"--vary {key}: no values given")
    return key.strip(), {v: {key.strip(): loads_yaml(v, f"--vary {key.strip()}")} for v in values}


def build_spec(configs: list[str], vary: list[str] | None = None, sets: list[str] | None = None) -> Spec:
    """From comparison specs (a mapping with `base` or `recipes`) and/or plain recipes (one variant each)."""
    variants_base: list[Variant] = []
    factors: dict[str, dict[str, dict]] = {}
    spec_fields: dict[str, Any] = {}
    names = []
    for c in configs:
        path = Path(c)
        data = load_yaml(path)
        if "base" in data or "recipes" in data:
            allowed = {"name", "base", "recipes", "set", "factors", "seeds", "budget", "metric", "metric_mode",
                       "extrapolation"}
            unknown = set(data) - allowed
            if unknown:
                from .config import unknown_key_error
                raise unknown_key_error(sorted(unknown)[0], sorted(allowed), str(path))
            recipes = [data["base"]] if "base" in data else list(data["recipes"])
            for r in recipes:
                rp = (path.parent / r).resolve()
                run = _apply(load_yaml(rp), data.get("set", {}))
                variants_base.append(Variant(rp.stem if len(recipes) > 1 else "", run))
            for fname, levels in (data.get("factors") or {}).items():
                if not isinstance(levels, dict) or not levels:
                    raise ConfigError(f"{path}: factors.{fname} must map level names to overrides")
                factors[fname] = {str(k): dict(v or {}) for k, v in levels.items()}
            spec_fields.update({k: data[k] for k in ("seeds", "budget", "metric", "metric_mode", "extrapolation")
                                if k in data})
            names.append(data.get("name", path.stem))
        else:
            variants_base.append(Variant(path.stem, data))
            names.append(path.stem)
    if not variants_base:
        raise ConfigError("compare needs at least one recipe or comparison spec")
    for text in vary or []:
        key, levels = _factor_from_vary(text)
        factors[key] = levels
    overrides = {}
    for text in sets or []:
        p, v = parse_override(text)
        overrides[".".join(p)] = v
    variants = []
    for base in variants_base:
        for combo in itertools.product(*[list(levels.items()) for levels in factors.values()]) if factors else [()]:
            run = _apply(base.run, overrides)
            parts = [base.name] if base.name else []
            for level_name, level_overrides in combo:
                run = _apply(run, level_overrides)
                parts.append(level_name)
            variants.append(Variant(" / ".join(parts) or "base", run))
    if len({v.name for v in variants}) < len(variants):
        raise ConfigError("two variants have the same name; give the recipes or levels distinct names")
    if "budget" in spec_fields:
        budget = spec_fields["budget"]
        if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in ("flops", "seconds", "steps"):
            raise ConfigError(f"budget must be one of {{flops: F}}, {{seconds: S}}, {{steps: N}}; got {budget!r}")
        spec_fields["budget"] = {k: float(v) for k, v in budget.items()}  # YAML reads 2.0e12 as a string
    return Spec(name="-".join(names), variants=variants, **spec_fields)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace(" / ", "__"))


def step_cost(run_cfg) -> tuple[float, float, str, int]:
    """(training FLOPs per optimizer step, loss terms per step, unit, parameters), from the analytic count."""
    from .models.flops import model_cost
    from .tasks import TASKS

    task = TASKS[run_cfg.task](run_cfg)
    task.prepare()
    plan = task.epoch_plan(0, run_cfg.train.batch_size, run_cfg.train.seed)
    batch = task.collate(plan[0], torch.Generator().manual_seed(0), torch.device("cpu"))
    cfg = task.model_config()
    seq_len = batch["targets"].shape[-1] if batch["targets"].dim() > 1 else None
    cost = model_cost(cfg, seq_len)
    if cost.unit == "token":
        units = float(batch["targets"].numel())  # every position is computed, masked or not
    else:
        units = float(len(batch["targets"]))
    return cost.train_flops * units, units, cost.unit, cost.params


def extrapolation_losses(model, tokens: torch.Tensor, context: int, factors: list[int], windows: int = 16) -> dict:
    """Validation loss of a causal LM at f x its training context, per position group [0,T), [T,2T), [2T,4T)."""
    out = {}
    model.eval()
    for f in factors:
        L = f * context
        n = min(windows, (len(tokens) - 1) // L)
        if n < 1:
            continue
        x = tokens[: n * L].view(n, L)
        y = tokens[1: n * L + 1].view(n, L)
        try:
            with torch.no_grad():
                logits = model(x)
        except ValueError as e:  # learned positions: no embedding past the table
            out[f"{f}x"] = {"error": str(e).split(";")[0]}
            continue
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(n, L)
        groups, start, k = {}, 0, 1
        while start < L:
            end = min(L, context * k)
            groups[f"[{start},{end})"] = loss[:, start:end].mean().item()
            start, k = end, k * 2
        out[f"{f}x"] = {"loss": loss.mean().item(), "groups": groups}
    return out


def budgeted_config(variant: Variant, seed: int, spec: Spec) -> tuple[RunConfig, tuple[float, float, str, int]]:
    """The variant's run config for `seed` with the spec's budget turned into its own length, and its
    step cost (FLOPs per step, units per step, unit, parameters)."""
    from .tasks.run import load_run_config

    run = _apply(variant.run, {"train.seed": seed})
    budget = spec.budget
    length = {"train.epochs": None, "train.max_seconds": None}
    # a recipe may leave its length to the budget: cost it with a placeholder length
    cost = step_cost(load_run_config(_apply(run, {**length, "train.max_steps": 1})))
    if "flops" in budget:
        run = _apply(run, {**length, "train.max_steps": max(1, int(budget["flops"] // cost[0]))})
    elif "steps" in budget:
        run = _apply(run, {**length, "train.max_steps": int(budget["steps"])})
    elif "seconds" in budget:
        run = _apply(run, {"train.max_seconds": float(budget["seconds"])})
    return load_run_config(run), cost


def run_variant(variant: Variant, seed: int, spec: Spec, out: Path, quiet: bool) -> dict[str, Any]:
    from .runs import train_run

    run_dir = out / "runs" / _slug(variant.name) / f"seed{seed}"
    done = run_dir / "metrics.json"
    cfg, (flops_per_step, units, unit, params) = budgeted_config(variant, seed, spec)
    if not done.exists():
        train_run(cfg, run_dir, resume=(run_dir / "checkpoints").exists(), quiet=True)
    metrics = json.loads(done.read_text())
    result = {"variant": variant.name, "seed": seed, "run_dir": str(run_dir), "parameters": params,
              "flops_per_step": flops_per_step, "units_per_step": units, "unit": unit,
              "train_flops": flops_per_step * metrics["steps"], **{k: v for k, v in metrics.items()
                                                                   if isinstance(v, (int, float, str))}}
    if spec.extrapolation and cfg.task == "language_modeling":
        result["extrapolation"] = _extrapolate(run_dir, spec.extrapolation)
    return result


def _extrapolate(run_dir: Path, factors: list[int]) -> dict:
    from .runs import load_run

    task, model, _ = load_run(run_dir)
    task.prepare()
    tokens = task.validation_tokens()
    return extrapolation_losses(model, tokens, model.config.max_seq_len, factors)


def summarize(results: list[dict], metric: str) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["variant"] for r in results):
        rs = [r for r in results if r["variant"] == name]
        vals = [r[metric] for r in rs if isinstance(r.get(metric), (int, float))]
        row = {"variant": name, "seeds": len(rs), "metric_mean": statistics.fmean(vals) if vals else math.nan,
               "metric_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
               "parameters": rs[0]["parameters"], "train_flops": statistics.fmean(r["train_flops"] for r in rs),
               "steps": statistics.fmean(r["steps"] for r in rs),
               "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
               "throughput": statistics.fmean(r["throughput"] for r in rs), "unit": rs[0].get("throughput_unit", "")}
        if any("extrapolation" in r for r in rs):
            ext = {}
            for f in rs[0].get("extrapolation", {}):
                losses = [r["extrapolation"][f].get("loss") for r in rs if "loss" in r["extrapolation"].get(f, {})]
                ext[f] = statistics.fmean(losses) if losses else None
            row["extrapolation"] = ext
        rows.append(row)
    return rows


def plot_metric_vs_flops(results: list[dict], metric: str, path: Path) -> Path:
    from . import viz
    from .train.logging import read_metrics

    fig, ax = viz.plt.subplots(figsize=(7.5, 4.5))
    key = metric if metric.startswith("val_") else "val_" + metric.split("_", 1)[-1]
    colors = viz.plt.get_cmap("tab10").colors
    for i, name in enumerate(dict.fromkeys(r["variant"] for r in results)):
        curves = []
        for r in (r for r in results if r["variant"] == name):
            pts = {rec["step"]: rec[key] for rec in read_metrics(Path(r["run_dir"]))
                   if rec.get("split") == "valid" and key in rec}
            curves.append({s * r["flops_per_step"]: v for s, v in pts.items()})
        xs = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not xs:
            continue
        mean = [statistics.fmean(c[x] for c in curves) for x in xs]
        std = [statistics.stdev(c[x] for c in curves) if len(curves) > 1 else 0.0 for x in xs]
        # past ten variants the colours repeat: the line style tells them apart
        line, = ax.plot(xs, mean, marker="o", ls=("-", "--", ":")[i // 10 % 3], color=colors[i % 10], ms=3, label=name)
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training FLOPs (analytic)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{key.replace('_', ' ')} vs compute (mean ± std over seeds)")
    return viz.save_figure(fig, path)


def write_report(out: Path, spec: Spec, rows: list[dict], metric: str, mode: str, plot: Path | None) -> Path:
    best = (min if mode == "min" else max)(rows, key=lambda r: r["metric_mean"])
    lines = [f"# Comparison: {spec.name}", "",
             f"{len(rows)} variants × {spec.seeds} seeds, budget "
             f"{', '.join(f'{k} {v:g}' for k, v in spec.budget.items()) or 'as in the recipes'}; "
             f"metric `{metric}` ({'lower' if mode == 'min' else 'higher'} is better). "
             f"Best: **{best['variant']}**.", "",
             f"| variant | {metric} (mean ± std) | parameters | training FLOPs | steps | train s | throughput |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['metric_mean']:.4f} ± {r['metric_std']:.4f} | {r['parameters']:,} | "
                     f"{r['train_flops']:.3g} | {r['steps']:.0f} | {r['train_seconds']:.1f} | "
                     f"{r['throughput']:,.0f} {r['unit']} |")
    if any("extrapolation" in r for r in rows):
        factors = list(next(r for r in rows if "extrapolation" in r)["extrapolation"])
        lines += ["", "## Length extrapolation (validation loss at multiples of the training context)", "",
                  "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
        for r in rows:
            ext = r.get("extrapolation", {})
            lines.append(f"| {r['variant']} | " + " | ".join(
                f"{ext[f]:.3f}" if ext.get(f) is not None else "n/a" for f in factors) + " |")
        lines += ["", "n/a: the variant cannot run at that length (learned positions have no embedding past "
                  "their table). A loss that grows with length means the structure does not extrapolate."]
    if plot is not None:
        lines += ["", f"![metric vs FLOPs]({plot.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def compare(spec: Spec, out: Path, quiet: bool = False) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console(quiet=quiet)
    out.mkdir(parents=True, exist_ok=True)
    first = spec.variants[0].run.get("train", {})
    metric = spec.metric or first.get("metric", "val_loss")
    mode = spec.metric_mode or first.get("metric_mode", "min")
    results, t0 = [], time.time()
    total = len(spec.variants) * spec.seeds
    for i, (variant, seed) in enumerate(itertools.product(spec.variants, range(spec.seeds))):
        console.print(f"[{i + 1}/{total}] {variant.name}, seed {seed}")
        r = run_variant(variant, seed, spec, out, quiet)
        console.print(f"    {metric} {r.get(metric, float('nan')):.4f}, {r['steps']} steps, "
                      f"{r['train_seconds']:.1f} s")
        results.append(r)
        (out / "compare.json").write_text(json.dumps({"spec": spec.name, "metric": metric, "results": results}, indent=2))
    rows = summarize(results, metric)
    plot = plot_metric_vs_flops(results, metric, out / "metric_vs_flops.png")
    write_report(out, spec, rows, metric, mode, plot)
    summary = {"spec": spec.name, "metric": metric, "metric_mode": mode, "budget": spec.budget, "seeds": spec.seeds,
               "variants": rows, "results": results, "wall_seconds": time.time() - t0}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    table = Table(title=f"compare {spec.name}: {metric}")
    for col in ("variant", f"{metric} mean ± std", "parameters", "FLOPs", "train s"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["variant"], f"{r['metric_mean']:.4f} ± {r['metric_std']:.4f}", f"{r['parameters']:,}",
                      f"{r['train_flops']:.3g}", f"{r['train_seconds']:.1f}")
    console.print(table)
    console.print(f"comparison folder: {out}")
    return summary


def cli_compare(args) -> None:
    spec = build_spec(args.configs, args.vary, args.set)
    if args.budget_flops:
        spec.budget = {"flops": args.budget_flops}
    elif args.budget_seconds:
        spec.budget = {"seconds": args.budget_seconds}
    elif args.budget_steps:
        spec.budget = {"steps": args.budget_steps}
    if args.seeds:
        spec.seeds = args.seeds
    out = Path(args.out) if args.out else Path("runs") / f"compare-{_slug(spec.name)}"
    compare(spec, out, args.quiet)
