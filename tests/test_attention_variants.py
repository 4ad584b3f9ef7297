"""2024-26 attention building blocks against their definitions and against Hugging Face's layers built from
small odd configs (fp32): sliding window (Mistral) and its rolling cache, QK-norm (Qwen3), soft-capping and
scale (Gemma-2), multi-head latent attention (DeepSeek-V3) and its absorbed latent cache, ReLU², GeGLU."""
import math

import pytest
import torch
import torch.nn.functional as F

from archlab.config import ConfigError
from archlab.nn.attention import KVCache, MultiHeadAttention, RollingKVCache
from archlab.nn.block import BlockConfig, MLAConfig, TransformerBlock
from archlab.nn.feedforward import GLU, MLP
from archlab.nn.mla import LatentCache, MultiHeadLatentAttention, deinterleave_rope
from archlab.nn.norm import build_norm
from archlab.nn.position import Rotary

transformers = pytest.importorskip("transformers")
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask  # noqa: E402


def randomize(module: torch.nn.Module) -> None:
    """Norm weights start at one (or zero): give every parameter a random value so each one is checked."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -- sliding window ------------------------------------------------------------------------------------------------

def reference_window(att: MultiHeadAttention, x: torch.Tensor, window: int, causal: bool) -> torch.Tensor:
    """The definition, written out: a masked softmax over i - window < j <= i (or |i - j| < window)."""
    B, T, _ = x.shape
    H, Hkv, hd = att.n_heads, att.n_kv_heads, att.head_dim
    q, k, v = att.qkv_proj(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    q = q.view(B, T, H, hd).transpose(1, 2)
    k = k.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    v = v.view(B, T, Hkv, hd).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & (j > i - window) if causal else (i - j).abs() < window
    scores = (q @ k.transpose(-2, -1) / math.sqrt(hd)).masked_fill(~allowed, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hd)
    return att.out_proj(y)


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_is_a_masked_softmax(causal):
    torch.manual_seed(0)
    att = MultiHeadAttention(24, 6, 2, window=3).eval()
    x = torch.randn(2, 11, 24)
    with torch.no_grad():
        want = reference_window(att, x, 3, causal)
        fast = att(x, causal=causal)
        slow = att(x, causal=causal, need_weights=True)
    assert max_err(fast, want) <= 1e-5 and max_err(slow, want) <= 1e-5
    band = att.weights[0, 0] > 0  # the weights are nonzero exactly on the band
    i, j = torch.arange(11)[:, None], torch.arange(11)[None, :]
    assert torch.equal(band, (j <= i) & (j > i - 3) if causal else (i - j).abs() < 3)


def test_rolling_cache_decoding_equals_uncached_and_stays_bounded():
    torch.manual_seed(1)
    W, T = 4, 12  # 3 x window
    att = MultiHeadAttention(24, 6, 3, window=W).eval()
    rot = Rotary(4, 32)
    x = torch.randn(2, T, 24)
    pad = torch.zeros(2, T, dtype=torch.bool)
    pad[1, :2] = True  # row 1 is left-padded: the mask covers all positions so far, the cache keeps W of them
    with torch.no_grad():
        want = att(x, causal=True, rotary=rot, key_padding_mask=pad)
        cache = RollingKVCache(2, 3, W, 4)
        buffer = cache.k.numel() + cache.v.numel()
        steps, t = [], 0
        for n in (2, 5, 3, 1, 1):  # chunks within, across and past the window, then steps
            steps.append(att(x[:, t:t + n], causal=True, rotary=rot, cache=cache, key_padding_mask=pad[:, :t + n]))
            assert cache.k.size(2) == W and cache.k.numel() + cache.v.numel() == buffer
            t += n
    got = torch.cat(steps, dim=1)
    assert t == T and cache.length == T
    assert max_err(got[0], want[0]) <= 1e-5 and max_err(got[1, 2:], want[1, 2:]) <= 1e-5


def test_rolling_cache_without_padding_matches_full_cache():
    torch.manual_seed(2)
    W = 3
    att = MultiHeadAttention(16, 4, window=W).eval()
    rot = Rotary(4, 32)
    x = torch.randn(1, 3 * W, 16)
    with torch.no_grad():
        rolling, full = RollingKVCache(1, 4, W, 4), KVCache(1, 4, 3 * W, 4)
        a = torch.cat([att(x[:, t:t + 1], causal=True, rotary=rot, cache=rolling) for t in range(3 * W)], 1)
        b = torch.cat([att(x[:, t:t + 1], causal=True, rotary=rot, cache=full) for t in range(3 * W)], 1)
        want = att(x, causal=True, rotary=rot)
    assert max_err(a, want) <= 1e-5 and max_err(b, want) <= 1e-5
    assert rolling.k.size(2) == W and full.k.size(2) == 3 * W


# -- Hugging Face references ---------------------------------------------------------------------------------------

def hf_rope(config, T: int):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    return LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(T)[None])


def copy_qkvo(ours: MultiHeadAttention, theirs) -> None:
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(torch.cat([theirs.q_proj.weight, theirs.k_proj.weight, theirs.v_proj.weight]))
        ours.out_proj.weight.copy_(theirs.o_proj.weight)


def test_qk_norm_gqa_head_dim_match_qwen3():
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention
    torch.manual_seed(3)
    cfg = Qwen3Config(hidden_size=36, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                      rms_norm_eps=1e-6, num_hidden_layers=1, attn_implementation="eager")
    theirs = Qwen3Attention(cfg, 0).eval()
    randomize(theirs)
    ours = MultiHeadAttention(36, 6, 2, head_dim=10, qk_norm=True, bias=False, norm_eps=1e-6).eval()
    copy_qkvo(ours, theirs)
    with torch.no_grad():
        ours.q_norm.weight.copy_(theirs.q_norm.weight)
        ours.k_norm.weight.copy_(theirs.k_norm.weight)
    T = 9
    x = torch.randn(2, T, 36)
    mask = create_causal_mask(cfg, x, None, None, position_ids=torch.arange(T)[None], allow_is_causal_skip=False)
    with torch.no_grad():
        want = theirs(x, hf_rope(cfg, T), mask)[0]
        got = ours(x, causal=True, rotary=Rotary(10, T, cfg.rope_parameters["rope_theta"]))
    assert max_err(got, want) <= 1e-5


def test_window_matches_mistral():
    from transformers import MistralConfig
    from transformers.models.mistral.modeling_mistral import MistralAttention
    torch.manual_seed(4)
    cfg = MistralConfig(hidden_size=36, num_attention_heads=6, num_key_value_heads=3, sliding_window=4,
                        num_hidden_layers=1, attn_implementation="eager")
    theirs = MistralAttention(cfg, 0).eval()
    randomize(theirs)
    ours = MultiHeadAttention(36, 6, 3, window=4, bias=False).eval()
    copy_qkvo(ours, theirs)
    T = 13
    x = torch.randn(2, T, 36)
    mask = create_sliding_window_causal_mask(cfg, x, None, None, position_ids=torch.arange(T)[None],
                                             allow_is_causal_skip=False)
    with torch.no_grad():
        want = theirs(x, hf_rope(cfg, T), mask)[0]
        got = ours(x, causal=True, rotary=Rotary(6, T, cfg.rope_parameters["rope_theta"]))
    assert max_err(got, want) <= 1e-5


def test_softcap_and_scale_match_gemma2():
    from transformers import Gemma2Config
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention
    torch.manual_seed(5)
    cfg = Gemma2Config(hidden_size=36, num_attention_heads=6, num_key_value_heads=2, head_dim=10,
                       query_pre_attn_scalar=7, attn_logit_softcapping=1.5, num_hidden_layers=1,
                       layer_types=["full_attention"], attn_implementation="eager")
    theirs = Gemma2Attention(cfg, 0).eval()
    randomize(theirs)
    ours = MultiHeadAttention(36, 6, 2, head_dim=10, softcap=1.5, scale=7 ** -0.5, bias=False).eval()
    copy_qkvo(ours, theirs)
    T = 9
    x = torch.randn(2, T, 36)
    mask = create_causal_mask(cfg, x, None, None, position_ids=torch.arange(T)[None], allow_is_causal_skip=False)
    with torch.no_grad():
        want = theirs(x, hf_rope(cfg, T), mask)[0]
        got = ours(x, causal=True, rotary=Rotary(10, T, cfg.rope_parameters["rope_theta"]))
        uncapped = MultiHeadAttention(36, 6, 2, head_dim=10, scale=7 ** -0.5, bias=False).eval()
        uncapped.load_state_dict(ours.state_dict())
        moved = uncapped(x, causal=True, rotary=Rotary(10, T, cfg.rope_parameters["rope_theta"]))
    assert max_err(got, want) <= 1e-5
    assert max_err(moved, want) > 1e-2  # the cap bites at this scale: the test would see it missing


# -- multi-head latent attention -----------------------------------------------------------------------------------

MLA_SIZES = dict(kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=7)


def deepseek_pair(q_lora_rank, interleave: bool, bias: bool = False):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention
    cfg = DeepseekV3Config(hidden_size=40, num_attention_heads=5, num_key_value_heads=5, q_lora_rank=q_lora_rank,
                           rope_interleave=interleave, attention_bias=bias, num_hidden_layers=1,
                           attn_implementation="eager", **MLA_SIZES)
    theirs = DeepseekV3Attention(cfg, 0).eval()
    randomize(theirs)
    ours = MultiHeadLatentAttention(40, 5, q_lora_rank=q_lora_rank, bias=bias, **MLA_SIZES).eval()
    sd = theirs.state_dict()
    ours.load_state_dict(deinterleave_rope(sd, 5, 6, 4, 12) if interleave else sd)
    return cfg, theirs, ours


@pytest.mark.parametrize("q_lora_rank,interleave,bias", [(None, True, False), (14, True, True), (14, False, False)])
def test_mla_matches_deepseek_v3(q_lora_rank, interleave, bias):
    torch.manual_seed(6)
    cfg, theirs, ours = deepseek_pair(q_lora_rank, interleave, bias)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding
    T = 11
    x = torch.randn(2, T, 40)
    mask = create_causal_mask(cfg, x, None, None, position_ids=torch.arange(T)[None], allow_is_causal_skip=False)
    rot = Rotary(4, T, cfg.rope_parameters["rope_theta"])
    with torch.no_grad():
        want = theirs(x, DeepseekV3RotaryEmbedding(cfg)(x, torch.arange(T)[None]), mask)[0]
        got = ours(x, causal=True, rotary=rot)
        cache = LatentCache(2, T, 12, 4)
        decoded = torch.cat([ours(x[:, :5], causal=True, rotary=rot, cache=cache)]
                            + [ours(x[:, t:t + 1], causal=True, rotary=rot, cache=cache) for t in range(5, T)], dim=1)
    assert max_err(got, want) <= 1e-5
    assert max_err(decoded, got) <= 1e-5  # absorbed attention over the latents == expanded keys and values


def test_mla_latent_cache_holds_only_the_latent_and_rope_key():
    torch.manual_seed(7)
    ours = MultiHeadLatentAttention(40, 5, q_lora_rank=None, **MLA_SIZES).eval()
    rot = Rotary(4, 16)
    x = torch.randn(3, 8, 40)
    pad = torch.zeros(3, 8, dtype=torch.bool)
    pad[2, :3] = True
    with torch.no_grad():
        want = ours(x, causal=True, rotary=rot, key_padding_mask=pad)
        cache = ours.new_cache(3, 8)
        got = torch.cat([ours(x[:, :3], causal=True, rotary=rot, cache=cache, key_padding_mask=pad[:, :3])]
                        + [ours(x[:, t:t + 1], causal=True, rotary=rot, cache=cache, key_padding_mask=pad[:, :t + 1])
                           for t in range(3, 8)], dim=1)
        # the cached latent is RMSNorm(W_dkv x); the cached key is the shared rope key, rotated
        c_kv, k_rope = ours.kv_a_proj_with_mqa(x).split([12, 4], dim=-1)
        assert max_err(cache.c_kv, ours.kv_a_layernorm(c_kv)) <= 1e-6
        assert max_err(cache.k_rope, rot(k_rope[:, None])[:, 0]) <= 1e-6
    assert max_err(got[:2], want[:2]) <= 1e-5 and max_err(got[2, 3:], want[2, 3:]) <= 1e-5
    tensors = [v for v in vars(cache).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].shape == (3, 8, 12 + 4)  # kv_lora_rank + qk_rope_head_dim per token
    assert cache.bytes_per_token == ours.cache_bytes_per_token() == (12 + 4) * 4


def test_mla_weights_and_explicit_path_agree():
    torch.manual_seed(8)
    ours = MultiHeadLatentAttention(40, 5, q_lora_rank=14, **MLA_SIZES).eval()
    rot = Rotary(4, 16)
    x = torch.randn(2, 6, 40)
    with torch.no_grad():
        fast = ours(x, causal=True, rotary=rot)
        slow = ours(x, causal=True, rotary=rot, need_weights=True)
        w_expanded = ours.weights
        cache = ours.new_cache(2, 6)
        ours(x, causal=True, rotary=rot, cache=cache, need_weights=True)
    assert max_err(fast, slow) <= 1e-5
    assert max_err(ours.weights, w_expanded) <= 1e-5 and ours.weights.shape == (2, 5, 6, 6)


# -- feed-forward and norm -----------------------------------------------------------------------------------------

def test_relu2_mlp_is_squared_relu():
    torch.manual_seed(9)
    mlp = MLP(12, 20, activation="relu2")
    x = torch.randn(4, 5, 12)
    want = mlp.down(F.relu(mlp.up(x)) ** 2)
    assert max_err(mlp(x), want) == 0.0


def test_geglu_and_offset_rmsnorm_match_gemma2():
    from transformers import Gemma2Config
    from transformers.models.gemma2.modeling_gemma2 import Gemma2MLP, Gemma2RMSNorm
    torch.manual_seed(10)
    cfg = Gemma2Config(hidden_size=12, intermediate_size=20, num_attention_heads=2, num_key_value_heads=1,
                       hidden_activation="gelu_pytorch_tanh")
    theirs = Gemma2MLP(cfg)
    ours = GLU(12, 20, activation="geglu_tanh")
    with torch.no_grad():
        ours.gate_up.weight.copy_(torch.cat([theirs.gate_proj.weight, theirs.up_proj.weight]))
        ours.down.weight.copy_(theirs.down_proj.weight)
    their_norm, our_norm = Gemma2RMSNorm(12, eps=1e-6), build_norm("rmsnorm_offset", 12, 1e-6)
    randomize(their_norm)
    our_norm.load_state_dict(their_norm.state_dict())
    x = torch.randn(4, 5, 12)
    with torch.no_grad():
        assert max_err(ours(x), theirs(x)) <= 1e-6
        assert max_err(our_norm(x), their_norm(x)) <= 1e-6


# -- block config --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    (dict(window=0), "window"),
    (dict(softcap=0.0), "softcap"),
    (dict(attn_scale=-1.0), "attn_scale"),
    (dict(attention="mla", qk_norm=True), "qk_norm"),
    (dict(attention="mla", window=8), "window"),
    (dict(attention="mla", n_kv_heads=2), "n_kv_heads"),
    (dict(mla=MLAConfig()), "mla"),
    (dict(attention="mla", mla=MLAConfig(qk_rope_head_dim=5)), "mla.qk_rope_head_dim"),
    (dict(d_model=30, n_heads=4), "n_heads"),
])
def test_block_config_rejects_incompatible_switches(overrides, key):
    with pytest.raises(ConfigError, match=key):
        BlockConfig(**overrides).validate()


def test_block_config_positions_and_head_dim():
    BlockConfig(d_model=30, n_heads=4, head_dim=8).validate()  # head_dim frees d_model from n_heads
    mla = BlockConfig(attention="mla", mla=MLAConfig(qk_rope_head_dim=8))
    mla.validate()
    assert mla.rotary_dim == 8 and BlockConfig(head_dim=10).rotary_dim == 10
    with pytest.raises(ConfigError, match="position must be 'rope'"):
        mla.check_position("alibi")
    with pytest.raises(ConfigError, match="even"):
        BlockConfig(head_dim=9).check_position("rope")


@pytest.mark.parametrize("overrides,cache_type", [
    (dict(), KVCache),
    (dict(window=3, qk_norm=True, softcap=20.0, head_dim=6, n_kv_heads=2, activation="relu2"), RollingKVCache),
    (dict(attention="mla", mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=10),
          activation="geglu_tanh", norm="rmsnorm_offset"), LatentCache),
])
def test_block_decodes_with_its_own_cache(overrides, cache_type):
    torch.manual_seed(11)
    cfg = BlockConfig(d_model=16, n_heads=4, **overrides)
    cfg.validate()
    block = TransformerBlock(cfg).eval()
    rot = Rotary(cfg.rotary_dim, 32)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        want = block(x, causal=True, rotary=rot)
        cache = block.new_cache(2, 10)
        got = torch.cat([block(x[:, t:t + 1], causal=True, rotary=rot, cache=cache) for t in range(10)], dim=1)
    assert type(cache) is cache_type
    assert max_err(got, want) <= 1e-5
