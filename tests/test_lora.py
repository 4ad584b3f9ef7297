"""LoRA: starts as the base, trains only adapters + head, leaves the base untouched, merges exactly,
saves adapters + head alone, and those with the base model reproduce the fine-tuned predictions."""
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from archlab.data.text import load_fortunes_split
from archlab.data.tokenizer import Tokenizer
from archlab.models import build_model, count_parameters
from archlab.models.finetune import FinetuneConfig, checkpoint_model_config, prepare_model
from archlab.nn.lora import LoRALinear, apply_lora, attach_adapters, merge_lora
from archlab.runs import export_hf, load_run, open_task, train_run
from archlab.tasks.run import load_run_config
from archlab.tasks.text_classification import padded_batch
from archlab.train import checkpoint as ckpt

from conftest import require_path

FORTUNES = "/usr/share/games/fortunes"
HEAD = ("pooler.", "classifier.")


def tiny_bert(**kw):
    return build_model({"family": "bert", "vocab_size": 100, "d_model": 32, "n_heads": 4, "n_layers": 2,
                        "max_seq_len": 32, "dropout": 0.0, "n_classes": 5, **kw}).eval()


def test_lora_starts_as_the_base_model_and_trains_only_adapters_and_head():
    model = tiny_bert()
    ids = torch.randint(1, 100, (3, 12))
    before = model.classify(ids)
    adapted = apply_lora(model, ["qkv_proj", "out_proj"], rank=4, alpha=8, trainable_prefixes=HEAD)
    assert adapted == [f"encoder.blocks.{i}.attn.{n}" for i in range(2) for n in ("qkv_proj", "out_proj")]
    assert torch.equal(model.classify(ids), before)  # B = 0: the adapted model is the base model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"encoder.blocks.{i}.attn.{n}.lora_{m}" for i in range(2) for n in ("qkv_proj", "out_proj")
                         for m in "AB"} | {"pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias"}
    # base names are unchanged, so a base checkpoint still loads into the adapted model
    assert {k for k in model.state_dict() if "lora" not in k} == set(tiny_bert().state_dict())


def test_training_changes_adapters_and_head_only():
    model = tiny_bert()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, ["qkv_proj", "out_proj", "up", "down"], rank=4, alpha=8, trainable_prefixes=HEAD)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(5):
        ids, y = torch.randint(1, 100, (8, 10)), torch.randint(0, 5, (8,))
        nn.functional.cross_entropy(model.classify(ids), y).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in base.items():
        if k.startswith(HEAD):
            assert not torch.equal(after[k], v), k
        else:
            assert torch.equal(after[k], v), k  # bit for bit: the base never moves
    assert all(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))


def test_merge_gives_the_same_outputs_and_a_plain_model():
    model = tiny_bert()
    apply_lora(model, ["qkv_proj", "out_proj", "ffn.up"], rank=4, alpha=16, trainable_prefixes=HEAD)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)  # a trained-looking update, large enough to matter
    ids = torch.randint(1, 100, (4, 16))
    ids[2, 9:] = 0
    unmerged = model.classify(ids)
    assert (unmerged - tiny_bert().classify(ids)).abs().max() > 1e-2  # the adapters do change the outputs
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (model.classify(ids) - unmerged).abs().max() <= 1e-5
    plain = tiny_bert()
    plain.load_state_dict(model.state_dict())  # strict: exactly the base architecture again
    assert (plain.classify(ids) - unmerged).abs().max() <= 1e-5


def test_at_minilm_size_at_most_2_percent_of_parameters_train():
    model = build_model({"preset": "minilm-l6", "n_classes": 12})
    total = count_parameters(model)
    apply_lora(model, ["qkv_proj", "out_proj"], rank=8, alpha=16, trainable_prefixes=HEAD)
    trainable = count_parameters(model, trainable_only=True)
    d = 384
    adapters = 6 * 8 * ((d + 3 * d) + (d + d))  # per layer: qkv (384 -> 1152) and out (384 -> 384)
    head = (d * d + d) + (d * 12 + 12)  # pooler + classifier
    assert trainable == adapters + head
    assert count_parameters(model) == total + adapters
    assert trainable / count_parameters(model) <= 0.02


def test_bad_targets_and_rank_are_clear_errors():
    with pytest.raises(ValueError, match=r"match no Linear layer.*qkv_proj"):
        apply_lora(tiny_bert(), ["query"], rank=4, alpha=8)
    with pytest.raises(ValueError, match="finetune.lora.rank"):
        apply_lora(tiny_bert(), ["qkv_proj"], rank=0, alpha=8)


