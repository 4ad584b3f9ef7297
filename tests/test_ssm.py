"""Mamba-2 mixer: equal to Hugging Face's Mamba2Mixer/Mamba2Model (torch path, weights copied) on an odd
shape, to a plain token-by-token recurrence at every chunk size (forward and gradients), and its cached
decoding equal to the full forward."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from archlab.errors import ConfigError
from archlab.nn.ssm import Mamba2Mixer, mamba2_forward_flops, ssd_chunked

transformers = pytest.importorskip("transformers")
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer  # noqa: E402

# odd shape: 8 heads of 12 in 2 groups, T = 37 is not a multiple of the chunk (8)
D, HEAD, GROUPS, STATE, CHUNK, T = 48, 12, 2, 16, 8, 37


def hf_config(conv_kernel=4, use_bias=False, layers=1):
    return transformers.Mamba2Config(hidden_size=D, head_dim=HEAD, num_heads=2 * D // HEAD, n_groups=GROUPS,
                                     state_size=STATE, conv_kernel=conv_kernel, chunk_size=CHUNK, expand=2,
                                     use_bias=use_bias, num_hidden_layers=layers, vocab_size=50,
                                     layer_norm_epsilon=1e-5)


def ours(conv_kernel=4, chunk_size=CHUNK, use_bias=False) -> Mamba2Mixer:
    return Mamba2Mixer(D, d_state=STATE, d_conv=conv_kernel, head_dim=HEAD, n_groups=GROUPS,
                       chunk_size=chunk_size, bias=use_bias)


def randomise(module: nn.Module) -> None:
    """Move every SSM parameter off its init (norm weight 1, D 1, conv bias 0) so nothing is checked trivially."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("dt_bias", "A_log", "D", "norm.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))


def sequential_mixer(m: Mamba2Mixer, x: torch.Tensor) -> torch.Tensor:
    """The mixer written as its recurrence, one token at a time, from m's parameters."""
    b, t, _ = x.shape
    H, P, G, N = m.n_heads, m.head_dim, m.n_groups, m.d_state
    z, xBC, dt = m.in_proj(x).split([m.d_inner, m.conv_dim, H], dim=-1)
    xBC = F.silu(F.conv1d(F.pad(xBC.transpose(1, 2), (m.d_conv - 1, 0)), m.conv1d.weight, m.conv1d.bias,
                          groups=m.conv_dim)).transpose(1, 2)
    xs, B, C = xBC.split([m.d_inner, G * N, G * N], dim=-1)
    xs = xs.view(b, t, H, P)
    B = B.view(b, t, G, N).repeat_interleave(H // G, dim=2)  # (b, t, H, N)
    C = C.view(b, t, G, N).repeat_interleave(H // G, dim=2)
    dt = F.softplus(dt + m.dt_bias)
    A = -torch.exp(m.A_log)
    h, ys = torch.zeros(b, H, P, N), []
    for i in range(t):
        h = torch.exp(dt[:, i] * A)[..., None, None] * h + (dt[:, i, :, None] * xs[:, i])[..., None] * B[:, i, :, None]
        ys.append((h @ C[:, i, :, :, None]).squeeze(-1) + m.D[:, None] * xs[:, i])
    y = torch.stack(ys, 1).reshape(b, t, m.d_inner) * F.silu(z)
    y = y.view(b, t, G, -1)
    y = (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.norm.eps)).view(b, t, -1) * m.norm.weight
    return m.out_proj(y)


@pytest.mark.parametrize("conv_kernel,use_bias", [(4, False), (3, True)])
def test_mixer_equals_hugging_face(conv_kernel, use_bias):
    ref = HFMamba2Mixer(hf_config(conv_kernel, use_bias), layer_idx=0).eval()
    randomise(ref)
    m = ours(conv_kernel, use_bias=use_bias).eval()
    m.load_state_dict(ref.state_dict())  # strict: the same names and shapes, 1:1
    assert ref.norm.group_size == m.d_inner // GROUPS  # HF normalises per B/C group, as we do
    assert tuple(hf_config().time_step_limit) == (0.0, float("inf"))  # no dt clamp by default
    x = torch.randn(3, T, D)
    with torch.no_grad():
        err = (m(x) - ref(x)).abs().max()
    assert err <= 1e-4, err


class TinyMamba2(nn.Module):
    """embedding -> N x (RMSNorm -> mixer, residual) -> RMSNorm, named as transformers.Mamba2Model."""

    def __init__(self, layers: int, vocab: int):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, D)
        self.layers = nn.ModuleList(nn.ModuleDict(dict(norm=nn.RMSNorm(D, eps=1e-5), mixer=ours()))
                                    for _ in range(layers))
        self.norm_f = nn.RMSNorm(D, eps=1e-5)

    def forward(self, ids):
        x = self.embeddings(ids)
        for layer in self.layers:
            x = x + layer["mixer"](layer["norm"](x))
        return self.norm_f(x)


