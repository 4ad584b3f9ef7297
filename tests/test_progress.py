"""ConsoleProgress: plain, whole lines every N seconds when the output is not a terminal (a log file), the
rich bar on a terminal. The clock is faked, so the lines' timing and ETA are exact."""
from __future__ import annotations

import io
import re

import pytest

from archlab.train import logging as train_logging
from archlab.train.logging import ConsoleProgress

LINE = re.compile(r"train step (\d+)/200 \((\d+)%\)  loss (\d+\.\d{4})  lr (\d\.\d\de[-+]\d\d)  ([\d,]+) tokens/s  "
                  r"elapsed (\d+:\d\d:\d\d)  ETA (\d+:\d\d:\d\d|\?)")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(train_logging.time, "monotonic", c)
    return c


def test_log_file_gets_whole_lines_every_ten_seconds(clock):
    out = io.StringIO()  # not a terminal
    progress = ConsoleProgress(200, "tokens", quiet=False, file=out)
    progress.print("[bold]translation[/bold]: " + "a long message that rich would wrap at 80 columns " * 3)
    clock.now += 2.0  # set-up before the first step
    for step in range(1, 201):
        progress.update(step, loss=10 / step, lr=1e-3 * step / 200, throughput=123456.7)
        clock.now += 0.25  # 4 steps a second
    progress.stop()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("translation: a long message") and lines[0].endswith("columns ")  # one line, no markup
    train = lines[1:]
    assert all(LINE.fullmatch(line) for line in train), train  # no line cut or wrapped mid-field
    steps = [int(LINE.fullmatch(line)[1]) for line in train]
    assert steps == [1, 41, 81, 121, 161, 200]  # the first step, then every 10 s (40 steps), then the last
    first, mid, last = (LINE.fullmatch(train[i]).groups() for i in (0, 2, -1))
    assert mid[:2] == ("81", "40") and mid[4] == "123,457"
    assert mid[5] == "0:00:22" and mid[6] == "0:00:29"  # 2 s set-up + 20 s; 119 steps left at 4 steps/s
    assert first[5:] == ("0:00:02", "?") and last[1] == "100" and last[6] == "0:00:00"


def test_first_line_has_no_eta_yet(clock):
    out = io.StringIO()
    progress = ConsoleProgress(200, "tokens", quiet=False, file=out)
    progress.update(1, 5.0, 1e-3, 10.0)
    assert out.getvalue().endswith("elapsed 0:00:00  ETA ?\n")


def test_unbounded_run_and_quiet_mode(clock):
    out = io.StringIO()
    progress = ConsoleProgress(0, "images", quiet=False, file=out)  # a run stopped by its time budget alone
    progress.update(7, 0.5, 1e-4, 99.0)
    assert out.getvalue() == "train step 7  loss 0.5000  lr 1.00e-04  99 images/s  elapsed 0:00:00  ETA ?\n"
    silent = io.StringIO()
    quiet = ConsoleProgress(10, "images", quiet=True, file=silent)
    quiet.update(10, 0.5, 1e-4, 99.0)
    quiet.print("hello")
    assert silent.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_the_rich_bar(clock):
    out = Terminal()
    progress = ConsoleProgress(50, "tokens", quiet=False, file=out)
    assert progress.progress is not None and not progress.plain
    progress.update(25, 1.0, 1e-3, 10.0)
    progress.stop()
    assert "25/50" in out.getvalue() and "train step" not in out.getvalue()
