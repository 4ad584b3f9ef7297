"""BERT (Devlin et al.): a bidirectional encoder with a masked-LM head or a sequence-classification head;
Hugging Face BERT folders (all-MiniLM-L6-v2 among them) load into it and save back; sentence embeddings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, HFImportError
from ..nn.norm import build_norm
from .flops import Cost, layer_flops, transformer_activation_bytes
from .gpt import hf_activation
from .registry import Family, HFConversion, build_skeleton, count_parameters, register_family
from .transformer import Positions, TransformerFamilyConfig, TransformerHooks, TransformerStack


@dataclass
class BertConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "bert"
    n_layers: int = 4
    max_seq_len: int = 512
    norm_placement: Literal["pre", "post"] = "post"
    norm_eps: float = 1e-12
    dropout: float = 0.1
    type_vocab_size: int = 2
    n_classes: int = 0  # > 0 adds the pooler + sequence-classification head
    pad_id: int = 0

    def validate(self) -> None:
        super().validate()
        if self.n_classes < 0 or self.n_classes == 1:
            raise ConfigError(f"n_classes must be 0 (masked LM) or at least 2 (a classifier), got {self.n_classes}")


class MLMHead(nn.Module):
    """dense -> GELU -> norm -> vocabulary logits (decoder tied with the word embeddings)."""

    def __init__(self, cfg: BertConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


class Bert(TransformerHooks, nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.word_emb = nn.Embedding(cfg.require_vocab(), cfg.d_model, padding_idx=cfg.pad_id)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.positions = Positions(cfg)
        self.emb_norm = build_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerStack(cfg, cfg.n_layers)
        if cfg.n_classes > 0:  # as Hugging Face's BertForSequenceClassification: pooled [CLS] -> linear
            self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
            self.classifier = nn.Linear(cfg.d_model, cfg.n_classes)
            self.mlm_head = None
        else:
            self.mlm_head = MLMHead(cfg, self.word_emb)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, ids: Tensor, *, key_padding_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                need_weights: bool = False) -> Tensor:
        """ids: (B, T) -> hidden states (B, T, d). Padding defaults to ids == pad_id."""
        if ids.dim() != 2:
            raise ValueError(f"BERT expects token ids of shape (batch, seq), got {tuple(ids.shape)}")
        if key_padding_mask is None:
            key_padding_mask = ids == self.config.pad_id
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(ids)
        x = self.positions.add(self.word_emb(ids) + self.type_emb(token_type_ids))
        x = self.dropout(self.emb_norm(x))
        T = ids.size(1)
        return self.encoder(x, key_padding_mask=key_padding_mask, rotary=self.positions.rotary,
                            bias=self.positions.bias(T, T, 0, causal=False), need_weights=need_weights)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        return self.mlm_head(hidden)

    def pooled(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, ids: Tensor, **kw) -> Tensor:
        """(B, T) -> class logits (B, n_classes), from the pooled first ([CLS]) token."""
        if self.config.n_classes <= 0:
            raise ValueError("this BERT has no classification head (n_classes=0)")
        return self.classifier(self.dropout(self.pooled(self.forward(ids, **kw))))


def mean_pool(hidden: Tensor, key_padding_mask: Tensor) -> Tensor:
    """(B, T, d) -> (B, d): the mean over real tokens (sentence-transformers' pooling)."""
    real = (~key_padding_mask).unsqueeze(-1).to(hidden.dtype)
    return (hidden * real).sum(1) / real.sum(1).clamp(min=1e-9)


def sentence_embeddings(bert: nn.Module, ids: Tensor, key_padding_mask: Tensor) -> Tensor:
    """all-MiniLM-L6-v2's sentence embedding: mean over real tokens, L2-normalised. (B, T) -> (B, d)."""
    return F.normalize(mean_pool(bert(ids, key_padding_mask=key_padding_mask), key_padding_mask), dim=-1)


def bert_cost(cfg: BertConfig, seq_len: int | None = None) -> Cost:
    d, T = cfg.d_model, seq_len or cfg.max_seq_len
    head = 2 * d * d + 2 * d * (cfg.vocab_size or 0) if cfg.n_classes == 0 else 0
    return Cost("token", cfg.n_layers * layer_flops(cfg, T) + head, count_parameters(build_skeleton(cfg)))


# --- Hugging Face BERT -------------------------------------------------------------------------------

def bert_config(hf: dict) -> BertConfig:
    n_classes = 0
    if any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        n_classes = len(hf.get("id2label") or {}) or 2
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise HFImportError(f"unsupported position_embedding_type {hf['position_embedding_type']!r}")
    return BertConfig(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
                      n_layers=hf["num_hidden_layers"], d_ff=hf["intermediate_size"],
                      max_seq_len=hf["max_position_embeddings"], activation=hf_activation(hf["hidden_act"]),
                      norm_eps=hf["layer_norm_eps"], dropout=hf.get("hidden_dropout_prob", 0.1),
                      type_vocab_size=hf["type_vocab_size"], pad_id=hf.get("pad_token_id") or 0, n_classes=n_classes)


_BERT_RENAMES = [("word_emb.", "embeddings.word_embeddings."), ("type_emb.", "embeddings.token_type_embeddings."),
                 ("positions.additive.embedding.", "embeddings.position_embeddings."), ("emb_norm.", "embeddings.LayerNorm."),
                 ("encoder.blocks.", "encoder.layer."), (".attn.out_proj.", ".attention.output.dense."),
                 (".attn_norm.", ".attention.output.LayerNorm."), (".ffn.up.", ".intermediate.dense."),
                 (".ffn.down.", ".output.dense."), (".ffn_norm.", ".output.LayerNorm."), ("pooler.", "pooler.dense."),
                 ("mlm_head.dense.", "cls.predictions.transform.dense."),
                 ("mlm_head.norm.", "cls.predictions.transform.LayerNorm.")]


def bert_state(cfg: BertConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face BERT state dict (BertModel, BertForMaskedLM or ...ForSequenceClassification) under our names."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    e = "embeddings."
    out = {"word_emb.weight": sd[e + "word_embeddings.weight"], "type_emb.weight": sd[e + "token_type_embeddings.weight"],
           "positions.additive.embedding.weight": sd[e + "position_embeddings.weight"],
           "emb_norm.weight": sd[e + "LayerNorm.weight"], "emb_norm.bias": sd[e + "LayerNorm.bias"]}
    for i in range(cfg.n_layers):
        h, o = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for p in ("weight", "bias"):
            out[o + f"attn.qkv_proj.{p}"] = torch.cat([sd[h + f"attention.self.{n}.{p}"] for n in ("query", "key", "value")])
            out[o + f"attn.out_proj.{p}"] = sd[h + f"attention.output.dense.{p}"]
            out[o + f"attn_norm.{p}"] = sd[h + f"attention.output.LayerNorm.{p}"]
            out[o + f"ffn.up.{p}"] = sd[h + f"intermediate.dense.{p}"]
            out[o + f"ffn.down.{p}"] = sd[h + f"output.dense.{p}"]
            out[o + f"ffn_norm.{p}"] = sd[h + f"output.LayerNorm.{p}"]
    optional = {"pooler.dense": "pooler", "classifier": "classifier", "cls.predictions.transform.dense": "mlm_head.dense",
                "cls.predictions.transform.LayerNorm": "mlm_head.norm"}
    for hf_name, ours in optional.items():
        for p in ("weight", "bias"):
            if f"{hf_name}.{p}" in sd:
                out[f"{ours}.{p}"] = sd[f"{hf_name}.{p}"]
    if "cls.predictions.bias" in sd:
        out["mlm_head.decoder.bias"] = sd["cls.predictions.bias"]
    return out


def bert_from_ours(model: nn.Module, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, state dict) in Hugging Face's layout; a classifier (n_classes > 0) as
    BertForSequenceClassification, with `labels` as its id2label."""
    cfg, sd = model.config, model.state_dict()
    if cfg.position != "learned" or cfg.norm != "layernorm" or cfg.norm_placement != "post" or cfg.activation != "gelu" \
            or cfg.moe is not None or cfg.kv_heads != cfg.n_heads:
        raise HFImportError("only BERT-shaped models (learned positions, post-LayerNorm, GELU MLP, MHA) export to BERT format")
    hf = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
          "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers, "intermediate_size": cfg.ffn_dim,
          "max_position_embeddings": cfg.max_seq_len, "hidden_act": "gelu", "layer_norm_eps": cfg.norm_eps,
          "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
          "type_vocab_size": cfg.type_vocab_size, "pad_token_id": cfg.pad_id, "position_embedding_type": "absolute"}
    d = cfg.d_model
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        name = k
        if ".attn.qkv_proj." in k:
            i, p = k.split(".")[2], k.rsplit(".", 1)[1]
            for j, n in enumerate(("query", "key", "value")):
                out[f"encoder.layer.{i}.attention.self.{n}.{p}"] = v[j * d:(j + 1) * d].contiguous()
            continue
        for ours, theirs in _BERT_RENAMES:
            name = name.replace(ours, theirs)
        if k == "mlm_head.decoder.bias":
            name = "cls.predictions.bias"
        elif k == "mlm_head.decoder.weight":
            continue  # tied with the word embeddings
        out[name] = v
    if cfg.n_classes > 0:  # BertForSequenceClassification: the body under "bert.", the classifier at the top
        out = {k if k.startswith("classifier.") else "bert." + k: v for k, v in out.items()}
        names = list(labels) if labels else [f"LABEL_{i}" for i in range(cfg.n_classes)]
        if len(names) != cfg.n_classes:
            raise HFImportError(f"{len(names)} labels given for a classifier of {cfg.n_classes} classes")
        hf.update(architectures=["BertForSequenceClassification"], id2label=dict(enumerate(names)),
                  label2id={n: i for i, n in enumerate(names)})
    return hf, out


register_family(Family(
    "bert", BertConfig, Bert, kind="masked_lm", cost=bert_cost, classifier="bert",
    memory=lambda cfg, batch, seq_len=None: transformer_activation_bytes(cfg, cfg.n_layers, batch,
                                                                         seq_len or cfg.max_seq_len),
    hf=HFConversion(("bert",), bert_config, bert_state, bert_from_ours),
    presets={
        "bert-mini": dict(vocab_size=8000, d_model=256, n_heads=4, n_layers=4, max_seq_len=256),
        "bert-base": dict(vocab_size=30522, d_model=768, n_heads=12, n_layers=12, d_ff=3072),
        # the shape of all-MiniLM-L6-v2 (load the real weights with archlab.models.hf)
        "minilm-l6": dict(vocab_size=30522, d_model=384, n_heads=12, n_layers=6, d_ff=1536),
    }))
