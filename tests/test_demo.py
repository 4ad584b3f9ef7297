"""`archlab demo --quick` end to end on the real data: every step runs, the report is one
self-contained HTML file whose images all decode in headless Chromium, and its numbers are the runs'."""
from __future__ import annotations

import json
import re

import pytest

from archlab import cli
from archlab import demo as demo_module
from archlab.html import render_check

from conftest import require_command, require_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    for path, package in [("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
                          ("/usr/share/games/fortunes/science", "fortunes")]:
        require_path(path, package)
    require_command("diatheke", "diatheke")
    assert demo_module.missing_data() == []
    out = tmp_path_factory.mktemp("demo") / "demo-quick"
    assert cli.main(["demo", "--quick", "--out", str(out)]) in (0, None)
    return out


def test_every_step_runs_and_the_report_holds_its_numbers(demo):
    results = json.loads((demo / "demo.json").read_text())
    assert [r["name"] for r in results] == ["CNN (seed-cnn)", "Self-attention (MiniLM, inference)", "Transformer translation",
                                            "Pretrained vs scratch fine-tuning"]
    assert all(not r["skipped"] for r in results), [r["skipped"] for r in results]
    cnn = json.loads((demo / "cnn" / "metrics.json").read_text())
    assert cnn["dataset"] == "fashion-mnist" and cnn["test_accuracy"] > 0.8  # one epoch of Adam on 60,000 images
    page = (demo / "report.html").read_text()
    assert f"{cnn['test_accuracy']:.2%}" in page  # the number in the report is the run's
    translation = json.loads((demo / "translation" / "metrics.json").read_text())
    assert f"sacreBLEU {translation['test_bleu']:.1f}" in page
    rows = [json.loads(x) for x in (demo / "translation" / "test_translations.jsonl").read_text().splitlines()]
    rate = demo_module.repeat_rate([r["beam"] for r in rows])
    assert results[2]["extra"]["repeat_rate_beam"] == rate and f"{rate:.1%}" in page  # beside BLEU
    assert results[2]["extra"]["guard_repeat_rate"] <= rate  # the 3-gram repeat guard removes loops
    tuned = json.loads((demo / "finetune_pretrained" / "metrics.json").read_text())
    scratch = json.loads((demo / "finetune_scratch" / "metrics.json").read_text())
    assert f"{tuned['test_accuracy']:.1%}" in page and f"{scratch['test_accuracy']:.1%}" in page
    assert tuned["init_from"] == "minilm" and scratch["init_from"] == "random"
    assert tuned["parameters"] == scratch["parameters"] and tuned["steps"] == scratch["steps"]  # the same network and budget
    assert tuned["test_accuracy"] > tuned["majority_baseline_accuracy"]
    assert (demo / "report.md").read_text().count("|") > 20


def test_repeat_rate_counts_a_word_four_times_in_a_row():
    texts = ["or or or or or", "if if if you", "Or, or; or or!", "the end", "you, you, you, you came", "said, “ “ “ “"]
    assert [demo_module.loops(t) for t in texts] == [True, False, True, False, True, True]
    assert demo_module.repeat_rate(texts) == 4 / 6 and demo_module.repeat_rate([]) == 0


def test_check_data_names_what_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ARCHLAB_FORTUNES_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--check-data"])
    assert stop.value.code == 2
    assert "missing: the fortune files art, computers" in capsys.readouterr().out


def test_report_is_self_contained(demo):
    page = (demo / "report.html").read_text()
    sources = re.findall(r'<img[^>]+src="([^"]{0,40})', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(href|src)="(https?:|file:|/)', page)  # nothing fetched from elsewhere


def test_report_renders_with_its_images_in_chromium(demo, tmp_path):
    require_command("chromium", "chromium")
    shot = tmp_path / "report.png"
    seen = render_check(demo / "report.html", screenshot=shot)
    assert seen["images"] >= 8 and seen["decoded"] == seen["images"]
    assert shot.stat().st_size > 50_000  # a page with pictures, not a blank one
