"""A study end to end: plan the jobs, tune each variant's learning rate (phase 1), train every variant x size x
budget x seed at its tuned lr (phase 2), then aggregate the result files into tables, tests, fits, plots and
report.md. Everything is read back from runs/<key>/result.json, so an interrupted study resumes where it
stopped and a run finished on any executor counts."""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ArchlabError
from . import plots, stats
from .executors import InProcess
from .jobs import finished, job_dir, write_json
from .plan import Planner, Point
from .progress import StudyProgress
from .report import budget_title, mean_ci, versus, write_report
from .spec import Spec


class RunsFailed(ArchlabError):
    """Some runs of a study failed; the finished ones are kept, aggregated and reported."""


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _json_safe(x: Any) -> Any:
    """nan and inf as null: compare.json stays strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


class Study:
    def __init__(self, spec: Spec, out: Path, metric: str, mode: str, executor, console: Console):
        self.spec, self.out, self.metric, self.mode = spec, out, metric, mode
        self.executor, self.console = executor, console
        self.progress = StudyProgress(console)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.reserved = (0, 0.0)  # runs and work of a later phase, counted in the total before it is planned

    # --- running ---------------------------------------------------------------------------------
    def run(self, jobs: list[dict[str, Any]], tag: str, reserve: tuple[int, float] = (0, 0.0)) -> None:
        new = []
        for job in jobs:
            if job["key"] not in self.jobs:  # shared with an earlier phase: trained once
                self.jobs[job["key"]] = job
                self.tags[job["key"]] = tag
                new.append(job)
        runs, work = self.reserved
        self.progress.add(len(new) - runs + reserve[0], sum(j["work"] for j in new) - work + reserve[1])
        self.reserved = reserve
        todo = []
        for job in new:
            done = finished(job)
            if done is not None:
                self.results[job["key"]] = done
                self.progress.finished(job["work"], timed=False)
            else:
                todo.append(job)
        self.executor.map(todo, self._done)

    def _done(self, result: dict[str, Any]) -> None:
        job = self.jobs[result["key"]]
        self.results[job["key"]] = result
        folder = job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)  # the worker may have written on another machine's disk
        if not (folder / "job.json").exists():
            write_json(folder / "job.json", job)
        write_json(folder / "result.json", result)
        self.progress.finished(job["work"], self.line(job, result))

    def line(self, job: dict[str, Any], result: dict[str, Any]) -> str:
        where = budget_title(job["budget_kind"], job["budget"] * job["fraction"] if job["budget"] else None)
        head = escape(f"{self.tags[job['key']]:<5} {job['variant']}{' [' + job['size'] + ']' if job['size'] else ''}"
                      f" · seed {job['seed']} · {where} · lr {job['lr']:.3g}: ")
        if result["status"] != "ok":
            return head + f"[red]{result['status']}[/red] {escape(result.get('error', ''))}"
        return head + escape(f"{self.metric} {result.get(self.metric, math.nan):.4f}, {result.get('steps', 0)} steps, "
                              f"{result.get('train_seconds', 0.0):.1f} s")

    def value(self, job: dict[str, Any] | None) -> float:
        """The run's metric at the end of its schedule; nan when it diverged, failed or is missing."""
        r = self.results.get(job["key"]) if job else None
        v = r.get(self.metric) if r and r.get("status") == "ok" else None
        return float(v) if _finite(v) else math.nan

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    # --- phase 1: learning rates -----------------------------------------------------------------
    def tune(self, planner: Planner, points: list[Point], budgets: list[float | None]) -> tuple[dict, list, list]:
        """(chosen lr factor per (point, budget), the sweeps, warnings)."""
        t = self.spec.tune
        sweeps = {(p.label, b): [planner.job(p, 0, b, f, t.fraction) for f in t.factors()]
                  for p in points for b in budgets}
        # the comparison's runs, reserved in the progress total now; the seed-0 run at the chosen lr is shared
        shared = 1 if t.fraction == 1 else 0
        later = [planner.job(p, 0, b) for p in points for b in budgets]
        reserve = (len(later) * (self.spec.seeds - shared), sum(j["work"] for j in later) * (self.spec.seeds - shared))
        self.run([j for jobs in sweeps.values() for j in jobs], "tune", reserve)
        chosen, records, warnings = {}, [], []
        for (label, budget), jobs in sweeps.items():
            values = [self.value(j) for j in jobs]
            best = None
            for i, v in enumerate(values):
                if math.isfinite(v) and (best is None or self.better(v, values[best])):
                    best = i
            note = ""
            if best is None:
                note = "no learning rate of the sweep trained: the variant is left out at this budget"
                warnings.append(f"{label} at {budget_title(self.spec.budget_kind, budget)}: {note}")
            elif best in (0, len(jobs) - 1):
                edge = "lowest" if best == 0 else "highest"
                note = f"best at the {edge} lr of the sweep: the optimum may lie beyond it"
                warnings.append(f"{label} at {budget_title(self.spec.budget_kind, budget)}: the best learning rate "
                                f"{jobs[best]['lr']:.3g} is the {edge} of the sweep; the optimum may lie beyond it "
                                f"(widen tune.lr.span)")
            if best is not None:
                chosen[(label, budget)] = jobs[best]["lr_factor"]
            statuses = [self.results.get(j["key"], {}).get("status", "missing") for j in jobs]
            records.append({"label": label, "budget": budget, "lrs": [j["lr"] for j in jobs], "values": values,
                            "statuses": statuses, "chosen": jobs[best]["lr"] if best is not None else None,
                            "note": note, "keys": [j["key"] for j in jobs]})
        for w in warnings:
            self.console.print(f"[yellow]warning:[/yellow] {escape(w)}")
        return chosen, records, warnings


