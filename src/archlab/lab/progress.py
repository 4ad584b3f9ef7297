"""Progress of a whole study: one rich bar on a terminal (runs done / total, elapsed, ETA), plain lines every
`every` seconds when the output is a file or a pipe (a batch job's log), and one line per finished run."""
from __future__ import annotations

import threading
import time

from rich.console import Console


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StudyProgress:
    def __init__(self, console: Console, every: float = 30.0):
        self.console = console
        self.runs_total = self.runs_done = 0
        self.work_total = self.work_done = self.work_timed = 0.0
        self.t0 = time.time()
        self.bar = self.task = None
        self._stop = threading.Event()
        if console.quiet:
            return
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]study[/bold]"), BarColumn(), TextColumn("{task.fields[runs]} runs"),
                                TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"), console=console)
            self.task = self.bar.add_task("study", total=1, runs="0/0", eta="?")
            self.bar.start()
        else:
            threading.Thread(target=self._tick, args=(every,), daemon=True).start()

    def eta(self) -> str:
        """From the FLOPs trained so far in this session: runs differ in size by the ratio of their budgets."""
        if self.work_timed <= 0:
            return "?"
        rate = self.work_timed / (time.time() - self.t0)
        return clock((self.work_total - self.work_done) / rate)

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            self.console.print(f"progress: {self.runs_done}/{self.runs_total} runs, {clock(time.time() - self.t0)} "
                               f"elapsed, ETA {self.eta()}")

    def _refresh(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=max(self.runs_total, 1), completed=self.runs_done,
                            runs=f"{self.runs_done}/{self.runs_total}", eta=self.eta())

    def add(self, runs: int, work: float) -> None:
        self.runs_total += runs
        self.work_total += work
        self._refresh()

    def finished(self, work: float, line: str | None = None, timed: bool = True) -> None:
        """A run is done; `timed` is False for one that had finished in an earlier session."""
        self.runs_done += 1
        self.work_done += work
        self.work_timed += work if timed else 0.0
        if line:
            self.console.print(line)
        self._refresh()

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.stop()
