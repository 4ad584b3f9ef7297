"""The 2024-26 switches of the gpt family (GQA, MLA, sliding windows per layer, QK-norm, head_dim, soft-caps,
sandwich norms, Gemma's norm and embedding scale, RoPE scaling): config errors name their keys; decoding with
each layer's own cache (full, rolling, latent) equals the full forward, in bounded memory for windows, also
past max_seq_len; analytic FLOPs equal torch's FlopCounterMode; cache_bytes equals the caches allocated."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from archlab.config import ConfigError
from archlab.generate import generate
from archlab.models import build_model, get_family, model_config
from archlab.models.gpt import gpt_cost
from archlab.nn.attention import KVCache, RollingKVCache
from archlab.nn.mla import LatentCache
from archlab.nn.position import RopeScaling, Rotary

BASE = dict(family="gpt", vocab_size=37, d_model=36, n_heads=6, n_layers=3, max_seq_len=32, position="rope",
            dropout=0.0)
MLA = dict(attention="mla", mla=dict(kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=10))
VARIANTS = {
    "gqa_window": dict(n_kv_heads=2, window=4, norm="rmsnorm", activation="swiglu", bias=False),
    "qk_norm_head_dim_relu2": dict(n_heads=4, n_kv_heads=2, head_dim=10, qk_norm=True, activation="relu2"),
    "gemma_like": dict(n_kv_heads=3, head_dim=8, window=4, window_pattern=[True, False], sandwich_norm=True,
                       norm="rmsnorm_offset", activation="geglu_tanh", softcap=3.0, attn_scale=0.3,
                       logit_softcap=5.0, scale_embeddings=True, tie_embeddings=False, bias=False),
    "mla_low_rank_q": dict(**MLA, softcap=4.0, norm="rmsnorm", activation="swiglu", bias=False) | {
        "mla": dict(MLA["mla"], q_lora_rank=14)},
    "window_no_positions": dict(window=5, position="none"),
    "llama3_rope": dict(n_kv_heads=3, rope_scaling=dict(type="llama3", factor=4.0, original_max_seq_len=8)),
}


def gpt(name: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({**BASE, **VARIANTS[name], **changes}).eval()
    with torch.no_grad():  # norms and biases away from their 1 / 0 start, so each one is exercised
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("overrides,key", [
    (dict(attention="mla", position="alibi"), "position must be 'rope'"),
    (dict(attention="mla", n_kv_heads=2), "n_kv_heads"),
    (dict(window=40), "window=40 is larger than max_seq_len=32"),
    (dict(window=4, position="alibi"), "alibi"),
    (dict(window_pattern=[True, False]), "window_pattern"),
    (dict(window=4, window_pattern=[False]), "window_pattern"),
    (dict(window=4, window_pattern=[True, False, True, False]), "window_pattern has 4 entries"),
    (dict(sandwich_norm=True, norm_placement="post"), "sandwich_norm"),
    (dict(logit_softcap=0.0), "logit_softcap"),
    (dict(position="learned", rope_scaling=dict(type="linear", factor=2.0)), "rope_scaling needs position 'rope'"),
    (dict(rope_scaling=dict(type="yarn")), "rope_scaling.type"),
    (dict(rope_scaling=dict(factor=0.5)), "rope_scaling.factor"),
    (dict(head_dim=9), "even head dimension"),
])
def test_incompatible_switches_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        model_config({**BASE, **overrides})


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decoding_with_each_layers_cache_equals_the_full_forward(name):
    model = gpt(name)
    x = torch.randint(0, 37, (2, 14), generator=torch.Generator().manual_seed(1))  # 14 > every window
    with torch.no_grad():
        want = model(x)
        caches = model.new_caches(2, 14)
        got = torch.cat([model(x[:, :6], caches=caches)] + [model(x[:, t:t + 1], caches=caches) for t in range(6, 14)], 1)
    assert max_err(got, want) <= 1e-5
    cfg = model.config
    for layer, cache in zip(cfg.layers(), caches):
        kind = LatentCache if cfg.attention == "mla" else KVCache if layer.window is None else RollingKVCache
        assert type(cache) is kind
        if kind is RollingKVCache:  # bounded by the window, not the sequence
            assert cache.k.size(2) == layer.window and cache.length == 14


def test_rotary_is_built_for_the_rotated_dimension():
    assert gpt("qk_norm_head_dim_relu2").positions.rotary.head_dim == 10  # head_dim, not d_model / n_heads = 9
    assert gpt("mla_low_rank_q").positions.rotary.head_dim == 4  # MLA rotates only its decoupled rope part
    linear = Rotary(8, 32, 100.0, RopeScaling("linear", factor=2.0))
    plain = Rotary(8, 32, 100.0)
    assert max_err(linear.cos[0:32:2], plain.cos[:16]) <= 1e-6  # position 2p stretched to p


def test_windowed_rope_model_generates_past_max_seq_len_in_bounded_memory():
    model = gpt("gqa_window", max_seq_len=8)
    assert model.context_limit is None
    prompt = torch.randint(0, 37, (2, 3), generator=torch.Generator().manual_seed(2))
    fast = generate(model, prompt, 25, temperature=0)  # 28 positions > max_seq_len 8: no refill, no cut
    slow = generate(model, prompt, 25, temperature=0, use_cache=False)  # the whole sequence every step
    assert fast.shape == (2, 28) and torch.equal(fast, slow)
    with torch.no_grad():  # and the last token is the full forward's greedy choice over all 27 positions
        assert torch.equal(model(fast[:, :-1])[:, -1].argmax(-1), fast[:, -1])
    assert all(c.k.size(2) == 4 for c in model.new_caches(2, 8))


def test_learned_positions_or_global_layers_keep_the_sliding_refill():
    learned = gpt("gqa_window", position="learned", max_seq_len=8)
    mixed = gpt("gemma_like", max_seq_len=8)
    assert learned.context_limit == 8 and mixed.context_limit == 8  # a learned table / full caches: bounded context
    for model in (learned, mixed):
        out = generate(model, torch.randint(0, 37, (1, 5)), 20, temperature=0)
        assert out.shape == (1, 25)


# -- analytic FLOPs and cache bytes ----------------------------------------------------------------------------------

def counted(fn) -> int:
    # FlopCounterMode has no formula for CPU flash attention: run SDPA's math kernel, whose matmuls it counts
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,overrides", [
    ("gqa_window", dict(window=None)),  # GQA, SwiGLU
    ("qk_norm_head_dim_relu2", dict()),
    ("qk_norm_head_dim_relu2", dict(activation="geglu_tanh")),
    ("mla_low_rank_q", dict(softcap=None)),  # v_head_dim = qk_nope + qk_rope: SDPA needs no padding
    ("mla_low_rank_q", dict(mla=dict(MLA["mla"], q_lora_rank=None))),
])
def test_forward_flops_equal_flop_counter(name, overrides):
    model = gpt(name, **overrides)
    T = 9
    x = torch.randint(0, 37, (1, T))
    assert counted(lambda: model(x)) == T * gpt_cost(model.config, T).forward_flops


@pytest.mark.parametrize("name", ["gqa_window", "gemma_like", "window_no_positions"])
@pytest.mark.parametrize("context", [3, 11])
def test_decode_step_flops_equal_flop_counter_counting_the_windows_keys(name, context):
    model = gpt(name)
    x = torch.randint(0, 37, (1, context))
    caches = model.new_caches(1, context)
    with torch.no_grad():
        model(x[:, :-1], caches=caches)
    assert counted(lambda: model(x[:, -1:], caches=caches)) == gpt_cost(model.config, context).forward_flops


@pytest.mark.parametrize("name,overrides", [
    ("qk_norm_head_dim_relu2", dict(n_kv_heads=None)),  # MHA
    ("qk_norm_head_dim_relu2", dict()),  # GQA
    ("mla_low_rank_q", dict()),
    ("gqa_window", dict()),
    ("gemma_like", dict()),
])
@pytest.mark.parametrize("context", [4, 20])  # (a rolling cache holds its window even before it fills)
def test_cache_bytes_equal_the_caches_allocated(name, overrides, context):
    model = gpt(name, **overrides)
    allocated = sum(t.nbytes for c in model.new_caches(1, context) for t in vars(c).values()
                    if isinstance(t, torch.Tensor))
    assert get_family("gpt").cache_bytes(model.config, context) * context == allocated
