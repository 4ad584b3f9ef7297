"""The training engine: accumulation, exact resume after kill -9, tied weights, faults, DDP, schedules."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from archlab.config import ConfigError
from archlab.errors import TrainingDiverged
from archlab.models import build_model
from archlab.models.finetune import checkpoint_model_config
from archlab.runs import train_run
from archlab.tasks.run import load_run_config
from archlab.train import checkpoint as ckpt
from archlab.train.config import TrainConfig
from archlab.train.optim import build_optimizer, lr_lambda

from conftest import torchrun

SRC = str(Path(__file__).resolve().parents[1] / "src")


def digits_run(**train) -> dict:
    """seed-cnn on scikit-learn's bundled digits: real data, seconds to train, no batch norm or dropout."""
    return {"task": "image_classification", "model": {"preset": "seed-cnn"}, "data": {"dataset": "digits"},
            "train": {"max_steps": 4, "batch_size": 16, "lr": 1e-3, "log_every": 1, "threads": 1, **train}}


def train(tmp_path: Path, name: str, **train_kw) -> Path:
    run_dir = tmp_path / name
    train_run(load_run_config(digits_run(**train_kw)), run_dir, quiet=True)
    return run_dir


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / which / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    # SGD: the update is linear in the gradient, so float round-off is not amplified as Adam's
    # g / (sqrt(v) + eps) does for near-zero gradients; what is compared is the accumulated gradient
    kw = dict(optimizer="sgd", lr=0.05, momentum=0.9, schedule="cosine", warmup_steps=2)
    full = train(tmp_path, "full", grad_accum=1, **kw)
    accum = train(tmp_path, "accum", grad_accum=4, **kw)
    assert max_diff(weights(full), weights(accum)) <= 1e-6
    # the scheduler stepped once per optimizer step in both: same learning rates logged
    lrs = lambda d: [r["lr"] for r in map(__import__("json").loads, (d / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                     if r["split"] == "train"]
    assert lrs(full) == lrs(accum) and len(lrs(full)) == 4


def test_run_folder_layout(tmp_path):
    run = train(tmp_path, "layout", max_steps=3)
    for p in ["config.yaml", "metrics.jsonl", "metrics.json", "report.md", "plots/loss.png", "plots/lr.png",
              "checkpoints/last/model.safetensors", "checkpoints/last/config.json",
              "checkpoints/last/trainer_state/state.pt", "checkpoints/best/model.safetensors", "tb"]:
        assert (run / p).exists(), p
    import json
    metrics = json.loads((run / "metrics.json").read_text())
    for k in ("test_accuracy", "train_seconds", "throughput", "parameters"):
        assert k in metrics
    assert metrics["parameters"] == 93_322


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    cfg = tmp_path / "run.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(digits_run(max_steps=60, save_every=1, deterministic=True)))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "archlab", "train", str(cfg), "--quiet", "--run-dir"]
    subprocess.run(cmd + [str(tmp_path / "straight")], env=env, check=True, capture_output=True)

    victim = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [str(victim)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    step_file = victim / "checkpoints" / "last" / "step.txt"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if int(step_file.read_text()) >= 17:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(step_file.read_text())
    assert 17 <= killed_at < 60, f"the run was not interrupted mid-way (step {killed_at})"
    subprocess.run(cmd + [str(victim), "--resume"], env=env, check=True, capture_output=True)
    assert max_diff(weights(tmp_path / "straight"), weights(victim)) == 0.0


def test_tied_weights_survive_save_and_load(tmp_path):
    model = build_model({"preset": "gpt-baby", "n_layers": 1})
    ckpt.write_model_folder(tmp_path / "ck", model, model.config.to_dict())
    loaded = build_model(checkpoint_model_config(tmp_path / "ck"))
    ckpt.load_weights(loaded, tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight)
    stored = load_file(tmp_path / "ck" / "model.safetensors")
    assert len({"lm_head.weight", "tok_emb.weight"} & stored.keys()) == 1  # stored once


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from archlab.tasks.image_classification import ImageClassification
    real_loss = ImageClassification.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(ImageClassification, "loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*last good checkpoint"):
        train_run(load_run_config(digits_run(max_steps=10, save_every=2)), run_dir, quiet=True)
    assert (run_dir / "checkpoints" / "last" / "step.txt").read_text() == "4"
    state = ckpt.load_trainer_state(run_dir / "checkpoints" / "last")
    assert state["step"] == 4


def test_corrupt_checkpoint_is_named_and_left_alone(tmp_path):
    run_dir = train(tmp_path, "corrupt", max_steps=2)
    bad = run_dir / "checkpoints" / "last" / "model.safetensors"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors is corrupt or truncated"):
        train_run(load_run_config(digits_run(max_steps=4)), run_dir, resume=True, quiet=True)
    assert bad.read_bytes() == data[: len(data) // 2]  # nothing overwritten
    state = run_dir / "checkpoints" / "last" / "trainer_state" / "state.pt"
    state.write_bytes(b"not a zip")
    with pytest.raises(ckpt.CheckpointError, match="state.pt is corrupt"):
        ckpt.load_trainer_state(run_dir / "checkpoints" / "last")


def test_config_errors_name_key_section_and_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'lr_rate' in section 'train'.*Did you mean 'lr'"):
        load_run_config(digits_run(lr_rate=0.1))
    with pytest.raises(ConfigError, match=r"train.batch_size: expected an integer, got 'big'"):
        load_run_config(digits_run(batch_size="big"))
    with pytest.raises(ConfigError, match=r"train.schedule: 'cosin' is not allowed.*'cosine'"):
        load_run_config(digits_run(schedule="cosin"))
    with pytest.raises(ConfigError, match=r"unknown task 'imag_classification'"):
        load_run_config({**digits_run(), "task": "imag_classification"})
    with pytest.raises(ConfigError, match=r"unknown key 'datset' in section 'data'.*'dataset'"):
        load_run_config({**digits_run(), "data": {"datset": "digits"}})
    path = tmp_path / "bad.yaml"
    path.write_text("task: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml:1: not valid YAML"):
        load_run_config(path)


def test_missing_data_says_where_and_how(tmp_path, monkeypatch):
    from archlab.data import images
    from archlab.data.images import DataError, load_image_dataset
    monkeypatch.setenv("ARCHLAB_DATA", str(tmp_path / "nothing"))
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    with pytest.raises(DataError, match=r"(?s)nothing.*apt-get install dataset-fashion-mnist"):
        load_image_dataset("fashion-mnist", data_dir=tmp_path / "empty", fallback=False)


def test_weight_decay_skips_norms_biases_embeddings():
    model = build_model({"preset": "gpt-baby", "n_layers": 1, "bias": True})
    opt = build_optimizer(model, TrainConfig(max_steps=1, weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "transformer.blocks.0.attn.qkv_proj.weight" in names
    assert not any(("norm" in n or n.endswith("bias") or "emb" in n) for n in names)


def test_bn_bias_lr_scale_puts_batch_norm_biases_in_a_faster_group():
    model = build_model({"preset": "resnet-small"})
    cfg = TrainConfig(max_steps=10, optimizer="sgd", lr=0.1, weight_decay=5e-4, bn_bias_lr_scale=64)
    opt = build_optimizer(model, cfg)
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    fast = [g for g in opt.param_groups if g["lr"] == pytest.approx(6.4)]
    assert len(fast) == 1 and {id(p) for p in fast[0]["params"]} == bn_biases and fast[0]["weight_decay"] == 0
    assert all(g["lr"] == pytest.approx(0.1) for g in opt.param_groups if g is not fast[0])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # a schedule scales every group alike
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert fast[0]["lr"] == pytest.approx(3.2) and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert len(build_optimizer(model, TrainConfig(max_steps=1, optimizer="sgd")).param_groups) == 2
    with pytest.raises(ConfigError, match=r"bn_bias_lr_scale must be in \[1, 1000\], got 0.5"):
        TrainConfig(max_steps=1, bn_bias_lr_scale=0.5).validate()
    with pytest.raises(ConfigError, match="bn_bias_lr_scale is for sgd and adam"):
        build_optimizer(build_model({"preset": "gpt-baby", "n_layers": 1}),
                        TrainConfig(max_steps=1, optimizer="muon", bn_bias_lr_scale=64))


def test_schedules():
    noam = lr_lambda(TrainConfig(max_steps=100, schedule="noam", warmup_steps=10), 100)
    assert noam(9) == pytest.approx(1.0) and noam(4) == pytest.approx(0.5) and noam(39) == pytest.approx(0.5)
    cos = lr_lambda(TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, schedule="cosine", warmup_steps=10), 100)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(99) == pytest.approx(0.1)
    lin = lr_lambda(TrainConfig(max_steps=10, schedule="linear"), 10)
    assert lin(9) == pytest.approx(0.0) and lin(4) == pytest.approx(0.5)
    wsd = lr_lambda(TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, schedule="wsd", warmup_steps=10,
                                decay_fraction=0.2), 100)
    assert wsd(0) == pytest.approx(0.1) and wsd(9) == wsd(50) == wsd(79) == pytest.approx(1.0)  # warm-up, stable
    assert wsd(89) == pytest.approx(0.55) and wsd(99) == pytest.approx(0.1)  # linear decay to min_lr over the last 20
    with pytest.raises(ConfigError, match="decay_fraction"):
        TrainConfig(max_steps=10, schedule="wsd", decay_fraction=0.0).validate()


def test_a_time_budget_sets_the_length_of_a_decaying_schedule():
    # max_seconds 100, no step limit: after 50 steps in 10 s the run will hold 500 steps, so the decay spans 500
    seconds = [10.0]
    cfg = TrainConfig(max_seconds=100, lr=1e-3, schedule="linear", warmup_steps=10)
    lin = lr_lambda(cfg, 10 ** 9, elapsed=lambda: seconds[0])
    assert lin(4) == pytest.approx(0.5)  # warm-up counts steps
    assert lin(49) == pytest.approx(1 - 40 / 490)
    seconds[0] = 100.0  # the budget is spent: the decay has reached min_lr
    assert lin(499) == pytest.approx(0.0)
    cos = lr_lambda(TrainConfig(max_seconds=100, max_steps=200, schedule="cosine"), 200, elapsed=lambda: 10.0)
    assert cos(99) == pytest.approx(0.5)  # 200 steps end it before its time budget: the step limit sets the length
    wsd = lr_lambda(TrainConfig(max_seconds=100, schedule="wsd", decay_fraction=0.2), 10 ** 9, elapsed=lambda: 90.0)
    assert wsd(899) == pytest.approx(0.5)  # 900 steps in 90 s: 1000 in all, halfway through the last 200
    warm = lr_lambda(TrainConfig(max_seconds=100, schedule="constant", warmup_fraction=0.1), 10 ** 9,
                     elapsed=lambda: 5.0)
    assert warm(49) == pytest.approx(0.5)  # a warm-up fraction of a time budget is a fraction of its time


def test_a_run_stopped_by_its_time_budget_ends_its_decay(tmp_path):
    run_dir = train(tmp_path, "timed", max_steps=None, max_seconds=2.0, schedule="linear", warmup_steps=5)
    lrs = [r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert len(lrs) > 50 and lrs[5] > 0.9e-3  # the peak after warm-up, then down to (almost) nothing at the end
    assert lrs[-1] < 0.1e-3 and lrs[len(lrs) // 2] < 0.8e-3


def test_two_process_ddp_and_fsdp_equal_one_process(tmp_path):
    import yaml
    vit = {"family": "vit", "image_size": 28, "patch_size": 7, "d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64}
    run = {**digits_run(max_steps=3, batch_size=16, optimizer="sgd", lr=0.05), "model": vit}  # sgd: see above
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    for name, strategy in (("ddp", "ddp"), ("fsdp", "fsdp")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**run, "train": {**run["train"], "distributed": strategy}}))
        r = torchrun(["-m", "archlab", "train", str(cfg), "--quiet", "--run-dir", str(tmp_path / name)], env)
        assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "archlab", "train", str(tmp_path / "ddp.yaml"), "--quiet", "--run-dir",
                    str(tmp_path / "one")], env=env, check=True, capture_output=True)
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "ddp")) <= 1e-6
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "fsdp")) <= 1e-6


