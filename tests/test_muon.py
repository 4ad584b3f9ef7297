"""Muon (train.optimizer: muon): torch.optim.Muon on the hidden weight matrices, AdamW on embeddings, output
layers, norms and biases; it learns real text, and a stopped-and-resumed run equals one straight through."""
import pytest
import torch
from safetensors.torch import load_file

from archlab.errors import ConfigError
from archlab.models import build_model
from archlab.runs import train_run
from archlab.tasks.run import load_run_config
from archlab.train.config import TrainConfig
from archlab.train.optim import build_optimizer, muon_split

from conftest import require_path


def names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_model({"preset": "gpt-baby", "n_layers": 2, "tie_embeddings": False})
    hidden, rest = muon_split(model)
    assert names(model, hidden) == {f"transformer.blocks.{i}.{m}.weight" for i in range(2)
                                    for m in ("attn.qkv_proj", "attn.out_proj", "ffn.up", "ffn.down")}
    assert {"tok_emb.weight", "lm_head.weight", "positions.additive.embedding.weight"} <= names(model, rest)
    opt = build_optimizer(model, TrainConfig(max_steps=1, optimizer="muon", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt.muon, torch.optim.Muon) and len(opt.param_groups) == 3  # muon + AdamW decay/no-decay
    with pytest.raises(ConfigError, match="muon trains hidden 2-D weight matrices and this model has none"):
        build_optimizer(build_model({"family": "cnn", "stages": [{"channels": 4}], "n_classes": 10}),
                        TrainConfig(max_steps=1, optimizer="muon"))


def lm_run(**train):
    return load_run_config({
        "task": "language_modeling", "model": {"preset": "gpt-baby", "n_layers": 2, "max_seq_len": 32},
        "data": {"corpus": "fortunes", "max_chars": 300_000, "eval_batches": 5, "steps_per_epoch": 7},
        "train": {"optimizer": "muon", "lr": 1e-2, "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": 5,
                  "batch_size": 16, "threads": 1, "eval_every": 30, **train}})


def test_muon_learns_and_resumes_exactly(tmp_path):
    require_path("/usr/share/games/fortunes", "fortunes")
    metrics = train_run(lm_run(max_steps=120, eval_every=120), tmp_path / "learn", quiet=True)
    assert metrics["val_loss"] < 2.6  # below the characters' unigram entropy (~3.0 nats)
    constant = {"schedule": "constant", "warmup_steps": 0, "save_every": 3}  # the same lr whatever the length
    train_run(lm_run(max_steps=12, **constant), tmp_path / "straight", quiet=True)
    train_run(lm_run(max_steps=6, **constant), tmp_path / "split", quiet=True)
    train_run(lm_run(max_steps=12, **constant), tmp_path / "split", resume=True, quiet=True)
    a = load_file(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "split" / "checkpoints" / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ns_dtype,tol", [(torch.bfloat16, 1e-6), (torch.float32, 0.03)])
def test_archlabs_muon_steps_as_torchs(ns_dtype, tol):
    # same matrices, same gradients: torch.optim.Muon (Newton-Schulz one matrix at a time, in bf16) and ours
    # (same-shape matrices stacked, in ns_dtype) move the weights alike; fp32 differs only by bf16's rounding
    from archlab.train.optim import Muon
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 16), (16, 64)]
    ref = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    start = [p.detach().clone() for p in ref]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    opt_ref, opt_ours = torch.optim.Muon(ref, **kw), Muon(ours, ns_dtype=ns_dtype, **kw)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for params, opt in ((ref, opt_ref), (ours, opt_ours)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    moved = max((r - p0).abs().max().item() for r, p0 in zip(ref, start))
    assert moved > 0.02
    # bf16: the same numbers (tol absolute); fp32: within 3% of the distance moved (bf16's rounding in torch's)
    assert max((r - o).abs().max().item() for r, o in zip(ref, ours)) < (tol if ns_dtype == torch.bfloat16 else tol * moved)
    assert opt_ours.state_dict()["state"].keys() == opt_ref.state_dict()["state"].keys()
    opt_ours.load_state_dict(opt_ref.state_dict())  # torch's state dict loads as is
