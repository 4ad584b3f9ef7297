"""Translation: a tiny Transformer learns to reverse letter sequences through the whole pipeline
(TSV files, joint BPE, token batches, Trainer, greedy and beam search); search equals its
references (beam 1 = greedy, KV cache = recomputation, padded batch = one sentence alone); the
`translate` CLI keeps line alignment; the Bible is prepared by whole books without misnumbered chapters."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from archlab.cli import main
from archlab.config import ConfigError
from archlab.data.bible import Verse, misnumbered_chapters
from archlab.data.text import DataError
from archlab.runs import load_run, train_run
from archlab.search import beam_search, greedy_search, length_limits
from archlab.tasks.run import load_run_config
from archlab.tasks.translation import Translation

from conftest import require_command

LETTERS = "abcdefgh"


def reverse_pairs(n: int, rng: random.Random) -> str:
    rows = []
    for _ in range(n):
        w = [rng.choice(LETTERS) for _ in range(rng.randint(3, 8))]
        rows.append(f"{' '.join(w)}\t{' '.join(reversed(w))}\n")
    return "".join(rows)


def reverse_config(data: Path, **train) -> dict:
    return {"task": "translation", "model": {"preset": "transformer-tiny", "norm_placement": "pre"},
            "data": {"files": str(data), "vocab_size": 300, "max_tokens": 1024, "eval_sentences": 50, "beam": 3,
                     "length_penalty": 0.8},
            "train": {"max_steps": 1000, "lr": 4e-3, "schedule": "noam", "warmup_steps": 100, "eval_every": 500,
                      "metric": "val_loss", "threads": 1, "log_every": 50, **train}}


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reverse")
    rng = random.Random(0)
    (root / "data").mkdir()
    for split, n in (("train", 3000), ("valid", 100), ("test", 200)):
        (root / "data" / f"{split}.tsv").write_text(reverse_pairs(n, rng))
    metrics = train_run(load_run_config(reverse_config(root / "data")), root / "run", quiet=True)
    return root / "run", metrics


@pytest.fixture(scope="module")
def reverse_model(reverse_run):
    task, model, _ = load_run(reverse_run[0])
    return task, model


def encode(task, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = task.tokenizer
    rows = [torch.tensor(tok.encode(s) + [tok.eos_id]) for s in sentences]
    src = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_id)
    return src, torch.tensor([len(r) for r in rows])


# ---------------------------------------------------------------------------------------------
# learning, end to end

def test_tiny_transformer_learns_to_reverse(reverse_run):
    run, metrics = reverse_run
    rows = [json.loads(line) for line in (run / "test_translations.jsonl").read_text().splitlines()]
    assert len(rows) == 200
    exact_greedy = sum(r["greedy"] == r["reference"] for r in rows) / len(rows)
    exact_beam = sum(r["beam"] == r["reference"] for r in rows) / len(rows)
    assert exact_greedy >= 0.99 and exact_beam >= 0.99, (exact_greedy, exact_beam)
    assert metrics["test_bleu"] > 95 and metrics["test_bleu_greedy"] > 95
    assert not (run / "tokenizer.json").exists()  # assets live in the checkpoints, never loose in the run folder
    for p in ("checkpoints/best/tokenizer.json", "plots/cross_attention.png",
              "plots/encoder_self_attention.png", "report.md"):
        assert (run / p).exists(), p
    assert "| line " in (run / "report.md").read_text()  # the sample translations table
    # validation loss and BLEU were tracked during training; the best checkpoint is the best evaluation
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["split"] == "valid"]
    assert len(evals) == 2 and all(e["val_bleu"] > 90 for e in evals)
    assert metrics["best_val_loss"] == min(e["val_loss"] for e in evals)


def test_resume_reuses_the_checkpoint_tokenizer(reverse_run, tmp_path):
    from archlab.data.tokenizer import Tokenizer

    other = Tokenizer.train_bpe(["zz yy xx ww"] * 20, 300)  # not what this data would train
    other.save(tmp_path / "tokenizer.json")
    task = Translation(load_run_config(reverse_run[0] / "config.yaml"))
    task.load_assets(tmp_path)
    task.prepare()
    assert task.tokenizer.tok.to_str() == other.tok.to_str()


# ---------------------------------------------------------------------------------------------
# search

def test_beam_1_equals_greedy(reverse_model):
    task, model = reverse_model
    tok = task.tokenizer
    src, lens = encode(task, ["a b c", "h g f e d c b a", "c d e", "a a a a b"])
    limit = length_limits(lens, 1.5, model.config.max_seq_len - 1)
    greedy = greedy_search(model, src, tok.bos_id, tok.eos_id, limit)
    assert greedy == beam_search(model, src, tok.bos_id, tok.eos_id, limit, beam=1)
    assert tok.decode(greedy[1]).strip() == "a b c d e f g h"
    # an untrained model rarely says <eos>: the length limits end its outputs, alike in both
    torch.manual_seed(1)
    fresh = task.build_model().eval()
    short = torch.tensor([3, 7, 5, 9])
    g = greedy_search(fresh, src, tok.bos_id, tok.eos_id, short)
    assert g == beam_search(fresh, src, tok.bos_id, tok.eos_id, short, beam=1)
    assert all(len(o) <= n for o, n in zip(g, short.tolist()))


def uncached_greedy(model, src: torch.Tensor, bos: int, eos: int, steps: int) -> list[list[int]]:
    """The reference: the whole decoder re-run on the whole prefix at every step, no cache."""
    out = torch.full((src.size(0), 1), bos)
    for _ in range(steps):
        out = torch.cat([out, model(src, out)[:, -1].argmax(-1, keepdim=True)], 1)
    rows = [r[1:] for r in out.tolist()]
    return [r[:r.index(eos)] if eos in r else r for r in rows]


def test_kv_cached_decoding_equals_recomputation(reverse_model):
    task, model = reverse_model
    tok = task.tokenizer
    src, lens = encode(task, ["a b c d", "h g f", "e f g h a b c d"])
    steps = 12
    cached = greedy_search(model, src, tok.bos_id, tok.eos_id, torch.full((3,), steps))
    assert cached == uncached_greedy(model, src, tok.bos_id, tok.eos_id, steps)
    # and the logits themselves, position by position, for an arbitrary target prefix
    tgt = torch.randint(7, tok.vocab_size, (3, 9))
    tgt[:, 0] = tok.bos_id
    with torch.no_grad():
        full = model(src, tgt)
        mask = model.padding_mask(src)
        memory = model.encode(src, mask)
        caches = model.new_caches(3, 9)
        steps_out = torch.cat([model.decode(tgt[:, t:t + 1], memory, mask, caches) for t in range(9)], 1)
    torch.testing.assert_close(steps_out, full, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_translation(reverse_model):
    task, model = reverse_model
    tok = task.tokenizer
    sentences = ["b a c", "a b c d e f g h", "c c d"]
    src, lens = encode(task, sentences)
    limit = length_limits(lens, 1.5, 100)
    batched = beam_search(model, src, tok.bos_id, tok.eos_id, limit, beam=3)
    for i, s in enumerate(sentences):
        one, n = encode(task, [s])
        assert beam_search(model, one, tok.bos_id, tok.eos_id, limit[i:i + 1], beam=3) == [batched[i]]
    assert [tok.decode(o).strip() for o in batched] == ["c a b", "h g f e d c b a", "d c c"]


# ---------------------------------------------------------------------------------------------
# the translate command

def test_translate_cli_keeps_lines_and_handles_odd_input(reverse_run, tmp_path, capsys):
    run = str(reverse_run[0])
    lines = ["a b c", "", "   ", "d e f g", "b 漢字 🙂 ü", "a " * 400 + "b"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["translate", run, "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt"),
                 "--beam", "2"]) == 0
    out = (tmp_path / "out.txt").read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    assert out[0] == "c b a" and out[1] == "" and out[2] == "" and out[3] == "g f e d"
    err = capsys.readouterr().err
    assert "line 6" in err and "max_seq_len" in err  # the long line was cut, with a warning
    assert main(["translate", run, "h g f"]) == 0
    assert capsys.readouterr().out.strip() == "f g h"
    assert main(["translate", run]) == 2  # nothing to translate: a clear error
    assert "give the sentences" in capsys.readouterr().err


def test_translate_cli_decodes_as_the_run_did_unless_told(reverse_run, monkeypatch, capsys):
    """Unset, --beam and --length-penalty are the run's own data.beam and data.length_penalty (3 and 0.8 here),
    those its test BLEU was measured with."""
    import archlab.tasks.translation as translation

    seen, real = [], translation.beam_search

    def spy(model, src, bos, eos, max_len, beam, length_penalty, *rest):
        seen.append((beam, length_penalty))
        return real(model, src, bos, eos, max_len, beam, length_penalty, *rest)

    monkeypatch.setattr(translation, "beam_search", spy)
    run = str(reverse_run[0])
    assert main(["translate", run, "h g f"]) == 0
    assert main(["translate", run, "h g f", "--beam", "2", "--length-penalty", "1.0"]) == 0
    assert capsys.readouterr().out.split() == ["f", "g", "h"] * 2
    assert seen == [(3, 0.8), (2, 1.0)]


# ---------------------------------------------------------------------------------------------
# data

def test_bad_tsv_lines_are_reported_with_line_numbers(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("a b\tb a\nno tab here\nc d\tdc\n\tempty source\n")
    for split in ("valid", "test"):
        (data / f"{split}.tsv").write_text("a\ta\n")
    task = Translation(load_run_config(reverse_config(data)))
    with pytest.raises(DataError, match=r"(?s)train\.tsv: 2 bad line\(s\).*line 2: expected 2 tab-separated.*line 4: empty"
                                        r" source"):
        task.prepare()
    (data / "test.tsv").unlink()
    with pytest.raises(DataError, match="no test.tsv or test.jsonl"):
        task.prepare()


def test_token_batches_are_deterministic_and_bounded(reverse_run):
    task = Translation(load_run_config(reverse_run[0] / "config.yaml"))
    task.load_assets(reverse_run[0] / "checkpoints" / "best")
    task.prepare()
    plan = task.epoch_plan(0, 64, 0)
    assert plan == task.epoch_plan(0, 64, 0) and plan != task.epoch_plan(1, 64, 0)
    assert sorted(i for b in plan for i in b) == list(range(len(task.examples["train"][0])))
    for refs in plan:
        b = task.collate(refs, torch.Generator(), torch.device("cpu"))
        assert max(b["src"].size(1), b["tgt_in"].size(1)) * len(refs) <= task.data.max_tokens
        assert ((b["src"] == 0).sum(1) == b["src"].size(1) - torch.tensor([len(task.examples["train"][0][i])
                                                                           for i in refs])).all()
    with pytest.raises(ConfigError, match="max_tokens must be at least 1"):
        Translation(load_run_config({**reverse_config(Path(".")), "data": {"max_tokens": 0}}))


def test_misnumbered_chapters_on_the_jonah_pattern():
    # RV1909 leaves Jonah 1:17 empty and opens chapter 2 with it; a merged verse (Acts 19:40-41)
    # spoils only its chapter unless it ends one; WEB's omission (Luke 17:36) mid-chapter likewise
    spa = [Verse("Jonah", 1, 16, "x"), Verse("Jonah", 1, 17, ""), Verse("Jonah", 2, 1, "y"), Verse("Jonah", 3, 1, "z"),
           Verse("Luke", 17, 35, "a"), Verse("Luke", 17, 36, "b"), Verse("Luke", 17, 37, "c"),
           Verse("Luke", 18, 1, "d")]
    web = [Verse("Jonah", 1, 16, "X"), Verse("Jonah", 1, 17, "Y"), Verse("Jonah", 2, 1, "Z"), Verse("Jonah", 3, 1, "W"),
           Verse("Luke", 17, 35, "A"), Verse("Luke", 17, 36, ""), Verse("Luke", 17, 37, "C"),
           Verse("Luke", 18, 1, "D")]
    assert misnumbered_chapters(spa, web) == [("Jonah", 1), ("Jonah", 2), ("Luke", 17)]


def test_real_bible_prepared_by_whole_books(tmp_path):
    require_command("diatheke", "diatheke")
    run = load_run_config({"task": "translation", "model": {"preset": "transformer-tiny"},
                           "data": {"books": "Daniel-Amos", "bible_dir": str(tmp_path / "bible"), "vocab_size": 500},
                           "train": {"max_steps": 1}})
    task = Translation(run)
    task.prepare()
    assert task.tokenizer.vocab_size == 500
    books = {s: {line.rsplit(" ", 1)[0] for line in (tmp_path / "bible" / f"{s}.ref").read_text().splitlines()}
             for s in ("train", "valid", "test")}
    assert books == {"train": {"Hosea"}, "valid": {"Daniel"}, "test": {"Joel", "Amos"}}
    refs = (tmp_path / "bible" / "train.ref").read_text().splitlines()
    # RV1909 leaves Hosea 11:12 empty and opens chapter 12 with it: both chapters are left out
    assert not [r for r in refs if r.startswith(("Hosea 11:", "Hosea 12:"))]
    assert "Hosea 13:1" in refs
    assert task.stats["dropped_misnumbered"] == {"chapters": ["Hosea 11", "Hosea 12"], "pairs": 25}
    src, tgt = task.text["train"][refs.index("Hosea 13:1")]
    assert src.startswith("CUANDO Ephraim hablaba") and tgt.startswith("When Ephraim spoke")
    assert len(task.text["test"]) == sum(1 for _ in (tmp_path / "bible" / "test.tsv").open()) > 200
    # the cache is reused: same settings, no new diatheke run
    stamp = (tmp_path / "bible" / "stats.json").stat().st_mtime_ns
    Translation(run).prepare()
    assert (tmp_path / "bible" / "stats.json").stat().st_mtime_ns == stamp


def test_translate_takes_sentences_before_or_after_options(monkeypatch):
    from archlab import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_translate", lambda args: seen.append((args.text, args.beam)))
    assert cli.main(["translate", "RUN", "--beam", "1", "En el principio", "y la tierra"]) == 0
    assert cli.main(["translate", "RUN", "En el principio", "--beam", "2"]) == 0
    assert seen == [(["En el principio", "y la tierra"], 1), (["En el principio"], 2)]
    with pytest.raises(SystemExit):
        cli.main(["translate", "RUN", "--no-such-option", "x"])
