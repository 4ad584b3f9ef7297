"""What a run writes while it trains: metrics.jsonl, TensorBoard events, and the console."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any

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


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleProgress:
    """Training progress: a rich bar (step, loss, lr, throughput, ETA) on a terminal; on anything else (a log
    file, a pipe, CI) one plain line every `every` seconds and at the last step, written whole so that no
    field is cut or wrapped. Silent in quiet mode or on other ranks."""

    def __init__(self, total: int, unit: str, quiet: bool, start: int = 0, *, file: IO[str] | None = None,
                 every: float = 10.0):
        self.quiet, self.unit, self.total, self.every = quiet, unit, total, every
        self.console = Console(quiet=quiet, file=file)
        self.progress = None
        self.plain = not quiet and not (self.console.is_terminal or self.console.is_jupyter)
        self.started = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, step) of the first update: the rate for the ETA
        self.last_line = -float("inf")
        if not quiet and not self.plain:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.progress.add_task("train", total=total, completed=start, info="")
            self.progress.start()

    def update(self, step: int, loss: float, lr: float, throughput: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.2e}  {throughput:,.0f} {self.unit}/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)
        elif self.plain:
            now = time.monotonic()
            if self.first is None:
                self.first = (now, step)
            if now - self.last_line >= self.every or step == self.total:
                self.last_line = now
                self._line(now, step, info)

    def _line(self, now: float, step: int, info: str) -> None:
        t0, s0 = self.first
        of = f"/{self.total} ({step / self.total:.0%})" if self.total else ""
        eta = "?"
        if self.total and step > s0:
            eta = _clock((self.total - step) * (now - t0) / (step - s0))
        elif self.total and step >= self.total:
            eta = _clock(0)
        # one write of a whole line: rich would wrap it at 80 columns when the output is not a terminal
        self.console.file.write(f"train step {step}{of}  {info}  elapsed {_clock(now - self.started)}  ETA {eta}\n")
        self.console.file.flush()

    def print(self, *args) -> None:
        if self.progress is not None:
            self.progress.console.print(*args)
        else:
            self.console.print(*args, soft_wrap=self.plain)

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
