"""report.md of a run: what was trained, the results, the plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in metrics.items()
                                                   if isinstance(v, (int, float, str)) and v is not None]
    return "\n".join(rows)


def write_report(run_dir: Path, title: str, description: str, metrics: dict[str, Any], task_section: str) -> Path:
    lines = [f"# {title}", "",
             f"{description} ({fmt(metrics.get('parameters', 0))} parameters, "
             f"{fmt(metrics.get('trainable_parameters', 0))} trainable), "
             f"{fmt(metrics.get('steps', 0))} optimizer steps in {fmt(metrics.get('train_seconds', 0.0))} s of training "
             f"({fmt(metrics.get('throughput', 0.0))} {metrics.get('throughput_unit', '')}).", "",
             "## Results", "", metrics_table(metrics), ""]
    if task_section:
        lines += [task_section, ""]
    plots = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").exists() else []
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    lines += ["## Configuration", "", "See `config.yaml` (resolved, reproducible with `archlab train config.yaml`)."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
