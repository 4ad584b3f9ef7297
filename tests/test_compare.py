"""The structure lab: analytic FLOPs against a measured count, and a tiny comparison end to end."""
import json

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from archlab.compare import build_spec, compare, extrapolation_losses
from archlab.config import ConfigError
from archlab.models import build_model, model_config
from archlab.models.flops import model_cost


def measured_forward(model, cfg) -> tuple[float, int]:
    with FlopCounterMode(display=False) as fc:
        if cfg.family == "cnn":
            model(torch.zeros(2, 1, 28, 28)); n = 2  # noqa: E702
        elif cfg.family == "vit":
            model(torch.zeros(2, 1, 28, 28), need_weights=True); n = 2  # noqa: E702
        else:
            x = torch.randint(1, 90, (2, cfg.max_seq_len))
            n = x.numel()
            if cfg.family == "encdec":
                mem = model.encode(x, need_weights=True)
                model.decode(x, mem, model.padding_mask(x), need_weights=True)
            elif cfg.family == "bert":
                model.mlm_logits(model(x, need_weights=True))
            else:
                model(x, need_weights=True)
    return fc.get_total_flops(), n


@pytest.mark.parametrize("name,overrides", [
    ("seed-cnn", {}), ("resnet-small", {}), ("vit-tiny", {}), ("gpt-baby", {}), ("bert-mini", {}),
    ("transformer-small", {}), ("gpt-baby", {"activation": "swiglu"}), ("gpt-baby", {"n_kv_heads": 1}),
    ("gpt-baby", {"moe": {"experts": 8, "top_k": 2}})])
def test_analytic_flops_match_flop_counter(name, overrides):
    # the explicit attention path (need_weights) runs the score/value matmuls as bmm, which the
    # counter sees; SDPA's fused CPU kernel does the same arithmetic but is not counted by it
    cfg = model_config({"preset": name, **overrides})
    model = build_model(cfg).eval()
    flops, n = measured_forward(model, cfg)
    assert model_cost(cfg).forward_flops == pytest.approx(flops / n, rel=0.10)


def test_training_flops_are_three_forwards():
    cfg = model_config({"preset": "gpt-baby"})
    model = build_model(cfg)
    x = torch.randint(0, 90, (2, cfg.max_seq_len))
    with FlopCounterMode(display=False) as fc:
        model(x, need_weights=True).sum().backward()
    assert model_cost(cfg).train_flops == pytest.approx(fc.get_total_flops() / x.numel(), rel=0.10)


def tiny_recipe(tmp_path):
    recipe = {"task": "image_classification", "model": {"preset": "seed-cnn"}, "data": {"dataset": "digits"},
              "train": {"max_steps": 8, "batch_size": 32, "eval_every": 4, "threads": 1,
                        "metric": "val_accuracy", "metric_mode": "max"}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_tiny_compare_end_to_end_and_resume(tmp_path):
    spec = build_spec([str(tiny_recipe(tmp_path))], vary=["train.lr=1e-3,3e-3"])
    spec.seeds, spec.budget = 2, {"flops": 2e9}
    out = tmp_path / "cmp"
    summary = compare(spec, out, quiet=True)
    assert (out / "report.md").exists() and (out / "metric_vs_flops.png").exists()
    saved = json.loads((out / "compare.json").read_text())
    assert [v["variant"] for v in saved["variants"]] == ["tiny / 1e-3", "tiny / 3e-3"]
    steps = {r["steps"] for r in saved["results"]}
    assert len(steps) == 1 and steps.pop() == int(2e9 // summary["results"][0]["flops_per_step"])
    assert all(abs(r["train_flops"] - 2e9) <= r["flops_per_step"] for r in saved["results"])
    assert "± " in (out / "report.md").read_text()
    # an interrupted compare continues: finished runs are not trained again
    stamp = (out / "runs" / "tiny__1e-3" / "seed0" / "metrics.json").stat().st_mtime
    compare(spec, out, quiet=True)
    assert (out / "runs" / "tiny__1e-3" / "seed0" / "metrics.json").stat().st_mtime == stamp


def test_spec_errors(tmp_path):
    bad = tmp_path / "spec.yaml"
    bad.write_text(yaml.safe_dump({"base": "tiny.yaml", "factor": {}}))
    tiny_recipe(tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'factor'.*'factors'"):
        build_spec([str(bad)])
    with pytest.raises(ConfigError, match="--vary expects key=v1,v2"):
        build_spec([str(tiny_recipe(tmp_path))], vary=["train.lr"])


def test_extrapolation_shows_learned_positions_cannot_extend():
    tokens = torch.randint(0, 50, (4000,))
    learned = build_model({"family": "gpt", "vocab_size": 50, "d_model": 32, "n_heads": 4, "n_layers": 1,
                           "max_seq_len": 16})
    rope = build_model({"family": "gpt", "vocab_size": 50, "d_model": 32, "n_heads": 4, "n_layers": 1,
                        "max_seq_len": 16, "position": "rope"})
    a = extrapolation_losses(learned, tokens, 16, [1, 2, 4])
    b = extrapolation_losses(rope, tokens, 16, [1, 2, 4])
    assert "loss" in a["1x"] and "error" in a["2x"]
    assert set(b["4x"]["groups"]) == {"[0,16)", "[16,32)", "[32,64)"}


@pytest.mark.parametrize("study", ["positions_norm", "moe", "cnn_vit"])
def test_shipped_studies_give_every_variant_its_budget(study):
    from archlab.compare import budgeted_config

    spec = build_spec([f"configs/compare/{study}.yaml"])
    for variant in spec.variants:
        cfg, (flops_per_step, *_) = budgeted_config(variant, 0, spec)
        steps = cfg.train.max_steps
        assert cfg.train.epochs is None and steps >= 100, (variant.name, steps)
        assert abs(steps * flops_per_step - spec.budget["flops"]) <= flops_per_step  # equal compute, to one step
