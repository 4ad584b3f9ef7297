"""`init_from` in every task, on real data: the first evaluation after loading is at the checkpoint's
level, not at random-init level — a GPT continues pretraining on another text, a translation model and
an image classifier continue, an image classifier gets a new head for fewer classes, a masked LM starts
from the real all-MiniLM-L6-v2; an architecture that cannot fit the task is refused at load time."""
import json
import math
import random
from pathlib import Path

import pytest
import torch

from archlab.errors import ConfigError
from archlab.runs import train_run
from archlab.tasks.run import load_run_config

from conftest import require_path

FORTUNES = "/usr/share/games/fortunes"
FMNIST = "/usr/share/datasets/fashion-mnist"
GPL = "/usr/share/common-licenses/GPL-3"  # English prose nobody here wrote, on every Debian system


def evaluations(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "valid"]


def test_a_gpt_continues_pretraining_on_another_text(tmp_path):
    require_path(FORTUNES, "fortunes")
    require_path(GPL, "base-files")
    model = {"family": "gpt", "d_model": 64, "n_heads": 4, "n_layers": 2, "max_seq_len": 32, "bias": False}
    train = {"batch_size": 16, "lr": 3e-3, "schedule": "cosine", "warmup_steps": 20, "threads": 1}
    pre = tmp_path / "pre"
    train_run(load_run_config({"task": "language_modeling", "model": model,
                               "data": {"corpus": "fortunes", "max_chars": 400_000, "eval_batches": 10},
                               "train": {**train, "max_steps": 800, "eval_every": 800}}), pre, quiet=True)
    pretrained_loss = evaluations(pre)[-1]["val_loss"]
    more = tmp_path / "more"
    run = load_run_config({"task": "language_modeling", "init_from": str(pre), "model": {},
                           "data": {"corpus": GPL, "eval_batches": 10},
                           "train": {**train, "max_steps": 60, "eval_every": 60, "lr": 1e-3}})
    assert run.model.d_model == 64  # the architecture comes from the checkpoint
    train_run(run, more, quiet=True)
    start, end = evaluations(more)[0], evaluations(more)[-1]
    vocab = json.loads((pre / "checkpoints" / "best" / "tokenizer.json").read_text())["model"]["vocab"]
    assert start["step"] == 0 and start["val_loss"] < math.log(len(vocab)) - 1.5  # far from a random start
    assert start["val_loss"] < pretrained_loss + 0.6  # English is English: near the fortunes level at once
    assert end["val_loss"] < start["val_loss"]  # and it keeps learning the new text


def reverse_pairs(n: int, rng: random.Random) -> str:
    rows = []
    for _ in range(n):
        w = [rng.choice("abcdefgh") for _ in range(rng.randint(3, 7))]
        rows.append(f"{' '.join(w)}\t{' '.join(reversed(w))}\n")
    return "".join(rows)


def test_a_translation_model_continues_from_its_checkpoint(tmp_path):
    rng = random.Random(0)
    (tmp_path / "data").mkdir()
    for split, n in (("train", 2000), ("valid", 60), ("test", 60)):
        (tmp_path / "data" / f"{split}.tsv").write_text(reverse_pairs(n, rng))
    data = {"files": str(tmp_path / "data"), "vocab_size": 300, "max_tokens": 1024, "eval_sentences": 60, "beam": 2}
    train = {"lr": 4e-3, "schedule": "noam", "warmup_steps": 100, "metric": "val_loss", "threads": 1}
    first = tmp_path / "first"
    train_run(load_run_config({"task": "translation", "data": data,
                               "model": {"preset": "transformer-tiny", "norm_placement": "pre"},
                               "train": {**train, "max_steps": 500, "eval_every": 500}}), first, quiet=True)
    base_bleu = evaluations(first)[-1]["val_bleu"]
    assert base_bleu > 60
    second = tmp_path / "second"
    data = {k: v for k, v in data.items() if k != "vocab_size"}  # the tokenizer is the checkpoint's
    train_run(load_run_config({"task": "translation", "init_from": str(first), "model": {}, "data": data,
                               "train": {**train, "max_steps": 20, "eval_every": 20, "lr": 5e-4}}), second, quiet=True)
    start = evaluations(second)[0]
    assert start["step"] == 0 and start["val_bleu"] == pytest.approx(base_bleu, abs=0.5)
    with pytest.raises(ConfigError, match="data.vocab_size: with init_from the pretrained model's own tokenizer"):
        load_run_config({"task": "translation", "init_from": str(first), "model": {},
                         "data": {**data, "vocab_size": 500}, "train": {"max_steps": 1}})


