"""Machine translation with the encoder-decoder: Spanish -> English Bible verses, or your own pairs.

Data: the Bible from two SWORD modules (prepared once with archlab.data.bible, split by whole books,
cached under data/), or a folder of train/valid/test files (TSV source<TAB>target, or JSONL).
One byte-level BPE is trained on both sides of the training set, so the encoder, the decoder and the
output layer share one embedding. Batches hold up to `max_tokens` padded tokens of sentences of
similar length (fairseq's recipe). Evaluation: teacher-forced loss, then sacreBLEU BLEU and chrF of
greedy and beam-search translations.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..config import at_least_one
from ..data.text import read_parallel
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError, DataError
from ..search import beam_search, greedy_search, length_limits
from .base import IGNORE, Task, epoch_generator, model_device

SPLITS = ("train", "valid", "test")
MAX_BEAM = 64
BEAM_CAP_WHY = ("beam search keeps beam x batch hypotheses, each with its decoder cache, so memory grows with "
                "beam x batch; BLEU stops improving long before, at 4-8")


@dataclass
class TranslationDataConfig:
    src_module: str = "spaRV1909eb"  # the Bible: source and target SWORD modules, read through diatheke
    tgt_module: str = "engWEB2015eb"
    books: str = "Genesis-Revelation"  # diatheke key range
    bible_dir: str | None = None  # where the prepared Bible is cached; default data/bible-<src>-<tgt>
    files: str | None = None  # instead of the Bible: a folder with {train,valid,test}.tsv or .jsonl
    src_field: str = "src"  # JSONL field names
    tgt_field: str = "tgt"
    vocab_size: int = 8000  # joint source+target byte-level BPE
    max_tokens: int = 4096  # per batch: sentences x the longest side, padded (train.batch_size is not used)
    max_len: int | None = None  # longer training pairs (tokens, either side) are left out; default max_seq_len
    eval_sentences: int = 300  # greedy BLEU on this many validation sentences at evaluations during training
    eval_batch_size: int = 64  # sentences per decoding batch
    beam: int = 4  # beam size of the final test evaluation
    length_penalty: float = 0.6
    max_len_ratio: float = 1.5  # longest output = ratio x source tokens + 10
    test_sentences: int | None = None  # score only this many test pairs, spread over the split (demos)

    def validate(self) -> None:
        at_least_one(self, ("vocab_size", "max_tokens", "eval_sentences", "eval_batch_size", "beam"))
        if self.vocab_size < 300:
            raise ConfigError(f"vocab_size must be at least 300 (256 bytes + specials), got {self.vocab_size}")
        at_least_one(self, ("max_len", "test_sentences"))
        if self.beam > MAX_BEAM:
            raise ConfigError(f"beam must be at most {MAX_BEAM}, got {self.beam} ({BEAM_CAP_WHY})")
        if not 0 < self.max_len_ratio < math.inf:
            raise ConfigError(f"max_len_ratio must be a positive, finite number, got {self.max_len_ratio}")
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length_penalty must be a finite number, got {self.length_penalty}")


def find_split_file(folder: Path, split: str) -> Path:
    for suffix in (".tsv", ".jsonl"):
        if (folder / f"{split}{suffix}").exists():
            return folder / f"{split}{suffix}"
    raise DataError(f"{folder}: no {split}.tsv or {split}.jsonl (a translation folder holds train, valid and "
                    f"test files: source<TAB>target lines, or JSONL objects)")


def prepared_bible(d: TranslationDataConfig) -> Path:
    """The folder of the prepared Bible, preparing it (diatheke, ~20 s) unless cached with the same settings."""
    from ..data.bible import prepare_bible

    slug = "" if d.books == "Genesis-Revelation" else "-" + "".join(c if c.isalnum() else "_" for c in d.books)
    folder = Path(d.bible_dir or f"data/bible-{d.src_module}-{d.tgt_module}{slug}")
    stats = folder / "stats.json"
    if stats.exists():
        s = json.loads(stats.read_text(encoding="utf-8"))
        if ((s.get("src_module"), s.get("tgt_module"), s.get("books")) == (d.src_module, d.tgt_module, d.books)
                and "dropped_misnumbered" in s):  # older caches kept the misnumbered chapters
            return folder
    prepare_bible(d.src_module, d.tgt_module, folder, d.books)
    return folder


def bleu_chrf(hyps: list[str], refs: list[str]) -> tuple[float, float]:
    import sacrebleu

    return sacrebleu.corpus_bleu(hyps, [refs]).score, sacrebleu.corpus_chrf(hyps, [refs]).score


class Translation(Task):
    name = "translation"
    DataConfig = TranslationDataConfig
    unit = "tokens"
    headline = ("test_bleu", "test_chrf", "test_bleu_greedy", "val_bleu")
    kinds = ("seq2seq",)
    derived = ("vocab_size", "pad_id")
    unused_train_keys = {"batch_size": "batches hold up to data.max_tokens padded tokens"}

    def __init__(self, run):
        super().__init__(run)
        self.text: dict[str, list[tuple[str, str]]] = {}
        self.examples: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        self.stats: dict[str, Any] = {}
        self.test_picks: list[int] = []
        self.samples: list[tuple[str, str, str, str]] = []
        self.max_len = run.data.max_len or run.model.max_seq_len
        self.eval_cap: int | None = run.data.eval_sentences
        self.source = self.description = ""

    @property
    def uses_tokenizer(self) -> bool:
        return True

    @classmethod
    def check(cls, run) -> None:
        if run.init_from and run.data.vocab_size != TranslationDataConfig.vocab_size:
            raise ConfigError("data.vocab_size: with init_from the pretrained model's own tokenizer is used; "
                              "leave data.vocab_size out")

    # --- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        d = self.data
        folder = Path(d.files) if d.files else prepared_bible(d)
        self.source = (f"your files in {folder}" if d.files else
                       f"the Bible, {d.src_module} -> {d.tgt_module} ({d.books}), prepared in {folder}")
        files = {s: find_split_file(folder, s) for s in SPLITS}
        empty = [s for s, f in files.items() if not f.read_text(encoding="utf-8-sig").strip()]
        if empty:
            why = "" if d.files else f" (books {d.books!r} hold no {' or '.join(empty)} book of archlab.data.bible)"
            raise ConfigError(f"data: the {', '.join(empty)} split of {folder} is empty{why}")
        self.text = {s: read_parallel(f, d.src_field, d.tgt_field) for s, f in files.items()}
        self.test_picks = list(range(len(self.text["test"])))
        if d.test_sentences and d.test_sentences < len(self.text["test"]):
            self.test_picks = np.linspace(0, len(self.text["test"]) - 1, d.test_sentences).round().astype(int).tolist()
            self.text["test"] = [self.text["test"][i] for i in self.test_picks]
        stats = folder / "stats.json"
        self.stats = json.loads(stats.read_text(encoding="utf-8")) if stats.exists() else {}
        self.fit_tokenizer(lambda: Tokenizer.train_bpe([t for pair in self.text["train"] for t in pair],
                                                       self.data.vocab_size))
        self.examples = {s: self._encode(s) for s in SPLITS}
        # training pairs too long for the model are left out; held-out ones are truncated (loss only)
        src, tgt = self.examples["train"]
        fits = [i for i in range(len(src)) if len(src[i]) <= self.max_len and len(tgt[i]) <= self.max_len + 1]
        self.too_long = len(src) - len(fits)
        self.examples["train"] = ([src[i] for i in fits], [tgt[i] for i in fits])
        if not fits:
            raise ConfigError(f"data: no training pair fits in max_len={self.max_len} tokens")
        self.description = (
            f"{self.source}: {len(fits):,} training pairs ({self.too_long} longer than {self.max_len} tokens left "
            f"out), {len(self.text['valid']):,} validation, {len(self.text['test']):,} test pairs; joint byte-level "
            f"BPE of {self.tokenizer.vocab_size:,} tokens")

    def _encode(self, split: str) -> tuple[list[Tensor], list[Tensor]]:
        """Sources as `ids <eos>`, targets as `<bos> ids <eos>`; held-out pairs cut to the model's length."""
        tok, L = self.tokenizer, self.max_len
        pairs = self.text[split]
        src = tok.encode_batch([s for s, _ in pairs])
        tgt = tok.encode_batch([t for _, t in pairs])
        cut = split != "train"
        src = [torch.tensor((s[:L - 1] if cut else s) + [tok.eos_id]) for s in src]
        tgt = [torch.tensor([tok.bos_id] + (t[:L - 1] if cut else t) + [tok.eos_id]) for t in tgt]
        return src, tgt

    def token_batches(self, split: str, max_tokens: int, generator: torch.Generator | None = None) -> list[list[int]]:
        """Indices grouped by length so that sentences x longest side <= max_tokens; shuffled with a generator."""
        src, tgt = self.examples[split]
        size = np.array([max(len(s), len(t) - 1) for s, t in zip(src, tgt)])
        if generator is None:
            order = np.argsort(size, kind="stable")
        else:  # random order among equal lengths, so batches differ between epochs
            noise = torch.rand(len(size), generator=generator).numpy()
            order = np.lexsort((noise, size))
        batches, current, longest = [], [], 0
        for i in order.tolist():
            longest_if = max(longest, int(size[i]))
            if current and longest_if * (len(current) + 1) > max_tokens:
                batches.append(current)
                current, longest_if = [], int(size[i])
            current.append(i)
            longest = longest_if
        batches.append(current)
        if generator is not None:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        return self.token_batches("train", self.data.max_tokens, epoch_generator(seed, epoch))

    def batch(self, split: str, refs: list[int], device: torch.device) -> dict[str, Tensor]:
        src, tgt = self.examples[split]
        pad = self.tokenizer.pad_id
        s = pad_sequence([src[i] for i in refs], batch_first=True, padding_value=pad)
        t = pad_sequence([tgt[i] for i in refs], batch_first=True, padding_value=pad)
        targets = t[:, 1:].masked_fill(t[:, 1:] == pad, IGNORE)
        return {"src": s.to(device), "tgt_in": t[:, :-1].to(device), "targets": targets.to(device)}

    def collate(self, refs: list[int], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        return self.batch("train", refs, device)

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["src"], batch["tgt_in"])

    # --- decoding --------------------------------------------------------------------------------
    def decode_ids(self, model: nn.Module, sources: list[Tensor], beam: int = 1, length_penalty: float | None = None,
                   max_len_ratio: float | None = None, batch_size: int | None = None) -> list[list[int]]:
        """Token ids (each ending in <eos>) -> output token ids, in order; batches of similar length."""
        d = self.data
        device = model_device(model)
        pad = self.tokenizer.pad_id
        cap = model.config.max_seq_len - 1  # the decoder also sees <bos>
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out: list[list[int]] = [[] for _ in sources]
        bs = batch_size or d.eval_batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            src = pad_sequence([sources[i] for i in idx], batch_first=True, padding_value=pad).to(device)
            limit = length_limits(torch.tensor([len(sources[i]) for i in idx]), max_len_ratio or d.max_len_ratio, cap)
            if beam == 1:
                ids = greedy_search(model, src, self.tokenizer.bos_id, self.tokenizer.eos_id, limit)
            else:
                lp = d.length_penalty if length_penalty is None else length_penalty
                ids = beam_search(model, src, self.tokenizer.bos_id, self.tokenizer.eos_id, limit, beam, lp)
            for i, row in zip(idx, ids):
                out[i] = row
        return out

    def translate(self, model: nn.Module, sentences: list[str], beam: int = 1, length_penalty: float | None = None,
                  max_len_ratio: float | None = None, batch_size: int | None = None) -> list[str]:
        """One output per input line: "" for an empty line; a source longer than the model's max_seq_len
        is cut to its first max_seq_len - 1 tokens (and <eos>), with a warning on stderr."""
        tok = self.tokenizer
        limit = model.config.max_seq_len - 1
        todo, sources = [], []
        for n, text in enumerate(sentences, 1):
            text = " ".join(text.split())
            if not text:
                continue
            ids = tok.encode(text)
            if len(ids) > limit:
                print(f"warning: line {n}: {len(ids)} tokens, more than the model's max_seq_len allows; "
                      f"translating its first {limit}", file=sys.stderr)
                ids = ids[:limit]
            todo.append(n - 1)
            sources.append(torch.tensor(ids + [tok.eos_id]))
        out = [""] * len(sentences)
        for i, ids in zip(todo, self.decode_ids(model, sources, beam, length_penalty, max_len_ratio, batch_size)):
            out[i] = tok.decode(ids).strip()
        return out

    # --- evaluation ------------------------------------------------------------------------------
    def loss_over(self, model: nn.Module, split: str, max_batches: int | None = None) -> float:
        """Mean token cross-entropy with teacher forcing (no label smoothing)."""
        device = model_device(model)
        return self.mean_loss(model, (self.batch(split, refs, device)
                                      for refs in self.token_batches(split, self.data.max_tokens)[:max_batches]))

    def score(self, model: nn.Module, split: str, beam: int = 1, limit: int | None = None) -> tuple[float, float, list[str]]:
        """(BLEU, chrF, hypotheses) on the split, or on `limit` sentences spread evenly over it."""
        n = len(self.text[split])
        idx = list(range(n)) if limit is None or limit >= n else np.linspace(0, n - 1, limit).round().astype(int).tolist()
        ids = self.decode_ids(model, [self.examples[split][0][i] for i in idx], beam)
        hyps = [self.tokenizer.decode(r).strip() for r in ids]
        bleu, chrf = bleu_chrf(hyps, [self.text[split][i][1] for i in idx])
        return bleu, chrf, hyps

    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        prefix = "val" if split == "valid" else split
        bleu, chrf, _ = self.score(model, split, limit=self.eval_cap if split == "valid" else None)
        return {f"{prefix}_loss": self.loss_over(model, split, max_batches), f"{prefix}_bleu": bleu,
                f"{prefix}_chrf": chrf}

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        d = self.data
        metrics: dict[str, Any] = {"val_loss": self.loss_over(model, "valid")}
        metrics["val_bleu"], metrics["val_chrf"], _ = self.score(model, "valid")
        metrics["test_loss"] = self.loss_over(model, "test")
        timed = {}
        for name, beam in (("greedy", 1), ("beam", d.beam)):
            t0 = time.perf_counter()
            timed[name] = self.score(model, "test", beam)
            metrics[f"decode_{name}_sentences_per_s"] = len(self.text["test"]) / (time.perf_counter() - t0)
        metrics["test_bleu"], metrics["test_chrf"], beam_hyps = timed["beam"]
        metrics["test_bleu_greedy"], metrics["test_chrf_greedy"], greedy_hyps = timed["greedy"]
        metrics.update(beam=d.beam, length_penalty=d.length_penalty, test_sentences=len(self.text["test"]),
                       vocab_size=self.tokenizer.vocab_size, data_source=self.source)
        refs = self._test_refs(run_dir)
        with open(run_dir / "test_translations.jsonl", "w", encoding="utf-8") as f:
            for i, (src, ref) in enumerate(self.text["test"]):
                f.write(json.dumps({"ref": refs[i], "source": src, "reference": ref, "beam": beam_hyps[i],
                                    "greedy": greedy_hyps[i]}, ensure_ascii=False) + "\n")
        picks = np.linspace(0, len(beam_hyps) - 1, 10).round().astype(int).tolist()
        self.samples = [(refs[i], self.text["test"][i][0], self.text["test"][i][1], beam_hyps[i]) for i in picks]
        self.plot_attention(model, run_dir / "plots")
        return metrics

    def _test_refs(self, run_dir: Path) -> list[str]:
        """Verse references of the test pairs when the Bible's .ref file is there, else line numbers."""
        folder = Path(self.data.files) if self.data.files else prepared_bible(self.data)
        ref = folder / "test.ref"
        if ref.exists():
            lines = ref.read_text(encoding="utf-8").splitlines()
            if len(lines) > self.test_picks[-1]:
                return [lines[i] for i in self.test_picks]
        return [f"line {i + 1}" for i in range(len(self.text["test"]))]

    def plot_attention(self, model: nn.Module, plots: Path) -> None:
        """Cross-attention (last decoder layer, per head) and encoder self-attention (last layer) of one
        test sentence, on the explicit attention path that keeps the weights."""
        from .. import viz

        src_all, _ = self.examples["test"]
        i = next((j for j, s in enumerate(src_all) if 12 <= len(s) <= 24), 0)
        device = model_device(model)
        src = src_all[i][None].to(device)
        out = self.decode_ids(model, [src_all[i]], beam=self.data.beam)[0]
        tgt_in = torch.tensor([[self.tokenizer.bos_id] + out], device=device)
        mask = model.padding_mask(src)
        memory = model.encode(src, mask, need_weights=True)
        model.decode(tgt_in, memory, mask, need_weights=True)
        # each token as the text it stands for ("▁" marks a leading space), not its byte-level spelling
        piece = lambda ids: [self.tokenizer.decode([t], skip_special=False).replace(" ", "▁") for t in ids]  # noqa: E731
        src_tokens, out_tokens = piece(src_all[i].tolist()), piece(out + [self.tokenizer.eos_id])
        cross = model.decoder.attention_weights(cross=True)[-1][0]  # (H, T, S)
        n = len(model.decoder.blocks)
        viz.plot_attention(cross, out_tokens, src_tokens, plots / "cross_attention.png",
                           f"Cross-attention, decoder layer {n} (rows: output tokens, columns: source tokens)")
        enc = model.encoder.attention_weights()[-1][0]  # (H, S, S)
        viz.plot_attention(enc, src_tokens, src_tokens, plots / "encoder_self_attention.png",
                           f"Encoder self-attention, layer {len(model.encoder.blocks)}")

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        lines = ["## Data", "", self.description + "."]
        dropped = self.stats.get("dropped_misnumbered")
        if dropped:
            lines += ["", f"Left out before splitting: {dropped['pairs']} pairs of {len(dropped['chapters'])} chapters "
                          f"that the two modules number differently ({', '.join(dropped['chapters'])})."]
        lines += ["", "## Test translations", "",
                  f"sacreBLEU (13a tokenization) on the test books: BLEU {metrics.get('test_bleu', 0):.2f}, chrF "
                  f"{metrics.get('test_chrf', 0):.2f} with beam {self.data.beam}; greedy BLEU "
                  f"{metrics.get('test_bleu_greedy', 0):.2f}. All test translations: `test_translations.jsonl`.", "",
                  "| verse | source | reference | ours (beam) |", "|---|---|---|---|"]
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines += [f"| {r} | {cell(s)} | {cell(t)} | {cell(h)} |" for r, s, t, h in self.samples]
        return "\n".join(lines)
