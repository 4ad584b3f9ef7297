"""Verse-aligned Bibles from installed SWORD modules, read through `diatheke` or, without it, in pure
Python with `pysword`.

Two uses: parallel text for machine translation (e.g. Spanish spaRV1909eb -> English
engWEB2015eb, aligned by book/chapter/verse) and plain text for LM pretraining (`bible-web` =
engWEB2015eb, `bible-kjv` = engKJV2006eb).

Two readers give the same verses, character for character (checked on the whole of the three modules
in tests/test_bible.py): `diatheke` (Debian's SWORD front end; used when installed) and `pysword` (a pure
Python reader of the module files: for machines without diatheke, e.g. modules unzipped under ~/.sword).
$ARCHLAB_BIBLE_READER=diatheke|pysword chooses one.

`diatheke -f plain` prints one `Book C:V: text` line per verse, with quirks that parse_plain
undoes (each has a unit test on real output in tests/test_bible.py):
  - poetry: a verse runs on over several lines; the continuation lines belong to it.
  - psalm titles: from Psalms 3 on, WEB and KJV print the latest psalm title again before every
    later verse (to the end of the Bible), on its own line just above the verse's reference
    line, which is then indented. The title is not verse text; it is dropped everywhere (also
    above a psalm's first verse: the English modules number titles as no verse; RV1909 puts the
    title inside verse 1, which this cannot change).
  - footnotes and cross-references: plain output deletes a note without leaving a space, gluing the
    words around it ("Godcreated", "YahwehGod", "hear,the dead"). We run `-o fs`, which prints each
    footnote and cross-reference inline as `God [1:1 The Hebrew word ...] created`, and cut the notes
    out ourselves (only brackets that open with a chapter:verse / chapter.verse reference, so KJV's
    "[but]" stays).
  - Strong's numbers like `<G3588>` / `<H0398>` leak into RV1909 -> stripped.
  - an empty verse keeps its reference line (sometimes behind raw OSIS markup): kept with text ""
    so align() can count it.
  - engWEB2015eb's Genesis-Revelation also holds 17 deuterocanonical books; only the 66 books of
    the Protestant canon (BOOKS) are kept. diatheke's names ("I Samuel", "Revelation of John")
    are mapped to BOOKS.
  - back matter: WEB ends with a glossary (one long indented line after Revelation 22:21) and
    every module ends with a `(moduleName)` line; neither is verse text.
The pysword reader gets each verse's OSIS markup and renders it as diatheke does (osis_plain).
"""
from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

BOOKS: tuple[str, ...] = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
    "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians", "2 Thessalonians",
    "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
    "1 John", "2 John", "3 John", "Jude", "Revelation",
)

# Held-out whole books (a verse-level split would leak: neighbouring verses share names and
# phrasing). Each set mixes narrative, poetry/wisdom, prophecy and epistles from both testaments,
# ~1,100-1,200 verses each. Avoided: books with long parallels elsewhere (Samuel-Kings/Chronicles,
# the synoptic gospels, Ephesians/Colossians, Jude/2 Peter, Obadiah/Jeremiah 49), so held-out
# verses are not near-copies of training verses; and books where the modules' versification
# differs (see align()): Jonah 2, Hosea 12, Romans 14:23/16:25-27, 2 Corinthians 13.
VALID_BOOKS: tuple[str, ...] = ("Esther", "Lamentations", "Daniel", "Hebrews", "1 Peter")
TEST_BOOKS: tuple[str, ...] = ("Ruth", "Ecclesiastes", "Joel", "Amos",
                               "1 Corinthians", "Galatians", "James")

INSTALL_HINT = "apt-get install diatheke sword-text-web sword-text-kjv sword-text-sparv"
PYSWORD_HINT = ("or, without Debian, `pip install pysword` and unzip the SWORD modules into ~/.sword "
                "(README, Data without Debian)")
READERS = ("diatheke", "pysword")


