"""Building blocks checked against PyTorch's own modules and against their defining properties."""
import pytest
import torch
import torch.nn as nn

from archlab.config import ConfigError
from archlab.nn.attention import KVCache, MultiHeadAttention
from archlab.nn.block import BlockConfig, MoEConfig, TransformerBlock
from archlab.nn.conv import PatchWhitening
from archlab.nn.feedforward import MoE, SwiGLU, swiglu_hidden
from archlab.nn.position import ALiBi, Rotary, alibi_slopes, sinusoid_table

B, T, D, H = 3, 7, 32, 4


def copied_from_torch(ref: nn.MultiheadAttention) -> MultiHeadAttention:
    ours = MultiHeadAttention(D, H)
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(ref.in_proj_weight)
        ours.qkv_proj.bias.copy_(ref.in_proj_bias)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    return ours.eval()


def padding(lengths):
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]  # True = pad


@pytest.mark.parametrize("use_padding", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_multihead_attention(use_padding, causal):
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    ours = copied_from_torch(ref)
    x = torch.randn(B, T, D)
    kpm = padding([7, 5, 3]) if use_padding else None
    causal_mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if causal else None
    want, want_w = ref(x, x, x, key_padding_mask=kpm, attn_mask=causal_mask, need_weights=True,
                       average_attn_weights=False)
    got = ours(x, key_padding_mask=kpm, causal=causal, need_weights=True)
    assert (got - want).abs().max() <= 1e-5
    assert (ours.weights - want_w).abs().max() <= 1e-5
    fast = ours(x, key_padding_mask=kpm, causal=causal)  # SDPA path
    assert ours.weights is None
    assert (fast - got).abs().max() <= 1e-5


def test_cross_attention_matches_torch():
    ref = nn.MultiheadAttention(D, H, batch_first=True).eval()
    ours = MultiHeadAttention(D, H, cross=True).eval()
    with torch.no_grad():
        ours.q_proj.weight.copy_(ref.in_proj_weight[:D])
        ours.q_proj.bias.copy_(ref.in_proj_bias[:D])
        ours.kv_proj.weight.copy_(ref.in_proj_weight[D:])
        ours.kv_proj.bias.copy_(ref.in_proj_bias[D:])
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x, mem = torch.randn(B, 4, D), torch.randn(B, T, D)
    kpm = padding([7, 2, 5])
    want, want_w = ref(x, mem, mem, key_padding_mask=kpm, average_attn_weights=False)
    assert (ours(x, mem, key_padding_mask=kpm, need_weights=True) - want).abs().max() <= 1e-5
    assert (ours.weights - want_w).abs().max() <= 1e-5
    assert (ours(x, mem, key_padding_mask=kpm) - want).abs().max() <= 1e-5


def test_gqa_with_all_heads_is_mha_and_sdpa_equals_explicit():
    x = torch.randn(B, T, D)
    mha = MultiHeadAttention(D, H).eval()
    gqa = MultiHeadAttention(D, H, n_kv_heads=H).eval()
    gqa.load_state_dict(mha.state_dict())
    assert (gqa(x, causal=True) - mha(x, causal=True)).abs().max() <= 1e-6
    for kv in (1, 2):  # MQA and GQA: the fast path (SDPA enable_gqa) equals the explicit repeat
        att = MultiHeadAttention(D, H, n_kv_heads=kv).eval()
        assert att.qkv_proj.out_features == D + 2 * kv * (D // H)
        fast = att(x, causal=True, key_padding_mask=padding([7, 6, 4]))
        slow = att(x, causal=True, key_padding_mask=padding([7, 6, 4]), need_weights=True)
        assert (fast - slow).abs().max() <= 1e-5


def test_causal_outputs_ignore_the_future():
    att = MultiHeadAttention(D, H).eval()
    x = torch.randn(1, T, D)
    y = x.clone()
    y[:, 4:] = torch.randn(1, T - 4, D)
    assert torch.allclose(att(x, causal=True)[:, :4], att(y, causal=True)[:, :4], atol=1e-6)
    assert not torch.allclose(att(x)[:, :4], att(y)[:, :4], atol=1e-3)  # without the mask they would differ


def test_padded_keys_change_nothing():
    att = MultiHeadAttention(D, H).eval()
    x = torch.randn(B, T, D)
    kpm = padding([7, 5, 3])
    y = x.clone()
    y[kpm] = torch.randn(int(kpm.sum()), D)
    real = ~kpm
    assert torch.allclose(att(x, key_padding_mask=kpm)[real], att(y, key_padding_mask=kpm)[real], atol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_kv_cache_decoding_equals_full_attention(kv_heads):
    att = MultiHeadAttention(D, H, n_kv_heads=kv_heads).eval()
    rot = Rotary(D // H, 16)
    x = torch.randn(2, T, D)
    full = att(x, causal=True, rotary=rot)
    cache = KVCache(2, kv_heads, T, D // H)
    prefix = att(x[:, :3], causal=True, rotary=rot, cache=cache)  # a prompt, then one token at a time
    steps = [att(x[:, t:t + 1], causal=True, rotary=rot, cache=cache) for t in range(3, T)]
    assert (torch.cat([prefix, *steps], 1) - full).abs().max() <= 1e-5


def test_rope_is_relative():
    """RoPE scores depend on the distance between positions only."""
    rot = Rotary(8, 64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s1 = (rot(q, 5) * rot(k, 2)).sum()
    s2 = (rot(q, 20) * rot(k, 17)).sum()
    assert torch.allclose(s1, s2, atol=1e-5)
    assert torch.allclose(rot(q, 0), q)  # position 0 is the identity


def test_sinusoid_table_matches_formula():
    pe = sinusoid_table(50, 16)
    pos, i = 7, 3
    assert pe[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)
    assert pe[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (2 * i / 16))).item(), abs=1e-6)


def test_alibi_slopes_and_bias():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2 ** -(i + 1) for i in range(8)], dtype=torch.float32))
    assert len(alibi_slopes(12)) == 12
    bias = ALiBi(4)(5, 5)
    assert bias.shape == (4, 5, 5)
    assert bias[0, 4, 0] == -4 * alibi_slopes(4)[0]
    assert (bias.diagonal(dim1=1, dim2=2) == 0).all()


def test_alibi_attention_sdpa_equals_explicit():
    att = MultiHeadAttention(D, H).eval()
    x = torch.randn(B, T, D)
    bias = ALiBi(H)(T, T)
    kpm = padding([7, 5, 3])
    fast = att(x, causal=True, bias=bias, key_padding_mask=kpm)
    slow = att(x, causal=True, bias=bias, key_padding_mask=kpm, need_weights=True)
    assert (fast - slow).abs().max() <= 1e-5


def test_swiglu_hidden_matches_mlp_parameters():
    hidden = swiglu_hidden(4 * 128)
    swiglu = SwiGLU(128, hidden)
    mlp_params = 2 * 128 * 512
    assert abs(sum(p.numel() for p in swiglu.parameters()) - mlp_params) / mlp_params < 0.02


def test_moe_routes_top_k_and_balances():
    torch.manual_seed(0)
    moe = MoE(16, 32, n_experts=4, top_k=2)
    x = torch.randn(2, 10, 16)
    y = moe(x)
    assert y.shape == x.shape
    assert moe.aux_loss.item() >= 1.0 - 1e-5  # equals 1 only for perfectly uniform routing
    # reference: the dense computation of the same routing
    flat = x.reshape(-1, 16)
    probs = moe.router(flat).softmax(-1)
    p, idx = probs.topk(2, -1)
    p = p / p.sum(-1, keepdim=True)
    want = torch.stack([sum(p[n, j] * moe.experts[int(idx[n, j])](flat[n]) for j in range(2)) for n in range(len(flat))])
    assert (y.reshape(-1, 16) - want).abs().max() <= 1e-5
    y.sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_block_matches_torch_encoder_layer():
    ref = nn.TransformerEncoderLayer(D, H, 64, dropout=0.0, activation="relu", batch_first=True).eval()
    ours = TransformerBlock(BlockConfig(d_model=D, n_heads=H, d_ff=64, activation="relu", norm_placement="post")).eval()
    with torch.no_grad():
        ours.attn.qkv_proj.weight.copy_(ref.self_attn.in_proj_weight)
        ours.attn.qkv_proj.bias.copy_(ref.self_attn.in_proj_bias)
        ours.attn.out_proj.load_state_dict(ref.self_attn.out_proj.state_dict())
        ours.ffn.up.load_state_dict(ref.linear1.state_dict())
        ours.ffn.down.load_state_dict(ref.linear2.state_dict())
        ours.attn_norm.load_state_dict(ref.norm1.state_dict())
        ours.ffn_norm.load_state_dict(ref.norm2.state_dict())
    x = torch.randn(B, T, D)
    kpm = padding([7, 4, 6])
    want = ref(x, src_key_padding_mask=kpm)
    got = ours(x, key_padding_mask=kpm)
    assert (got - want)[~kpm].abs().max() <= 1e-5


def test_bad_config_errors_name_the_problem():
    from archlab.config import from_dict
    with pytest.raises(ConfigError, match="n_heads=5"):
        from_dict(BlockConfig, {"d_model": 32, "n_heads": 5})
    with pytest.raises(ConfigError, match="n_kv_heads=3.*allowed"):
        from_dict(BlockConfig, {"d_model": 32, "n_heads": 4, "n_kv_heads": 3})
    with pytest.raises(ConfigError, match="'d_modle'.*Did you mean 'd_model'"):
        from_dict(BlockConfig, {"d_modle": 32})
    with pytest.raises(ConfigError, match="norm.*'layernorm', 'rmsnorm'"):
        from_dict(BlockConfig, {"norm": "batchnorm"})
    with pytest.raises(ConfigError, match="moe.top_k=3"):
        from_dict(BlockConfig, {"moe": {"experts": 2, "top_k": 3}})
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(30, 4)
    att = MultiHeadAttention(D, H)
    with pytest.raises(ValueError, match=r"\(batch, seq, d_model\)"):
        att(torch.randn(T, D))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        att(torch.randn(B, T, D), key_padding_mask=torch.zeros(B, T + 1, dtype=torch.bool))
    assert isinstance(from_dict(BlockConfig, {"moe": {"experts": 4}}).moe, MoEConfig)


@pytest.mark.parametrize("with_bias", [False, True])
def test_bf16_autocast_training_attention_matches_fp32(with_bias, monkeypatch):
    """Under CPU bf16 autocast the attention core runs in fp32 (speed); outputs and gradients must
    still be those of the fp32 module up to bf16 rounding of the projections."""
    import torch.nn.functional as F

    sdpa, seen = F.scaled_dot_product_attention, []

    def recording_sdpa(q, k, v, **kw):
        out = sdpa(q, k, v, **kw)
        seen.append((q.dtype, out.dtype))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    torch.manual_seed(0)
    att = MultiHeadAttention(D, H)
    x = torch.randn(B, T, D)
    bias = ALiBi(H)(T, T) if with_bias else None
    kpm = padding([7, 5, 3])
    ref = att(x, causal=True, bias=bias, key_padding_mask=kpm)
    ref.square().sum().backward()
    ref_grad = att.qkv_proj.weight.grad.clone()
    att.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = att(x, causal=True, bias=bias, key_padding_mask=kpm)
    assert out.dtype == torch.bfloat16
    assert seen[-1] == (torch.float32, torch.float32)  # fp32 inputs, and autocast did not cast them back
    out.float().square().sum().backward()
    assert torch.allclose(out.float(), ref, atol=3e-2, rtol=3e-2)
    rel = (att.qkv_proj.weight.grad - ref_grad).norm() / ref_grad.norm()
    assert rel < 3e-2


def test_patch_whitening_decorrelates_the_patches_it_was_fitted_to():
    torch.manual_seed(0)
    # 2-channel images whose neighbouring pixels and channels are strongly correlated (a blurred, mixed noise)
    noise = torch.randn(64, 2, 20, 20)
    x = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1) * 3 + 1
    x = torch.stack([x[:, 0], 0.8 * x[:, 0] + 0.2 * x[:, 1]], dim=1)
    layer = PatchWhitening(2, kernel=3, padding=0)
    layer.fit(x, eps=1e-8)
    y = layer(x)  # (64, 36, 18, 18): 18 whitening filters, then the same negated
    assert y.shape == (64, 36, 18, 18)
    assert torch.allclose(y[:, 18:], -y[:, :18], atol=1e-5)
    flat = y[:, :18].permute(0, 2, 3, 1).reshape(-1, 18)
    # uncentred second moments, as fitted: the identity (the patches' own cov was far from it)
    assert torch.allclose(flat.T @ flat / len(flat), torch.eye(18), atol=1e-3)
    patches = x.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 18)
    assert (patches.T @ patches / len(patches) - torch.eye(18)).abs().max() > 1
    assert [n for n, p in layer.named_parameters()] == ["bias"]  # the filters are fixed: a buffer
