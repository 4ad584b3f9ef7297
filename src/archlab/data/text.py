"""Text datasets: parallel text, labelled text, the Debian fortune files and pretraining corpora.

Readers only (no torch). Every failure is a DataError that names the file, the line where there
is one, and what to do about it. Bad lines are never dropped silently: a reader collects them all
and raises once, listing the first few with line numbers and the total count.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from pathlib import Path

from ..errors import DataError

DEFAULT_FORTUNE_DIR = "/usr/share/games/fortunes"
CHINESE_FORTUNES = ("chinese", "song100", "tang300")  # what the Debian package fortunes-zh installs

# English categories for text classification (Debian `fortunes`, entries as parsed here):
#   art 465, computers 1051, education 203, food 198, law 206, literature 262,
#   politics 703, science 625, songs-poems 720, sports 147, startrek 227, work 630
# Each is a topic (so the label is learnable from the text) with >= ~150 entries (so even a 10%
# test split holds ~15 per label). Left out: tiny files (< 100: goedel, magic, medicine, news,
# paradoxum, pets, pratchett, tao, translate-me, ascii-art, ...), ASCII pictures (ascii-art),
# files that are about no topic (cookie, fortunes, miscellaneous, platitudes, people, wisdom,
# zippy, disclaimer, definitions, riddles, knghtbrd), the Linux/Debian/Perl in-jokes, and
# men-women/ethnic/drugs, which hold the crude jokes. Debian ships offensive fortunes in a
# separate package (fortunes-off), so there is no off/ directory to avoid here.
FORTUNE_CATEGORIES = (
    "art", "computers", "education", "food", "law", "literature",
    "politics", "science", "songs-poems", "sports", "startrek", "work",
)

_MAX_LISTED = 10




# ---------------------------------------------------------------------------------------------
# line-numbered bad-line reporting shared by the readers

def _raise_bad(path: Path, bad: list[tuple[int, str]], n_good: int) -> None:
    shown = "\n".join(f"  line {n}: {why}" for n, why in bad[:_MAX_LISTED])
    more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise DataError(f"{path}: {len(bad)} bad line(s) ({n_good} good); fix them or pass "
                    f"skip_bad=True to skip them with a report:\n{shown}{more}")


def _open_text(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: tolerate a BOM from spreadsheets
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        utf16 = " (it looks like UTF-16)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DataError(f"{path}:{line}: not UTF-8{utf16} (byte {raw[e.start]:#04x}: {e.reason}); "
                        f"re-save the file as UTF-8") from None
    if "\x00" in text:  # no text format here has a use for NUL: a binary file, or a broken export
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}:{line}: NUL byte; this is not a text file (re-save it as UTF-8 text)")
    return path, text


def _trim_end(text: str) -> str:
    return re.sub(r"(?:\r?\n[ \t]*)+\Z", "", text)  # blank lines at EOF are fine, inside they are not


def _numbered_lines(text: str):
    # split on \n only: str.splitlines would also break inside JSON strings at U+2028 and the like
    text = _trim_end(text)
    lines = text.split("\n") if text.strip() else []
    return enumerate((line.rstrip("\r") for line in lines), 1)


def _read_jsonl(path: Path, text: str, fields: tuple[str, str]):
    rows, bad = [], []
    for n, line in _numbered_lines(text):
        if not line.strip():
            bad.append((n, "blank line"))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((n, f"invalid JSON ({e.msg})"))
            continue
        except RecursionError:
            bad.append((n, "invalid JSON (nested too deeply)"))
            continue
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            bad.append((n, f"invalid JSON ({str(e)[:80]})"))
            continue
        if not isinstance(obj, dict):
            bad.append((n, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        missing = [f for f in fields if f not in obj]
        if missing:
            has = sorted(obj)
            shown = ", ".join(repr(k[:40]) for k in has[:8]) + (f", ... ({len(has)} in all)" if len(has) > 8 else "")
            bad.append((n, f"missing field(s) {missing} (has {shown or 'none'})"))
            continue
        nested = [f for f in fields if isinstance(obj[f], (dict, list))]
        if nested:
            bad.append((n, f"{nested} must be text or a number, got {type(obj[nested[0]]).__name__}"))
            continue
        row = tuple("" if obj[f] is None else str(obj[f]).strip() for f in fields)
        empty = [f for f, v in zip(fields, row) if not v]
        if empty:
            bad.append((n, f"empty {empty}"))
            continue
        rows.append(row)
    return rows, bad


def _finish(path: Path, rows, bad, skip_bad: bool):
    if bad and not skip_bad:
        _raise_bad(path, bad, len(rows))
    if not rows:
        raise DataError(f"{path}: no usable rows")
    return (rows, bad) if skip_bad else rows


def read_parallel(path, src_field="src", tgt_field="tgt", skip_bad=False):
    """Sentence pairs for translation from TSV (source<TAB>target) or JSONL ({src_field, tgt_field}).

    Returns [(src, tgt)], or ([(src, tgt)], [(line, reason)]) with skip_bad=True.
    """
    path, text = _open_text(path)
    if path.suffix in (".jsonl", ".json"):
        rows, bad = _read_jsonl(path, text, (src_field, tgt_field))
    elif path.suffix in (".tsv", ".txt"):
        rows, bad = [], []
        for n, line in _numbered_lines(text):
            cols = line.split("\t")
            if len(cols) != 2:
                bad.append((n, f"expected 2 tab-separated columns, got {len(cols)}"))
            elif not cols[0].strip() or not cols[1].strip():
                bad.append((n, "empty " + ("source" if not cols[0].strip() else "target")))
            else:
                rows.append((cols[0].strip(), cols[1].strip()))
    else:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .tsv (source<TAB>target) "
                        f"or .jsonl ({{\"{src_field}\": ..., \"{tgt_field}\": ...}})")
    return _finish(path, rows, bad, skip_bad)


def read_labelled(path, text_field="text", label_field="label", skip_bad=False):
    """(text, label) pairs from CSV/TSV with a header row, or JSONL. Labels come back as strings.

    Returns [(text, label)], or ([(text, label)], [(line, reason)]) with skip_bad=True.
    """
    path, text = _open_text(path)
    fields = (text_field, label_field)
    if path.suffix in (".jsonl", ".json"):
        rows, bad = _read_jsonl(path, text, fields)
        return _finish(path, rows, bad, skip_bad)
    if path.suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .csv/.tsv with a header row "
                        f"naming {text_field!r} and {label_field!r}, or .jsonl")
    reader = csv.reader(io.StringIO(_trim_end(text), newline=""), delimiter="\t" if path.suffix == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file") from None
    except csv.Error as e:
        raise DataError(f"{path}:1: header row: CSV error: {e}") from None
    header = [h.strip() for h in header]
    missing = [f for f in fields if f not in header]
    if missing:
        shown = [h[:40] for h in header[:10]] + ([f"... ({len(header)} in all)"] if len(header) > 10 else [])
        raise DataError(f"{path}:1: header {shown} lacks column(s) {missing}; "
                        f"pass text_field=/label_field= to name the right ones")
    ti, li = header.index(text_field), header.index(label_field)
    rows, bad = [], []
    start = 2
    try:
        for rec in reader:
            n, start = start, reader.line_num + 1  # a quoted field may span lines: report where it began
            if not any(c.strip() for c in rec):
                bad.append((n, "blank line"))
                continue
            if len(rec) != len(header):
                bad.append((n, f"expected {len(header)} columns, got {len(rec)}"))
                continue
            t, lab = rec[ti].strip(), rec[li].strip()
            if not t or not lab:
                bad.append((n, f"empty {text_field if not t else label_field!r}"))
                continue
            rows.append((t, lab))
    except csv.Error as e:
        bad.append((start, f"CSV error: {e}"))
    return _finish(path, rows, bad, skip_bad)


# ---------------------------------------------------------------------------------------------
# fortunes

def fortune_dir() -> Path:
    """Where the fortune files live: $ARCHLAB_FORTUNES_DIR, else Debian's /usr/share/games/fortunes."""
    return Path(os.environ.get("ARCHLAB_FORTUNES_DIR") or DEFAULT_FORTUNE_DIR)