def _mean_of(results: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in results if _finite(r.get(key))]
    return statistics.fmean(vals) if vals else math.nan


def compare(spec: Spec, out: Path, quiet: bool = False, executor=None) -> dict[str, Any]:
    """Run the study `spec` into folder `out` and write compare.json, report.md and the plots. Raises
    RunsFailed at the end (after writing everything) when a run failed."""
    spec.validate()
    executor = executor or InProcess()
    console = Console(quiet=quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = spec.variants[0].run.get("train", {})
    metric = spec.metric or first.get("metric", "val_loss")
    mode = spec.metric_mode or first.get("metric_mode", "min")
    t0 = time.time()
    planner = Planner(spec, out, metric)
    points = planner.points()
    budgets: list[float | None] = list(spec.budgets) or [None]
    study = Study(spec, out, metric, mode, executor, console)
    console.print(f"compare {escape(spec.name)}: {len(spec.variants)} variants"
                  f"{f' x {len(spec.isoflop.values)} sizes' if spec.isoflop else ''} x {len(budgets)} budget(s) x "
                  f"{spec.seeds} seeds{', tuned learning rates' if spec.tune else ''}; runs: {executor.name}")
    try:
        chosen, sweeps, warnings = study.tune(planner, points, budgets) if spec.tune else ({}, [], [])
        cells: dict[tuple[str, float | None], list[dict[str, Any] | None]] = {}
        final, failed = [], []
        for p in points:
            for b in budgets:
                if spec.tune and (p.label, b) not in chosen:
                    cells[(p.label, b)] = [None] * spec.seeds
                    failed.append({"run": f"{p.label} at {budget_title(spec.budget_kind, b)}", "key": "-",
                                   "error": "no learning rate of the sweep trained"})
                    continue
                jobs = [planner.job(p, s, b, chosen.get((p.label, b), 1.0)) for s in range(spec.seeds)]
                cells[(p.label, b)] = jobs
                final += jobs
        study.run(final, "run")
    finally:
        study.progress.close()
    summary = aggregate(study, points, budgets, cells, sweeps, warnings, failed)
    summary["executor"] = executor.name
    summary["wall_seconds"] = time.time() - t0
    write_report(out, summary)
    (out / "compare.json").write_text(json.dumps(_json_safe(summary), indent=1))
    show(console, summary, out)
    if summary["failed"]:
        names = "; ".join(f"{f['run']}: {f['error']}" for f in summary["failed"][:3])
        more = f" (and {len(summary['failed']) - 3} more)" if len(summary["failed"]) > 3 else ""
        raise RunsFailed(f"{len(summary['failed'])} run(s) failed: {names}{more}; the finished runs are in {out}/"
                         f"report.md, and running the same command again retries the failed ones")
    return summary


def aggregate(study: Study, points: list[Point], budgets: list, cells: dict, sweeps: list, warnings: list,
              failed: list) -> dict[str, Any]:
    spec, metric, mode = study.spec, study.metric, study.mode
    for key, job in study.jobs.items():
        r = study.results.get(key, {})
        if r.get("status") == "failed":
            failed.append({"run": f"{job['variant']}{' [' + job['size'] + ']' if job['size'] else ''} seed "
                                  f"{job['seed']} {budget_title(job['budget_kind'], job['budget'])} lr {job['lr']:.3g}",
                           "key": key, "error": r.get("error", "")})
    rows = []
    for b in budgets:
        rows_b = [_row(study, [p for p in points if p.variant == v.name], b, cells) for v in spec.variants]
        base = next(r for r in rows_b if r["variant"] == spec.baseline_name)
        for r in rows_b:
            if r is base:
                r["verdict"] = "baseline"
                continue
            pairs = [(x, y) for x, y in zip(r["values"], base["values"]) if math.isfinite(x) and math.isfinite(y)]
            r["pair"] = stats.paired_test([x for x, _ in pairs], [y for _, y in pairs]) if pairs else None
        tested = [r for r in rows_b if r.get("pair")]
        for r, p in zip(tested, stats.holm([r["pair"]["p"] for r in tested])):
            r["pair"]["p_holm"] = p
        for r in rows_b:
            if r is not base:
                r["verdict"] = _verdict(r.get("pair"), mode)
        rows += rows_b
    main = [r for r in rows if r["budget"] == budgets[-1]]
    summary: dict[str, Any] = {
        "spec": spec.name, "metric": metric, "metric_mode": mode, "budget_kind": spec.budget_kind,
        "budgets": spec.budgets, "seeds": spec.seeds, "baseline": spec.baseline_name,
        "tune": vars(spec.tune) if spec.tune else None,
        "isoflop": {"key": spec.isoflop.key, "values": spec.isoflop.values} if spec.isoflop else None,
        "variants": main, "rows": rows, "sweeps": sweeps, "warnings": warnings, "plots": {},
        "scaling": {}, "scaling_target": metric, "isoflop_fits": {}, "failed": failed,
        "results": [_record(study, job) for job in study.jobs.values()]}
    out = study.out
    curves = _learning_curves(study, rows, cells, points)
    if curves:
        path = plots.plot_learning_curves(curves, metric, out / "metric_vs_flops.png")
        summary["plots"]["learning_curves"] = path.name
    if sweeps:
        summary["plots"]["lr_sweeps"] = plots.plot_lr_sweeps(sweeps, metric, out / "lr_sweeps.png").name
    if len(budgets) >= 3:
        _scaling(summary, rows, spec, mode)
        if summary["scaling"]:
            series = summary.pop("_series")
            summary["plots"]["scaling"] = plots.plot_scaling(series, summary["scaling"], summary["scaling_target"],
                                                             out / "scaling.png").name
    if spec.isoflop:
        _isoflop(summary, study, points, budgets, cells)
        if summary["isoflop_fits"]:
            curves = {name: v["budgets"] for name, v in summary["isoflop_fits"].items()}
            summary["plots"]["isoflop"] = plots.plot_isoflop(curves, metric, out / "isoflop.png").name
    summary.pop("_series", None)
    if failed:
        summary["warnings"].append(f"{len(failed)} run(s) failed: see Failed runs")
    return summary


def _row(study: Study, sizes: list[Point], budget, cells: dict) -> dict[str, Any]:
    """A variant at one budget: over its sizes (IsoFLOP), the one with the best mean."""
    best = None
    for p in sizes:
        values = [study.value(j) for j in cells[(p.label, budget)]]
        finite = [v for v in values if math.isfinite(v)]
        mean = statistics.fmean(finite) if finite else math.nan
        if best is None or (math.isfinite(mean) and (not math.isfinite(best[2]) or study.better(mean, best[2]))):
            best = (p, values, mean)
    p, values, _ = best
    jobs = cells[(p.label, budget)]
    results = [study.results.get(j["key"], {}) for j in jobs if j]
    ok = [r for r in results if r.get("status") == "ok"]
    mean, half = stats.t_interval([v for v in values if math.isfinite(v)])
    row = {"variant": p.variant, "size": p.size, "label": p.label, "budget": budget, "values": values,
           "n": sum(math.isfinite(v) for v in values), "mean": mean, "half": half,
           "diverged": sum(r.get("status") == "diverged" for r in results),
           "failed": sum(r.get("status") == "failed" for r in results) + sum(j is None for j in jobs),
           "lr": jobs[0]["lr"] if jobs[0] else math.nan, "parameters": p.cost.parameters,
           "non_embedding_parameters": p.cost.non_embedding, "active_parameters": p.cost.active,
           "train_flops": _mean_of([{"f": r["steps"] * p.cost.flops_per_step} for r in ok if "steps" in r], "f"),
           "steps": _mean_of(ok, "steps"), "train_seconds": _mean_of(ok, "train_seconds"),
           "throughput": _mean_of(ok, "throughput"), "unit": ok[0].get("throughput_unit", "") if ok else "",
           "keys": [j["key"] if j else None for j in jobs], "pair": None}
    ext = [r["extrapolation"] for r in ok if r.get("extrapolation")]
    if ext:
        row["extrapolation"] = {f: _mean_of([e.get(f, {}) for e in ext], "loss") for f in ext[0]}
    return row


def _verdict(pair: dict | None, mode: str) -> str:
    if pair is None:
        return "no paired runs"
    if not math.isfinite(pair["p"]):
        return "one seed: no test"
    if pair.get("p_holm", pair["p"]) >= 0.05:  # Holm: every variant is tested against the one baseline
        return "not distinguishable at this budget"
    return "better" if (pair["diff"] < 0) == (mode == "min") else "worse"


def _record(study: Study, job: dict[str, Any]) -> dict[str, Any]:
    r = study.results.get(job["key"], {})
    keep = {k: v for k, v in r.items() if k not in ("curve", "traceback", "key")}
    steps = r.get("steps")
    return {"variant": job["variant"], "size": job["size"], "seed": job["seed"], "budget": job["budget"],
            "fraction": job["fraction"], "lr": job["lr"], "phase": study.tags[job["key"]], "key": job["key"],
            "run_dir": str(job_dir(job)), "flops_per_step": job["flops_per_step"], "parameters": job["parameters"],
            "train_flops": steps * job["flops_per_step"] if _finite(steps) else None, **keep}


def _learning_curves(study: Study, rows: list, cells: dict, points: list[Point]) -> dict:
    """curves[variant][budget] = one {flops: value} per finished seed, at the row's size."""
    curves: dict[str, dict] = {}
    fps = {p.label: p.cost.flops_per_step for p in points}
    for r in rows:
        seeds = []
        for j in cells[(r["label"], r["budget"])]:
            res = study.results.get(j["key"], {}) if j else {}
            if res.get("status") == "ok" and res.get("curve"):
                seeds.append({step * fps[r["label"]]: v for step, v in res["curve"]})
        if seeds:
            curves.setdefault(r["variant"], {})[r["budget"]] = seeds
    return curves


def _scaling(summary: dict, rows: list, spec: Spec, mode: str) -> None:
    """Fit each variant's loss against compute over the budgets; a higher-is-better metric in [0, 1] (an
    accuracy) is fitted as its error 1 - metric."""
    metric = summary["metric"]
    flip = mode == "max"
    if flip:
        summary["scaling_target"] = f"1 - {metric}"
    series = {}
    for v in spec.variants:
        rs = sorted((r for r in rows if r["variant"] == v.name), key=lambda r: r["budget"])
        if any(r["n"] == 0 for r in rs):
            summary["warnings"].append(f"{v.name}: no scaling fit (a budget has no finished run)")
            continue
        per_seed = [[(1 - x) if flip else x for x in r["values"]] for r in rs]
        if flip and any(math.isfinite(x) and not 0 <= x <= 1 for s in per_seed for x in s):
            summary["warnings"].append(f"{v.name}: no scaling fit ({metric} is not a loss nor an accuracy)")
            continue
        means = [statistics.fmean(x for x in s if math.isfinite(x)) for s in per_seed]
        halves = [stats.t_interval([x for x in s if math.isfinite(x)])[1] for s in per_seed]
        fit = stats.fit_scaling([r["train_flops"] for r in rs], means, per_seed)
        if fit["kind"] != "power":
            summary["warnings"].append(f"{v.name}: the power law with an offset did not converge ({fit['reason']}); "
                                       f"fitted log-linear instead")
        summary["scaling"][v.name] = fit
        series[v.name] = {"flops": [r["train_flops"] for r in rs], "mean": means, "half": halves,
                          "seconds": [r["train_seconds"] for r in rs]}
    summary["_series"] = series


def _isoflop(summary: dict, study: Study, points: list[Point], budgets: list, cells: dict) -> None:
    for v in study.spec.variants:
        sizes = [p for p in points if p.variant == v.name]
        per_budget = []
        for b in budgets:
            measured = []
            for p in sizes:
                values = [x for x in (study.value(j) for j in cells[(p.label, b)]) if math.isfinite(x)]
                if values:
                    flops = _mean_of([study.results.get(j["key"], {}) for j in cells[(p.label, b)] if j], "steps")
                    measured.append((p.cost.non_embedding, statistics.fmean(values), flops * p.cost.flops_per_step))
            if len(measured) < 3:
                summary["warnings"].append(f"{v.name} at {budget_title(study.spec.budget_kind, b)}: fewer than 3 sizes "
                                           f"finished, no IsoFLOP parabola")
                continue
            measured.sort()
            fit = stats.fit_parabola([m[0] for m in measured], [m[1] for m in measured])
            per_budget.append({"budget": b if b is not None else statistics.fmean(m[2] for m in measured),
                               "params": [m[0] for m in measured], "mean": [m[1] for m in measured], "fit": fit})
        if per_budget:
            opt = [(b["budget"], b["fit"]["optimum"]) for b in per_budget if b["fit"].get("optimum")]
            exponent = stats.optimal_size_exponent([o[0] for o in opt], [o[1] for o in opt]) if len(opt) >= 2 else None
            summary["isoflop_fits"][v.name] = {"budgets": per_budget, "exponent": exponent}


def show(console: Console, s: dict[str, Any], out: Path) -> None:
    budget = s["budgets"][-1] if s["budgets"] else None
    table = Table(title=escape(f"compare {s['spec']}: {s['metric']} at {budget_title(s['budget_kind'], budget)}"))
    for col in ("variant", "mean ± 95% CI", "Δ vs baseline", "p", "verdict", "lr", "parameters", "train s"):
        table.add_column(col)
    for r in s["variants"]:
        diff, p, _ = versus(r)
        table.add_row(escape(r["label"]), mean_ci(r), diff, p, r["verdict"], f"{r['lr']:.3g}", f"{r['parameters']:,}",
                      f"{r['train_seconds']:.1f}")
    console.print(table)
    for name, f in s["scaling"].items():
        console.print(escape(f"scaling {name}: {s['scaling_target']} = {f['a']:.3g}·C^-{f['b']:.3f} + {f['c']:.3f} "
                             f"(b ± {f['b_std']:.3f}, {f['kind']})"))
    console.print(f"comparison folder: {escape(str(out))}")