def test_early_stopping_and_best_tracking(tmp_path):
    # a learning rate too small to move the weights: the metric never improves after the first evaluation
    run_dir = tmp_path / "early"
    metrics = train_run(load_run_config(digits_run(max_steps=50, lr=1e-12, eval_every=1, patience=2,
                                                   metric="val_loss", metric_mode="min")), run_dir, quiet=True)
    assert metrics["steps"] == 3  # best at step 1, no improvement at 2 and 3
    assert (run_dir / "checkpoints" / "best" / "step.txt").read_text() == "1"


def test_bf16_autocast_runs_on_cpu(tmp_path):
    metrics = train_run(load_run_config(digits_run(max_steps=3, precision="bf16")), tmp_path / "bf16", quiet=True)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_fsdp_with_lora_trains_saves_resumes_and_equals_one_process(tmp_path):
    """LoRA under FSDP: the gathered full state holds the adapters, a 2-process run stopped and resumed
    equals one process straight through, and its checkpoint reopens as a LoRA model."""
    import yaml

    from archlab.runs import load_run
    vit = {"family": "vit", "image_size": 28, "patch_size": 7, "d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64}
    run = {**digits_run(max_steps=4, batch_size=16, optimizer="sgd", lr=0.05, save_every=1), "model": vit,
           "finetune": {"mode": "lora", "lora": {"rank": 2, "alpha": 4}}}
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(yaml.safe_dump({**run, "train": {**run["train"], "distributed": "fsdp"}}))
    fsdp = ["-m", "archlab", "train", str(cfg), "--quiet", "--run-dir", str(tmp_path / "fsdp")]
    first = torchrun([*fsdp, "--set", "train.max_steps=2"], env)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun([*fsdp, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "archlab", "train", str(cfg), "--quiet", "--run-dir", str(tmp_path / "one")],
                   env=env, check=True, capture_output=True)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    assert any(k.endswith("lora_A") for k in two) and max_diff(one, two) <= 1e-6
    trained = [k for k in one if k.endswith("lora_B")]
    assert trained and all(one[k].abs().max() > 0 for k in trained)  # the adapters moved from zero
    _, model, _ = load_run(tmp_path / "fsdp")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_precision_auto_picks_bf16_only_where_it_is_native(tmp_path, monkeypatch):
    from archlab.train import trainer as engine

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert engine.resolve_precision("auto", cpu) == ("fp32", "auto: no native bf16 on this device")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert engine.resolve_precision("auto", cpu) == ("bf16", "auto: the CPU has AVX512-BF16")
    assert engine.resolve_precision("fp32", cpu) == ("fp32", "as configured")
    metrics = train_run(load_run_config(digits_run(max_steps=2, precision="auto")), tmp_path / "auto", quiet=True)
    assert metrics["precision"] == "bf16"  # recorded in the run folder's metrics.json
