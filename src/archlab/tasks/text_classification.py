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

from ..config import ConfigError
from ..data.text import DataError, load_fortunes_split, read_labelled
from ..data.tokenizer import Tokenizer
from .base import Task

FRESH_HEADS = ("classifier.", "score.")  # a new task's head is never taken from a checkpoint
PRETRAINING_HEADS = ("mlm_head.", "lm_head.")  # in a pretrained checkpoint, unused by a classifier
CLASSIFIER_FAMILY = {"gpt": "gpt_classifier", "gpt_classifier": "gpt_classifier", "bert": "bert"}


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


# --- initialisation from a pretrained model ------------------------------------------------------

def init_source(init_from: str) -> tuple[str, Path]:
    """("hf", folder) for "minilm" or a Hugging Face folder; ("ours", checkpoint folder) for our runs."""
    from ..models.hf import minilm_path
    from ..train.checkpoint import resolve_checkpoint

    if init_from == "minilm":
        return "hf", minilm_path()
    path = Path(init_from)
    config = path / "config.json"
    if config.is_file() and "model_type" in json.loads(config.read_text()):
        return "hf", path
    return "ours", resolve_checkpoint(path)


def pretrained_config(kind: str, folder: Path) -> dict[str, Any]:
    """The pretrained model's config as a mapping (family + fields), turned into a classifier's family."""
    from ..models.config import config_to_dict
    from ..models.hf import config_from_hf
    from ..train.checkpoint import read_config_json

    if kind == "hf":
        cfg = config_to_dict(config_from_hf(json.loads((folder / "config.json").read_text())))
    else:
        cfg = {k: v for k, v in read_config_json(folder).items() if k not in ("task", "task_info")}
    family = CLASSIFIER_FAMILY.get(cfg.get("family"))
    if family is None:
        raise ConfigError(f"init_from {folder}: a {cfg.get('family')!r} model; text classification starts from a "
                          f"GPT or BERT")
    return {**cfg, "family": family}


def pretrained_state(kind: str, folder: Path) -> dict[str, Tensor]:
    """Every weight of the pretrained model under our names (tied weights under each of their names)."""
    from ..models import build_model
    from ..models.hf import config_from_hf, read_hf_folder, state_from_hf
    from ..train import checkpoint as ckpt

    if kind == "hf":
        hf_config, state = read_hf_folder(folder)
        return state_from_hf(config_from_hf(hf_config), state)
    # safetensors stores a tied tensor under one name only: the source model puts it back under all
    source = build_model(ckpt.read_model_config(folder))
    ckpt.load_weights(source, folder)
    return source.state_dict()


def load_pretrained(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Copy the pretrained body into `model`; the new head stays freshly initialised."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(FRESH_HEADS)}
    unexpected = [k for k in state if k not in own and not k.startswith(PRETRAINING_HEADS)]
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if unexpected or wrong:
        raise ConfigError(f"init_from {where} does not fit the model: " + "; ".join(
            ([f"weights with no place in it: {unexpected[:4]}"] if unexpected else []) +
            ([f"shapes differ: {wrong[:4]}"] if wrong else [])))
    state = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(state, strict=False)
    loaded = {own[k].data_ptr() for k in state}  # a tied weight is loaded under any of its names
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded
               and not k.startswith(FRESH_HEADS + ("pooler.",))]  # BERT's pooler: pretrained when there is one
    if missing:
        raise ConfigError(f"init_from {where}: weights missing from the checkpoint: {missing[:5]}")


# --- the task --------------------------------------------------------------------------------------

