"""The families after the Transformer: mamba2 (equal to Hugging Face's Mamba2ForCausalLM, both ways) and hybrid
stacks of mamba2 / gated_deltanet / attention / mla layers. Their caches decode as the full forward does
(within the context, and past it on generate()'s window schedule), recurrent caches do not grow, the analytic
FLOPs equal torch's count, the recipes train on the Bible, and bad switches are ConfigErrors naming the key."""
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import archlab.data.text
from archlab import cli
from archlab.errors import ConfigError, HFImportError
from archlab.generate import generate
from archlab.models import build_model, get_family, model_config
from archlab.models.hf import config_from_hf, from_hf_state_dict, load_hf_folder, save_hf_folder
from archlab.nn.attention import KVCache, RollingKVCache
from archlab.nn.linear_attention import GatedDeltaNetCache
from archlab.nn.mla import LatentCache
from archlab.nn.ssm import Mamba2Cache

from conftest import require_command

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# tiny but odd: chunks that do not divide the context, grouped B/C, GQA, a window, latent attention, MoE
SMALL_MAMBA = {"d_state": 8, "head_dim": 16, "n_groups": 2, "chunk_size": 4}
SMALL_GDN = {"n_k_heads": 1, "n_v_heads": 2, "head_k_dim": 16, "head_v_dim": 8, "conv_kernel": 3, "chunk_size": 4}
CASES = {
    "mamba2": {"family": "mamba2", "d_model": 32, "n_layers": 2, "d_conv": 3, **SMALL_MAMBA},
    "gdn": {"family": "hybrid", "d_model": 32, "layers": ["gated_deltanet"] * 2, "gated_deltanet": SMALL_GDN},
    "hybrid": {"family": "hybrid", "d_model": 32, "layers": ["mamba2", "attention", "gated_deltanet", "mla"],
               "mamba2": SMALL_MAMBA, "gated_deltanet": SMALL_GDN, "attention": {"n_heads": 2},
               "mla": {"kv_lora_rank": 12, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 12},
               "activation": "relu2"},
    "hybrid_window_moe": {"family": "hybrid", "d_model": 32, "layers": ["attention", "mamba2"], "mamba2": SMALL_MAMBA,
                          "attention": {"n_heads": 4, "n_kv_heads": 2, "window": 6, "qk_norm": True},
                          "moe": {"experts": 3, "top_k": 2}, "d_ff": 24},
}


def tiny(case: str, max_seq_len: int = 16, vocab: int = 40):
    torch.manual_seed(0)
    model = build_model({**CASES[case], "vocab_size": vocab, "max_seq_len": max_seq_len,
                         "tie_embeddings": False}).eval()
    with torch.no_grad():  # O(1) weights: every layer shapes the logits, and greedy choices are decisive
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0.0, m.in_features ** -0.5)
    return model


def windowed_reference(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """generate()'s window schedule replayed with full forwards and no cache: the prefill sees the last
    max_seq_len - 1 prompt tokens; when the context holds max_seq_len tokens it restarts from the last half."""
    L = model.config.max_seq_len
    out, start = prompt, max(0, prompt.size(1) - (L - 1))
    with torch.no_grad():
        logits = model(out[:, start:])[:, -1]
        for _ in range(n):
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], 1)
            if out.size(1) - 1 - start == L:
                start = out.size(1) - L // 2
            logits = model(out[:, start:])[:, -1]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_cached_generation_equals_uncached(case):
    model = tiny(case)
    prompt = torch.randint(0, 40, (2, 5))
    fast = generate(model, prompt, 40, temperature=0)  # 45 tokens, context 16: two refills of the caches
    within = generate(model, prompt, 11, temperature=0, use_cache=False)  # up to the context: no window
    assert torch.equal(fast[:, :16], within)
    # past the context generate() refills half a window while the uncached path crops to a whole one (for every
    # family, GPT included); the cached tokens equal full forwards over the windows the caches saw
    assert torch.equal(fast, windowed_reference(model, prompt, 40))
    assert len(set(fast[0, 5:].tolist())) > 3  # a real sequence, not one token repeated


