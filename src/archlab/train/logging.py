"""What a run writes while it trains: metrics.jsonl, TensorBoard events, and the console."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class MetricsLog:
    """One JSON object per line; on resume, lines after the resumed step are dropped first."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency; tolerate its absence in minimal installs
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if k not in ("step", "split", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ConsoleProgress:
    """A rich progress bar (step, loss, lr, throughput, ETA), silent in quiet mode or on other ranks."""

    def __init__(self, total: int, unit: str, quiet: bool, start: int = 0):
        self.quiet, self.unit = quiet, unit
        self.console = Console(quiet=quiet)
        self.progress = None
        if not quiet:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            self.progress.start()

    def update(self, step: int, loss: float, lr: float, throughput: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step,
                                 info=f"loss {loss:.4f}  lr {lr:.2e}  {throughput:,.0f} {self.unit}/s")

    def print(self, *args) -> None:
        if self.progress is not None:
            self.progress.console.print(*args)
        else:
            self.console.print(*args)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def table(self, title: str, metrics: dict[str, Any]) -> None:
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in metrics.items():
            t.add_row(k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        self.console.print(t)
