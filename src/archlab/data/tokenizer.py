"""One tokenizer type for the whole project, stored as a standard Hugging Face tokenizer.json.

Two kinds are trained here, both with the `tokenizers` library (no hand-written BPE):
  - byte-level BPE: every string has an encoding (unknown characters fall back to bytes), and
    decode(encode(s)) == s unless lowercase=True;
  - character-level: one token per Unicode code point (fine for Chinese), <unk> for characters
    not seen in training, decoded by plain concatenation so decode(encode(s)) == s.
Any other tokenizer.json (e.g. a BERT WordPiece one) loads with from_file and behaves as the
library does, except that its padding/truncation settings are turned off: encode returns the
tokens of the text, and batching/padding is the data loader's job.

Special tokens. Trained tokenizers have SPECIALS at ids 0..6. Text is always text for them: a
literal "<eos>" in the data is encoded as characters, never as the special token. encode(...,
add_special=True) applies the tokenizer's own post-processor: <bos> ... <eos> for ours,
[CLS] ... [SEP] for BERT's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from ..errors import DataError

# every code point its own piece; [\s\S] rather than "." so newlines count too
_CHAR_SPLIT = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}


class Tokenizer:
    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>", "<cls>", "<sep>")
    # the same roles under other conventions, so an imported BERT tokenizer still has pad_id etc.
    _ALIASES = {"<pad>": "[PAD]", "<unk>": "[UNK]", "<bos>": "<s>", "<eos>": "</s>",
                "<mask>": "[MASK]", "<cls>": "[CLS]", "<sep>": "[SEP]"}

    def __init__(self, tok: HFTokenizer):
        self.tok = tok
        tok.no_padding()
        tok.no_truncation()
        spec = json.loads(tok.to_str())
        self.ours = all(tok.token_to_id(s) == i for i, s in enumerate(self.SPECIALS))
        if self.ours:
            tok.encode_special_tokens = True  # not saved in tokenizer.json, so set on every load
        # Encoding 4.3M characters as one string takes ~8 s through the library (an Encoding with
        # offsets per character); a numpy lookup from code point to id takes ~0.1 s and gives the
        # same ids, so the char tokenizer encodes that way and keeps the library for the file.
        self.is_char = (self.ours and spec["model"]["type"] == "WordLevel" and spec["normalizer"] is None
                        and spec["pre_tokenizer"] == _CHAR_SPLIT)
        if self.is_char:
            chars = sorted((ord(t), i) for t, i in tok.get_vocab(with_added_tokens=False).items() if len(t) == 1)
            self.is_char = bool(chars)  # an edited file with no characters left: the library's way gives <unk>s
            self._codes = np.array([c for c, _ in chars], dtype=np.uint32)
            self._ids = np.array([i for _, i in chars], dtype=np.int64)

    # ---- training ----------------------------------------------------------------------------

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False) -> Tokenizer:
        """Byte-level BPE (GPT-2 style): the 256 bytes are always in the vocabulary."""
        tok = HFTokenizer(models.BPE())
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(cls.SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls._finish(tok)

    @classmethod
    def train_char(cls, texts: Iterable[str], min_freq: int = 1) -> Tokenizer:
        """One token per character seen at least min_freq times; ids follow code point order."""
        counts: dict[str, int] = {}
        for t in texts:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        chars = sorted(c for c, n in counts.items() if n >= min_freq)
        if not chars:
            raise ValueError(f"train_char: no character occurs {min_freq}+ times in the texts")
        vocab = {s: i for i, s in enumerate(list(cls.SPECIALS) + chars)}
        tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(_CHAR_SPLIT["pattern"]["Regex"]), behavior="isolated")
        tok.decoder = decoders.Fuse()  # join pieces with no separator
        return cls._finish(tok)

    @classmethod
    def _finish(cls, tok: HFTokenizer) -> Tokenizer:
        tok.add_special_tokens(list(cls.SPECIALS))  # already at ids 0..6; marks them special
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", pair="<bos> $A <sep> $B:1 <eos>:1",
            special_tokens=[(s, tok.token_to_id(s)) for s in ("<bos>", "<eos>", "<sep>")])
        return cls(tok)

    # ---- files -------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: " + ("is a directory, not a tokenizer.json" if path.is_dir() else
                                           "no such tokenizer file"))
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the library raises bare Exceptions for malformed JSON
            raise DataError(f"{path}: not a valid tokenizer.json ({str(e)[:200]})") from None

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))

    # ---- use ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        if not self.is_char:
            return self.tok.encode(text, add_special_tokens=add_special).ids
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._codes, codes), len(self._codes) - 1)
        ids = np.where(self._codes[pos] == codes, self._ids[pos], self.unk_id).tolist()
        return [self.bos_id] + ids + [self.eos_id] if add_special else ids

    def encode_batch(self, texts: Iterable[str], add_special: bool = False) -> list[list[int]]:
        if self.is_char:
            return [self.encode(t, add_special) for t in texts]
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=add_special)]

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # numpy arrays, torch tensors
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self.tok.id_to_token(int(id))

    def _special(self, name: str) -> int | None:
        i = self.tok.token_to_id(name)
        return i if i is not None else self.tok.token_to_id(self._ALIASES[name])

    pad_id = property(lambda self: self._special("<pad>"))
    unk_id = property(lambda self: self._special("<unk>"))
    bos_id = property(lambda self: self._special("<bos>"))
    eos_id = property(lambda self: self._special("<eos>"))
    mask_id = property(lambda self: self._special("<mask>"))
    cls_id = property(lambda self: self._special("<cls>"))
    sep_id = property(lambda self: self._special("<sep>"))

    def __repr__(self) -> str:
        kind = "char" if self.is_char else json.loads(self.tok.to_str())["model"]["type"]
        return f"Tokenizer({kind}, vocab_size={self.vocab_size})"
