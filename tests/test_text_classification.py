"""Text classification: learns real fortunes beyond the majority class, classify CLI, users' label
files with line-numbered errors, init from our GPT/BERT checkpoints, GPT head equal to Hugging Face's."""
import json

import pytest
import torch

from archlab.cli import main
from archlab.config import ConfigError
from archlab.data.text import DataError, load_fortunes_split
from archlab.data.tokenizer import Tokenizer
from archlab.models import build_model
from archlab.runs import open_task, train_run
from archlab.tasks.run import load_run_config
from archlab.tasks.text_classification import TextClassification, encode_texts, trailing_specials
from archlab.train import checkpoint as ckpt

from conftest import require_path

FORTUNES = "/usr/share/games/fortunes"
TINY = {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128, "max_seq_len": 64, "dropout": 0.0}


def scratch_run(**over) -> dict:
    # a GPT: in 160 steps from scratch it learns more than a post-norm BERT does (35% against 29%)
    run = {"task": "text_classification", "model": {"family": "gpt", **TINY},
           "data": {"tokenizer": "bpe", "vocab_size": 2000, "max_len": 64},
           "train": {"max_steps": 160, "batch_size": 32, "lr": 2e-3, "schedule": "cosine", "warmup_steps": 10,
                     "eval_every": 160, "threads": 1, "log_every": 40, "metric": "val_accuracy",
                     "metric_mode": "max"}}
    for k, v in over.items():
        run[k] = {**run[k], **v} if isinstance(v, dict) else v
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    require_path(FORTUNES, "fortunes")
    run_dir = tmp_path_factory.mktemp("tc") / "fortunes"
    metrics = train_run(load_run_config(scratch_run()), run_dir, quiet=True)
    return run_dir, metrics


def test_fine_tuned_classifier_beats_the_majority_class_on_real_fortunes(trained):
    run_dir, m = trained
    assert m["majority_baseline_accuracy"] == pytest.approx(105 / 542)  # computers
    assert m["test_accuracy"] > m["majority_baseline_accuracy"] + 0.08, m
    assert m["test_macro_f1"] > 0.12  # not only the biggest class
    for p in ("report.md", "plots/confusion_matrix.png", "checkpoints/best/tokenizer.json",
              "checkpoints/best/labels.json"):
        assert (run_dir / p).exists(), p
    report = (run_dir / "report.md").read_text()
    assert "most frequent class (computers)" in report and "| startrek |" in report


