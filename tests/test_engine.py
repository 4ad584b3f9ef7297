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


def test_ema_weights_follow_the_moving_average_and_are_what_is_evaluated(tmp_path):
    """The EMA run trains exactly as the plain one (the average never feeds back); its checkpoint holds
    e_1 = w_1, e_n = d_n e_(n-1) + (1 - d_n) w_n with d_n = min(decay, n / (9 + n)), computed here from the
    plain run's per-step weights, and its metrics are those of the averaged weights."""
    from engine_stub import StubConfig, StubModel, StubTask

    plain = tmp_path / "plain"
    train_stub(plain, max_steps=12, save_every=1, keep_last=12)
    metrics = train_stub(tmp_path / "ema", max_steps=12, ema_decay=0.5)
    steps = [weights(plain, f"step-{n:07d}") for n in range(1, 12)] + [weights(plain)]
    expected = dict(steps[0])
    for n, w in enumerate(steps[1:], start=1):  # n updates averaged before this one
        d = min(0.5, (1 + n) / (10 + n))  # 0.18 at the first, then the cap of 0.5 from n = 9 on
        expected = {k: d * expected[k] + (1 - d) * w[k] for k in w}
    got = weights(tmp_path / "ema")
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    assert not torch.allclose(got["head.weight"], steps[-1]["head.weight"], atol=1e-3)  # the average is not w_12
    state = torch.load(tmp_path / "ema" / "checkpoints" / "last" / "trainer_state" / "state.pt", weights_only=True)
    assert state["ema_updates"] == 12 and all(torch.equal(state["trained_weights"][k], steps[-1][k]) for k in got)
    model = StubModel(StubConfig())
    model.load_state_dict(expected)
    with torch.no_grad():
        assert abs(metrics["val_loss"] - StubTask().evaluate(model)["val_loss"]) < 1e-5


def test_ema_resumes_exactly_and_a_mismatched_checkpoint_is_named(tmp_path):
    import pytest

    from archlab.errors import CheckpointError, ConfigError
    from archlab.train.config import TrainConfig

    train_stub(tmp_path / "straight", max_steps=12, save_every=2, ema_decay=0.8)
    train_stub(tmp_path / "split", max_steps=5, save_every=2, ema_decay=0.8)
    train_stub(tmp_path / "split", resume=True, max_steps=12, save_every=2, ema_decay=0.8)
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_stub(tmp_path / "no-ema", max_steps=4)
    with pytest.raises(CheckpointError, match="not saved with train.ema_decay"):
        train_stub(tmp_path / "no-ema", resume=True, max_steps=8, ema_decay=0.8)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=f"ema_decay must be in \\[0, 1\\), got {bad}"):
            TrainConfig(max_steps=1, ema_decay=bad).validate()
