"""Hugging Face Llama, Qwen3, Mistral and Gemma-2 folders into the gpt family and back; DeepSeek-V3 folders
whose MLPs are all dense, read only. Each is a GPT with RoPE (rotate-half, as our Rotary), RMSNorm and a
gated MLP, plus its own switches:

    llama     GQA, rope_scaling linear / llama3, attention_bias + mlp_bias (both or neither)
    qwen3     + qk_norm, head_dim apart from hidden_size / heads, sliding windows per layer (layer_types)
    mistral   + a sliding window on every layer
    gemma2    + (1 + w) RMSNorm, sandwich norms, embeddings x sqrt(d), attention and final logit soft-caps,
              query_pre_attn_scalar, local and global layers in turn (layer_types), GeGLU
    deepseek  attention 'mla' (the rope rows of interleaved checkpoints permuted to rotate-half), dense MLPs

Names: q/k/v_proj -> attn.qkv_proj (concatenated), o_proj -> attn.out_proj, gate/up_proj -> ffn.gate_up,
down_proj -> ffn.down, input_layernorm -> attn_norm, post_attention_layernorm -> ffn_norm (Gemma-2: its
post_attn_norm, with pre/post_feedforward_layernorm -> ffn_norm/post_ffn_norm), model.norm -> final_norm.
A config value this cannot reproduce exactly is an HFImportError that names the key.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, HFImportError
from ..nn.block import MLAConfig
from ..nn.feedforward import GATES
from ..nn.mla import deinterleave_rope
from ..nn.position import RopeScaling
from .gpt import GPTConfig
from .registry import HFConversion, add_hf_conversion

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
                 "gemma2": "Gemma2ForCausalLM"}
# transformers' class defaults, which save_pretrained leaves out of config.json
DEFAULTS = {
    "llama": dict(max_position_embeddings=2048, tie_word_embeddings=False, hidden_act="silu"),
    "qwen3": dict(max_position_embeddings=32768, tie_word_embeddings=False, hidden_act="silu", max_window_layers=28,
                  sliding_window=4096),
    "mistral": dict(max_position_embeddings=4096 * 32, tie_word_embeddings=False, hidden_act="silu",
                    sliding_window=4096),
    "gemma2": dict(max_position_embeddings=8192, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0, head_dim=256),
    "deepseek_v3": dict(max_position_embeddings=4096, tie_word_embeddings=False, hidden_act="silu", kv_lora_rank=512,
                        q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
                        first_k_dense_replace=3, rope_interleave=True),
}
HF_ACTIVATIONS = {"silu": "swiglu", "gelu_pytorch_tanh": "geglu_tanh"}  # the gate's activation


def _get(hf: dict, key: str):
    value = hf.get(key)
    return DEFAULTS[hf["model_type"]].get(key) if value is None and key not in hf else value


# --- config.json -> GPTConfig --------------------------------------------------------------------------------------

def _rope(hf: dict) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes rope_parameters; 4.x wrote rope_theta and rope_scaling (5 reads both, rope_scaling first)
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise HFImportError("rope_parameters per layer type are not supported (one RoPE for every layer)")
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise HFImportError("partial_rotary_factor other than 1 is not supported (RoPE over the whole head)")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", factor=float(params["factor"]))
    if kind == "llama3":
        original = params.get("original_max_position_embeddings") or _get(hf, "max_position_embeddings")
        return theta, RopeScaling("llama3", float(params["factor"]), float(params["low_freq_factor"]),
                                  float(params["high_freq_factor"]), int(original))
    raise HFImportError(f"rope_type {kind!r} (rope_parameters / rope_scaling) is not supported; "
                        f"supported: default, linear, llama3")


def _windows(hf: dict) -> tuple[int | None, list[bool] | None]:
    """(window, window_pattern) from sliding_window and the per-layer layer_types."""
    kind, n = hf["model_type"], hf["num_hidden_layers"]
    window = _get(hf, "sliding_window") if kind in ("mistral", "gemma2", "qwen3") else None
    if kind == "qwen3" and not hf.get("use_sliding_window", False):
        window = None
    if window is None:
        return None, None
    types = hf.get("layer_types") if kind in ("gemma2", "qwen3") else None  # Mistral windows every layer
    if types is None and kind == "gemma2":  # local first, then global, in turn
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if types is None and kind == "qwen3":  # the layers from max_window_layers on are local
        types = ["sliding_attention" if i >= _get(hf, "max_window_layers") else "full_attention" for i in range(n)]
    if types is None:
        return window, None
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown or len(types) != n:
        raise HFImportError(f"layer_types must give full_attention or sliding_attention for each of the {n} layers, "
                            f"got {types}")
    local = [t == "sliding_attention" for t in types]
    if not any(local):
        return None, None
    if all(local):
        return window, None
    period = next(p for p in range(1, n + 1) if all(local[i] == local[i % p] for i in range(n)))
    return window, local[:period]


def _bias(hf: dict) -> bool:
    attention, mlp = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention != mlp:
        which = "attention_bias" if hf["model_type"] != "llama" else "attention_bias and mlp_bias"
        raise HFImportError(f"{which}: biases on the attention but not the MLP (or the reverse) are not supported; "
                            f"got attention_bias={attention}, mlp_bias={mlp}")
    return attention


def llama_config(hf: dict) -> GPTConfig:
    kind = hf["model_type"]
    gemma, deepseek = kind == "gemma2", kind == "deepseek_v3"
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    act_key = "hidden_activation" if gemma else "hidden_act"  # Gemma-2's MLP reads only hidden_activation
    act = _get(hf, act_key)
    if act not in HF_ACTIVATIONS:
        raise HFImportError(f"{act_key} {act!r} is not supported; supported: {', '.join(HF_ACTIVATIONS)}")
    if hf.get("use_bidirectional_attention"):
        raise HFImportError("use_bidirectional_attention: a causal language model attends causally")
    theta, scaling = _rope(hf)
    window, pattern = _windows(hf)
    fields = dict(vocab_size=hf["vocab_size"], d_model=d, n_heads=heads, n_layers=hf["num_hidden_layers"],
                  d_ff=hf["intermediate_size"], activation=HF_ACTIVATIONS[act], norm_eps=hf.get("rms_norm_eps", 1e-6),
                  norm="rmsnorm_offset" if gemma else "rmsnorm", bias=_bias(hf), dropout=0.0, position="rope",
                  rope_base=theta, rope_scaling=scaling, max_seq_len=_get(hf, "max_position_embeddings"),
                  tie_embeddings=_get(hf, "tie_word_embeddings"), window=window, window_pattern=pattern)
    if deepseek:
        fields.update(_deepseek_fields(hf, scaling))
    else:
        kv_heads = hf.get("num_key_value_heads") or heads
        head_dim = _get(hf, "head_dim") or d // heads
        fields.update(n_kv_heads=None if kv_heads == heads else kv_heads,
                      head_dim=None if head_dim * heads == d else head_dim, qk_norm=kind == "qwen3")
    if gemma:
        fields.update(sandwich_norm=True, scale_embeddings=True, softcap=_get(hf, "attn_logit_softcapping"),
                      attn_scale=float(_get(hf, "query_pre_attn_scalar")) ** -0.5,
                      logit_softcap=_get(hf, "final_logit_softcapping"))
    cfg = GPTConfig(**fields)
    try:
        cfg.validate()
    except ConfigError as e:
        raise HFImportError(f"config.json maps to an invalid gpt config: {e}") from None
    return cfg


def _deepseek_fields(hf: dict, scaling: RopeScaling | None) -> dict:
    n = hf["num_hidden_layers"]
    if _get(hf, "first_k_dense_replace") < n:
        raise HFImportError(f"first_k_dense_replace={_get(hf, 'first_k_dense_replace')} < num_hidden_layers={n}: "
                            f"DeepSeek-V3's MoE layers are not supported, only dense MLPs")
    if scaling is not None:  # HF then also rescales the attention by YaRN's mscale
        raise HFImportError("rope_parameters / rope_scaling: DeepSeek-V3 is read with default RoPE only")
    if hf.get("rms_norm_eps", 1e-6) != 1e-6:  # its latent norms keep 1e-6 whatever the config says
        raise HFImportError(f"rms_norm_eps={hf['rms_norm_eps']}: DeepSeek-V3 is read with rms_norm_eps 1e-6 only")
    if not _get(hf, "rope_interleave"):  # the weights are read in the checkpoints' layout, interleaved
        raise HFImportError("rope_interleave=false: DeepSeek-V3 is read in its checkpoints' layout (true) only")
    mla = MLAConfig(kv_lora_rank=_get(hf, "kv_lora_rank"), q_lora_rank=_get(hf, "q_lora_rank"),
                    qk_nope_head_dim=_get(hf, "qk_nope_head_dim"), qk_rope_head_dim=_get(hf, "qk_rope_head_dim"),
                    v_head_dim=_get(hf, "v_head_dim"))
    return dict(attention="mla", mla=mla)


# --- weights ---------------------------------------------------------------------------------------------------------

def _layer_names(cfg: GPTConfig) -> dict[str, str]:
    """Per layer: their module name -> ours, for the modules copied as they are."""
    names = {"input_layernorm": "attn_norm", "mlp.down_proj": "ffn.down"}
    if cfg.sandwich_norm:
        names.update({"post_attention_layernorm": "post_attn_norm", "pre_feedforward_layernorm": "ffn_norm",
                      "post_feedforward_layernorm": "post_ffn_norm"})
    else:
        names["post_attention_layernorm"] = "ffn_norm"
    if cfg.attention == "mla":
        m = cfg.mla_config
        attn = ["q_proj"] if m.q_lora_rank is None else ["q_a_proj", "q_a_layernorm", "q_b_proj"]
        names.update({f"self_attn.{a}": f"attn.{a}" for a in (*attn, "kv_a_proj_with_mqa", "kv_a_layernorm",
                                                               "kv_b_proj", "o_proj")})
    else:
        names["self_attn.o_proj"] = "attn.out_proj"
        if cfg.qk_norm:
            names.update({"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"})
    return names


def _fused(cfg: GPTConfig) -> dict[str, list[str]]:
    """Ours made of several of theirs, concatenated along the output rows."""
    fused = {"ffn.gate_up": ["mlp.gate_proj", "mlp.up_proj"]}
    if cfg.attention != "mla":
        fused["attn.qkv_proj"] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    return fused


def llama_state(cfg: GPTConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    out = {"tok_emb.weight": sd["embed_tokens.weight"], "transformer.final_norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        theirs, ours = f"layers.{i}.", f"transformer.blocks.{i}."
        for hf_name, name in _layer_names(cfg).items():
            for p in ("weight", "bias"):
                if theirs + f"{hf_name}.{p}" in sd:
                    out[ours + f"{name}.{p}"] = sd[theirs + f"{hf_name}.{p}"]
        for name, parts in _fused(cfg).items():
            out[ours + f"{name}.weight"] = torch.cat([sd[theirs + f"{part}.weight"] for part in parts])
            if cfg.bias:
                out[ours + f"{name}.bias"] = torch.cat([sd[theirs + f"{part}.bias"] for part in parts])
        if cfg.attention == "mla":  # interleaved rope rows -> rotate-half
            attn = {k.removeprefix(ours + "attn."): v for k, v in out.items() if k.startswith(ours + "attn.")}
            m = cfg.mla_config
            attn = deinterleave_rope(attn, cfg.n_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank)
            out.update({ours + "attn." + k: v for k, v in attn.items()})
    if not cfg.tie_embeddings and "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


# --- GPTConfig -> config.json ----------------------------------------------------------------------------------------

def hf_model_type(cfg: GPTConfig) -> str:
    """The Hugging Face format a gpt config is written as; HFImportError naming the keys that fit none."""
    gemma = cfg.sandwich_norm or cfg.norm == "rmsnorm_offset" or cfg.scale_embeddings or cfg.logit_softcap is not None
    kind = "gemma2" if gemma else "qwen3" if cfg.qk_norm else "mistral" if cfg.window is not None else "llama"
    need = dict(attention="mha", norm_placement="pre", moe=None)
    if gemma:
        need.update(norm="rmsnorm_offset", sandwich_norm=True, scale_embeddings=True, qk_norm=False, bias=False)
    else:
        need.update(norm="rmsnorm", softcap=None, attn_scale=None)
        if kind != "llama":
            need["bias"] = False
        if kind == "mistral":
            need["window_pattern"] = None
    wrong = [f"{key}={getattr(cfg, key)!r} (needs {value!r})" for key, value in need.items() if getattr(cfg, key) != value]
    if cfg.activation not in GATES:
        wrong.append(f"activation={cfg.activation!r} (needs one of {', '.join(GATES)})")
    if wrong:
        raise HFImportError(f"this gpt cannot be written as Hugging Face {kind}: {'; '.join(wrong)}")
    return kind


def _rope_json(cfg: GPTConfig) -> dict:
    """Both spellings: transformers 5 reads rope_parameters (rope_scaling first), 4.x rope_theta and rope_scaling."""
    s = cfg.rope_scaling
    scaling = None if s is None else {"rope_type": s.type, "factor": s.factor} if s.type == "linear" else {
        "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_seq_len}
    params = {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_base}
    return {"rope_theta": cfg.rope_base, "rope_scaling": scaling and params, "rope_parameters": params}


def _layer_types(cfg: GPTConfig) -> list[str]:
    return ["sliding_attention" if layer.window is not None else "full_attention" for layer in cfg.layers()]


def llama_from_ours(model, labels: list[str] | None = None) -> tuple[dict, dict[str, Tensor]]:
    cfg, sd = model.config, model.state_dict()
    if cfg.family != "gpt":
        raise HFImportError("only gpt language models export to Llama-family formats (not classifiers)")
    kind = hf_model_type(cfg)
    act = {v: k for k, v in HF_ACTIVATIONS.items()}[cfg.activation]
    hf = {"model_type": kind, "architectures": [ARCHITECTURES[kind]], "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
          "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.attn_head_dim,
          "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": act,
          "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0, **_rope_json(cfg)}
    if kind == "llama":
        hf.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    elif kind == "qwen3":
        hf.update(attention_bias=False, use_sliding_window=cfg.window is not None, sliding_window=cfg.window,
                  layer_types=_layer_types(cfg))
    elif kind == "mistral":
        hf.update(sliding_window=cfg.window)
    else:
        scalar = cfg.attn_head_dim if cfg.attn_scale is None else cfg.attn_scale ** -2
        hf.update(hidden_activation=act, attention_bias=False, sliding_window=cfg.window,
                  layer_types=_layer_types(cfg), attn_logit_softcapping=cfg.softcap,
                  final_logit_softcapping=cfg.logit_softcap,
                  query_pre_attn_scalar=round(scalar) if abs(scalar - round(scalar)) < 1e-9 else scalar)
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["transformer.final_norm.weight"]}
    q_dim, kv_dim = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    for i in range(cfg.n_layers):
        theirs, ours = f"model.layers.{i}.", f"transformer.blocks.{i}."
        for hf_name, name in _layer_names(cfg).items():
            for p in ("weight", "bias"):
                if ours + f"{name}.{p}" in sd:
                    out[theirs + f"{hf_name}.{p}"] = sd[ours + f"{name}.{p}"]
        for name, parts in _fused(cfg).items():
            sizes = [q_dim, kv_dim, kv_dim] if name == "attn.qkv_proj" else [cfg.ffn_dim, cfg.ffn_dim]
            for p in ("weight", "bias") if cfg.bias else ("weight",):
                for part, t in zip(parts, sd[ours + f"{name}.{p}"].split(sizes)):
                    out[theirs + f"{part}.{p}"] = t.clone()  # its own storage: safetensors refuses shared ones
    if not cfg.tie_embeddings:  # tied: Hugging Face ties lm_head to the embeddings on load
        out["lm_head.weight"] = sd["lm_head.weight"]
    return hf, out


add_hf_conversion("gpt", HFConversion((*ARCHITECTURES, "deepseek_v3"), llama_config, llama_state, llama_from_ours,
                                      takes=lambda cfg: cfg.position == "rope"))
