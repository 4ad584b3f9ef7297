"""GPT: a decoder-only language model (Radford et al.), embeddings tied with the output layer (or not); with
the block switches (nn/block.py) and the ones below it is also Llama, Qwen3, Mistral, Gemma-2 or a DeepSeek-V3
with dense MLPs (their Hugging Face conversions: models/llama.py). Hugging Face GPT-2 folders load into it and
GPT-2-shaped models save back."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConfigError, HFImportError
from .flops import Cost, cache_numbers, layer_flops, transformer_activation_bytes
from .registry import Family, HFConversion, build_skeleton, count_parameters, register_family
from .transformer import Positions, TransformerFamilyConfig, TransformerHooks, TransformerStack


@dataclass
class GPTConfig(TransformerFamilyConfig):
    family: ClassVar[str] = "gpt"
    n_layers: int = 4
    tie_embeddings: bool = True
    scale_embeddings: bool = False  # token embeddings x sqrt(d_model) (Gemma; always so with sinusoidal positions)
    logit_softcap: float | None = None  # final logits -> cap * tanh(logits / cap) (Gemma-2: 30)

    def validate(self) -> None:
        super().validate()
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be at least 1, got {self.n_layers}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ConfigError(f"logit_softcap must be positive (or null), got {self.logit_softcap}")
        if self.window_pattern is not None and len(self.window_pattern) > self.n_layers:
            raise ConfigError(f"window_pattern has {len(self.window_pattern)} entries for n_layers={self.n_layers}")
        if self.window is not None and self.position == "alibi":
            # a windowed layer decodes with a rolling cache, whose keys ALiBi's bias (made per model) cannot follow
            raise ConfigError("window does not combine with position 'alibi' in a gpt (its rolling decode cache "
                              "keeps keys out of order); use position 'rope'")

    def layers(self) -> list[GPTConfig]:
        """Each layer's config (window_pattern: some layers global)."""
        return [self.layer(i) for i in range(self.n_layers)]


