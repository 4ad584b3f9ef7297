"""Text readers: line-numbered errors on users' files, and the real fortune data (Debian packages)."""
import json
import re
from collections import Counter

import pytest

from archlab.data import text as T
from archlab.data.text import DataError

from conftest import require_path

FORTUNES = "/usr/share/games/fortunes"


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


# ---- parallel text ---------------------------------------------------------------------------

def test_parallel_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path, "p.tsv", "hello\tbonjour\nthank you\tmerci\n\n\n")
    assert T.read_parallel(tsv) == [("hello", "bonjour"), ("thank you", "merci")]
    rows = [{"en": "cat", "fr": "chat"}, {"en": "dog\u2028", "fr": "chien"}]
    jl = write(tmp_path, "p.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert T.read_parallel(jl, "en", "fr") == [("cat", "chat"), ("dog", "chien")]


def test_parallel_bad_lines_are_numbered(tmp_path):
    tsv = write(tmp_path, "bad.tsv", "a\tb\nno tab here\nc\td\te\n\tempty source\nf\tg\n\nh\ti\n")
    with pytest.raises(DataError) as e:
        T.read_parallel(tsv)
    msg = str(e.value)
    assert "bad.tsv" in msg and "4 bad line(s)" in msg
    for n in (2, 3, 4, 6):
        assert f"line {n}:" in msg
    assert "line 1:" not in msg and "line 5:" not in msg
    rows, bad = T.read_parallel(tsv, skip_bad=True)
    assert rows == [("a", "b"), ("f", "g"), ("h", "i")] and [n for n, _ in bad] == [2, 3, 4, 6]


def test_parallel_jsonl_reasons(tmp_path):
    lines = ['{"src": "a", "tgt": "b"}', "{not json", '{"src": "a"}', '{"src": "", "tgt": "b"}', "[1, 2]"]
    path = write(tmp_path, "bad.jsonl", "\n".join(lines))
    msg = str(pytest.raises(DataError, T.read_parallel, path).value)
    assert re.search(r"line 2: invalid JSON", msg) and re.search(r"line 3: missing field.*tgt", msg)
    assert re.search(r"line 4: empty", msg) and re.search(r"line 5: expected a JSON object", msg)


def test_many_bad_lines_listed_briefly(tmp_path):
    path = write(tmp_path, "many.tsv", "x\n" * 25 + "a\tb\n")
    msg = str(pytest.raises(DataError, T.read_parallel, path).value)
    assert "25 bad line(s)" in msg and "line 10:" in msg and "line 11:" not in msg and "15 more" in msg


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.tsv"):
        T.read_parallel(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match=r"p\.xml.*\.tsv"):
        T.read_parallel(write(tmp_path, "p.xml", "<a/>"))
    latin = tmp_path / "latin.tsv"
    latin.write_bytes(b"ok\tfine\ncaf\xe9\tcoffee\n")
    with pytest.raises(DataError, match=r"latin.tsv:2: not UTF-8"):
        T.read_parallel(latin)


# ---- labelled text ---------------------------------------------------------------------------

def test_labelled_csv(tmp_path):
    path = write(tmp_path, "l.csv", 'id,text,label\n1,"hello, world",pos\n2,"two\nlines",neg\n')
    assert T.read_labelled(path) == [("hello, world", "pos"), ("two\nlines", "neg")]


def test_labelled_csv_bad_rows(tmp_path):
    path = write(tmp_path, "l.csv", 'text,label\nfine,a\n"multi\nline",\ntoo,many,cols\n\nok,b\n\n')
    msg = str(pytest.raises(DataError, T.read_labelled, path).value)
    # the multi-line record starts on line 3; line 6 is blank; trailing blank lines are fine
    assert "line 3: empty 'label'" in msg and "line 5: expected 2 columns" in msg and "line 6: blank" in msg
    assert "3 bad line(s)" in msg
    with pytest.raises(DataError, match=r"l2.csv:1: header .* lacks column\(s\) \['label'\]"):
        T.read_labelled(write(tmp_path, "l2.csv", "text,category\nx,y\n"))
    assert T.read_labelled(tmp_path / "l2.csv", label_field="category") == [("x", "y")]


def test_labelled_jsonl(tmp_path):
    path = write(tmp_path, "l.jsonl", '{"text": "hi", "label": 3}\n{"text": "yo"}\n')
    with pytest.raises(DataError, match=r"l.jsonl.*\n  line 2: missing field"):
        T.read_labelled(path)
    rows, bad = T.read_labelled(path, skip_bad=True)
    assert rows == [("hi", "3")] and bad[0][0] == 2


# ---- hostile files: one DataError naming the file (and line), never another exception ------------

def bad(reader, path, **kw) -> str:
    with pytest.raises(DataError) as e:
        reader(path, **kw)
    msg = str(e.value)
    assert msg.startswith(f"{path}") and len(msg) < 2000, msg
    return msg


def test_encoding_nul_and_directories(tmp_path):
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("ok\tfine\nok\tfine\n".encode() + "caf\u00e9\tcoffee\n".encode("latin-1"))
    assert bad(T.read_parallel, latin) == (f"{latin}:3: not UTF-8 (byte 0xe9: invalid continuation byte); "
                                           f"re-save the file as UTF-8")
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("text,label\nhi,a\n".encode("utf-16"))
    assert bad(T.read_labelled, utf16).startswith(f"{utf16}:1: not UTF-8 (it looks like UTF-16)")
    nul = write(tmp_path, "nul.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a\x00", "tgt": "b"}\n')
    assert bad(T.read_parallel, nul) == f"{nul}:2: NUL byte; this is not a text file (re-save it as UTF-8 text)"
    (tmp_path / "dir.tsv").mkdir()
    assert bad(T.read_parallel, tmp_path / "dir.tsv") == f"{tmp_path / 'dir.tsv'}: is a directory, not a text file"


def test_jsonl_hostile_lines(tmp_path):
    lines = ["[" * 100_000 + "]" * 100_000, '{"src": ' + "9" * 5000 + ', "tgt": "x"}', '"just a string"',
             '{"src": {"a": [1]}, "tgt": "x"}', json.dumps({f"k{i}" * 50: i for i in range(1000)}),
             '{"src": "a", "tgt": 1}']
    path = write(tmp_path, "h.jsonl", "\n".join(lines))
    msg = bad(T.read_parallel, path)
    assert "5 bad line(s) (1 good)" in msg and "line 1: invalid JSON (nested too deeply)" in msg
    assert "line 2: invalid JSON (Exceeds the limit (4300 digits)" in msg
    assert "line 3: expected a JSON object, got str" in msg
    assert "line 4: ['src'] must be text or a number, got dict" in msg
    assert re.search(r"line 5: missing field\(s\) \['src', 'tgt'\] \(has 'k0k0.*\.\.\. \(1000 in all\)\)", msg)
    assert T.read_parallel(path, skip_bad=True)[0] == [("a", "1")]


def test_csv_field_too_large_and_wrong_columns(tmp_path):
    path = write(tmp_path, "big.csv", 'text,label\nfine,a\n"' + "x" * 200_000 + '",b\nok,c\n')
    assert "line 3: CSV error: field larger than field limit (131072)" in bad(T.read_labelled, path)
    path = write(tmp_path, "bighead.csv", '"' + "h" * 200_000 + '",label\nx,y\n')
    assert bad(T.read_labelled, path).startswith(f"{path}:1: header row: CSV error: field larger than field limit")
    path = write(tmp_path, "wide.tsv", "\t".join("c" * 1000 + str(i) for i in range(100)) + "\nx\n")
    msg = bad(T.read_labelled, path)
    assert msg.endswith("lacks column(s) ['text', 'label']; pass text_field=/label_field= to name the right ones")
    assert "(100 in all)" in msg and len(msg) < 1000


# ---- corpora from files ----------------------------------------------------------------------

def test_corpus_from_path(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    assert T.corpus_text(tmp_path) == "first\n\nsecond"
    assert T.corpus_text(tmp_path / "a.txt") == "first"
    with pytest.raises(DataError, match=r"(?s)no-such-corpus.*tang300.*bible-web.*path"):
        T.corpus_text("no-such-corpus")


def test_missing_fortunes_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHLAB_FORTUNES_DIR", str(tmp_path))
    assert T.fortune_dir() == tmp_path
    with pytest.raises(DataError, match="apt-get install fortunes-zh"):
        T.corpus_text("tang300")
    with pytest.raises(DataError, match="apt-get install fortunes$|apt-get install fortunes "):
        T.corpus_text("fortunes")


def test_fortune_file_cleaning(tmp_path):
    raw = ("\x1b[32m《Title》\x1b[m\nplain\n%\n\n%\n_\b_\b_\bund *__\b\bok*\x07\n%\n"
           "It\u00c3\u0083\u00c2\u00a2\u00c3\u0082\u00c2\u0080\u00c3\u0082\u00c2\u0099s caf\u00e9\n%\n")
    got = T.read_fortune_file(write(tmp_path, "f", raw))
    assert got == ["《Title》\nplain", "und *ok*", "It\u2019s caf\u00e9"]


# ---- real data: Debian fortunes / fortunes-zh ------------------------------------------------

@pytest.fixture(scope="module")
def splits():
    require_path(FORTUNES, "fortunes")
    return T.load_fortunes_split()


def test_categories_are_big_enough():
    d = require_path(FORTUNES, "fortunes")
    for cat in T.FORTUNE_CATEGORIES:
        entries = T.read_fortune_file(d / cat)
        assert len(entries) >= 140, cat
        assert not any(re.search(r"[\x00-\x08\x0b-\x1f\x7f]", e) for e in entries), cat


def test_split_is_deterministic_and_seeded(splits):
    assert T.load_fortunes_split() == splits
    other = T.load_fortunes_split(seed=1)
    assert other != splits and sorted(other["test"] + other["valid"] + other["train"]) == \
        sorted(splits["test"] + splits["valid"] + splits["train"])


def test_split_is_stratified(splits):
    total = Counter(lab for rows in splits.values() for _, lab in rows)
    assert set(total) == set(T.FORTUNE_CATEGORIES)
    for name, frac in [("train", 0.8), ("valid", 0.1), ("test", 0.1)]:
        counts = Counter(lab for _, lab in splits[name])
        for cat, n in total.items():
            assert abs(counts[cat] / n - frac) < 0.01, (name, cat)


def test_no_text_in_two_splits(splits):
    keys = {name: {" ".join(t.split()) for t, _ in rows} for name, rows in splits.items()}
    assert sum(len(rows) for rows in splits.values()) == len(keys["train"] | keys["valid"] | keys["test"])


def test_prepare_fortunes_writes_files(tmp_path):
    require_path(FORTUNES, "fortunes")
    stats = T.prepare_fortunes(tmp_path, categories=("law", "food"))
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert set(rows[0]) == {"text", "label"} and {r["label"] for r in rows} == {"law", "food"}
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    assert sum(stats["counts"]["train"].values()) == stats["sizes"]["train"] == len(rows)
    assert T.prepare_fortunes(tmp_path / "again", categories=("law", "food")) == stats
    assert (tmp_path / "again" / "test.jsonl").read_bytes() == (tmp_path / "test.jsonl").read_bytes()


def test_tang300_is_chinese_poetry():
    require_path(f"{FORTUNES}/tang300", "fortunes-zh")
    text = T.corpus_text("tang300")
    han = sum("\u4e00" <= c <= "\u9fff" for c in text)
    assert 20_000 < len(text) < 60_000 and han / len(text) > 0.6
    assert "床前明月光" in text and "\x1b" not in text
    assert len(T.corpus_text("chinese")) > 10 * len(text)


def test_english_fortunes_corpus():
    require_path(FORTUNES, "fortunes")
    text = T.corpus_text("fortunes")
    assert len(text) > 1_000_000 and "\x08" not in text and "\u00c3" not in text