class BibleError(DataError):
    """diatheke/pysword or a SWORD module is missing; the message says what to install."""


@dataclass(frozen=True)
class Verse:
    book: str      # one of BOOKS
    chapter: int
    verse: int
    text: str      # cleaned, single-spaced; "" for a verse the module leaves empty

    @property
    def ref(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


# ---------------------------------------------------------------------------------------------
# parsing diatheke -f plain output

# `Book C:V: text`; indented after a repeated psalm title; an empty verse's line may start with
# raw OSIS markup (`<title ...>...</title> <l .../>Romans 16:26: `).
_REF = re.compile(r"^(?P<indent>\s*)(?:<.*>)?(?P<book>[1-4I]*\s?[A-Z][A-Za-z ()]*?) "
                  r"(?P<chapter>\d+):(?P<verse>\d+):(?: (?P<text>.*))?$")
# a footnote printed by -o f: `[1:1 ...]` (WEB) or `[1.4 ...]` (KJV), may hold one level of
# nested brackets (WEB Matthew 27:35: `[27:35 TR adds “...” [see Psalm 22:18 and John 19:24]]`)
_NOTE = re.compile(r"\[\s*\d+[:.]\d+(?:[^\[\]]|\[[^\[\]]*\])*\]")
# RV1909's Strong's tags follow a space: "Jesucristo <G5547>, hijo" -> "Jesucristo, hijo". The
# space goes too, also where a tag splits a word ("dínos <G2254>lo" -> "dínoslo"), except before
# the word "á" ("los reyes <H4397>á la guerra").
_STRONGS = re.compile(r"\s*<[GH]\d+>(?!á )|<[GH]\d+>")
_MODULE_LINE = re.compile(r"^\(\w+\)$")           # diatheke's trailing "(engWEB2015eb)"
_ROMAN = {"I": "1", "II": "2", "III": "3", "IV": "4"}
_ALIASES = {"Revelation of John": "Revelation", "Song of Songs": "Song of Solomon", "Psalm": "Psalms"}


def canonical_book(name: str) -> str | None:
    """diatheke's book name -> its name in BOOKS ("I Samuel" -> "1 Samuel"), None if not there."""
    first, _, rest = name.partition(" ")
    if first in _ROMAN and rest:
        name = f"{_ROMAN[first]} {rest}"
    name = _ALIASES.get(name, name)
    return name if name in BOOKS else None


def clean_text(text: str) -> str:
    """Verse text from -o f output -> clean text: footnotes and Strong's tags out, one space."""
    text = _NOTE.sub(" ", text)       # a space, not "": the note sat between two words
    text = _STRONGS.sub("", text)
    text = text.replace("¶", " ")     # KJV paragraph mark: layout, not text
    text = " ".join(text.split())
    return re.sub(r" (?=[,.;:!?)])", "", text)  # "he [note] ," -> "he ," -> "he,"


def parse_plain(text: str) -> list[Verse]:
    """Parse `diatheke -f plain` output into verses of the 66 BOOKS, in the order printed.

    Continuation lines join their verse; psalm titles, the glossary and the module-name line are
    dropped; empty verses are kept with text "" (align() drops and counts them).
    """
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and _MODULE_LINE.match(lines[-1].strip()):
        lines.pop()
    refs = [_REF.match(line) for line in lines]
    raw: list[tuple[str, int, int, list[str]]] = []
    in_verse = False   # False before the first reference and inside back matter
    for i, (line, m) in enumerate(zip(lines, refs)):
        if m:
            raw.append((m["book"], int(m["chapter"]), int(m["verse"]), [m["text"] or ""]))
            in_verse = True
        elif not line.strip():
            continue
        elif i + 1 < len(lines) and refs[i + 1] and refs[i + 1]["indent"]:
            continue   # a repeated psalm title: the line just above an indented reference
        elif line.startswith("  "):
            in_verse = False   # back matter (WEB's glossary): indented like a reference, but isn't one
        elif in_verse:
            raw[-1][3].append(line)
    verses = []
    for book, chapter, verse, parts in raw:
        name = canonical_book(book)
        if name is not None:   # drop deuterocanonical books
            verses.append(Verse(name, chapter, verse, clean_text(" ".join(parts))))
    return verses


# ---------------------------------------------------------------------------------------------
# reading a module: diatheke, or pysword

def bible_reader() -> str:
    """The reader read_module uses: $ARCHLAB_BIBLE_READER, else diatheke when installed, else pysword."""
    chosen = os.environ.get("ARCHLAB_BIBLE_READER", "")
    if chosen:
        if chosen not in READERS:
            raise BibleError(f"ARCHLAB_BIBLE_READER={chosen!r}: use one of {', '.join(READERS)}")
        return chosen
    if shutil.which("diatheke") is not None:
        return "diatheke"
    try:
        import pysword  # noqa: F401
    except ImportError:
        raise BibleError(f"neither diatheke nor pysword is installed; install the Bibles with `{INSTALL_HINT}`, "
                         f"{PYSWORD_HINT}") from None
    return "pysword"


def _run(args: list[str]) -> str:
    exe = shutil.which("diatheke")
    if exe is None:
        raise BibleError(f"diatheke not found; install it and the Bibles with `{INSTALL_HINT}`, {PYSWORD_HINT}")
    out = subprocess.run([exe, *args], capture_output=True, text=True, encoding="utf-8")
    if out.returncode != 0:
        raise BibleError(f"diatheke {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def installed_modules(reader: str | None = None) -> list[str]:
    """Names of the installed SWORD modules (`diatheke -b system -k modulelistnames`, or pysword's)."""
    if (reader or bible_reader()) == "pysword":
        return sorted(_sword_library()[1])
    return _run(["-b", "system", "-k", "modulelistnames"]).split()


@functools.lru_cache(maxsize=8)   # WEB takes ~5 s; the output str is immutable, so sharing is safe
def _plain(module: str, key: str) -> str:
    # -o fs prints footnotes and cross-references inline, so cutting them out cannot glue words (see
    # the module docstring). Checked on the whole Bible: it changes nothing in spaRV1909eb, and in
    # engKJV2006eb only adds notes that clean_text removes again.
    return _run(["-b", module, "-f", "plain", "-o", "fs", "-k", key])


def sword_paths() -> list[Path]:
    """Folders holding SWORD modules (mods.d/*.conf), the later ones winning: Debian's, ~/.sword, $SWORD_PATH."""
    candidates = [Path("/usr/share/sword"), Path.home() / ".sword"]
    candidates += [Path(p) for p in os.environ.get("SWORD_PATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys(p for p in candidates if (p / "mods.d").is_dir()))


def _sword_library():
    """(pysword's SwordModules over sword_paths(), {module: its conf}) for the Bible text modules found."""
    try:
        from pysword.modules import SwordModules
    except ImportError:
        raise BibleError(f"pysword is not installed (`pip install pysword`); or install diatheke and the Bibles "
                         f"with `{INSTALL_HINT}`") from None
    library = SwordModules([str(p) for p in sword_paths()])
    confs = library.parse_modules()
    texts = {name: conf for name, conf in confs.items()
             if "datapath" in conf and conf.get("moddrv", "").lower() in ("ztext", "ztext4", "rawtext", "rawtext4")}
    return library, texts


# The modules' OSIS markup -> the text diatheke's plain renderer prints, then clean_text as for diatheke.
# What the renderer does, found by comparing the two on every verse of the three modules:
_PREVERSE = re.compile(r'<div type="x-milestone" subType="x-preverse" sID="([^"]*)"/>.*?'
                       r'<div type="x-milestone" subType="x-preverse" eID="\1"/>', re.S)  # printed before the verse
_BOOK_END = re.compile(r'<div\b(?=[^>]*\beID=)(?=[^>]*\btype="book")[^>]*/>.*', re.S)  # back matter (WEB's glossary)
_NOTE_OR_TITLE = re.compile(r"<(note|title)\b[^>]*(?<!/)>.*?</\1>", re.S)  # notes cut (-o fs), titles on their line
_DIVINE_NAME = re.compile(r"<divineName>([^<]*)</divineName>")  # "Lord" as text is printed "LORD"
_STRONGS_WORD = re.compile(r'<w\b[^>]*?\blemma="([^"]*)"[^>]*>(.*?)</w>', re.S)
_TAG = re.compile(r"<(?![GH]\d+>)[^>]*>")


def _strongs_word(m: re.Match) -> str:
    # diatheke hides a word's first Strong's number and prints the others after it: "reyes <H4397>"
    extra = [x.removeprefix("strong:") for x in m[1].split()[1:]] if m[1].startswith("strong:") else []
    return m[2] + "".join(f" <{x}>" for x in extra)


def osis_plain(markup: str) -> str:
    """One verse's OSIS markup -> its clean text, as diatheke -f plain -o fs and clean_text give it."""
    text = _BOOK_END.sub("", _PREVERSE.sub("", markup))
    text = _NOTE_OR_TITLE.sub(" ", text)
    text = _DIVINE_NAME.sub(lambda m: m[1].upper(), text)
    text = _TAG.sub("", _STRONGS_WORD.sub(_strongs_word, text))
    return clean_text(html.unescape(text))


def _parse_key(key: str) -> tuple[list[str], int | None, int | None]:
    """A diatheke key the pysword reader understands -> (books, chapter, verse): "Genesis-Revelation",
    "Ruth-1 Samuel", "Jonah", "John 3", "John 3:16"."""
    first, dash, last = key.partition("-")
    a, b = canonical_book(first.strip()), canonical_book(last.strip())
    if dash and a and b and BOOKS.index(a) <= BOOKS.index(b):
        return list(BOOKS[BOOKS.index(a):BOOKS.index(b) + 1]), None, None
    m = re.fullmatch(r"(.+?)(?: (\d+)(?::(\d+))?)?", key.strip())
    book = canonical_book(m[1]) if m else None
    if book is None:
        raise BibleError(f"key {key!r}: the pysword reader takes a book, a range of books (\"Matthew-Revelation\") "
                         f"or \"Book C\" / \"Book C:V\", with the book names of archlab.data.bible.BOOKS")
    return [book], int(m[2]) if m[2] else None, int(m[3]) if m[3] else None


@functools.lru_cache(maxsize=8)
def _sword_verses(module: str, key: str) -> tuple[Verse, ...]:
    library, texts = _sword_library()
    if module not in texts:
        raise BibleError(f"SWORD module {module!r} is not installed in {', '.join(map(str, sword_paths())) or '~/.sword'} "
                         f"(installed: {', '.join(sorted(texts)) or 'none'}); install one with `{INSTALL_HINT}`, "
                         f"{PYSWORD_HINT}")
    bible = library.get_bible_from_module(module)
    # pysword decompresses a whole block (a book) again for every verse: keep the last few blocks
    bible._decompressed_text = functools.lru_cache(maxsize=4)(bible._decompressed_text)
    structure = {canonical_book(b.name): b for books in bible.get_structure().get_books().values() for b in books}
    names, chapter, verse = _parse_key(key)
    verses = []
    for name in names:
        book = structure.get(name)
        if book is None:  # a deuterocanonical book, or a testament the module lacks
            continue
        chapters = [chapter] if chapter else range(1, book.num_chapters + 1)
        if chapter and not (1 <= chapter <= book.num_chapters and (verse or 1) <= book.chapter_lengths[chapter - 1]):
            raise BibleError(f"key {key!r}: {name} has {book.num_chapters} chapters in {module}'s versification")
        refs = [(c, v) for c in chapters for v in ([verse] if verse else range(1, book.chapter_lengths[c - 1] + 1))]
        markup = bible.get_iter(books=[book.name], chapters=chapter, verses=verse, clean=False)
        verses += [Verse(name, c, v, osis_plain(m)) for (c, v), m in zip(refs, markup, strict=True)]
    return tuple(verses)


def read_module(module: str, books: str = "Genesis-Revelation", reader: str | None = None) -> list[Verse]:
    """The verses of `books` (a diatheke key: "Genesis-Revelation", "Ruth-1 Samuel", "Jonah", "John 1:1")
    in SWORD module `module`, cleaned; empty verses included with text "". reader: diatheke or pysword
    (default: bible_reader())."""
    if (reader or bible_reader()) == "pysword":
        verses = list(_sword_verses(module, books))
    else:
        if module not in (mods := installed_modules("diatheke")):
            # diatheke itself prints nothing and exits 0 for an unknown module
            raise BibleError(f"SWORD module {module!r} is not installed (installed: "
                             f"{', '.join(mods) or 'none'}); install one with `{INSTALL_HINT}`")
        verses = parse_plain(_plain(module, books))
    if not verses:
        raise BibleError(f"module {module!r} has no verses of the 66 books for key {books!r}")
    return verses


# ---------------------------------------------------------------------------------------------
# aligning, splitting, writing

_BOOK_INDEX = {b: i for i, b in enumerate(BOOKS)}


def _key(v: Verse) -> tuple[int, int, int]:
    return _BOOK_INDEX[v.book], v.chapter, v.verse


def align(src: list[Verse], tgt: list[Verse]) -> tuple[list[tuple[Verse, Verse]], dict]:
    """Pair verses by (book, chapter, verse), in canonical order.

    Empty verses are dropped first (counted per side in dropped_empty), then the non-empty verses
    with no partner (dropped_unmatched, per side). Verse numbers are trusted here: the chapters
    where two modules number verses differently are found by misnumbered_chapters(), and
    prepare_bible drops them.
    """
    s = {_key(v): v for v in src if v.text}
    t = {_key(v): v for v in tgt if v.text}
    pairs = [(s[k], t[k]) for k in sorted(s.keys() & t.keys())]
    stats = {"pairs": len(pairs),
             "dropped_empty": {"src": sum(not v.text for v in src), "tgt": sum(not v.text for v in tgt)},
             "dropped_unmatched": {"src": len(s.keys() - t.keys()), "tgt": len(t.keys() - s.keys())}}
    return pairs, stats


def misnumbered_chapters(src: list[Verse], tgt: list[Verse]) -> list[tuple[str, int]]:
    """(book, chapter) pairs whose verses the two modules do not number alike, in canonical order.

    RV1909 keeps the Spanish (Hebrew-based) verse numbering inside SWORD's KJV skeleton. Where the
    two differ it leaves a verse empty (its 18 empty verses: Jonah 1:17, Job 38:39-41, ...) and
    either merges that verse into its neighbour (2 Samuel 20:25-26, Acts 19:40-41) or shifts the
    chapter's text (2 Chronicles 33, 2 Corinthians 13). When the empty verses end the chapter, the
    Hebrew numbering opens the next chapter with them, so that chapter drifts by one to five verses
    (Numbers 13 and 30, 1 Samuel 24, Job 39, Hosea 12, Jonah 2). The mark of all of these is a
    verse empty on one side only; such a chapter is misnumbered, and so is the next chapter of the
    book when the empty verses are the chapter's last. WEB's own empty verses (Luke 17:36, Acts
    8:37, ...) are text-critical omissions that shift nothing; their chapters go too, which costs
    a few correct pairs but keeps the rule one rule.
    """
    has_text = [{(v.book, v.chapter, v.verse): bool(v.text) for v in side} for side in (src, tgt)]
    last = [{}, {}]  # per side: (book, chapter) -> its last verse with text
    for i, side in enumerate((src, tgt)):
        for v in side:
            if v.text:
                last[i][v.book, v.chapter] = max(last[i].get((v.book, v.chapter), 0), v.verse)
    chapters = {(v.book, v.chapter) for v in src + tgt}
    bad = set()
    for i in (0, 1):
        for (book, chapter, verse), text in has_text[i].items():
            if text or not has_text[1 - i].get((book, chapter, verse)):
                continue  # not an empty verse facing text
            bad.add((book, chapter))
            if verse > last[i].get((book, chapter), 0) and (book, chapter + 1) in chapters:
                bad.add((book, chapter + 1))
    return sorted(bad, key=lambda bc: (_BOOK_INDEX[bc[0]], bc[1]))


def split_by_book(pairs: list[tuple[Verse, Verse]]) -> dict[str, list[tuple[Verse, Verse]]]:
    """'train' / 'valid' / 'test' by whole books (VALID_BOOKS, TEST_BOOKS); order is kept."""
    splits: dict[str, list[tuple[Verse, Verse]]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        book = pair[0].book
        splits["valid" if book in VALID_BOOKS else "test" if book in TEST_BOOKS else "train"].append(pair)
    return splits


def _one_line(text: str) -> str:
    return " ".join(text.split())   # no tab or newline may survive into a TSV field


def prepare_bible(src_module: str, tgt_module: str, out_dir: Path,
                  books: str = "Genesis-Revelation") -> dict:
    """Write out_dir/{train,valid,test}.tsv (src<TAB>tgt), .ref (`Book C:V` per line) and
    stats.json; return the stats. Deterministic: same modules, same bytes."""
    src, tgt = read_module(src_module, books), read_module(tgt_module, books)
    pairs, stats = align(src, tgt)
    bad = misnumbered_chapters(src, tgt)
    drop = set(bad)
    kept = [p for p in pairs if (p[0].book, p[0].chapter) not in drop]
    stats["dropped_misnumbered"] = {"chapters": [f"{b} {c}" for b, c in bad], "pairs": len(pairs) - len(kept)}
    stats["pairs"] = len(kept)
    splits = split_by_book(kept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        (out_dir / f"{name}.tsv").write_text(
            "".join(f"{_one_line(s.text)}\t{_one_line(t.text)}\n" for s, t in part), encoding="utf-8")
        (out_dir / f"{name}.ref").write_text("".join(f"{s.ref}\n" for s, _ in part), encoding="utf-8")
    stats = {"src_module": src_module, "tgt_module": tgt_module, "books": books, **stats,
             "splits": {name: len(part) for name, part in splits.items()},
             "valid_books": list(VALID_BOOKS), "test_books": list(TEST_BOOKS)}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    return stats


def corpus_text(module: str) -> str:
    """The whole module (66 books) as text for LM pretraining: one verse per line, canonical
    order, empty verses left out. Kept in a disk cache (reading a Bible takes ~5 s; see corpus_cache_path)."""
    cached = corpus_cache_path(module)
    if cached is not None and cached.is_file():
        return cached.read_text(encoding="utf-8")
    verses = sorted(read_module(module), key=_key)
    text = "".join(f"{v.text}\n" for v in verses if v.text)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, cached)  # atomic: a concurrent reader sees the whole file or none
            for stale in cached.parent.glob(f"{module}-*.txt"):  # one text per module: the cache stays bounded
                if stale != cached:
                    stale.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only home: no cache, same text
    return text


def corpus_cache_path(module: str) -> Path | None:
    """Where corpus_text caches `module`'s text: $ARCHLAB_CACHE (default ~/.cache/archlab)/bible/, under a name
    that changes with anything the text depends on: this file's code, the reader, and the name, size and mtime
    of every file in the SWORD folders. ARCHLAB_CACHE=off: no cache."""
    root = os.environ.get("ARCHLAB_CACHE", str(Path.home() / ".cache" / "archlab"))
    if root == "off":
        return None
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{module}|{bible_reader()}".encode())
    for base in sword_paths():
        for f in sorted(base.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return Path(root) / "bible" / f"{module}-{h.hexdigest()[:16]}.txt"
