"""Language-model pretraining on real text: it learns, MLM masks as BERT does, the CLI streams."""
import math

import pytest
import torch

from archlab.runs import open_task, train_run
from archlab.tasks.language_modeling import LanguageModeling, MaskedLanguageModeling, split_text
from archlab.tasks.run import load_run_config

from conftest import require_path

FORTUNES = "/usr/share/games/fortunes"


def lm_run(**over) -> dict:
    run = {"task": "language_modeling", "model": {"family": "gpt", "d_model": 64, "n_heads": 4, "n_layers": 2,
                                                  "max_seq_len": 32, "bias": False},
           "data": {"corpus": "fortunes", "tokenizer": "char", "eval_batches": 20, "steps_per_epoch": 100},
           "train": {"max_steps": 300, "batch_size": 16, "lr": 3e-3, "schedule": "cosine", "warmup_steps": 20,
                     "eval_every": 300, "threads": 1, "log_every": 50}}
    for k, v in over.items():
        run[k] = {**run[k], **v}
    return run


def unigram_entropy(tokens: torch.Tensor) -> float:
    counts = torch.bincount(tokens).float()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def test_gpt_learns_real_text_below_unigram_entropy(tmp_path):
    require_path(FORTUNES, "fortunes")
    run = load_run_config(lm_run())
    metrics = train_run(run, tmp_path / "gpt", quiet=True)
    valid = open_task(run).splits["valid"]
    entropy = unigram_entropy(valid)  # what a model that ignores context can reach, in nats per char
    assert metrics["val_loss"] < entropy - 0.4, (metrics["val_loss"], entropy)
    assert metrics["val_bits_per_char"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=0.02)
    assert (tmp_path / "gpt" / "checkpoints" / "best" / "tokenizer.json").exists()
    assert len((tmp_path / "gpt" / "sample.txt").read_text()) > 100


def test_cli_on_a_language_model_run(tmp_path, capsys):
    from archlab import cli

    require_path(FORTUNES, "fortunes")
    train_run(load_run_config(lm_run(train={"max_steps": 20, "eval_every": 20})), tmp_path / "gpt", quiet=True)
    run = str(tmp_path / "gpt")
    assert cli.main(["eval", run]) == 0  # a language model has no test split: valid by default
    assert '"val_loss"' in capsys.readouterr().out
    assert cli.main(["eval", run, "--split", "test"]) == 2
    assert "no 'test' split; choose --split from ['train', 'valid']" in capsys.readouterr().err
    assert cli.main(["generate", run, "--prompt", "A", "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err  # said by the CLI, before the run is opened
    assert cli.main(["generate", run, "--prompt", "A", "--max-new-tokens", "5", "--top-k", "5", "--seed", "1"]) == 0


def test_split_is_by_position_at_a_line_break():
    text = "".join(f"line {i}\n" for i in range(100))
    train, valid = split_text(text, 0.1)
    assert train + valid == text and train.endswith("\n") and 0.85 < len(train) / len(text) < 0.95


def test_epoch_plan_is_a_pure_function_of_seed_and_epoch():
    require_path(FORTUNES, "fortunes")
    task = LanguageModeling(load_run_config(lm_run(data={"max_chars": 50_000})))
    task.prepare()
    assert task.epoch_plan(3, 8, 0) == task.epoch_plan(3, 8, 0)
    assert task.epoch_plan(3, 8, 0) != task.epoch_plan(4, 8, 0)
    batch = task.collate(task.epoch_plan(0, 8, 0)[0], torch.Generator(), torch.device("cpu"))
    assert batch["inputs"].shape == (8, 32) and torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_mlm_masking_is_15_percent_with_80_10_10():
    require_path(FORTUNES, "fortunes")
    run = lm_run(data={"max_chars": 200_000})
    run["task"], run["model"] = "masked_lm", {**run["model"], "family": "bert"}
    task = MaskedLanguageModeling(load_run_config(run))
    task.prepare()
    tokens = task.blocks("train", torch.randint(0, 150_000, (2000,)))[:, :-1]
    b = task.mask(tokens, torch.Generator().manual_seed(0))
    chosen = b["targets"] != -100
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    masked = (b["inputs"] == task.tokenizer.mask_id)[chosen].float().mean().item()
    kept = (b["inputs"] == tokens)[chosen].float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / task.tokenizer.vocab_size, abs=0.01)  # random can hit the original
    assert torch.equal(b["inputs"][~chosen], tokens[~chosen])
    assert torch.equal(b["targets"][chosen], tokens[chosen])


def test_bert_mlm_learns(tmp_path):
    # A character-level masked LM this small first learns the character distribution and only
    # later (~1,500 steps; Hugging Face's BertForMaskedLM on the same batches behaves the same)
    # starts to use the context; the test checks the first phase, test_bert_mlm_head_matches_hf the rest.
    require_path(FORTUNES, "fortunes")
    run = lm_run(model={"family": "bert", "n_layers": 2, "d_model": 64, "n_heads": 4, "max_seq_len": 32,
                        "dropout": 0.0, "norm_placement": "pre"}, train={"max_steps": 300, "lr": 2e-3})
    run["task"] = "masked_lm"
    run = load_run_config(run)
    metrics = train_run(run, tmp_path / "bert", quiet=True)
    task = open_task(run)
    vocab = task.tokenizer.vocab_size
    entropy = unigram_entropy(task.splits["valid"])
    assert metrics["val_loss"] < math.log(vocab) - 1.0  # far below guessing
    assert metrics["val_loss"] < entropy + 0.1 and metrics["val_masked_accuracy"] > 0.15


def test_bert_mlm_head_matches_hf():
    transformers = pytest.importorskip("transformers")
    from archlab.models.hf import from_hf_state_dict
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    ref = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        ref.cls.predictions.bias.normal_()
    ours = from_hf_state_dict(cfg.to_dict(), ref.state_dict()).eval()
    ids = torch.randint(1, 50, (2, 12))
    assert (ours.mlm_logits(ours(ids)) - ref(ids).logits).abs().max() <= 1e-5


def test_chinese_tang_poems_char_level(tmp_path):
    require_path(f"{FORTUNES}/tang300", "fortunes-zh")
    run = lm_run(data={"corpus": "tang300"}, train={"max_steps": 150})
    run = load_run_config(run)
    metrics = train_run(run, tmp_path / "tang", quiet=True)
    task = open_task(run)
    tok = task.tokenizer
    assert tok.vocab_size > 1500  # thousands of distinct characters
    assert tok.decode(tok.encode("床前明月光")) == "床前明月光"
    sample = (tmp_path / "tang" / "sample.txt").read_text()
    assert sum("\u4e00" <= c <= "\u9fff" for c in sample) > 100  # it writes Chinese
    assert metrics["val_loss"] < unigram_entropy(task.splits["valid"])


def test_missing_corpus_says_what_exists():
    from archlab.data.text import DataError
    task = LanguageModeling(load_run_config(lm_run(data={"corpus": "no-such-corpus"})))
    with pytest.raises(DataError, match="bible-web"):
        task.prepare()
