"""Gated DeltaNet checked against a token-by-token recurrence written here and against HF's Qwen3-Next layer."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from archlab.config import ConfigError
from archlab.nn.linear_attention import GatedDeltaNet, chunk_gated_delta_rule, gated_deltanet_flops

B, H, T, DK, DV = 2, 3, 37, 8, 12


def sequential_reference(q, k, v, g, beta, state=None):
    """The definition, one token at a time: S = exp(g_t) S; S += k_t beta_t (v_t - S^T k_t)^T; o_t = S^T q_t."""
    S = torch.zeros(q.size(0), q.size(1), q.size(-1), v.size(-1), dtype=q.dtype) if state is None else state
    out = []
    for t in range(q.size(2)):
        q_t, k_t, v_t, beta_t = q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t, None]
        S = S * g[:, :, t].exp()[..., None, None]
        u = beta_t * (v_t - torch.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + torch.einsum("bhk,bhv->bhkv", k_t, u)
        out.append(torch.einsum("bhkv,bhk->bhv", S, q_t))
    return torch.stack(out, dim=2), S


def random_rule_inputs(seed, t=T, decay_scale=0.5, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q = F.normalize(r(B, H, t, DK), dim=-1) / math.sqrt(DK)
    k = F.normalize(r(B, H, t, DK), dim=-1)
    v = r(B, H, t, DV)
    g = -F.softplus(r(B, H, t)) * decay_scale  # 0.5: decays from ~0.3 to ~1 per token
    beta = r(B, H, t).sigmoid()
    return q, k, v, g, beta


@pytest.mark.parametrize("decay_scale", [0.5, 40.0])  # 40: within a chunk, decays far below the e^-60 cut-off
@pytest.mark.parametrize("chunk", [1, 3, 16, 64])  # 64 > T: one chunk holds the whole sequence
def test_chunked_rule_equals_sequential_recurrence(chunk, decay_scale):
    q, k, v, g, beta = random_rule_inputs(0, decay_scale=decay_scale)
    state0 = torch.randn(B, H, DK, DV) * 0.1
    for initial in (None, state0):
        want_o, want_S = sequential_reference(q, k, v, g, beta, initial)
        got_o, got_S = chunk_gated_delta_rule(q, k, v, g, beta, chunk, initial)
        assert (got_o - want_o).abs().max() <= 1e-5
        assert (got_S - want_S).abs().max() <= 1e-5


def test_chunked_rule_gradients_equal_sequential_ones():
    inputs = [x.requires_grad_() for x in random_rule_inputs(1, t=11)]
    weights = torch.randn(B, H, 11, DV), torch.randn(B, H, DK, DV)  # a loss that reads every output and the state
    grads = []
    for rule in (lambda *a: sequential_reference(*a), lambda *a: chunk_gated_delta_rule(*a, 4)):
        o, S = rule(*inputs)
        grads.append(torch.autograd.grad((o * weights[0]).sum() + (S * weights[1]).sum(), inputs))
    for want, got in zip(*grads, strict=True):
        assert (got - want).abs().max() <= 1e-4


def random_layer(chunk_size=64):
    """An odd-shaped layer (d 40, 2 key / 4 value heads of 8 / 12, kernel 3) with non-trivial values everywhere."""
    torch.manual_seed(0)
    layer = GatedDeltaNet(40, 2, 4, 8, 12, conv_kernel=3, chunk_size=chunk_size).eval()
    with torch.no_grad():  # the norm weight and dt_bias too, around 1
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return layer


@pytest.mark.parametrize("chunk", [16, 64])
def test_layer_matches_hf_qwen3_next(chunk):
    hf = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")  # transformers >= 4.57
    cfg = hf.Qwen3NextConfig(hidden_size=40, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                             linear_value_head_dim=12, linear_conv_kernel_dim=3, num_hidden_layers=1)
    ref = hf.Qwen3NextGatedDeltaNet(cfg, layer_idx=0).eval()
    ours = random_layer(chunk)
    ref.load_state_dict(ours.state_dict())  # same names and shapes
    x = torch.randn(3, T, 40)
    with torch.no_grad():
        want = ref(x)  # no cache: HF's torch chunked path (chunk 64)
        got = ours(x)
    assert (got - want).abs().max() <= 1e-4


def test_init_matches_hf():
    layer = GatedDeltaNet(256, 2, 4, 64, 64)  # HF: N(0, initializer_range 0.02) for linears and the conv
    for m in (layer.in_proj_qkvz, layer.in_proj_ba, layer.conv1d, layer.out_proj):
        assert abs(m.weight.std().item() - 0.02) < 1.5e-3 and abs(m.weight.mean().item()) < 1.5e-3
    assert torch.equal(layer.dt_bias, torch.ones(4)) and torch.equal(layer.norm.weight, torch.ones(64))
    assert ((layer.A_log.exp() >= 0.01 - 1e-6) & (layer.A_log.exp() <= 16 + 1e-4)).all()


def test_decoding_with_cache_equals_full_forward():
    layer = random_layer(chunk_size=8)
    x = torch.randn(3, 20, 40)
    with torch.no_grad():
        want = layer(x)
        cache = layer.new_cache(3)
        steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(20)], dim=1)
        assert (steps - want).abs().max() <= 1e-5 and cache.length == 20
        size = cache.nbytes

        cache = layer.new_cache(3)  # prefill a prefix (chunked), step, then prefill again from the cached state
        parts = [layer(x[:, :11], cache=cache), layer(x[:, 11:12], cache=cache), layer(x[:, 12:], cache=cache)]
        assert (torch.cat(parts, dim=1) - want).abs().max() <= 1e-5
        assert cache.nbytes == size  # independent of the sequence length
        assert size == 4 * 3 * (layer.conv_dim * 2 + 4 * 8 * 12)


def test_cache_reorder_keeps_chosen_rows():
    layer = random_layer()
    x = torch.randn(3, 9, 40)
    with torch.no_grad():
        cache = layer.new_cache(3)
        layer(x[:, :8], cache=cache)
        cache.reorder(torch.tensor([2, 0]))
        got = layer(x[[2, 0], 8:], cache=cache)
        want = layer(x[[2, 0]])[:, 8:]
    assert (got - want).abs().max() <= 1e-5


def test_config_errors():
    with pytest.raises(ConfigError, match="n_v_heads=5"):
        GatedDeltaNet(40, 2, 5, 8, 8)
    with pytest.raises(ConfigError, match="chunk_size"):
        GatedDeltaNet(40, 2, 4, 8, 8, chunk_size=0)


def test_flops_equal_counted_matmuls_plus_solve():
    """torch's FlopCounterMode counts the matmuls and the convolution, not the triangular solve (added here)."""
    layer = GatedDeltaNet(40, 2, 4, 8, 12, conv_kernel=3, chunk_size=16)
    x = torch.randn(2, 32, 40)  # T a multiple of the chunk: no padding
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x)
    solve = 4 * 16 * (8 + 12)  # per token: n_v_heads * C * (dk + dv)
    assert counter.get_total_flops() + solve * 2 * 32 == 2 * 32 * gated_deltanet_flops(40, 2, 4, 8, 12, 3, 16)
