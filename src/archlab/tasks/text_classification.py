"""Text classification: a GPT or BERT, from random weights, from our own pretrained checkpoint, or
from the real all-MiniLM-L6-v2, fine-tuned (full, frozen backbone, or LoRA) on labelled text: the
Debian fortunes (12 topics) or a user's train/valid/test files (.jsonl, .csv, .tsv with text, label).

Texts are tokenized once into a padded id matrix, with the tokenizer's own specials ([CLS] ... [SEP]
for BERT's WordPiece, <bos> ... <eos> for ours) and long texts cut inside them. Training batches
group texts of similar length (as Hugging Face's group_by_length): on fortunes (median 30 tokens,
95th percentile 185) that saves most of the padding. BERT classifies from its pooled first token,
GPT from its last real token (Hugging Face's *ForSequenceClassification).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import at_least_one
from ..data.text import load_fortunes_split, read_labelled
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError, DataError
from ..models import get_family
from .base import ClassificationTask, epoch_generator, model_device, read_labels


@dataclass
class TextDataConfig:
    dataset: str = "fortunes"  # "fortunes" or a folder with train/valid/test .jsonl/.csv/.tsv files
    text_field: str = "text"
    label_field: str = "label"
    tokenizer: str = "bpe"  # from scratch only (init_from brings its own): "bpe", "char" or a tokenizer.json
    vocab_size: int = 8000  # BPE
    max_len: int = 128  # tokens per text, specials included; longer texts are cut
    eval_batch_size: int = 64

    def validate(self) -> None:
        if self.max_len < 4:
            raise ConfigError(f"max_len must be at least 4, got {self.max_len}")
        at_least_one(self, ("vocab_size", "eval_batch_size"))
        if self.tokenizer not in ("bpe", "char") and not self.tokenizer.endswith(".json"):
            raise ConfigError(f"tokenizer: 'bpe', 'char' or a path to a tokenizer.json, got {self.tokenizer!r}")


# --- data --------------------------------------------------------------------------------------

def load_splits(d: TextDataConfig) -> dict[str, list[tuple[str, str]]]:
    if d.dataset == "fortunes":
        return load_fortunes_split()
    folder = Path(d.dataset)
    if not folder.is_dir():
        raise DataError(f"data.dataset: {folder} is neither 'fortunes' nor a folder holding train/valid/test "
                        f"files (.jsonl, .csv or .tsv with columns {d.text_field!r} and {d.label_field!r})")
    splits = {}
    for split in ("train", "valid", "test"):
        files = [folder / f"{split}{ext}" for ext in (".jsonl", ".csv", ".tsv") if (folder / f"{split}{ext}").is_file()]
        if not files:
            raise DataError(f"{folder}: no {split}.jsonl, {split}.csv or {split}.tsv (train, valid and test are all needed)")
        splits[split] = read_labelled(files[0], d.text_field, d.label_field)
    return splits


def trailing_specials(tok: Tokenizer) -> int:
    """How many special tokens the tokenizer's post-processor appends ([SEP], <eos>: 1)."""
    plain, full = tok.encode("a"), tok.encode("a", add_special=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return len(full) - start - len(plain)
    return 0


def encode_texts(tok: Tokenizer, texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """(N, max_len) ids padded with the pad id, and (N,) lengths; specials added, long texts cut inside them."""
    tail = trailing_specials(tok)
    ids = torch.full((len(texts), max_len), tok.pad_id or 0, dtype=torch.long)
    lengths = torch.empty(len(texts), dtype=torch.long)
    for i, seq in enumerate(tok.encode_batch(texts, add_special=True)):
        if len(seq) > max_len:  # as Hugging Face's truncation: the text is cut, the closing special kept
            seq = seq[:max_len - tail] + seq[len(seq) - tail:]
        ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        lengths[i] = len(seq)
    return ids, lengths


def length_grouped_batches(lengths: Tensor, batch_size: int, generator: torch.Generator,
                           group: int = 50) -> list[list[int]]:
    """Full batches of a random permutation, sorted by length inside chunks of `group` batches, in
    random batch order: little padding, yet every epoch mixes differently."""
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for chunk in order.split(batch_size * group):
        chunk = chunk[lengths[chunk].argsort(descending=True, stable=True)]
        batches += [b for b in chunk.split(batch_size) if len(b) == batch_size]
    return [batches[i].tolist() for i in torch.randperm(len(batches), generator=generator)]


def padded_batch(ids: Tensor, lengths: Tensor, device: torch.device) -> dict[str, Tensor]:
    """Rows of the padded id matrix cut to their longest text, with the padding mask (True = pad)."""
    T = int(lengths.max())
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    return {"ids": ids[:, :T].to(device), "pad": pad.to(device)}


# --- the task --------------------------------------------------------------------------------------

class TextClassification(ClassificationTask):
    name = "text_classification"
    DataConfig = TextDataConfig
    headline = ("test_accuracy", "test_macro_f1", "val_accuracy")
    kinds = ("sequence_classifier",)
    derived = ("vocab_size", "pad_id", "n_classes")

    def __init__(self, run):
        super().__init__(run)
        self.texts: dict[str, list[str]] = {}
        self.labels: dict[str, Tensor] = {}
        self.ids: dict[str, Tensor] = {}
        self.lengths: dict[str, Tensor] = {}
        self.majority = 0
        self.examples: list[tuple[str, str, str, float]] = []
        self.description = ""

    @property
    def uses_tokenizer(self) -> bool:
        return True

    @classmethod
    def model_family(cls, family: str, section: str = "model") -> str:
        """A GPT body classifies through its classifier family (gpt_classifier); BERT through its own head."""
        classifier = get_family(family, section).classifier
        if classifier is None:
            raise ConfigError(f"{section}: text classification needs a model with a sequence-classification head "
                              f"(gpt, bert), not {family!r}")
        return classifier

    @classmethod
    def check(cls, run) -> None:
        d = run.data
        if run.init_from is not None and d.tokenizer != TextDataConfig.tokenizer:
            raise ConfigError(f"data.tokenizer={d.tokenizer!r}: with init_from the pretrained model's own "
                              f"tokenizer is used; leave data.tokenizer out")
        if d.max_len > run.model.max_seq_len:
            raise ConfigError(f"data.max_len={d.max_len} exceeds the model's max_seq_len={run.model.max_seq_len}")

    def prepare(self) -> None:
        d = self.data
        splits = load_splits(d)
        if self.classes is None:  # set already when loaded from a checkpoint
            self.classes = sorted({label for _, label in splits["train"]})
        if len(self.classes) < 2:
            raise DataError(f"{d.dataset}: the training split has {len(self.classes)} label(s); classification needs 2+")
        index = {c: i for i, c in enumerate(self.classes)}
        for split, rows in splits.items():
            unknown = sorted({label for _, label in rows} - index.keys())
            if unknown:
                raise DataError(f"{d.dataset}: the {split} split has label(s) {unknown[:5]} that the model does not "
                                f"know (its classes come from the training split: {', '.join(self.classes)})")
        self.fit_tokenizer(lambda: self._new_tokenizer([t for t, _ in splits["train"]]))
        self.texts = {s: [t for t, _ in rows] for s, rows in splits.items()}
        self.labels = {s: torch.tensor([index[label] for _, label in rows]) for s, rows in splits.items()}
        for s, texts in self.texts.items():
            self.ids[s], self.lengths[s] = encode_texts(self.tokenizer, texts, d.max_len)
        counts = torch.bincount(self.labels["train"], minlength=len(self.classes))
        self.majority = int(counts.argmax())
        cut = float((self.lengths["train"] == d.max_len).float().mean())
        self.description = (
            f"{'Debian fortunes (12 topics, deterministic stratified split)' if d.dataset == 'fortunes' else d.dataset}: "
            f"{len(self.texts['train']):,} training, {len(self.texts['valid']):,} validation, "
            f"{len(self.texts['test']):,} test texts, {len(self.classes)} classes. Tokenizer {self.tokenizer!r}; "
            f"median {int(self.lengths['train'].median())} tokens, {cut:.0%} of training texts cut to {d.max_len}.")

    def _new_tokenizer(self, train_texts: list[str]) -> Tokenizer:
        d = self.data
        if d.tokenizer == "bpe":
            return Tokenizer.train_bpe(train_texts, d.vocab_size)
        if d.tokenizer == "char":
            return Tokenizer.train_char(train_texts)
        return Tokenizer.from_file(d.tokenizer)

    # --- model -------------------------------------------------------------------------------------
    def data_fields(self) -> dict[str, Any]:
        fields = super().data_fields()
        fields["pad_id"] = self.tokenizer.pad_id or 0
        return fields

    def model_config(self):
        cfg = super().model_config()
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens, the model's vocabulary "
                              f"{cfg.vocab_size}")
        return cfg

    def head_prefixes(self) -> tuple[str, ...]:
        return ("score.",) if self.run.model.family == "gpt_classifier" else ("pooler.", "classifier.")

    def classifier_prefix(self, model_cfg) -> str:
        return "score." if model_cfg.family == "gpt_classifier" else "classifier."

    # --- training ------------------------------------------------------------------------------------
    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths["train"], batch_size, epoch_generator(seed, epoch))

    def collate(self, refs: list[int], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        idx = torch.tensor(refs)
        batch = padded_batch(self.ids["train"][idx], self.lengths["train"][idx], device)
        return {**batch, "targets": self.labels["train"][idx].to(device)}

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model.classify(batch["ids"], key_padding_mask=batch["pad"])  # (B, n_classes)

    # --- evaluation ----------------------------------------------------------------------------------
    def split_logits(self, model: nn.Module, split: str, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
        """(logits (N, classes), labels (N,)) over a split (its first max_batches batches), in the split's order."""
        device = model_device(model)
        bs = self.data.eval_batch_size
        lengths = self.lengths[split]
        n = len(lengths) if max_batches is None else min(len(lengths), max_batches * bs)
        logits = torch.empty(n, len(self.classes))
        for chunk in lengths[:n].argsort().split(bs):  # similar lengths together: little padding
            batch = padded_batch(self.ids[split][chunk], lengths[chunk], device)
            logits[chunk] = self.forward(model, batch).float().cpu()
        return logits, self.labels[split][:n]

    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        logits, y = self.split_logits(model, split, max_batches)
        return self.accuracy_metrics(logits, y, "val" if split == "valid" else split)

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        from sklearn.metrics import confusion_matrix, f1_score

        from .. import viz

        val = self.evaluate(model, "valid")
        logits, y = self.split_logits(model, "test")
        pred = logits.argmax(-1)
        k = len(self.classes)
        confusion = confusion_matrix(y.numpy(), pred.numpy(), labels=list(range(k)))
        viz.plot_confusion(confusion, self.classes, run_dir / "plots" / "confusion_matrix.png",
                           "Test set: confusion matrix")
        probs = logits.softmax(-1)
        self.examples = [(self.texts["test"][i], self.classes[int(y[i])], self.classes[int(pred[i])],
                          float(probs[i, pred[i]])) for i in range(min(8, len(y)))]
        return {"test_accuracy": (pred == y).float().mean().item(), "test_loss": F.cross_entropy(logits, y).item(),
                "test_macro_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", labels=list(range(k)),
                                                zero_division=0)),
                "majority_baseline_accuracy": (y == self.majority).float().mean().item(), **val,
                "test_examples": len(y), "init_from": self.run.init_from or "random", "finetune": self.run.finetune.mode,
                "per_class_accuracy": {c: float(confusion[i, i] / max(1, confusion[i].sum()))
                                       for i, c in enumerate(self.classes)}}

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        ft = self.run.finetune
        mode = ft.mode + (f" (rank {ft.lora.rank}, alpha {ft.lora.alpha}, on {', '.join(ft.lora.targets)})"
                          if ft.mode == "lora" else "")
        rows = ["## Data", "", self.description, "", "## Fine-tuning", "",
                f"Initialised from **{self.run.init_from or 'random weights'}**; mode **{mode}**; "
                f"{metrics.get('trainable_parameters', 0):,} of {metrics.get('parameters', 0):,} parameters trained. "
                f"Test accuracy {metrics['test_accuracy']:.3f} against {metrics['majority_baseline_accuracy']:.3f} "
                f"for always answering the most frequent class ({self.classes[self.majority]}).",
                "", "## Per-class test accuracy", "", "| class | accuracy |", "|---|---|"]
        rows += [f"| {c} | {a:.3f} |" for c, a in metrics.get("per_class_accuracy", {}).items()]
        rows += ["", "## The first test texts", "", "| text | true | predicted (probability) |", "|---|---|---|"]
        for text, true, pred, p in self.examples:
            short = " ".join(text.split())
            short = (short[:90] + "…" if len(short) > 90 else short).replace("|", "\\|")
            rows.append(f"| {short} | {true} | {pred} ({p:.0%}) |")
        return "\n".join(rows)

    # --- checkpoints and inference -------------------------------------------------------------------
    def save_assets(self, folder: Path) -> None:
        super().save_assets(folder)
        (folder / "labels.json").write_text(json.dumps(
            {"classes": self.classes, "max_len": self.data.max_len, "init_from": self.run.init_from}, indent=2))
        if self.run.finetune.mode == "lora":  # adapters + head alone: with the base model, the whole classifier
            from safetensors.torch import load_file

            from ..nn.lora import save_adapters

            lora = self.run.finetune.lora
            save_adapters(folder / "adapters.safetensors", load_file(folder / "model.safetensors"), lora.targets,
                          lora.rank, lora.alpha, self.head_prefixes())

    def load_assets(self, folder: Path) -> None:
        super().load_assets(folder)
        info = read_labels(Path(folder) / "labels.json", ("classes", "max_len"), self.name)
        self.classes = info["classes"]
        self.data.max_len = info["max_len"]

    def predict(self, model: nn.Module, texts: list[str], top: int = 3) -> list[list[tuple[str, float]]]:
        """[(class, probability), ...] best first, for each text."""
        device = model_device(model)
        ids, lengths = encode_texts(self.tokenizer, texts, self.data.max_len)
        with torch.no_grad():
            probs = self.forward(model, padded_batch(ids, lengths, device)).float().softmax(-1).cpu()
        values, idx = probs.topk(min(top, len(self.classes)), dim=-1)
        return [[(self.classes[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values, idx)]
