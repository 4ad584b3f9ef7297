"""The engine on its own: a stub task and a tiny model (tests/engine_stub.py) train, save, resume exactly
and run under DDP and FSDP through the real Trainer, with no archlab task, model or layer involved."""
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import torchrun
from engine_stub import train_stub

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / which / "model.safetensors")


def test_a_stub_task_trains_through_the_real_engine(tmp_path):
    metrics = train_stub(tmp_path / "run", max_steps=30)
    assert metrics["val_accuracy"] > 0.9 and metrics["steps"] == 30
    last = tmp_path / "run" / "checkpoints" / "last"
    assert json.loads((last / "config.json").read_text()) == {"family": "stub", "hidden": 16, "penalty": 0.0,
                                                              "task": "stub"}
    assert (last / "stub.json").exists() and (tmp_path / "run" / "report.md").read_text().count("## Stub") == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["loss"] > records[-2]["loss"]


def test_resume_continues_exactly(tmp_path):
    train_stub(tmp_path / "straight", max_steps=12, save_every=2)
    train_stub(tmp_path / "split", max_steps=5, save_every=2)
    train_stub(tmp_path / "split", resume=True, max_steps=12, save_every=2)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_models_extra_loss_is_added(tmp_path):
    train_stub(tmp_path / "plain", max_steps=12)
    train_stub(tmp_path / "penalised", max_steps=12, penalty=0.05)
    first = lambda run: weights(tmp_path / run)["body.0.weight"].norm().item()  # noqa: E731
    assert first("penalised") < 0.8 * first("plain")


def test_two_processes_equal_one_under_ddp_and_fsdp(tmp_path):
    train_stub(tmp_path / "one", max_steps=6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(TESTS)]), "OMP_NUM_THREADS": "1"}
    for strategy in ("ddp", "fsdp"):
        r = torchrun([str(TESTS / "engine_stub.py"), str(tmp_path / strategy), strategy, "6"], env)
        assert r.returncode == 0, r.stderr[-3000:]
        one, two = weights(tmp_path / "one"), weights(tmp_path / strategy)
        assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-6, strategy
