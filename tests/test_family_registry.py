"""A model family is one file: a family defined here, in a test file, works with `summary`, `train` and
`compare` through the CLI with no edit anywhere else."""
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch.nn as nn
import yaml

from archlab import cli
from archlab.models import FAMILIES, PRESETS, build_model
from archlab.models.flops import Cost
from archlab.models.registry import Family, FamilyConfig, build_skeleton, count_parameters, register_family

from conftest import require_path


@dataclass
class BigramConfig(FamilyConfig):
    family: ClassVar[str] = "bigram"
    vocab_size: int | None = None
    d_model: int = 16
    max_seq_len: int = 32


class Bigram(nn.Module):
    """Next token from the current one alone: an embedding and a linear read-out."""

    def __init__(self, cfg: BigramConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, idx):
        return self.out(self.embed(idx))


def bigram_cost(cfg: BigramConfig, seq_len=None) -> Cost:
    return Cost("token", 2 * cfg.d_model * (cfg.vocab_size or 0), count_parameters(build_skeleton(cfg)))


@pytest.fixture
def bigram_family():
    register_family(Family("bigram", BigramConfig, Bigram, kind="causal_lm", cost=bigram_cost,
                           presets={"bigram-tiny": {"vocab_size": 64, "d_model": 8}}))
    yield
    FAMILIES.pop("bigram")
    PRESETS.pop("bigram-tiny")


def test_a_family_defined_in_a_test_file_summarises_trains_and_compares(bigram_family, tmp_path, capsys):
    require_path("/usr/share/games/fortunes", "fortunes")
    assert cli.main(["summary", "bigram-tiny"]) == 0
    out = capsys.readouterr().out
    assert "1,088" in out and "FLOPs per token" in out  # 64*8 + 8*64 + 64 parameters
    recipe = tmp_path / "bigram.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "language_modeling", "model": {"preset": "bigram-tiny"},
        "data": {"corpus": "fortunes", "max_chars": 100_000, "eval_batches": 5, "steps_per_epoch": 50},
        "train": {"max_steps": 60, "batch_size": 16, "lr": 0.05, "eval_every": 60, "threads": 1}}))
    assert cli.main(["train", str(recipe), "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
    metrics = yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_loss"] < 3.5  # a character bigram model learns (uniform over ~80 characters: 4.4)
    assert cli.main(["compare", str(recipe), "--vary", "model.d_model=4,8", "--budget-steps", "20", "--seeds", "1",
                     "--quiet", "--out", str(tmp_path / "cmp")]) == 0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| bigram / 4 |" in report and "| bigram / 8 |" in report
    assert isinstance(build_model("bigram-tiny"), Bigram)
