"""`archlab demo --quick` end to end on the real data: every step runs, the report is one
self-contained HTML file whose images all decode in headless Chromium, and its numbers are the runs'."""
from __future__ import annotations

import json
import re

import pytest

from archlab import cli
from archlab.html import render_check

from conftest import require_command, require_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    for path, package in [("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
                          ("/usr/share/games/fortunes/science", "fortunes")]:
        require_path(path, package)
    require_command("diatheke", "diatheke")
    out = tmp_path_factory.mktemp("demo") / "demo-quick"
    assert cli.main(["demo", "--quick", "--out", str(out)]) in (0, None)
    return out


def test_every_step_runs_and_the_report_holds_its_numbers(demo):
    results = json.loads((demo / "demo.json").read_text())
    assert [r["name"] for r in results] == ["CNN (seed-cnn)", "Self-attention (MiniLM, inference)", "Transformer translation",
                                            "GPT pretrain + fine-tune"]
    assert all(not r["skipped"] for r in results), [r["skipped"] for r in results]
    cnn = json.loads((demo / "cnn" / "metrics.json").read_text())
    assert cnn["dataset"] == "fashion-mnist" and cnn["test_accuracy"] > 0.8  # one epoch of Adam on 60,000 images
    page = (demo / "report.html").read_text()
    assert f"{cnn['test_accuracy']:.2%}" in page  # the number in the report is the run's
    translation = json.loads((demo / "translation" / "metrics.json").read_text())
    assert f"sacreBLEU {translation['test_bleu']:.1f}" in page
    tuned = json.loads((demo / "finetune_pretrained" / "metrics.json").read_text())
    scratch = json.loads((demo / "finetune_scratch" / "metrics.json").read_text())
    assert f"{tuned['test_accuracy']:.1%}" in page and f"{scratch['test_accuracy']:.1%}" in page
    assert tuned["test_accuracy"] > tuned["majority_baseline_accuracy"]
    assert (demo / "report.md").read_text().count("|") > 20


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
