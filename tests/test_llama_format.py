"""Hugging Face Llama, Qwen3, Mistral, Gemma-2 and (dense) DeepSeek-V3 models, built from small odd configs
(fp32, random weights, nothing downloaded), load into the gpt family with the same logits on sequences longer
than their windows and the same greedy generations through our decode caches; gpt models of those shapes save
back and load into transformers with the same logits."""
import pytest
import torch

from archlab.generate import generate
from archlab.models import build_model
from archlab.models.hf import HFImportError, config_from_hf, load_hf_folder, save_hf_folder
from archlab.nn.attention import KVCache, RollingKVCache
from archlab.nn.mla import LatentCache

transformers = pytest.importorskip("transformers")

T, NEW = 13, 20  # tokens of the batch compared (longer than every window below), greedy tokens generated

CONFIGS = {
    # GQA (6 query heads over 2 kv heads), untied, Llama 3.1's rope scaling with a short original context
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=53, hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=16))),
    # QK-norm, head_dim 10 (not 36 / 4), sliding windows on the layers from max_window_layers on, linear rope scaling
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        vocab_size=61, hidden_size=36, intermediate_size=44, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=10, max_position_embeddings=64, use_sliding_window=True, sliding_window=4,
        max_window_layers=1, rope_scaling=dict(rope_type="linear", factor=2.0))),
    # multi-query, a window of 5 on every layer, and a max_position_embeddings (16) that generation goes past
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        vocab_size=47, hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=1, sliding_window=5, max_position_embeddings=16)),
    # soft-caps small enough to bite, query_pre_attn_scalar, head_dim apart, local/global/local layers, tied
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        vocab_size=59, hidden_size=36, intermediate_size=44, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=2, head_dim=10, query_pre_attn_scalar=7, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, sliding_window=4, max_position_embeddings=64)),
    # multi-head latent attention with a low-rank query; every MLP dense (first_k_dense_replace = layers)
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        vocab_size=51, hidden_size=40, intermediate_size=48, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=5, q_lora_rank=14, kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4,
        v_head_dim=7, first_k_dense_replace=2, max_position_embeddings=64)),
}


def randomize(model: torch.nn.Module) -> None:
    """Weights big enough that every one matters and greedy choices are far from ties."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms (Gemma's scale by 1 + w) and biases
                p.copy_(torch.randn_like(p) * 0.2 + (0.0 if "gemma" in type(model).__name__.lower() else 1.0))
            else:
                p.normal_(0.0, 0.15)


def hf_model(kind: str, seed: int = 0):
    config_cls, model_cls, kw = CONFIGS[kind]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**kw, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                                            attn_implementation="eager")
    model = getattr(transformers, model_cls)(cfg).eval()
    randomize(model)
    return model


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(kind, their model, ours loaded from the folder it saved)."""
    theirs = hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(folder)
    return request.param, theirs, load_hf_folder(folder).eval()