# --- end to end through the trainer, on real fortunes --------------------------------------------

@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A small BERT checkpoint in our format (config.json, model.safetensors, tokenizer.json)."""
    require_path(FORTUNES, "fortunes")
    folder = tmp_path_factory.mktemp("base") / "bert"
    tok = Tokenizer.train_bpe([t for t, _ in load_fortunes_split()["train"]], 800)
    torch.manual_seed(1)
    model = build_model({"family": "bert", "vocab_size": tok.vocab_size, "d_model": 48, "n_heads": 4, "n_layers": 2,
                         "d_ff": 96, "max_seq_len": 64})
    ckpt.write_model_folder(folder, model, model.config.to_dict(), lambda f: tok.save(f / "tokenizer.json"),
                            {"task": "masked_lm"})
    return folder


def body_weights(folder):
    """Every weight of a checkpoint but the pretraining head, tied ones under each name (word_emb too)."""
    model = build_model(checkpoint_model_config(folder))
    ckpt.load_weights(model, folder)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mlm_head.")}
    assert "word_emb.weight" in state and len(state) > 20
    return state


def finetune_run(base, mode, **train):
    return load_run_config({
        "task": "text_classification", "init_from": str(base), "model": {"dropout": 0.0},
        "data": {"max_len": 48}, "finetune": {"mode": mode, "lora": {"rank": 4, "alpha": 8}},
        "train": {"max_steps": 8, "batch_size": 16, "lr": 3e-3, "threads": 1, "log_every": 4, **train}})


def test_adapters_and_head_saved_alone_reproduce_the_predictions_exactly(base_checkpoint, tmp_path):
    run = finetune_run(base_checkpoint, "lora")
    train_run(run, tmp_path / "lora", quiet=True)
    best = tmp_path / "lora" / "checkpoints" / "best"
    # the base weights in the fine-tuned checkpoint are the pretrained ones, bit for bit
    tuned = load_file(best / "model.safetensors")
    for k, v in body_weights(base_checkpoint).items():
        assert torch.equal(tuned[k], v), k
    # the adapters file: adapters and head only, a few percent of the model
    with safe_open(str(best / "adapters.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert keys and all(k.endswith(("lora_A", "lora_B")) or k.startswith(HEAD) for k in keys)
    assert {k for k in tuned if "lora" in k or k.startswith(HEAD)} == keys
    assert (best / "adapters.safetensors").stat().st_size < 0.2 * (best / "model.safetensors").stat().st_size

    task, finetuned, _ = load_run(best)
    task.prepare()
    want, _ = task.split_logits(finetuned, "test")
    # a fresh start: the base model (pretrained body, a new random head) + the adapters file
    fresh = open_task(run)
    torch.manual_seed(123)
    base = prepare_model(fresh.model_config(), FinetuneConfig(), fresh.head_prefixes(), fresh.pretrained,
                         fresh.fresh_prefixes(fresh.pretrained))
    model = attach_adapters(base, best / "adapters.safetensors").eval()
    got, _ = fresh.split_logits(model, "test")
    assert torch.equal(got, want)
    assert got.shape == (len(task.texts["test"]), 12)

    # folded in and exported: transformers' BertForSequenceClassification gives the same logits
    transformers = pytest.importorskip("transformers")
    folder = export_hf(tmp_path / "lora", tmp_path / "hf")
    ref = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    assert [ref.config.id2label[i] for i in range(12)] == task.classes and (folder / "tokenizer.json").exists()
    batch = padded_batch(task.ids["test"][:32], task.lengths["test"][:32], torch.device("cpu"))
    with torch.no_grad():
        hf_logits = ref(batch["ids"], attention_mask=(~batch["pad"]).long()).logits
    assert (hf_logits - want[:32]).abs().max() <= 1e-5


def test_frozen_mode_trains_only_the_head(base_checkpoint, tmp_path):
    metrics = train_run(finetune_run(base_checkpoint, "frozen"), tmp_path / "frozen", quiet=True)
    tuned = load_file(tmp_path / "frozen" / "checkpoints" / "last" / "model.safetensors")
    for k, v in body_weights(base_checkpoint).items():
        assert torch.equal(tuned[k], v), k
    head = {k for k in tuned if k.startswith(HEAD)}
    assert head == {"pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias"}
    assert metrics["trainable_parameters"] == sum(tuned[k].numel() for k in head)
    # and the head did learn: the classifier moved from its initialisation
    task = open_task(finetune_run(base_checkpoint, "frozen"))
    torch.manual_seed(0)
    assert not torch.equal(task.build_model().state_dict()["classifier.weight"], tuned["classifier.weight"])
