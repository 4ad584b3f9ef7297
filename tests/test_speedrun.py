"""benchmarks/speedrun.py: nanoGPT's data files hold exactly archlab's split and vocabulary, and the one evaluator
gives the same number for the same weights whatever the order and batching of the windows (and the number
archlab's own full-split evaluation gives)."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from archlab.runs import open_task
from archlab.tasks.language_modeling import split_text
from archlab.tasks.run import load_run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import speedrun  # noqa: E402

TEXT = "".join(f"In the beginning {i} was the Word; and the Word was {i * 7 % 13}. Amen!\n" for i in range(400)) + "Zé ü\n"


def tiny_task(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = {"name": "t", "task": "language_modeling",
           "model": {"preset": "gpt-baby", "n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 16},
           "data": {"corpus": str(corpus), "tokenizer": "char", "valid_frac": 0.1},
           "train": {"max_steps": 1, "batch_size": 4}}
    return open_task(load_run_config(run))


def test_nanogpt_files_hold_archlabs_split_and_vocabulary(tmp_path):
    task = tiny_task(tmp_path)
    folder = speedrun.export_nanogpt_data(task, tmp_path / "data")
    train = np.fromfile(folder / "train.bin", dtype=np.uint16)
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)
    assert np.array_equal(train, task.splits["train"].numpy()) and np.array_equal(val, task.splits["valid"].numpy())
    meta = pickle.load(open(folder / "meta.pkl", "rb"))
    assert meta["vocab_size"] == task.tokenizer.vocab_size
    assert all(meta["stoi"][meta["itos"][i]] == i for i in range(meta["vocab_size"]))
    # decoding nanoGPT's files with its meta gives back archlab's split of the text, character for character
    train_text, valid_text = split_text(TEXT, 0.1)
    assert "".join(meta["itos"][int(i)] for i in train) == train_text
    assert "".join(meta["itos"][int(i)] for i in val) == valid_text
    assert [meta["stoi"][c] for c in valid_text[:50]] == task.tokenizer.encode(valid_text[:50])


def test_the_evaluator_ignores_order_and_batching_and_agrees_with_archlab(tmp_path):
    task = tiny_task(tmp_path)
    torch.manual_seed(0)
    model = task.build_model().eval()
    tokens, block = task.splits["valid"], task.block
    offsets = speedrun.eval_windows(len(tokens), block)
    # the windows predict every validation token after the first exactly once (up to the last partial window)
    targets = (offsets[:, None] + 1 + torch.arange(block)).flatten()
    assert torch.equal(targets, torch.arange(1, len(offsets) * block + 1))
    fn = lambda x, y: model(x)  # noqa: E731
    reference = speedrun.evaluate(fn, tokens, block, offsets, batch_size=len(offsets))
    shuffled = offsets[torch.randperm(len(offsets), generator=torch.Generator().manual_seed(1))]
    for batch_size, order in ((1, offsets), (7, shuffled), (64, shuffled)):
        assert speedrun.evaluate(fn, tokens, block, order, batch_size=batch_size) == pytest.approx(reference, rel=1e-6)
    with torch.no_grad():
        assert task.full_split_loss(model, "valid") == pytest.approx(reference, rel=1e-5)
    assert speedrun.evaluate(fn, tokens, block, speedrun.eval_windows(len(tokens), block, 3)) != reference


def test_a_saved_reference_checkpoint_evaluates_as_the_model_in_memory(tmp_path):
    from lm import RefGPT
    torch.manual_seed(0)
    model = RefGPT(11, 8, 1, 2, 16).eval()
    torch.save({"model": model.state_dict(), "iter_num": 3, "model_args": dict(vocab_size=11, block_size=8, n_layer=1,
                                                                           n_head=2, n_embd=16)}, tmp_path / "ckpt.pt")
    tokens = torch.randint(0, 11, (200,))
    offsets = speedrun.eval_windows(len(tokens), 8)
    loaded = speedrun.load_nanogpt(tmp_path / "ckpt.pt", None)
    assert speedrun.evaluate(loaded, tokens, 8, offsets) == speedrun.evaluate(lambda x, y: model(x), tokens, 8, offsets)


def test_time_to_interpolates_between_checkpoints():
    pts = [{"seconds": 10, "val_loss": 2.0}, {"seconds": 20, "val_loss": 1.6}, {"seconds": 30, "val_loss": 1.5}]
    assert speedrun.time_to(pts, 1.7) == pytest.approx(17.5)
    assert speedrun.time_to(pts, 2.5) == 10 and speedrun.time_to(pts, 1.4) is None


@pytest.mark.parametrize("text, problem", [
    ("not json", "Expecting value"),
    ("[]", "non-empty list"),
    ('[["a", "train.lr=1"]]', "non-empty list"),                       # overrides not a list
    ('[["a", ["train.lr"]]]', "non-empty list"),                       # an override without '='
    ('[["a", []], ["a", ["train.lr=1"]]]', "distinct names"),
])
def test_ablation_rows_file_is_checked_before_any_run(tmp_path, text, problem):
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as e:
        speedrun.read_rows(str(path))
    assert str(path) in str(e.value)
    path.write_text('[["muon", ["train.optimizer=muon"]], ["base", []]]')
    assert speedrun.read_rows(str(path)) == [("muon", ["train.optimizer=muon"]), ("base", [])]