def test_classify_cli_prints_the_top_classes_with_probabilities(trained, capsys):
    run_dir, _ = trained
    texts = ["The compiler crashed: segmentation fault, core dumped, in the kernel's memory allocator.",
             "Captain Kirk beamed down with Spock; the Klingons fired phasers at the Enterprise."]
    assert main(["classify", str(run_dir), *texts, "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and lines[0].startswith("The compiler") and lines[4].startswith("Captain Kirk")
    classes = json.loads((run_dir / "checkpoints" / "best" / "labels.json").read_text())["classes"]
    for block in (lines[1:4], lines[5:8]):
        names = [line.split()[0] for line in block]
        probs = [float(line.split()[1].rstrip("%")) for line in block]
        assert set(names) <= set(classes) and len(set(names)) == 3
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.05
    assert main(["classify", str(run_dir), "x", "--top", "0"]) == 2


def test_eval_cli_reproduces_the_test_accuracy(trained, capsys):
    run_dir, m = trained
    assert main(["eval", str(run_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["test_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-6)


# --- users' files ----------------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def user_dataset(folder, n=40):
    """A small labelled set of real fortunes in the user format (train/valid/test JSONL)."""
    splits = load_fortunes_split(categories=("startrek", "computers"))
    folder.mkdir()
    for name, rows in splits.items():
        write_jsonl(folder / f"{name}.jsonl", [{"text": t, "label": lab} for t, lab in rows[:n]])
    return folder


def test_a_users_files_train_the_same_way(tmp_path):
    require_path(FORTUNES, "fortunes")
    data = user_dataset(tmp_path / "mine")
    (data / "valid.jsonl").unlink()
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    with open(data / "valid.csv", "w", newline="") as f:  # CSV works as JSONL does
        import csv
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows([r["label"], r["text"]] for r in rows)
    run = scratch_run(data={"dataset": str(data), "vocab_size": 500}, train={"max_steps": 2, "eval_every": 0})
    m = train_run(load_run_config(run), tmp_path / "run", quiet=True)
    assert m["test_examples"] == 40
    assert json.loads((tmp_path / "run" / "checkpoints" / "best" / "labels.json").read_text())["classes"] == [
        "computers", "startrek"]


def test_bad_label_file_is_an_error_with_line_numbers(tmp_path, capsys):
    require_path(FORTUNES, "fortunes")
    data = user_dataset(tmp_path / "bad")
    lines = (data / "train.jsonl").read_text().splitlines()
    lines[2] = '{"text": "no label here"}'
    lines[5] = "not json at all"
    lines[7] = '{"text": "", "label": "startrek"}'
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "run.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(scratch_run(data={"dataset": str(data)})))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl" in err and "3 bad line(s)" in err
    assert "line 3: missing field(s) ['label']" in err and "line 6: invalid JSON" in err and "line 8: empty" in err


def test_unknown_label_in_the_test_split_is_named(tmp_path):
    require_path(FORTUNES, "fortunes")
    data = user_dataset(tmp_path / "d")
    write_jsonl(data / "test.jsonl", [{"text": "Kirk to Enterprise", "label": "startrek"},
                                      {"text": "A well-cooked meal", "label": "food"}])
    task = TextClassification(load_run_config(scratch_run(data={"dataset": str(data)})))
    with pytest.raises(DataError, match=r"test split has label\(s\) \['food'\].*computers, startrek"):
        task.prepare()


def test_a_missing_split_file_is_named(tmp_path):
    require_path(FORTUNES, "fortunes")
    data = user_dataset(tmp_path / "d")
    (data / "valid.jsonl").unlink()
    with pytest.raises(DataError, match="no valid.jsonl, valid.csv or valid.tsv"):
        TextClassification(load_run_config(scratch_run(data={"dataset": str(data)}))).prepare()


def test_the_pretraining_corpus_holds_no_validation_or_test_text():
    require_path(FORTUNES, "fortunes")
    from archlab.data.text import corpus_text

    text = corpus_text("fortunes-pretrain")
    splits = load_fortunes_split()
    entries = {" ".join(e.split()) for e in text.split("\n\n")}
    # (entries with blank lines inside come apart at "\n\n": only most train texts are whole entries)
    assert sum(" ".join(t.split()) in entries for t, _ in splits["train"]) > 0.85 * len(splits["train"])
    # a held-out text can only show up as one stanza of a longer poem filed elsewhere (once, in Debian's files)
    leaked = [t for s in ("valid", "test") for t, _ in splits[s] if " ".join(t.split()) in entries]
    assert len(leaked) <= 1, leaked
    assert len(text) > 2_000_000 and "人" not in text  # English files only


# --- tokenization and batching -----------------------------------------------------------------------

def test_truncation_keeps_the_closing_special_token():
    require_path(FORTUNES, "fortunes")
    tok = Tokenizer.train_bpe([t for t, _ in load_fortunes_split()["train"][:500]], 600)
    assert trailing_specials(tok) == 1
    long_text = "word " * 200
    ids, lengths = encode_texts(tok, [long_text, "hi"], max_len=16)
    full = tok.encode(long_text, add_special=True)
    assert lengths.tolist() == [16, len(tok.encode("hi", add_special=True))]
    assert ids[0].tolist() == full[:15] + [tok.eos_id]
    assert ids[1, lengths[1]:].eq(tok.pad_id).all()


def test_length_grouped_plan_is_deterministic_full_and_less_padded():
    require_path(FORTUNES, "fortunes")
    task = TextClassification(load_run_config(scratch_run()))
    task.prepare()
    plan = task.epoch_plan(2, 32, 0)
    assert plan == task.epoch_plan(2, 32, 0) and plan != task.epoch_plan(3, 32, 0)
    flat = [i for b in plan for i in b]
    assert all(len(b) == 32 for b in plan) and len(set(flat)) == len(flat) > 0.95 * len(task.texts["train"])
    lengths = task.lengths["train"]
    padded = sum(int(lengths[b].max()) * 32 for b in plan)
    random_batches = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))[:len(flat)].view(-1, 32)
    padded_random = sum(int(lengths[b].max()) * 32 for b in random_batches)
    assert padded < 0.75 * padded_random  # the point of grouping by length


# --- from our own pretrained checkpoints ---------------------------------------------------------------

def our_checkpoint(folder, family, tok):
    model = build_model({**TINY, "family": family, "vocab_size": tok.vocab_size})
    task = "masked_lm" if family == "bert" else "language_modeling"
    ckpt.write_model_folder(folder, model, model.config.to_dict(), lambda f: tok.save(f / "tokenizer.json"),
                            {"task": task})
    return model


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_init_from_our_checkpoint_takes_its_weights_and_tokenizer(tmp_path, family):
    require_path(FORTUNES, "fortunes")
    tok = Tokenizer.train_char([t for t, _ in load_fortunes_split()["train"][:300]])
    pretrained = our_checkpoint(tmp_path / "ckpt", family, tok)
    run = scratch_run(model={}, init_from=str(tmp_path / "ckpt"))
    run["model"] = {}
    task = open_task(load_run_config(run))
    assert task.tokenizer.vocab_size == tok.vocab_size and task.tokenizer.is_char
    model = task.build_model()
    assert model.config.family == ("gpt_classifier" if family == "gpt" else "bert") and model.config.n_classes == 12
    ours = model.state_dict()
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(("lm_head.", "mlm_head."))}
    assert body and all(torch.equal(ours[k], v) for k, v in body.items())  # tied embeddings included
    assert task.head_prefixes() == (("score.",) if family == "gpt" else ("pooler.", "classifier."))
    batch = task.collate(task.epoch_plan(0, 4, 0)[0], torch.Generator(), torch.device("cpu"))
    assert task.forward(model, batch).shape == (4, 12)


def test_init_from_rejects_architecture_overrides_and_wrong_families(tmp_path):
    require_path(FORTUNES, "fortunes")
    tok = Tokenizer.train_char(["abc"])
    our_checkpoint(tmp_path / "ckpt", "bert", tok)
    with pytest.raises(ConfigError, match="architecture is the pretrained model's"):
        load_run_config(scratch_run(init_from=str(tmp_path / "ckpt")))  # a gpt family over a bert checkpoint
    run = scratch_run(init_from=str(tmp_path / "ckpt"))
    run["model"] = {"d_model": 32}
    task = open_task(load_run_config(run))
    with pytest.raises(ConfigError, match="shapes differ"):
        task.build_model()
    with pytest.raises(ConfigError, match="pretrained model's own tokenizer"):
        load_run_config({**run, "data": {"tokenizer": "char"}})
    run["model"] = {"family": "cnn", "stages": [{}]}
    run.pop("init_from")
    with pytest.raises(ConfigError, match=r"sequence-classification head \(gpt, bert\), not 'cnn'"):
        load_run_config(run)


def test_gpt_classifier_matches_hugging_face_gpt2_for_sequence_classification():
    transformers = pytest.importorskip("transformers")
    from archlab.models.hf import config_from_hf, state_from_hf

    cfg = transformers.GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=24, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, num_labels=5, pad_token_id=0)
    ref = transformers.GPT2ForSequenceClassification(cfg).eval()
    body = config_from_hf(cfg.to_dict()).to_dict()
    ours = build_model({**body, "family": "gpt_classifier", "n_classes": 5}).eval()
    state = state_from_hf(config_from_hf(cfg.to_dict()), ref.state_dict())
    ours.load_state_dict({**state, "lm_head.weight": state["tok_emb.weight"], "score.weight": ref.score.weight})
    ids = torch.randint(1, 60, (3, 20))
    lengths = torch.tensor([20, 13, 4])
    pad = torch.arange(20)[None] >= lengths[:, None]
    ids[pad] = 0
    want = ref(ids, attention_mask=(~pad).long()).logits
    assert (ours.classify(ids, key_padding_mask=pad) - want).abs().max() <= 1e-5