def test_logits_equal_transformers(pair):
    kind, theirs, ours = pair
    x = torch.randint(0, theirs.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(x).logits
        got = ours(x)
    cfg = ours.config
    assert max_err(got, want) <= 1e-4, max_err(got, want)
    assert want.abs().max() > 1.0  # logits of weight: a wrong mapping could not hide in the tolerance
    if cfg.window is not None:
        assert cfg.window < T
    switches = {"llama": dict(rope_scaling=cfg.rope_scaling is not None and cfg.rope_scaling.type == "llama3",
                              gqa=cfg.kv_heads == 2, untied=not cfg.tie_embeddings),
                "qwen3": dict(qk_norm=cfg.qk_norm, head_dim=cfg.head_dim == 10, window=cfg.window == 4,
                              pattern=cfg.window_pattern == [False, True, True]),
                "mistral": dict(window=cfg.window == 5 and cfg.window_pattern is None, mqa=cfg.kv_heads == 1),
                "gemma2": dict(norm=cfg.norm == "rmsnorm_offset", sandwich=cfg.sandwich_norm, caps=cfg.softcap == 2.0
                               and cfg.logit_softcap == 3.0, scale=cfg.attn_scale == 7 ** -0.5,
                               pattern=cfg.window_pattern == [True, False], geglu=cfg.activation == "geglu_tanh",
                               embed=cfg.scale_embeddings, tied=cfg.tie_embeddings),
                "deepseek_v3": dict(mla=cfg.attention == "mla" and cfg.mla.q_lora_rank == 14)}[kind]
    assert all(switches.values()), switches


def test_greedy_generation_with_our_caches_equals_transformers_generate(pair):
    kind, theirs, ours = pair
    prompt = torch.randint(0, theirs.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, do_sample=False)
    got = generate(ours, prompt, NEW, temperature=0)
    assert got.shape == (2, 7 + NEW) and torch.equal(got, want)
    caches = ours.new_caches(2, ours.config.max_seq_len)
    kinds = {type(c) for c in caches}
    expected = {"llama": {KVCache}, "qwen3": {KVCache, RollingKVCache}, "mistral": {RollingKVCache},
                "gemma2": {KVCache, RollingKVCache}, "deepseek_v3": {LatentCache}}[kind]
    assert kinds == expected
    if kind == "mistral":  # every layer bounded, RoPE: decodes past max_position_embeddings (16) without a refill
        assert ours.context_limit is None and 7 + NEW > ours.config.max_seq_len


@pytest.mark.parametrize("kind", ["llama", "qwen3", "mistral", "gemma2"])
def test_our_models_save_to_folders_transformers_loads(kind, tmp_path):
    theirs = hf_model(kind, seed=3)
    theirs.save_pretrained(tmp_path / "theirs")
    cfg = load_hf_folder(tmp_path / "theirs").config
    torch.manual_seed(4)
    ours = build_model(cfg).eval()  # a fresh model of that shape, weights of its own
    randomize(ours)
    folder = save_hf_folder(ours, tmp_path / "ours")
    again = getattr(transformers, CONFIGS[kind][1]).from_pretrained(folder, attn_implementation="eager").eval()
    x = torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = ours(x)
        assert max_err(again(x).logits, want) <= 1e-4
        back = load_hf_folder(folder).eval()
        assert back.config == cfg and max_err(back(x), want) == 0.0


def hf_dict(kind: str, **changes) -> dict:
    cfg = getattr(transformers, CONFIGS[kind][0])(**CONFIGS[kind][2]).to_dict()
    return {**cfg, **changes}


@pytest.mark.parametrize("kind,changes,key", [
    ("llama", dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=1e4)), "rope_type 'yarn'"),
    ("llama", dict(rope_scaling=dict(type="dynamic", factor=2.0)), "rope_type 'dynamic'"),
    ("llama", dict(attention_bias=True, mlp_bias=False), "attention_bias and mlp_bias"),
    ("qwen3", dict(attention_bias=True), "attention_bias"),
    ("llama", dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    ("llama", dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("gemma2", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("gemma2", dict(layer_types=["sliding_attention", "chunked_attention", "full_attention"]), "layer_types"),
    ("mistral", dict(sliding_window=100), "window=100 is larger than max_seq_len=16"),
    ("deepseek_v3", dict(first_k_dense_replace=1), "first_k_dense_replace"),
    ("deepseek_v3", dict(rope_interleave=False), "rope_interleave"),
])
def test_unsupported_config_values_name_their_key(kind, changes, key):
    with pytest.raises(HFImportError, match=key):
        config_from_hf(hf_dict(kind, **changes))


@pytest.mark.parametrize("overrides,key", [
    (dict(attention="mla", head_dim=None, n_kv_heads=None), "attention='mla'"),
    (dict(norm="rmsnorm_offset"), "sandwich_norm=False"),
    (dict(activation="gelu"), "activation='gelu'"),
    (dict(softcap=5.0), "softcap=5.0"),
    (dict(window=4, window_pattern=[True, False]), "window_pattern"),  # Mistral windows every layer
])
def test_gpt_shapes_without_a_format_name_their_keys(overrides, key, tmp_path):
    base = dict(family="gpt", vocab_size=30, d_model=24, n_heads=4, n_layers=2, max_seq_len=16, position="rope",
                norm="rmsnorm", activation="swiglu", bias=False)
    model = build_model({**base, **overrides})
    with pytest.raises(HFImportError, match=key):
        save_hf_folder(model, tmp_path / "out")