@pytest.mark.parametrize("case", list(CASES))
def test_cached_logits_equal_the_full_forward_and_caches_reorder(case):
    model = tiny(case, max_seq_len=32)
    x = torch.randint(0, 40, (3, 20))
    with torch.no_grad():
        full = model(x)
        caches = model.new_caches(3, 32)
        parts = [model(x[:, :7], caches=caches)]  # a prefill, single steps, a chunk of several tokens
        parts += [model(x[:, i:i + 1], caches=caches) for i in range(7, 12)]
        parts.append(model(x[:, 12:16], caches=caches))
        err = (torch.cat(parts, 1) - full[:, :16]).abs().max()
        assert all(c.length == 16 for c in caches)
        keep = torch.tensor([2, 0])  # beam search keeps some rows: every cache kind reorders
        for c in caches:
            c.reorder(keep)
        rest = torch.cat([model(x[keep, i:i + 1], caches=caches) for i in range(16, 20)], 1)
        err_reordered = (rest - full[keep, 16:]).abs().max()
    assert err <= 1e-5 and err_reordered <= 1e-5, (err, err_reordered)


def cache_bytes(cache, context: int) -> tuple[float, float]:
    """(fixed bytes, bytes per token) of one sequence's cache."""
    if isinstance(cache, (Mamba2Cache, GatedDeltaNetCache)):
        return cache.nbytes, 0.0
    if isinstance(cache, RollingKVCache):
        return 0.0, (cache.k.nbytes + cache.v.nbytes) * min(cache.window, context) / cache.window / context
    if isinstance(cache, KVCache):
        return 0.0, (cache.k.nbytes + cache.v.nbytes) / cache.k.size(2)
    assert isinstance(cache, LatentCache)
    return 0.0, cache.bytes_per_token


@pytest.mark.parametrize("case", list(CASES))
def test_recurrent_caches_do_not_grow_and_cache_bytes_match(case):
    model = tiny(case, max_seq_len=64)
    cfg, family = model.config, get_family(model.config.family)
    x = torch.randint(0, 40, (1, 60))
    caches = model.new_caches(1, 64)
    recurrent = [i for i, c in enumerate(caches) if isinstance(c, (Mamba2Cache, GatedDeltaNetCache))]
    with torch.no_grad():
        model(x[:, :3], caches=caches)
        before = [caches[i].nbytes for i in recurrent]
        for i in range(3, 60):
            model(x[:, i:i + 1], caches=caches)
    assert [caches[i].nbytes for i in recurrent] == before  # 3 or 60 tokens: the same state
    for context in (16, 64, 512):
        fixed, per_token = (sum(v) for v in zip(*(cache_bytes(c, context) for c in caches)))
        assert family.cache_bytes(cfg, context) == pytest.approx(fixed / context + per_token, rel=1e-12)
    if len(recurrent) == len(caches):  # all recurrent: the whole cache is the same at any context
        assert family.cache_bytes(cfg, 512) * 512 == pytest.approx(family.cache_bytes(cfg, 16) * 16)


def uncounted_flops(cfg, T: int) -> float:
    """Per token, the work FlopCounterMode does not see (it counts matmuls and convolutions): Mamba-2's scan
    over chunk states (one elementwise multiply-add per state element per chunk, in a Python loop over
    chunks) and gated DeltaNet's triangular solve (C^2 / 2 multiply-adds per right-hand column)."""
    layers = cfg.layers if cfg.family == "hybrid" else ["mamba2"] * cfg.n_layers
    total = 0.0
    for kind in layers:
        if kind == "mamba2":
            m = cfg.mamba2_options if cfg.family == "hybrid" else cfg
            total += 2 * m.expand * cfg.d_model * m.d_state / m.chunk_size
        elif kind == "gated_deltanet":
            g = cfg.gdn_options
            total += g.n_v_heads * min(g.chunk_size, T) * (g.head_k_dim + g.head_v_dim)
    return total


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_flops_equal_the_flop_counter(case):
    model = tiny(case, max_seq_len=24)  # whole chunks of 4; MoE counts exactly top_k experts per token
    cfg = model.config
    x = torch.randint(0, 40, (2, 24))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # need_weights: attention on its explicit path, whose score and value matmuls the counter sees
        model(x, need_weights=True) if cfg.family == "hybrid" else model(x)
    measured = counter.get_total_flops() / x.numel() + uncounted_flops(cfg, 24)
    assert get_family(cfg.family).cost(cfg, 24).forward_flops == pytest.approx(measured, rel=1e-12)


def test_mamba2_cost_counts_the_padding_of_a_last_partial_chunk():
    cfg = model_config({**CASES["mamba2"], "vocab_size": 40})
    model = build_model(cfg).eval()
    x = torch.randint(0, 40, (2, 10))  # chunks of 4: padded to 12
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    scan = uncounted_flops(cfg, 12) * 12 / 10  # the scan runs over the padded chunks too
    assert get_family("mamba2").cost(cfg, 10).forward_flops == pytest.approx(counter.get_total_flops() / 20 + scan)