def test_model_equals_hugging_face_mamba2_model():
    ref = transformers.Mamba2Model(hf_config(layers=3)).eval()
    randomise(ref)
    model = TinyMamba2(3, 50).eval()
    model.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 50, (2, T))
    with torch.no_grad():
        err = (model(ids) - ref(ids, use_cache=False).last_hidden_state).abs().max()
    assert err <= 1e-4, err


def sequential_ssd(x, dt, A, B, C, h):
    r = x.size(2) // B.size(2)
    B, C = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)
    ys = []
    for i in range(x.size(1)):
        h = torch.exp(dt[:, i] * A)[..., None, None] * h + (dt[:, i, :, None] * x[:, i])[..., None] * B[:, i, :, None]
        ys.append((h @ C[:, i, :, :, None]).squeeze(-1))
    return torch.stack(ys, 1), h


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 64])
def test_chunked_scan_equals_recurrence(chunk_size):
    b, H, P, G, N = 2, 6, 5, 3, 7
    x, B, C = torch.randn(b, T, H, P), torch.randn(b, T, G, N), torch.randn(b, T, G, N)
    dt, A = F.softplus(torch.randn(b, T, H)), -torch.rand(H) * 2
    h0 = torch.randn(b, H, P, N)
    y, h = ssd_chunked(x, dt, A, B, C, chunk_size, h0)
    y_ref, h_ref = sequential_ssd(x, dt, A, B, C, h0)
    assert (y - y_ref).abs().max() <= 1e-4 and (h - h_ref).abs().max() <= 1e-4


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 50])
def test_mixer_equals_recurrence(chunk_size):
    m = ours(chunk_size=chunk_size)
    randomise(m)
    x = torch.randn(2, T, D)
    with torch.no_grad():
        err = (m(x) - sequential_mixer(m, x)).abs().max()
    assert err <= 1e-5, err


def test_gradients_equal_recurrence():
    m = ours(chunk_size=4)
    randomise(m)
    x = torch.randn(2, 11, D, requires_grad=True)
    w = torch.randn(2, 11, D)  # a random loss direction
    grads = torch.autograd.grad((m(x) * w).sum(), [x, *m.parameters()])
    want = torch.autograd.grad((sequential_mixer(m, x) * w).sum(), [x, *m.parameters()])
    for (name, _), g, g_ref in zip([("x", x), *m.named_parameters()], grads, want):
        assert (g - g_ref).abs().max() <= 1e-4, name


def test_decoding_with_cache_equals_full_forward():
    m = ours().eval()
    randomise(m)
    x = torch.randn(3, T, D)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(3)
        steps = torch.cat([m(x[:, i:i + 1], cache=cache) for i in range(T)], 1)
        assert cache.length == T
        assert (steps - full).abs().max() <= 1e-5
        # prefill 20, a multi-token continuation from the cached state, then single steps
        cache = m.new_cache(3)
        parts = [m(x[:, :20], cache=cache), m(x[:, 20:26], cache=cache)]
        parts += [m(x[:, i:i + 1], cache=cache) for i in range(26, T)]
        assert (torch.cat(parts, 1) - full).abs().max() <= 1e-5


def test_cache_reorder_and_size():
    m = ours().eval()
    x = torch.randn(3, T, D)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(3)
        m(x[:, :2], cache=cache)  # a prefill shorter than the conv window
        nbytes = cache.nbytes
        m(x[:, 2:30], cache=cache)
        assert cache.nbytes == nbytes == 3 * 4 * (m.conv_dim * m.d_conv + m.n_heads * HEAD * STATE)
        keep = torch.tensor([2, 0])
        cache.reorder(keep)
        rest = torch.cat([m(x[keep, i:i + 1], cache=cache) for i in range(30, T)], 1)
    assert (rest - full[keep, 30:]).abs().max() <= 1e-5


def test_flops_match_counted_matmuls():
    m = ours(chunk_size=8)
    x = torch.randn(2, 32, D)  # whole chunks
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        m(x)
    per_token = counter.get_total_flops() / x.shape[:2].numel()
    H, P, N = m.n_heads, HEAD, STATE
    scan = 2 * H * P * N / 8  # elementwise multiply-adds over chunk states: not a matmul, not counted
    want = mamba2_forward_flops(D, STATE, 4, 2, HEAD, GROUPS, 8) - scan
    assert per_token == pytest.approx(want, rel=1e-12)


def test_init_and_config_errors():
    m = Mamba2Mixer(64, head_dim=16, dt_min=0.01, dt_max=0.05)
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 0.01 - 1e-6) & (dt <= 0.05 + 1e-6)).all()
    assert torch.equal(m.A_log, torch.arange(1.0, 9.0).log()) and torch.equal(m.D, torch.ones(8))
    assert torch.equal(m.conv1d.bias, torch.zeros(m.conv_dim))
    with pytest.raises(ConfigError, match="head_dim=48"):
        Mamba2Mixer(64, head_dim=48)
    with pytest.raises(ConfigError, match="n_groups=3"):
        Mamba2Mixer(64, head_dim=16, n_groups=3)