@pytest.fixture(scope="module")
def fashion_checkpoint(tmp_path_factory):
    require_path(FMNIST, "dataset-fashion-mnist")
    run_dir = tmp_path_factory.mktemp("fashion") / "cnn"
    train_run(load_run_config("configs/fashion_mnist_seed_cnn.yaml",
                              ["data.train_subset=6000", "data.test_subset=500", "data.valid_frac=0.05",
                               "train.epochs=1", "train.threads=2", "train.batch_size=64"]), run_dir, quiet=True)
    return run_dir


def image_run(init_from, *extra):
    return load_run_config("configs/fashion_mnist_seed_cnn.yaml",
                           ["data.train_subset=1000", "data.test_subset=500", "data.valid_frac=0.05",
                            "train.threads=2", "train.batch_size=64", "train.epochs=null", "train.max_steps=15",
                            "train.eval_every=15", *([f"init_from={init_from}", "model={}"] if init_from else []), *extra])


def test_an_image_classifier_continues_and_gets_a_new_head_for_other_classes(fashion_checkpoint, tmp_path):
    checkpoint_acc = json.loads((fashion_checkpoint / "metrics.json").read_text())["val_accuracy"]
    train_run(image_run(fashion_checkpoint), tmp_path / "same", quiet=True)
    start = evaluations(tmp_path / "same")[0]
    assert start["step"] == 0 and start["val_accuracy"] == pytest.approx(checkpoint_acc, abs=1e-6)
    # five of the ten classes: the classifier layer is new (5 outputs), the conv body is the checkpoint's;
    # a linear probe on it beats one on random features trained alike
    classes = "data.classes=[T-shirt/top, Trouser, Sneaker, Bag, Ankle boot]"
    probe = train_run(image_run(fashion_checkpoint, classes, "finetune.mode=frozen"), tmp_path / "probe", quiet=True)
    random_probe = train_run(image_run(None, classes, "finetune.mode=frozen"), tmp_path / "random", quiet=True)
    head = (3 * 3 * 64) * 64 + 64 + 64 * 5 + 5  # frozen: the fully connected head trains, 576 -> 64 -> 5
    assert probe["trainable_parameters"] == head and probe["val_accuracy"] > random_probe["val_accuracy"] + 0.05
    assert probe["val_accuracy"] > 0.8


def test_an_architecture_that_cannot_fit_the_task_is_refused_at_load(fashion_checkpoint):
    with pytest.raises(ConfigError, match="task 'language_modeling' trains causal_lm models; family 'cnn'"):
        load_run_config({"task": "language_modeling", "init_from": str(fashion_checkpoint), "model": {},
                         "train": {"max_steps": 1}})
    with pytest.raises(ConfigError, match="init_from: .*nowhere not found"):
        load_run_config({"task": "language_modeling", "init_from": "/nowhere", "model": {}, "train": {"max_steps": 1}})


def test_a_masked_lm_starts_from_minilm(tmp_path):
    require_path(FORTUNES, "fortunes")
    transformers = pytest.importorskip("transformers")
    from archlab.models.hf import minilm_path
    from archlab.runs import open_task

    run = load_run_config({"task": "masked_lm", "init_from": "minilm", "model": {"dropout": 0.0},
                           "data": {"corpus": "fortunes", "block_size": 48, "max_chars": 200_000, "eval_batches": 3,
                                    "eval_batch_size": 16},
                           "train": {"max_steps": 12, "eval_every": 12, "batch_size": 16, "lr": 1e-3, "threads": 2}})
    task = open_task(run)
    assert task.tokenizer.mask_id == 103  # MiniLM's own WordPiece vocabulary: [MASK]
    model = task.build_model()
    ref = transformers.BertModel.from_pretrained(minilm_path())
    assert all(torch.equal(model.encoder.blocks[i].ffn.down.weight, ref.encoder.layer[i].output.dense.weight)
               for i in range(6))
    assert model.mlm_head.decoder.weight is model.word_emb.weight  # MiniLM ships no MLM head: a new one, tied
    train_run(run, tmp_path / "mlm", quiet=True)
    start, end = evaluations(tmp_path / "mlm")[0], evaluations(tmp_path / "mlm")[-1]
    assert start["step"] == 0 and end["val_loss"] < start["val_loss"] - 1.0  # the new head learns fast