class TextClassification(Task):
    name = "text_classification"
    DataConfig = TextDataConfig
    headline = ("test_accuracy", "test_macro_f1", "val_accuracy")

    def prepare(self, run_dir: Path | None) -> None:
        d = self.data
        splits = load_splits(d)
        if getattr(self, "classes", None) is None:  # set already when loaded from a checkpoint
            self.classes = sorted({label for _, label in splits["train"]})
        if len(self.classes) < 2:
            raise DataError(f"{d.dataset}: the training split has {len(self.classes)} label(s); classification needs 2+")
        index = {c: i for i, c in enumerate(self.classes)}
        for split, rows in splits.items():
            unknown = sorted({label for _, label in rows} - index.keys())
            if unknown:
                raise DataError(f"{d.dataset}: the {split} split has label(s) {unknown[:5]} that the model does not "
                                f"know (its classes come from the training split: {', '.join(self.classes)})")
        if getattr(self, "tokenizer", None) is None:
            self.tokenizer = self._make_tokenizer(run_dir, [t for t, _ in splits["train"]])
        self.texts = {s: [t for t, _ in rows] for s, rows in splits.items()}
        self.labels = {s: torch.tensor([index[label] for _, label in rows]) for s, rows in splits.items()}
        self.ids, self.lengths = {}, {}
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

    def _make_tokenizer(self, run_dir: Path | None, train_texts: list[str]) -> Tokenizer:
        d = self.data
        if self.run.init_from is not None:
            if d.tokenizer != TextDataConfig.tokenizer:
                raise ConfigError(f"data.tokenizer={d.tokenizer!r}: with init_from the pretrained model's own "
                                  f"tokenizer is used; leave data.tokenizer out")
            _, folder = init_source(self.run.init_from)
            if not (folder / "tokenizer.json").is_file():
                raise DataError(f"init_from {self.run.init_from}: no tokenizer.json in {folder}; the model's own "
                                f"tokenizer is needed")
            return Tokenizer.from_file(folder / "tokenizer.json")
        saved = run_dir / "tokenizer.json" if run_dir is not None else None
        if saved is not None and saved.exists():  # a resumed run keeps its tokenizer
            return Tokenizer.from_file(saved)
        if d.tokenizer == "bpe":
            tok = Tokenizer.train_bpe(train_texts, d.vocab_size)
        elif d.tokenizer == "char":
            tok = Tokenizer.train_char(train_texts)
        else:
            tok = Tokenizer.from_file(d.tokenizer)
        if saved is not None:
            tok.save(saved)
        return tok

    # --- model -------------------------------------------------------------------------------------
    def model_config(self):
        from ..models.config import model_config, resolve_model_dict

        if self.run.init_from is None:
            cls, fields = resolve_model_dict(self.run.model)
            family = CLASSIFIER_FAMILY.get(cls.family)
            if family is None:
                raise ConfigError(f"model: text classification needs a GPT or BERT model, not {cls.family!r}")
            fields["vocab_size"] = self.tokenizer.vocab_size
            if family == "bert":
                fields["pad_id"] = self.tokenizer.pad_id or 0
        else:
            if {"preset", "family"} & self.run.model.keys():
                raise ConfigError(f"model: with init_from the architecture is the pretrained model's; the model "
                                  f"section may only override fields such as dropout, got {sorted(self.run.model)}")
            fields = {**pretrained_config(*init_source(self.run.init_from)), **self.run.model}
            family = fields.pop("family")
        cfg = model_config({**fields, "family": family, "n_classes": len(self.classes)})
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.vocab_size} tokens, the model's vocabulary "
                              f"{cfg.vocab_size}")
        if self.data.max_len > cfg.max_seq_len:
            raise ConfigError(f"data.max_len={self.data.max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
        return cfg

    def build_model(self) -> nn.Module:
        from ..models import build_model

        model = build_model(self.model_config())
        self.family = model.config.family
        if self.run.init_from is not None:
            load_pretrained(model, pretrained_state(*init_source(self.run.init_from)), self.run.init_from)
        return model

    def head_parameter_prefixes(self) -> tuple[str, ...]:
        return ("score.",) if getattr(self, "family", None) == "gpt_classifier" else ("pooler.", "classifier.")

    # --- training ------------------------------------------------------------------------------------
    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed * 10_007 + epoch)
        return length_grouped_batches(self.lengths["train"], batch_size, g)

    def collate(self, refs: list[int], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        idx = torch.tensor(refs)
        batch = padded_batch(self.ids["train"][idx], self.lengths["train"][idx], device)
        return {**batch, "targets": self.labels["train"][idx].to(device)}

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model.classify(batch["ids"], key_padding_mask=batch["pad"])  # (B, n_classes)

    # --- evaluation ----------------------------------------------------------------------------------
    def split_logits(self, model: nn.Module, split: str, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
        """(logits (N, classes), labels (N,)) over a split (its first max_batches batches), in the split's order."""
        device = next(model.parameters()).device
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
        prefix = "val" if split == "valid" else split
        return {f"{prefix}_loss": F.cross_entropy(logits, y).item(),
                f"{prefix}_accuracy": (logits.argmax(-1) == y).float().mean().item()}

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
        for text, true, pred, p in getattr(self, "examples", []):
            short = " ".join(text.split())
            short = (short[:90] + "…" if len(short) > 90 else short).replace("|", "\\|")
            rows.append(f"| {short} | {true} | {pred} ({p:.0%}) |")
        return "\n".join(rows)

    # --- checkpoints and inference -------------------------------------------------------------------
    def save_assets(self, folder: Path) -> None:
        self.tokenizer.save(folder / "tokenizer.json")
        (folder / "labels.json").write_text(json.dumps(
            {"classes": self.classes, "max_len": self.data.max_len, "init_from": self.run.init_from}, indent=2))
        if self.run.finetune.mode == "lora":  # adapters + head alone: with the base model, the whole classifier
            from safetensors.torch import load_file

            from ..nn.lora import save_adapters

            lora = self.run.finetune.lora
            save_adapters(folder / "adapters.safetensors", load_file(folder / "model.safetensors"), lora.targets,
                          lora.rank, lora.alpha, self.head_parameter_prefixes())

    def load_assets(self, folder: Path) -> None:
        path = Path(folder) / "labels.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: not a text-classification checkpoint")
        info = json.loads(path.read_text())
        self.classes = info["classes"]
        self.data.max_len = info["max_len"]
        self.tokenizer = Tokenizer.from_file(Path(folder) / "tokenizer.json")
        self.family = json.loads((Path(folder) / "config.json").read_text()).get("family")

    def predict(self, model: nn.Module, texts: list[str], top: int = 3) -> list[list[tuple[str, float]]]:
        """[(class, probability), ...] best first, for each text."""
        device = next(model.parameters()).device
        ids, lengths = encode_texts(self.tokenizer, texts, self.data.max_len)
        with torch.no_grad():
            probs = self.forward(model, padded_batch(ids, lengths, device)).float().softmax(-1).cpu()
        values, idx = probs.topk(min(top, len(self.classes)), dim=-1)
        return [[(self.classes[int(i)], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(values, idx)]


def export_hf(run: str | Path, out: str | Path) -> Path:
    """A BERT text-classification run as a Hugging Face BertForSequenceClassification folder
    (LoRA adapters folded in), with its tokenizer.json."""
    from ..models.hf import save_hf_folder
    from ..nn.lora import merge_lora
    from ..runs import load_run

    task, model, _ = load_run(run)
    if not isinstance(task, TextClassification):
        raise ValueError(f"{run} is a {task.name} run, not a text-classification one")
    folder = save_hf_folder(merge_lora(model), out, labels=task.classes)
    task.tokenizer.save(folder / "tokenizer.json")
    return folder


# --- `archlab classify` ----------------------------------------------------------------------------

def cli_classify(args) -> None:
    from ..runs import load_run

    task, model, _ = load_run(args.run)
    if not isinstance(task, TextClassification):
        raise ValueError(f"{args.run} is a {task.name} run; classify needs a text-classification run")
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    width = max(len(c) for c in task.classes)
    for text, top in zip(args.text, task.predict(model, args.text, args.top)):
        short = " ".join(text.split())
        print(short[:100] + ("…" if len(short) > 100 else ""))
        for c, p in top:
            print(f"  {c:<{width}}  {p:6.1%}  {'█' * round(p * 30)}")