class GPT(TransformerHooks, nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.require_vocab(), cfg.d_model)
        # A fixed sinusoid (rms 0.7) added to GPT's N(0, 0.02) token embeddings would drown them: scale the
        # embeddings by sqrt(d) as Vaswani et al. and fairseq's transformer_lm do with sinusoidal positions.
        # Gemma scales them so too, whatever its positions.
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.position == "sinusoidal" or cfg.scale_embeddings else 1.0
        self.positions = Positions(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = TransformerStack(cfg, cfg.n_layers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so the residual stream stays O(1)
        for name, p in self.named_parameters():
            if name.endswith(("attn.out_proj.weight", "attn.o_proj.weight", "ffn.down.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def features(self, idx: Tensor, *, key_padding_mask: Tensor | None = None, caches: list | None = None,
                 need_weights: bool = False) -> Tensor:
        """idx: (B, T) token ids (with caches: only the new ones) -> hidden states (B, T, d)."""
        if idx.dim() != 2:
            raise ValueError(f"GPT expects token ids of shape (batch, seq), got {tuple(idx.shape)}")
        past = caches[0].length if caches else 0
        T = idx.size(1)
        x = self.dropout(self.positions.add(self.tok_emb(idx) * self.embed_scale, past))
        return self.transformer(x, causal=True, key_padding_mask=key_padding_mask, rotary=self.positions.rotary,
                                bias=self.positions.bias(T, past + T, past, causal=True), caches=caches,
                                need_weights=need_weights)

    def forward(self, idx: Tensor, **kw) -> Tensor:
        logits = self.lm_head(self.features(idx, **kw))  # (B, T, vocab)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def new_caches(self, batch: int, max_len: int) -> list:
        """Each layer's own decode cache: all max_len keys, the last `window` of them (rolling), or MLA's latents."""
        like = self.tok_emb.weight
        return [block.new_cache(batch, max_len, like.device, like.dtype) for block in self.transformer.blocks]

    @property
    def context_limit(self) -> int | None:
        """How many positions generation may feed before it slides (generate.py): max_seq_len, or None when every
        layer is windowed (bounded rolling caches) and the positions go on past max_seq_len (all but learned)."""
        cfg = self.config
        unbounded = cfg.position != "learned" and all(layer.window is not None for layer in cfg.layers())
        return None if unbounded else cfg.max_seq_len


def gpt_cost(cfg: GPTConfig, seq_len: int | None = None) -> Cost:
    T = seq_len or cfg.max_seq_len
    per_token = sum(layer_flops(layer, T) for layer in cfg.layers()) + 2 * cfg.d_model * (cfg.vocab_size or 0)
    return Cost("token", per_token, count_parameters(build_skeleton(cfg)))


def gpt_cache_bytes(cfg: GPTConfig, context: int) -> float:
    """fp32 decode cache per token of a `context`-long sequence, all layers (a windowed layer keeps `window`)."""
    return 4 * sum(cache_numbers(layer, context) for layer in cfg.layers())


def gpt_activation_bytes(cfg: GPTConfig, batch: int, seq_len: int | None = None) -> float:
    return transformer_activation_bytes(cfg, cfg.n_layers, batch, seq_len or cfg.max_seq_len)


# --- Hugging Face GPT-2 ------------------------------------------------------------------------------

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_GPT2_NAMES = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn.qkv_proj", "attn.c_proj": "attn.out_proj",
               "mlp.c_fc": "ffn.up", "mlp.c_proj": "ffn.down"}


def hf_activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise HFImportError(f"unsupported activation {name!r}; supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def gpt2_config(hf: dict) -> GPTConfig:
    return GPTConfig(vocab_size=hf["vocab_size"], d_model=hf["n_embd"], n_heads=hf["n_head"], n_layers=hf["n_layer"],
                     max_seq_len=hf["n_positions"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
                     activation=hf_activation(hf.get("activation_function", "gelu_new")),
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
                     position="learned", tie_embeddings=hf.get("tie_word_embeddings", True))


def gpt2_state(cfg: GPTConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """GPT-2's state dict under our names (its Conv1D weights stored (in, out) become nn.Linear's (out, in))."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["wte.weight"], "positions.additive.embedding.weight": sd["wpe.weight"],
           "transformer.final_norm.weight": sd["ln_f.weight"], "transformer.final_norm.bias": sd["ln_f.bias"]}
    for i in range(cfg.n_layers):
        for hf_name, ours in _GPT2_NAMES.items():
            for p in ("weight", "bias"):
                t = sd[f"h.{i}.{hf_name}.{p}"]
                out[f"transformer.blocks.{i}.{ours}.{p}"] = t.t() if p == "weight" and not hf_name.startswith("ln") else t
    if "lm_head.weight" in sd and not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def gpt2_from_ours(model: nn.Module, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    cfg, sd = model.config, model.state_dict()
    if cfg.family != "gpt":
        raise HFImportError("only GPT language models export to GPT-2 format (not classifiers)")
    plain = GPTConfig()
    switched = [key for key in ("attention", "head_dim", "window", "qk_norm", "softcap", "attn_scale", "sandwich_norm",
                                "scale_embeddings", "logit_softcap") if getattr(cfg, key) != getattr(plain, key)]
    if cfg.position != "learned" or cfg.norm != "layernorm" or not cfg.bias or cfg.norm_placement != "pre" \
            or cfg.activation not in ("gelu", "gelu_tanh") or cfg.moe is not None or cfg.kv_heads != cfg.n_heads \
            or switched:
        raise HFImportError("only GPT-2-shaped models (learned positions, pre-LayerNorm with biases, GELU MLP, MHA) "
                            "can be exported to GPT-2 format" + (f"; set back: {', '.join(switched)}" if switched else ""))
    hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
          "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_layer": cfg.n_layers, "n_positions": cfg.max_seq_len,
          "n_inner": cfg.ffn_dim, "layer_norm_epsilon": cfg.norm_eps,
          "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
          "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attn_dropout,
          "tie_word_embeddings": cfg.tie_embeddings}
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["positions.additive.embedding.weight"],
           "transformer.ln_f.weight": sd["transformer.final_norm.weight"],
           "transformer.ln_f.bias": sd["transformer.final_norm.bias"]}
    for i in range(cfg.n_layers):
        for hf_name, ours in _GPT2_NAMES.items():
            for p in ("weight", "bias"):
                t = sd[f"transformer.blocks.{i}.{ours}.{p}"]
                transpose = p == "weight" and not hf_name.startswith("ln")
                out[f"transformer.h.{i}.{hf_name}.{p}"] = t.t().contiguous() if transpose else t
    if not cfg.tie_embeddings:  # tied: Hugging Face re-ties lm_head to wte on load
        out["lm_head.weight"] = sd["lm_head.weight"]
    return hf, out


register_family(Family(
    "gpt", GPTConfig, GPT, kind="causal_lm", cost=gpt_cost, memory=gpt_activation_bytes,
    cache_bytes=gpt_cache_bytes, classifier="gpt_classifier",
    hf=HFConversion(("gpt2",), gpt2_config, gpt2_state, gpt2_from_ours, takes=lambda cfg: cfg.position == "learned"),
    presets={
        # nanoGPT's CPU "baby GPT" (shakespeare_char on a laptop)
        "gpt-baby": dict(vocab_size=96, d_model=128, n_heads=4, n_layers=4, max_seq_len=64, bias=False, dropout=0.0),
        # nanoGPT's shakespeare_char GPU shape
        "gpt-mini": dict(vocab_size=96, d_model=384, n_heads=6, n_layers=6, max_seq_len=256, bias=False, dropout=0.2),
        "gpt2-small": dict(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024,
                           activation="gelu_tanh"),
    }))