def saved_activation_bytes(model, x) -> int:
    """Bytes of the storages autograd keeps for the backward of model(x), parameters excluded."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("preset", ["mamba2-baby", "gdn-baby", "hybrid-baby"])
def test_activation_memory_estimate_is_close_to_what_autograd_keeps(preset):
    cfg = model_config({"preset": preset, "vocab_size": 74})
    measured = saved_activation_bytes(build_model(cfg), torch.randint(0, 74, (4, 64)))
    measured += 4 * 4 * 64 * 74  # the loss keeps the softmax of the logits
    estimate = get_family(cfg.family).memory(cfg, 4, 64)
    assert 0.85 <= estimate / measured <= 1.15, estimate / measured


def randomise(model) -> None:
    """Move the SSM parameters off their init (norm weights 1, D 1, biases 0) so nothing is checked trivially."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("dt_bias", "A_log", ".D", "norm.weight", "norm_f.weight", "bias")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith(("in_proj.weight", "out_proj.weight")):  # mixers that shape the logits
                p.normal_(0.0, p.size(1) ** -0.5)


@pytest.mark.parametrize("tied", [True, False])
def test_mamba2_equals_hugging_face_both_ways(tied, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # odd: 8 heads of 12 in 2 groups, conv of 3, biases, chunks of 8 over 37 tokens
    hf_cfg = transformers.Mamba2Config(hidden_size=48, head_dim=12, num_heads=8, n_groups=2, state_size=16,
                                       conv_kernel=3, chunk_size=8, expand=2, use_bias=True, num_hidden_layers=3,
                                       vocab_size=50, tie_word_embeddings=tied, layer_norm_epsilon=1e-5,
                                       bos_token_id=None, eos_token_id=None, pad_token_id=None)
    ref = transformers.Mamba2ForCausalLM(hf_cfg).eval()
    randomise(ref)
    model = from_hf_state_dict(hf_cfg.to_dict(), ref.state_dict()).eval()
    assert (model.config.tie_embeddings, model.config.n_groups, model.config.bias) == (tied, 2, True)
    ids = torch.randint(0, 50, (2, 37))
    with torch.no_grad():
        want = ref(ids, use_cache=False).logits
        err = (model(ids) - want).abs().max()
        assert err <= 1e-4, err
        save_hf_folder(model, tmp_path / "hf")  # ours -> Hugging Face: their model, their logits
        back = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert back.config.tie_word_embeddings == tied
        err_back = (back(ids, use_cache=False).logits - want).abs().max()
        assert err_back <= 1e-4, err_back
        assert torch.equal(load_hf_folder(tmp_path / "hf").eval()(ids), model(ids))
    prompt = ids[:1, :8]
    theirs = ref.generate(prompt, max_new_tokens=20, do_sample=False)  # their cache, torch path
    ours = generate(model, prompt, 20, temperature=0)
    assert torch.equal(ours, theirs)
    assert len(set(ours[0, 8:].tolist())) > 3


def test_mamba2_hf_config_that_would_compute_differently_is_refused():
    hf = {"model_type": "mamba2", "vocab_size": 50, "hidden_size": 48, "num_hidden_layers": 2, "num_heads": 8,
          "head_dim": 12}
    assert config_from_hf(hf).family == "mamba2"
    with pytest.raises(HFImportError, match="time_step_limit"):
        config_from_hf({**hf, "time_step_limit": [0.0, 0.1]})
    with pytest.raises(HFImportError, match="num_heads"):
        config_from_hf({**hf, "num_heads": 4})


@pytest.fixture
def genesis(monkeypatch):
    """The Bible corpus as the recipes read it, cut to Genesis: with data.max_chars below its 186k
    characters the runs see exactly the same text, read in 1 s instead of the whole Bible's 5-15 s."""
    require_command("diatheke", "diatheke")
    from archlab.data import bible

    text = "".join(f"{v.text}\n" for v in bible.read_module("engWEB2015eb", "Genesis") if v.text)
    assert len(text) > 150_000
    real = archlab.data.text.corpus_text
    monkeypatch.setattr(archlab.data.text, "corpus_text", lambda name: text if name == "bible-web" else real(name))


@pytest.mark.parametrize("recipe", ["mamba2_char_bible", "gdn_char_bible", "hybrid_char_bible"])
def test_recipe_trains_on_the_bible(recipe, genesis, tmp_path):
    from archlab.runs import train_run
    from archlab.tasks.run import load_run_config

    run = load_run_config(CONFIGS / f"{recipe}.yaml", [  # the recipe, 30 short steps with an early peak
        "data.max_chars=40000", "data.eval_batches=4", "train.batch_size=4", "train.max_steps=30",
        "train.warmup_steps=5", "train.eval_every=30", "train.threads=1"])
    metrics = train_run(run, tmp_path / "run", quiet=True)
    assert metrics["val_loss"] < math.log(metrics["vocab_size"]) - 1.0, (metrics["val_loss"], metrics["vocab_size"])


@pytest.mark.parametrize("preset", ["mamba2-baby", "hybrid-baby"])
def test_summary_prints_parameters_flops_and_cache(preset, capsys):
    assert cli.main(["summary", preset]) == 0
    out = capsys.readouterr().out
    cfg = model_config(preset)
    family = get_family(cfg.family)
    assert f"{family.cost(cfg).params:,}" in out and "FLOPs per token at context 64" in out
    assert "decode cache (fp32)" in out and "per token" in out
    assert family.cache_bytes(cfg, 64) > family.cache_bytes(cfg, 512)  # a fixed state spread thinner


def test_moe_feed_forwards_add_their_balance_loss():
    model = build_model({**CASES["hybrid_window_moe"], "vocab_size": 40})
    logits = model(torch.randint(0, 40, (2, 12)))
    aux = model.extra_loss()
    assert aux is not None and aux.item() > 0
    (logits.sum() + aux).backward()
    assert model.layers[0].ffn.router.weight.grad is not None
    assert build_model({**CASES["gdn"], "vocab_size": 40}).extra_loss() is None
    assert model.fsdp_units() == list(model.layers)


@pytest.mark.parametrize("overrides,match", [
    ({"layers": ["mamba2", "transformer"]}, r"layers\[1\]: 'transformer' is not allowed"),
    ({"layers": []}, "layers must list at least one layer"),
    ({"layers": ["mamba2"], "attention": {"n_heads": 4}}, "attention options are set but layers has no attention"),
    ({"layers": ["attention"], "mla": {"kv_lora_rank": 8}}, "mla options are set but layers has no mla layer"),
    ({"layers": ["gated_deltanet"], "mamba2": {"d_state": 8}}, "mamba2 options are set but layers has no mamba2"),
    ({"layers": ["mamba2"], "mamba2": {"chunk_size": 0}}, "chunk_size must be at least 1"),
    ({"layers": ["gated_deltanet"], "gated_deltanet": {"chunk_size": 0}}, "chunk_size must be at least 1"),
    ({"layers": ["gated_deltanet"], "gated_deltanet": {"n_k_heads": 3}}, "n_k_heads=3 must divide n_v_heads=4"),
    ({"layers": ["mamba2"], "mamba2": {"head_dim": 48}}, r"mamba2.head_dim=48 must divide mamba2.expand \* d_model"),
    ({"layers": ["mamba2"], "mamba2": {"head_dim": 32, "n_groups": 3}}, "mamba2.n_groups=3 must divide"),
    ({"layers": ["attention"], "attention": {"n_heads": 3}}, "attention layers: d_model=128 is not divisible"),
    ({"layers": ["attention"], "attention": {"window": 300}}, "attention.window=300 exceeds max_seq_len=256"),
    ({"layers": ["mla"], "attention": {"window": 8}}, "mla layers: attention 'mla' does not combine with window"),
    ({"layers": ["attention"], "attention": {"head_dim": 5}}, "rope' needs an even head dimension"),
    ({"ffn": False, "d_ff": 64}, "d_ff set but ffn is false"),
    ({"moe": {"experts": 2, "top_k": 3}}, "top_k=3 must be between 1 and moe.experts=2"),
])
def test_hybrid_config_errors_name_the_keys(overrides, match):
    with pytest.raises(ConfigError, match=match):
        model_config({"family": "hybrid", **overrides})


@pytest.mark.parametrize("overrides,match", [
    ({"head_dim": 48}, r"head_dim=48 must divide expand \* d_model = 256"),
    ({"head_dim": 32, "n_groups": 3}, "n_groups=3 must divide the number of heads 8"),
    ({"chunk_size": 0}, "chunk_size must be at least 1"),
    ({"n_layers": 0}, "n_layers must be at least 1"),
])
def test_mamba2_config_errors_name_the_keys(overrides, match):
    with pytest.raises(ConfigError, match=match):
        model_config({"family": "mamba2", **overrides})
