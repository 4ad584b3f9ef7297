"""Language-model pretraining on real text: causal (GPT) and masked (BERT).

The corpus (a named one — bible-web, bible-kjv, fortunes, tang300, chinese — or a text file) is
split by position (the first 90% train, the rest validation, cut at a line break), tokenized once
(characters or byte-level BPE) into one tensor, and sampled as random blocks, as nanoGPT does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, at_least_one
from ..data.tokenizer import Tokenizer
from ..models import replace_config
from .base import IGNORE, Task, epoch_generator, model_device


@dataclass
class LMDataConfig:
    corpus: str = "bible-web"  # a named corpus (bible-web, bible-kjv, fortunes, tang300, chinese) or a text file
    tokenizer: Literal["char", "bpe"] = "char"
    vocab_size: int = 4096  # BPE only
    block_size: int | None = None  # tokens per example; default: the model's max_seq_len
    valid_frac: float = 0.1  # the last part of the corpus, by position
    max_chars: int | None = None  # use only the first N characters (tests, demos)
    steps_per_epoch: int = 1000  # random blocks have no natural epoch; this many steps make one
    eval_batches: int = 200  # fixed random validation batches per evaluation during training
    eval_batch_size: int = 32

    def validate(self) -> None:
        if not 0 < self.valid_frac < 1:
            raise ConfigError(f"valid_frac must be in (0, 1), got {self.valid_frac}")
        at_least_one(self, ("vocab_size", "steps_per_epoch", "eval_batches", "eval_batch_size"))
        for key in ("block_size", "max_chars"):
            if getattr(self, key) is not None and getattr(self, key) < 2:
                raise ConfigError(f"{key} must be at least 2, got {getattr(self, key)}")


@dataclass
class MLMDataConfig(LMDataConfig):
    mask_prob: float = 0.15

    def validate(self) -> None:
        super().validate()
        if not 0 < self.mask_prob < 1:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")


def split_text(text: str, valid_frac: float) -> tuple[str, str]:
    """First (1 - valid_frac) of the characters for training, the rest for validation, cut at a newline."""
    cut = int(len(text) * (1 - valid_frac))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    return text[:cut], text[cut:]


def encode_corpus(tok: Tokenizer, text: str) -> Tensor:
    if tok.is_char:
        return torch.tensor(tok.encode(text), dtype=torch.long)
    lines = text.splitlines(keepends=True)  # the library encodes lines in parallel; BPE never merges across "\n"
    return torch.tensor([i for ids in tok.encode_batch(lines) for i in ids], dtype=torch.long)


class LanguageModeling(Task):
    """Causal language modeling: predict token t+1 from tokens <= t."""
    name = "language_modeling"
    DataConfig = LMDataConfig
    unit = "tokens"
    headline = ("val_loss", "val_perplexity", "val_bits_per_char")
    kinds = ("causal_lm",)
    derived = ("vocab_size",)

    def __init__(self, run):
        super().__init__(run)
        self.splits: dict[str, Tensor] = {}
        self.chars: dict[str, int] = {}
        self.block = 0
        self.sample = ""
        self.description = ""

    @property
    def uses_tokenizer(self) -> bool:
        return True

    @classmethod
    def check(cls, run) -> None:
        if run.init_from and run.data.tokenizer != LMDataConfig.tokenizer:
            raise ConfigError("data.tokenizer: with init_from the pretrained model's own tokenizer is used; "
                              "leave data.tokenizer out")

    # --- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from ..data.text import corpus_text

        d = self.data
        text = corpus_text(d.corpus)
        if d.max_chars:
            text = text[: d.max_chars]
        train_text, valid_text = split_text(text, d.valid_frac)
        if not train_text or not valid_text:
            raise ConfigError(f"data: corpus {d.corpus!r} is too short to split ({len(text)} characters)")
        self.fit_tokenizer(lambda: Tokenizer.train_char([text]) if d.tokenizer == "char"
                           else Tokenizer.train_bpe(train_text.splitlines(), d.vocab_size))
        self.splits = {"train": encode_corpus(self.tokenizer, train_text),
                       "valid": encode_corpus(self.tokenizer, valid_text)}
        self.chars = {"train": len(train_text), "valid": len(valid_text)}
        self.block = d.block_size or self.run.model.max_seq_len
        for split, tokens in self.splits.items():
            if len(tokens) <= self.block + 1:
                raise ConfigError(f"data: the {split} split has {len(tokens)} tokens, fewer than one block "
                                  f"of {self.block + 1}")
        self.description = (f"{d.corpus}: {len(text):,} characters, {self.tokenizer!r}; train "
                            f"{len(self.splits['train']):,} tokens, validation {len(self.splits['valid']):,} tokens "
                            f"(the last {d.valid_frac:.0%} by position)")

    def model_config(self):
        """A block longer than the model's context widens it (a pretrained model's cannot be widened)."""
        cfg = super().model_config()
        if self.block > cfg.max_seq_len:
            if self.run.init_from:
                raise ConfigError(f"data.block_size={self.block} exceeds the pretrained model's max_seq_len="
                                  f"{cfg.max_seq_len}")
            cfg = replace_config(cfg, max_seq_len=self.block)
        return cfg

    def head_prefixes(self) -> tuple[str, ...]:
        return ("lm_head.",)

    def validation_tokens(self) -> Tensor:
        return self.splits["valid"]

    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """steps_per_epoch batches of random block offsets, a pure function of (seed, epoch)."""
        g = epoch_generator(seed, epoch)
        high = len(self.splits["train"]) - self.block - 1
        return torch.randint(0, high, (self.data.steps_per_epoch, batch_size), generator=g).tolist()

    def blocks(self, split: str, offsets: Tensor) -> Tensor:
        """(B,) offsets -> (B, block + 1) token windows, one gather."""
        return self.splits[split][offsets[:, None] + torch.arange(self.block + 1)]

    def collate(self, refs: list[int], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        w = self.blocks("train", torch.tensor(refs)).to(device)
        return {"inputs": w[:, :-1], "targets": w[:, 1:]}

    def count(self, batch: dict[str, Tensor]) -> int:
        return batch["targets"].numel()  # no padding in random blocks

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["inputs"])

    # --- evaluation ------------------------------------------------------------------------------
    def eval_batches(self, split: str, max_batches: int | None) -> list[dict[str, Tensor]]:
        """The same fixed random batches at every evaluation: curves compare like with like."""
        n = max_batches or self.data.eval_batches
        g = torch.Generator().manual_seed(1234)
        high = len(self.splits[split]) - self.block - 1
        offsets = torch.randint(0, high, (n, self.data.eval_batch_size), generator=g)
        out = []
        for o in offsets:
            w = self.blocks(split, o)
            out.append({"inputs": w[:, :-1], "targets": w[:, 1:]})
        return out

    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        return {"val_loss": self.mean_loss(model, self.eval_batches(split, max_batches))}

    def full_split_loss(self, model: nn.Module, split: str = "valid") -> float:
        """Mean loss over the whole split in non-overlapping blocks (every token predicted once)."""
        tokens = self.splits[split]
        n = (len(tokens) - 1) // self.block
        offsets = torch.arange(n) * self.block
        batches = []
        for i in range(0, n, self.data.eval_batch_size):
            w = self.blocks(split, offsets[i:i + self.data.eval_batch_size])
            batches.append({"inputs": w[:, :-1], "targets": w[:, 1:]})
        return self.mean_loss(model, batches)

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        loss = self.full_split_loss(model, "valid")
        tokens_per_char = len(self.splits["valid"]) / self.chars["valid"]
        sample = self.sample_text(model, "", 300)
        (run_dir / "sample.txt").write_text(sample, encoding="utf-8")
        self.sample = sample
        return {"val_loss": loss, "val_perplexity": math.exp(loss),
                "val_bits_per_char": loss * tokens_per_char / math.log(2),
                "val_tokens": len(self.splits["valid"]), "vocab_size": self.tokenizer.vocab_size}

    def sample_text(self, model: nn.Module, prompt: str, n: int, seed: int = 0) -> str:
        from ..generate import generate

        ids = self.tokenizer.encode(prompt) if prompt else [int(self.splits["valid"][0])]
        out = generate(model, torch.tensor([ids]), n, temperature=0.8, top_k=None, top_p=None,
                       generator=torch.Generator().manual_seed(seed))
        return self.tokenizer.decode(out[0].tolist())

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        return "\n".join(["## Data", "", self.description, "", "## A sample (temperature 0.8, 300 tokens)", "",
                          "```", self.sample, "```"])


class MaskedLanguageModeling(LanguageModeling):
    """BERT's masked LM: 15% of positions are predicted; of those 80% show <mask>, 10% a random
    token, 10% the original."""
    name = "masked_lm"
    DataConfig = MLMDataConfig
    headline = ("val_loss", "val_masked_accuracy")
    kinds = ("masked_lm",)

    def head_prefixes(self) -> tuple[str, ...]:
        return ("mlm_head.",)

    def mask(self, tokens: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        tok = self.tokenizer
        specials = torch.tensor([i for i in (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) if i is not None])
        r = torch.rand(tokens.shape, generator=generator)
        chosen = (r < self.data.mask_prob) & ~torch.isin(tokens, specials)
        action = torch.rand(tokens.shape, generator=generator)
        random_ids = torch.randint(len(Tokenizer.SPECIALS), tok.vocab_size, tokens.shape, generator=generator)
        inputs = torch.where(chosen & (action < 0.8), torch.full_like(tokens, tok.mask_id), tokens)
        inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
        targets = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
        return {"inputs": inputs, "targets": targets}

    def collate(self, refs: list[int], generator: torch.Generator, device: torch.device) -> dict[str, Tensor]:
        w = self.blocks("train", torch.tensor(refs))[:, :-1]
        return {k: v.to(device) for k, v in self.mask(w, generator).items()}

    def count(self, batch: dict[str, Tensor]) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model.mlm_logits(model(batch["inputs"]))

    def eval_batches(self, split: str, max_batches: int | None) -> list[dict[str, Tensor]]:
        g = torch.Generator().manual_seed(4321)
        return [self.mask(b["inputs"], g) for b in super().eval_batches(split, max_batches)]

    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        device = model_device(model)
        total, correct, n = 0.0, 0, 0
        for b in self.eval_batches(split, max_batches):
            b = {k: v.to(device) for k, v in b.items()}
            logits = self.forward(model, b).float()
            keep = b["targets"] != IGNORE
            total += F.cross_entropy(logits[keep], b["targets"][keep], reduction="sum").item()
            correct += (logits[keep].argmax(-1) == b["targets"][keep]).sum().item()
            n += int(keep.sum())
        return {"val_loss": total / n, "val_masked_accuracy": correct / n}

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        m = self.evaluate(model, "valid", max_batches=self.data.eval_batches)
        return {**m, "val_perplexity": math.exp(m["val_loss"]), "vocab_size": self.tokenizer.vocab_size}

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        return "\n".join(["## Data", "", self.description])