_default_fortune_dir = fortune_dir  # the loaders' fortune_dir= argument shadows the function


def _package_for(name: str) -> str:
    return "fortunes-zh" if name in CHINESE_FORTUNES else "fortunes"


def fortune_path(name: str, directory=None) -> Path:
    path = Path(directory or fortune_dir()) / name
    if not path.is_file():
        pkg = _package_for(name)
        raise DataError(f"{path}: fortune file missing; install the Debian package {pkg}: "
                        f"apt-get install {pkg} (or point ARCHLAB_FORTUNES_DIR at a copy)")
    return path


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")   # fortunes-zh colours titles and authors
_OVERSTRIKE = re.compile(r"[^\x08]\x08")       # "_\bX" underlines, "X\bX" bolds, as for a teletype
_MOJIBAKE = re.compile(r"(?:[\xc2-\xf4][\x80-\xbf]+)+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # bells (^G) and the like; keeps \t and \n


def _clean(entry: str) -> str:
    while (new := _ANSI.sub("", entry)) != entry:  # fortunes-zh nests some: "\x1b[;\x1b[34;1mm"
        entry = new
    while "\x08" in entry:  # "___\b\b\bfoo" needs several passes
        new = _OVERSTRIKE.sub("", entry)
        entry = new if new != entry else entry.replace("\x08", "")  # a stray leading backspace
    entry = _CONTROL.sub("", entry)
    # a few entries hold UTF-8 that was encoded again (up to thrice, in law and pets): read as
    # latin-1, such a run is a UTF-8 lead byte plus continuation bytes, which real text never is
    for _ in range(3):
        entry = _MOJIBAKE.sub(_unmojibake, entry)
    return entry


def _unmojibake(m: re.Match) -> str:
    try:
        return m.group().encode("latin-1").decode("utf-8")
    except UnicodeError:
        return m.group()


def read_fortune_file(path) -> list[str]:
    """Entries of one fortune file: split on lines holding only '%', cleaned, stripped, non-empty.

    Cleaning removes the terminal escapes fortunes-zh uses for colour, the backspace overstrikes
    some English files use for underline/bold, and repairs doubly-encoded UTF-8. Every file in
    Debian's fortunes and fortunes-zh is UTF-8 (the '.u8' names are symlinks to the same files),
    so latin-1 is only a fallback for a user's old file, where it decodes any byte string.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: fortune file missing; install the Debian package "
                        f"{_package_for(path.name)}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    entries = (_clean(e).strip() for e in re.split(r"^%[ \t\r]*$", text, flags=re.M))
    return [e for e in entries if e]


def _dedup_key(text: str) -> str:
    return " ".join(text.split())


def load_fortunes_split(categories=FORTUNE_CATEGORIES, fortune_dir=None, valid_frac=0.1,
                        test_frac=0.1, seed=0) -> dict[str, list[tuple[str, str]]]:
    """{"train"|"valid"|"test": [(text, label)]}, deterministic and stratified by category.

    Duplicate texts (up to whitespace) are dropped first, so no text can sit in two splits: one
    copy is kept when the copies share a label, none when they disagree (the label is ambiguous).
    Each category is shuffled by its own generator (seeded by seed and its name) and cut into
    test/valid/train by the fractions, so each label has its share in every split.
    """
    if min(valid_frac, test_frac) < 0 or valid_frac + test_frac >= 1:
        raise ValueError(f"need valid_frac, test_frac >= 0 and their sum < 1, got {valid_frac}, {test_frac}")
    labels_of: dict[str, set[str]] = {}
    per_cat: dict[str, list[str]] = {}
    for cat in categories:
        texts = read_fortune_file(fortune_path(cat, fortune_dir))
        per_cat[cat] = texts
        for t in texts:
            labels_of.setdefault(_dedup_key(t), set()).add(cat)
    splits = {"train": [], "valid": [], "test": []}
    for cat, texts in per_cat.items():
        seen, keep = set(), []
        for t in texts:
            k = _dedup_key(t)
            if len(labels_of[k]) == 1 and k not in seen:
                seen.add(k)
                keep.append(t)
        random.Random(f"{seed}/{cat}").shuffle(keep)
        n_test, n_valid = round(len(keep) * test_frac), round(len(keep) * valid_frac)
        splits["test"] += [(t, cat) for t in keep[:n_test]]
        splits["valid"] += [(t, cat) for t in keep[n_test:n_test + n_valid]]
        splits["train"] += [(t, cat) for t in keep[n_test + n_valid:]]
    for name, rows in splits.items():  # mix the labels so a file read in order is not sorted by label
        random.Random(f"{seed}/{name}").shuffle(rows)
    return splits


def prepare_fortunes(out_dir, categories=FORTUNE_CATEGORIES, fortune_dir=None, valid_frac=0.1,
                     test_frac=0.1, seed=0) -> dict:
    """Write out_dir/{train,valid,test}.jsonl ({"text", "label"}) and stats.json; return the stats."""
    splits = load_fortunes_split(categories, fortune_dir, valid_frac, test_frac, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text, label in rows:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    counts = {name: {c: sum(1 for _, lab in rows if lab == c) for c in categories}
              for name, rows in splits.items()}
    stats = {"source": str(fortune_dir or _default_fortune_dir()), "categories": list(categories),
             "seed": seed, "valid_frac": valid_frac, "test_frac": test_frac,
             "sizes": {name: len(rows) for name, rows in splits.items()}, "counts": counts}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


# ---------------------------------------------------------------------------------------------
# pretraining corpora

def _fortunes_corpus(names, directory=None) -> str:
    return "\n\n".join(e for n in names for e in read_fortune_file(fortune_path(n, directory)))


_NOT_FOR_PRETRAINING = (*CHINESE_FORTUNES, "ascii-art", "men-women", "ethnic", "drugs")


def fortunes_pretraining_text(fortune_dir=None, seed=0) -> str:
    """Every English fortune file (less pictures and crude jokes), without the validation and test
    texts of load_fortunes_split: unlabelled text to pretrain a classifier's backbone on without
    it ever reading a text it is evaluated on. Entries in a seeded random order, so the last 10%
    (a language model's validation split) holds every file."""
    directory = Path(fortune_dir or _default_fortune_dir())
    splits = load_fortunes_split(fortune_dir=fortune_dir, seed=seed)
    held_out = {_dedup_key(t) for s in ("valid", "test") for t, _ in splits[s]}
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and "." not in p.name and p.name not in _NOT_FOR_PRETRAINING)
    entries = [e for n in names for e in read_fortune_file(directory / n) if _dedup_key(e) not in held_out]
    random.Random(f"{seed}/pretrain").shuffle(entries)
    return "\n\n".join(entries)


NAMED_CORPORA = {
    "fortunes": "English fortunes of FORTUNE_CATEGORIES (Debian package fortunes)",
    "fortunes-pretrain": "English fortunes without the classification set's valid/test texts (Debian package fortunes)",
    "tang300": "300 Tang poems (Debian package fortunes-zh)",
    "chinese": "all Chinese fortunes: chinese, song100, tang300 (Debian package fortunes-zh)",
    "bible-web": "World English Bible (archlab.data.bible, module engWEB2015eb)",
    "bible-kjv": "King James Version (archlab.data.bible, module engKJV2006eb)",
}


def corpus_text(name_or_path) -> str:
    """The whole text of a named corpus (see NAMED_CORPORA) or of a .txt file / directory of them.

    Names win over paths; pass e.g. "./fortunes" to read a local file of that name.
    """
    name = str(name_or_path)
    if name == "fortunes":
        return _fortunes_corpus(FORTUNE_CATEGORIES)
    if name == "fortunes-pretrain":
        return fortunes_pretraining_text()
    if name == "tang300":
        return _fortunes_corpus(["tang300"])
    if name == "chinese":
        return _fortunes_corpus(CHINESE_FORTUNES)
    if name in ("bible-web", "bible-kjv"):
        from archlab.data import bible  # lazy: only bible users need it
        return bible.corpus_text("engWEB2015eb" if name == "bible-web" else "engKJV2006eb")
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path}: directory holds no .txt files")
        text = "\n\n".join(_open_text(f)[1] for f in files)
    elif path.is_file():
        text = _open_text(path)[1]
    else:
        known = "\n".join(f"  {k}: {v}" for k, v in NAMED_CORPORA.items())
        raise DataError(f"{name!r}: not a named corpus and no such file or directory. Named corpora:\n"
                        f"{known}\nor give a path to a UTF-8 .txt file or a directory of them")
    if not text.strip():
        raise DataError(f"{path}: empty corpus")
    return text
