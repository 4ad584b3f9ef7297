"""report.md of a study, from its summary (what compare.json holds): one table per budget with means,
95% intervals and paired tests against the baseline, the learning-rate sweeps, the scaling fits, the
IsoFLOP optima, length extrapolation and the runs that failed."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def mean_ci(row: dict[str, Any]) -> str:
    if row["n"] == 0:
        return "no finished run"
    if not math.isfinite(row["half"]):
        return f"{fmt(row['mean'])} (1 seed)"
    return f"{fmt(row['mean'])} ± {fmt(row['half'])}"


def versus(row: dict[str, Any]) -> tuple[str, str, str]:
    pair = row.get("pair")
    if pair is None:
        return "", "", ""
    if not math.isfinite(pair["half"]):
        return f"{pair['diff']:+.4f}" if math.isfinite(pair["diff"]) else "n/a", "n/a", "n/a"
    return (f"{pair['diff']:+.4f} ± {pair['half']:.4f}", f"{pair['p']:.3g}",
            f"{pair['p_holm']:.3g}" if math.isfinite(pair.get("p_holm", math.nan)) else "n/a")


def budget_title(kind: str | None, budget: float | None) -> str:
    return f"{kind} {budget:g}" if budget is not None else "the recipes' own length"


def results_table(rows: list[dict[str, Any]], metric: str, sizes: bool) -> list[str]:
    size_col = " size |" if sizes else ""
    lines = [f"| variant | {metric} (mean ± 95% CI) | Δ vs baseline (± 95% CI) | p (paired t) | p (Holm) | verdict "
             f"| lr |{size_col} parameters | non-embedding | active | training FLOPs | steps | train s | throughput |",
             "|---|---|---|---|---|---|---|" + ("---|" if sizes else "") + "---|---|---|---|---|---|---|"]
    for r in rows:
        diff, p, p_holm = versus(r)
        note = "".join(f", {r[k]} {k}" for k in ("diverged", "failed") if r.get(k))
        size = f" {r['size'] or ''} |" if sizes else ""
        lines.append(f"| {r['variant']} | {mean_ci(r)}{note} | {diff} | {p} | {p_holm} | {r['verdict']} | "
                     f"{r['lr']:.3g} |{size} {r['parameters']:,} | {r['non_embedding_parameters']:,} | "
                     f"{r['active_parameters']:,} | {r['train_flops']:.3g} | {r['steps']:.0f} | "
                     f"{r['train_seconds']:.1f} | {r['throughput']:,.0f} {r['unit']} |")
    return lines


def write_report(out: Path, s: dict[str, Any]) -> Path:
    metric, kind = s["metric"], s["budget_kind"]
    better = "lower" if s["metric_mode"] == "min" else "higher"
    budgets = s["budgets"] or [None]
    lr_text = (f"tuned per variant and budget: {s['tune']['points']} learning rates spanning {s['tune']['span']:g}× "
               f"around the recipe's, each at {s['tune']['fraction']:.0%} of the budget with seed 0, the best by "
               f"{metric} kept" if s["tune"] else "the recipes' own")
    lines = [f"# Comparison: {s['spec']}", "",
             f"{len(s['variants'])} variants × {s['seeds']} seeds × {len(budgets)} budget(s) "
             f"({', '.join(budget_title(kind, b) for b in budgets)}); metric `{metric}` ({better} is better), "
             f"measured at the end of each run's own schedule. Learning rates: {lr_text}. "
             f"Baseline: **{s['baseline']}**. Runs: {s['executor']}.", ""]
    main = [r for r in s["variants"] if r["n"]]
    if main:
        pick = min if s["metric_mode"] == "min" else max
        best = pick(main, key=lambda r: r["mean"])
        lines += [f"Best at {budget_title(kind, budgets[-1])}: **{best['variant']}**.", ""]
    for w in s["warnings"]:
        lines.append(f"> ⚠ {w}")
    if s["warnings"]:
        lines.append("")
    for budget in reversed(budgets):
        rows = [r for r in s["rows"] if r["budget"] == budget]
        table = results_table(rows, metric, bool(s["isoflop"]))
        lines += [f"## Results at {budget_title(kind, budget)}", "", *table, ""]
    if "learning_curves" in s["plots"]:
        lines += [f"![{metric} during training]({s['plots']['learning_curves']})", ""]
    if s["sweeps"]:
        lines += ["## Learning-rate sweeps", "", f"![loss against learning rate]({s['plots']['lr_sweeps']})", "",
                  f"| variant | budget | {metric} at each lr (seed 0) | chosen lr | note |", "|---|---|---|---|---|"]
        for w in s["sweeps"]:
            tried = ", ".join(f"{lr:.3g}: {fmt(v, 3) if math.isfinite(v) else st}"
                              for lr, v, st in zip(w["lrs"], w["values"], w["statuses"]))
            chosen = f"{w['chosen']:.3g}" if w["chosen"] is not None else "none trained"
            lines.append(f"| {w['label']} | {budget_title(kind, w['budget'])} | {tried} | {chosen} | {w['note']} |")
        lines.append("")
    if s["scaling"]:
        lines += ["## Scaling", "", f"![{s['scaling_target']} against compute]({s['plots']['scaling']})", "",
                  f"`{s['scaling_target']}` = a·C^−b + c over the budgets (C = training FLOPs), from the mean over "
                  "seeds at each budget; ± is one standard deviation of the parameter.", "",
                  "| variant | fit | b (exponent) | c (floor) | a | at 10× the largest budget | uncertainty from |",
                  "|---|---|---|---|---|---|---|"]
        for name, f in s["scaling"].items():
            kind_text = ("a·C^−b + c" if f["kind"] == "power"
                         else f"log-linear a·C^−b (the offset fit failed: {f['reason']})")
            lines.append(f"| {name} | {kind_text} | {f['b']:.3f} ± {fmt(f['b_std'], 3)} | {f['c']:.3f} ± "
                         f"{fmt(f['c_std'], 3)} | {f['a']:.3g} | {f['predict_10x']:.4f} | {f['std_source'] or 'n/a'} |")
        lines.append("")
        fewest = min(len(f["flops"]) for f in s["scaling"].values())
        if fewest <= 3:  # as many means as parameters: the curve is interpolated, not tested
            lines += [f"> With {fewest} budgets the three-parameter law passes through (or next to) every mean: the "
                      "data do not test its form, the ± is the seeds' noise only, and the 10× column is an "
                      "extrapolation nothing here checks. Read b and c as a description of these budgets, not a "
                      "forecast of which structure wins at larger ones; more budgets (`--budgets-flops`) test it.", ""]
    if s["isoflop"]:
        lines += ["## IsoFLOP: the compute-optimal size", "", f"![IsoFLOP parabolas]({s['plots']['isoflop']})", "",
                  f"Within each budget every variant is trained at {s['isoflop']['key']} = "
                  f"{', '.join(map(str, s['isoflop']['values']))}; a parabola of {metric} against log10(non-embedding "
                  "parameters) gives the optimal size.", "",
                  "| variant | budget | non-embedding parameters: metric | optimal size | note |",
                  "|---|---|---|---|---|"]
        for name, per_budget in s["isoflop_fits"].items():
            for b in per_budget["budgets"]:
                tried = ", ".join(f"{p:,}: {fmt(m, 3)}" for p, m in zip(b["params"], b["mean"]))
                opt = f"{b['fit']['optimum']:,.0f}" if b["fit"].get("optimum") else "n/a"
                lines.append(f"| {name} | {b['budget']:g} | {tried} | {opt} | {b['fit']['note']} |")
            if per_budget["exponent"] is not None:
                lines.append(f"| {name} | all | N_opt ∝ C^a | a = {per_budget['exponent']:.2f} | |")
        lines.append("")
    ext_rows = [r for r in s["variants"] if r.get("extrapolation")]
    if ext_rows:
        factors = list(ext_rows[0]["extrapolation"])
        lines += ["## Length extrapolation (validation loss at multiples of the training context)", "",
                  "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
        for r in s["variants"]:
            ext = r.get("extrapolation") or {}
            lines.append(f"| {r['variant']} | " + " | ".join(fmt(ext.get(f), 3) for f in factors) + " |")
        lines += ["", "n/a: the variant cannot run at that length (learned positions have no embedding past "
                  "their table). A loss that grows with length means the structure does not extrapolate."]
    if s["failed"]:
        lines += ["", "## Failed runs", "", "| run | error | folder |", "|---|---|---|"]
        for f in s["failed"]:
            lines.append(f"| {f['run']} | {f['error']} | runs/{f['key']} |")
    lines += ["", "## How to read this", "",
              "- mean ± the 95% t-interval over seeds. Seed k of every variant starts from the same seed and sees the "
              "same data in the same order, so differences to the baseline are paired by seed: Δ is the mean paired "
              "difference ± its 95% t-interval, p the paired t-test's, p (Holm) the same corrected for testing every "
              "variant against one baseline. The verdict follows p (Holm): **not distinguishable at this budget** "
              "where it is ≥ 0.05. With 2 seeds a paired t-test has one degree of freedom: only large, steady "
              "differences pass it.",
              "- A run that diverged counts as no result (its seed is left out of the pairs); the table says how many.",
              "- Non-embedding parameters leave out token and position embeddings; active parameters count only the "
              "experts a token is routed to. Training FLOPs are analytic; train seconds and throughput are this "
              "machine's (runs side by side share it)."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
