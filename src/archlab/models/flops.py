"""Analytic compute and memory of a model config: FLOPs per token (Transformers) or per example
(CNN/ViT), forward and training (= 3x forward: the backward costs two forwards), and an estimate
of training memory. Multiply-adds count as 2 FLOPs; attention scores count the full T x T square
(as PaLM's 6N + 12*L*d*T does), norms, softmax and activations are left out."""
from __future__ import annotations

from dataclasses import dataclass

from .config import (BertConfig, ConvNetConfig, EncoderDecoderConfig, GPTConfig, TransformerFamilyConfig,
                     ViTConfig)


@dataclass
class Cost:
    unit: str  # "token" or "example"
    forward_flops: float
    params: int

    @property
    def train_flops(self) -> float:
        return 3 * self.forward_flops


def _ffn_flops(cfg: TransformerFamilyConfig) -> float:
    d, f = cfg.d_model, cfg.ffn_dim
    one = 2 * (3 if cfg.activation == "swiglu" else 2) * d * f
    if cfg.moe is None:
        return one
    return cfg.moe.top_k * one + 2 * d * cfg.moe.experts  # active experts + router


def _attn_proj_flops(cfg: TransformerFamilyConfig) -> float:
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    return 2 * d * (d + 2 * cfg.kv_heads * hd) + 2 * d * d  # qkv + out


def layer_flops(cfg: TransformerFamilyConfig, context: int) -> float:
    """Forward FLOPs of one self-attention block for one token attending to `context` keys."""
    return _attn_proj_flops(cfg) + 4 * context * cfg.d_model + _ffn_flops(cfg)


def transformer_cost(cfg, seq_len: int | None = None, src_len: int | None = None) -> Cost:
    from . import build_model, count_parameters  # lazy: building is only for the exact parameter count

    params = count_parameters(build_model(cfg))
    T = seq_len or cfg.max_seq_len
    d = cfg.d_model
    if isinstance(cfg, GPTConfig):
        per_token = cfg.n_layers * layer_flops(cfg, T) + 2 * d * cfg.vocab_size
        return Cost("token", per_token, params)
    if isinstance(cfg, BertConfig):
        head = 2 * d * d + 2 * d * cfg.vocab_size if cfg.n_classes == 0 else 0
        return Cost("token", cfg.n_layers * layer_flops(cfg, T) + head, params)
    if isinstance(cfg, EncoderDecoderConfig):
        # per target token, with a source as long as the target (the usual translation setting)
        S = src_len or T
        hd = d // cfg.n_heads
        enc = cfg.n_encoder_layers * layer_flops(cfg, S) * S / T
        cross = 2 * d * d + 2 * d * d + 4 * S * d + 2 * d * 2 * cfg.kv_heads * hd * S / T
        dec = cfg.n_decoder_layers * (layer_flops(cfg, T) + cross)
        return Cost("token", enc + dec + 2 * d * cfg.vocab_size, params)
    if isinstance(cfg, ViTConfig):
        n = cfg.n_patches + 1
        patch = 2 * cfg.in_channels * cfg.patch_size ** 2 * d * cfg.n_patches
        return Cost("example", patch + n * cfg.n_layers * layer_flops(cfg, n) + 2 * d * cfg.n_classes, params)
    raise TypeError(f"not a Transformer config: {type(cfg).__name__}")


def cnn_cost(cfg: ConvNetConfig) -> Cost:
    from . import build_model, count_parameters

    flops, ch, size = 0.0, cfg.in_channels, cfg.image_size

    def conv(cin, cout, k, stride, pad):
        nonlocal size
        size = (size + 2 * pad - k) // stride + 1
        return 2 * cin * cout * k * k * size * size

    for s in cfg.stages:
        if s.type == "conv":
            flops += conv(ch, s.channels, s.kernel, s.stride, s.padding)
        else:
            for i in range(s.blocks):
                cin, stride = (ch, s.stride) if i == 0 else (s.channels, 1)
                flops += conv(cin, s.channels, 3, stride, 1)
                flops += conv(s.channels, s.channels, 3, 1, 1)
                if cin != s.channels or stride != 1:
                    flops += 2 * cin * s.channels * size * size  # 1x1 projection
        if s.pool != "none":
            size //= 2
        ch = s.channels
    width = ch if cfg.global_pool else ch * size * size
    for h in [*cfg.hidden, cfg.n_classes]:
        flops += 2 * width * h
        width = h
    return Cost("example", flops, count_parameters(build_model(cfg)))


def model_cost(cfg, seq_len: int | None = None) -> Cost:
    return cnn_cost(cfg) if isinstance(cfg, ConvNetConfig) else transformer_cost(cfg, seq_len)


def training_memory_bytes(cfg, batch: int, seq_len: int | None = None) -> dict[str, float]:
    """fp32 AdamW training: weights + grads + 2 optimizer moments (16 bytes a parameter), plus
    activations kept for the backward (Korthikanti et al. 2022's per-layer count, fp32)."""
    cost = model_cost(cfg, seq_len)
    states = 16 * cost.params
    if isinstance(cfg, ConvNetConfig):
        # each stage keeps its input, pre-activation and output maps; a rough 3 tensors per conv
        acts, ch, size = 0.0, cfg.in_channels, cfg.image_size
        for s in cfg.stages:
            size = (size + 2 * s.padding - s.kernel) // s.stride + 1 if s.type == "conv" else size // s.stride
            acts += 3 * s.channels * size * size * (2 * s.blocks if s.type == "residual" else 1)
            size = size // 2 if s.pool != "none" else size
        activations = 4 * acts * batch
    else:
        T = seq_len or (cfg.n_patches + 1 if isinstance(cfg, ViTConfig) else cfg.max_seq_len)
        layers = getattr(cfg, "n_layers", 0) or cfg.n_encoder_layers + cfg.n_decoder_layers
        per_layer = T * batch * cfg.d_model * (34 + 5 * cfg.n_heads * T / cfg.d_model) * 2  # fp32 = 2x fp16
        activations = layers * per_layer
    return {"parameters_and_optimizer": states, "activations": activations, "total": states + activations}
