"""Model families: sizes, references (torch.nn.Transformer, Hugging Face), caches, causality, learning."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archlab.config import ConfigError
from archlab.models import build_model, count_parameters, model_config
from archlab.models.hf import from_hf_state_dict, load_hf_folder, save_hf_folder

transformers = pytest.importorskip("transformers")


def test_seed_cnn_is_the_articles_keras_model():
    model = build_model("seed-cnn")
    assert count_parameters(model) == 93_322
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes[0] == (32, 1, 3, 3) and shapes[-2] == (10, 64)  # Conv32 ... Dense10
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_dirac_init_starts_each_conv_as_the_identity_on_its_first_channels():
    torch.manual_seed(0)
    stages = [{"channels": 4, "padding": 1}, {"type": "residual", "channels": 8}, {"type": "residual", "channels": 8}]
    model = build_model({"family": "cnn", "stages": stages, "n_classes": 10, "dirac_init": True})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6  # conv, residual (2 + 1x1 projection), residual (2)
    x = torch.randn(2, 8, 6, 6)
    for conv in convs:
        cin = conv.in_channels
        # the first cin filters pass their input channel through unchanged; the others keep the default init
        torch.testing.assert_close(F.conv2d(x[:, :cin], conv.weight[:cin], padding=conv.padding), x[:, :cin])
        assert conv.weight[cin:].numel() == 0 or conv.weight[cin:].std() > 0.01
    plain = build_model({"family": "cnn", "stages": stages, "n_classes": 10})
    assert not any(torch.equal(a.weight, b.weight) for a, b in zip(convs, (m for m in plain.modules()
                                                                             if isinstance(m, nn.Conv2d))))


@pytest.mark.parametrize("batch_norm, pool", [(True, "max"), (False, "max"), (True, "avg"), (True, "none")])
def test_conv_block_equals_conv_norm_relu_pool(batch_norm, pool):
    """ConvBlock applies ReLU after a max-pool (cheaper): outputs and gradients equal conv -> norm -> ReLU -> pool."""
    from archlab.nn.conv import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(3, 8, 3, padding=1, batch_norm=batch_norm, pool=pool).train()
    pooling = {"max": torch.nn.MaxPool2d(2), "avg": torch.nn.AvgPool2d(2), "none": torch.nn.Identity()}[pool]
    reference = torch.nn.Sequential(block.conv, block.norm, torch.nn.ReLU(), pooling)
    x = torch.randn(4, 3, 10, 10, requires_grad=True)
    ours, ref = block(x), reference(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, block.conv.weight], g)
    ref_grads = torch.autograd.grad(ref, [x, block.conv.weight], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_transformer_base_size():
    n = count_parameters(build_model("transformer-base"))
    assert 60e6 < n < 66e6  # Vaswani et al. report ~65M for the base model


def test_gpt2_small_preset_matches_hugging_face_size():
    assert count_parameters(build_model("gpt2-small")) == 124_439_808


def tiny(family, **kw):
    base = {"gpt": dict(family="gpt", vocab_size=50, d_model=32, n_heads=4, n_layers=2, max_seq_len=32),
            "bert": dict(family="bert", vocab_size=50, d_model=32, n_heads=4, n_layers=2, max_seq_len=32, dropout=0.0),
            "encdec": dict(family="encdec", vocab_size=50, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
                           n_decoder_layers=2, dropout=0.0, max_seq_len=32)}[family]
    return build_model({**base, **kw}).eval()


def test_encoder_decoder_matches_torch_transformer():
    model = tiny("encdec")
    D = 32
    ref = nn.Transformer(D, 4, 2, 2, 64, dropout=0.0, batch_first=True).eval()
    ref.encoder.norm = None  # Vaswani's post-norm stack has no extra final norm
    ref.decoder.norm = None
    with torch.no_grad():
        for ours, theirs in zip(model.encoder.blocks, ref.encoder.layers):
            ours.attn.qkv_proj.weight.copy_(theirs.self_attn.in_proj_weight)
            ours.attn.qkv_proj.bias.copy_(theirs.self_attn.in_proj_bias)
            ours.attn.out_proj.load_state_dict(theirs.self_attn.out_proj.state_dict())
            ours.ffn.up.load_state_dict(theirs.linear1.state_dict())
            ours.ffn.down.load_state_dict(theirs.linear2.state_dict())
            ours.attn_norm.load_state_dict(theirs.norm1.state_dict())
            ours.ffn_norm.load_state_dict(theirs.norm2.state_dict())
        for ours, theirs in zip(model.decoder.blocks, ref.decoder.layers):
            ours.attn.qkv_proj.weight.copy_(theirs.self_attn.in_proj_weight)
            ours.attn.qkv_proj.bias.copy_(theirs.self_attn.in_proj_bias)
            ours.attn.out_proj.load_state_dict(theirs.self_attn.out_proj.state_dict())
            ours.cross_attn.q_proj.weight.copy_(theirs.multihead_attn.in_proj_weight[:D])
            ours.cross_attn.q_proj.bias.copy_(theirs.multihead_attn.in_proj_bias[:D])
            ours.cross_attn.kv_proj.weight.copy_(theirs.multihead_attn.in_proj_weight[D:])
            ours.cross_attn.kv_proj.bias.copy_(theirs.multihead_attn.in_proj_bias[D:])
            ours.cross_attn.out_proj.load_state_dict(theirs.multihead_attn.out_proj.state_dict())
            ours.ffn.up.load_state_dict(theirs.linear1.state_dict())
            ours.ffn.down.load_state_dict(theirs.linear2.state_dict())
            ours.attn_norm.load_state_dict(theirs.norm1.state_dict())
            ours.cross_norm.load_state_dict(theirs.norm2.state_dict())
            ours.ffn_norm.load_state_dict(theirs.norm3.state_dict())
    src, tgt = torch.randn(2, 9, D), torch.randn(2, 6, D)
    src_pad = torch.arange(9)[None] >= torch.tensor([[9], [5]])
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    want = ref(src, tgt, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad, tgt_mask=causal, tgt_is_causal=True)
    memory = model.encoder(src, key_padding_mask=src_pad)
    assert (memory - ref.encoder(src, src_key_padding_mask=src_pad))[~src_pad].abs().max() <= 1e-5
    got = model.decoder(tgt, causal=True, context=memory, context_padding_mask=src_pad)
    assert (got - want).abs().max() <= 1e-5


def test_gpt_matches_hugging_face_gpt2():
    cfg = transformers.GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=24, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ours = from_hf_state_dict(cfg.to_dict(), ref.state_dict()).eval()
    assert ours.lm_head.weight is ours.tok_emb.weight
    x = torch.randint(0, 60, (3, 20))
    assert (ours(x) - ref(x).logits).abs().max() <= 1e-5


def test_bert_matches_hugging_face_bert_with_padding(tmp_path):
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=24)
    ref = transformers.BertModel(cfg).eval()
    with torch.no_grad():  # make the LayerNorms non-trivial so a missed copy would show
        for name, p in ref.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours = from_hf_state_dict(cfg.to_dict(), ref.state_dict()).eval()
    ids = torch.randint(1, 60, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0
    ids[1, 11:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1
    want = ref(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    got = ours(ids, token_type_ids=types)
    real = mask.bool()
    assert (got - want)[real].abs().max() <= 1e-5
    # and back: our export loads into transformers with the same outputs
    folder = save_hf_folder(ours, tmp_path / "bert")
    again = load_hf_folder(folder).eval()
    assert (again(ids, token_type_ids=types) - got)[real].abs().max() == 0


def test_gpt_export_roundtrip_through_transformers(tmp_path):
    ours = tiny("gpt", activation="gelu_tanh")
    folder = save_hf_folder(ours, tmp_path / "gpt")
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    x = torch.randint(0, 50, (2, 12))
    assert (ref(x).logits - ours(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi"])
def test_gpt_kv_cache_equals_full_forward(position):
    model = tiny("gpt", position=position, n_kv_heads=2)
    x = torch.randint(0, 50, (2, 12))
    full = model(x)
    caches = model.new_caches(2, 12)
    pieces = [model(x[:, :5], caches=caches)] + [model(x[:, t:t + 1], caches=caches) for t in range(5, 12)]
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-5


def test_encoder_decoder_kv_cache_equals_full_forward():
    model = tiny("encdec")
    src = torch.randint(1, 50, (2, 9))
    src[1, 6:] = 0
    tgt = torch.randint(1, 50, (2, 7))
    full = model(src, tgt)
    mask = model.padding_mask(src)
    memory = model.encode(src)
    caches = model.new_caches(2, 7)
    steps = [model.decode(tgt[:, t:t + 1], memory, mask, caches=caches) for t in range(7)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["gpt", "encdec"])
def test_causality(family):
    model = tiny(family)
    x = torch.randint(1, 50, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 49 + 1
    if family == "gpt":
        a, b = model(x), model(y)
    else:
        src = torch.randint(1, 50, (1, 8))
        a, b = model(src, x), model(src, y)
    assert (a[:, :6] - b[:, :6]).abs().max() <= 1e-6
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


def test_padding_changes_nothing_at_real_positions():
    bert = tiny("bert")
    ids = torch.randint(1, 50, (2, 10))
    ids[1, 6:] = 0
    out = bert(ids)
    ids2 = ids.clone()
    ids2[1, 6:] = 7  # change the padded tokens but keep them masked
    out2 = bert(ids2, key_padding_mask=ids == 0)
    assert (out[1, :6] - out2[1, :6]).abs().max() <= 1e-6
    model = tiny("encdec")
    src2 = ids2.clone()
    tgt = torch.randint(1, 50, (2, 5))
    a = model(ids, tgt)
    b = model(src2, tgt, src_padding_mask=ids == 0)
    assert (a - b).abs().max() <= 1e-6


def one_step_lowers_loss(model, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    before = loss_fn()
    before.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = loss_fn()
    return before.item(), after.item()


@pytest.mark.parametrize("name", ["seed-cnn", "resnet-small", "vit-tiny", "gpt", "bert", "bert-cls", "encdec", "gpt-moe"])
def test_one_step_lowers_loss(name):
    torch.manual_seed(0)
    if name in ("seed-cnn", "resnet-small", "vit-tiny"):
        model = build_model(name)
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        model.eval() if name == "resnet-small" else None
        loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    elif name in ("gpt", "gpt-moe"):
        model = tiny("gpt", moe={"experts": 4, "top_k": 2} if name == "gpt-moe" else None)
        x = torch.randint(0, 50, (4, 16))
        loss_fn = lambda: F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())  # noqa: E731
    elif name == "bert":
        model = tiny("bert")
        x = torch.randint(1, 50, (4, 16))
        loss_fn = lambda: F.cross_entropy(model.mlm_logits(model(x)).flatten(0, 1), x.flatten())  # noqa: E731
    elif name == "bert-cls":
        model = tiny("bert", n_classes=3)
        x, y = torch.randint(1, 50, (8, 16)), torch.randint(0, 3, (8,))
        loss_fn = lambda: F.cross_entropy(model.classify(x), y)  # noqa: E731
    else:
        model = tiny("encdec")
        src, tgt = torch.randint(1, 50, (4, 10)), torch.randint(1, 50, (4, 9))
        loss_fn = lambda: F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())  # noqa: E731
    before, after = one_step_lowers_loss(model, loss_fn)
    assert after < before


def test_moe_gpt_exposes_aux_loss():
    model = tiny("gpt", moe={"experts": 4, "top_k": 1})
    model(torch.randint(0, 50, (2, 8)))
    moes = [b.ffn for b in model.transformer.blocks]
    assert all(m.aux_loss.item() >= 1.0 - 1e-5 for m in moes)


def test_attention_dropout_is_its_own_knob():
    """dropout on residual branches and FFNs, attention_dropout on the attention weights (None: the same)."""
    src, tgt = torch.randint(1, 50, (2, 9)), torch.randint(1, 50, (2, 7))
    attention_only = tiny("encdec", attention_dropout=0.5).train()  # residual dropout 0
    torch.manual_seed(0)
    assert (attention_only(src, tgt) - attention_only.eval()(src, tgt)).abs().max() > 1e-3
    residual_only = tiny("encdec", dropout=0.3, attention_dropout=0.0)
    attentions = [m for m in residual_only.modules() if hasattr(m, "qkv_proj") or hasattr(m, "q_proj")]
    assert attentions and all(m.dropout == 0.0 for m in attentions)
    assert {m.p for m in residual_only.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert {m.dropout for m in tiny("encdec", dropout=0.2).modules() if hasattr(m, "qkv_proj")} == {0.2}
    with pytest.raises(ConfigError, match=r"attention_dropout must be in \[0, 1\), got 1.5"):
        model_config({"preset": "transformer-tiny", "attention_dropout": 1.5})


def test_bad_input_errors():
    with pytest.raises(ConfigError, match="unknown preset 'gpt-huge'.*gpt-baby"):
        model_config("gpt-huge")
    with pytest.raises(ConfigError, match="unknown family 'rnn'.*gpt"):
        model_config({"family": "rnn"})
    with pytest.raises(ConfigError, match="n_laers.*Did you mean 'n_layers'"):
        model_config({"preset": "gpt-baby", "n_laers": 3})
    with pytest.raises(ConfigError, match="d_model=100 is not divisible by n_heads=3"):
        model_config({"preset": "gpt-baby", "d_model": 100, "n_heads": 3})
    with pytest.raises(ConfigError, match="image_size=28 is not divisible by patch_size=5"):
        model_config({"preset": "vit-tiny", "patch_size": 5})
    with pytest.raises(ValueError, match=r"shape \(batch, 1, 28, 28\)"):
        build_model("seed-cnn")(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        tiny("gpt")(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than the learned position table"):
        tiny("gpt")(torch.zeros(1, 40, dtype=torch.long))


def test_gpt_token_embeddings_are_not_drowned_by_a_fixed_sinusoid():
    """A fixed sinusoid (rms ~0.7) added to N(0, 0.02) embeddings would leave the tokens ~3% of the
    input: with sinusoidal positions GPT scales its embeddings by sqrt(d), as Vaswani et al."""
    from archlab.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=2, max_seq_len=64, position="sinusoidal")
    model = GPT(cfg)
    ids = torch.randint(0, 65, (4, 64))
    tokens = model.tok_emb(ids) * model.embed_scale
    positions = model.positions.add(torch.zeros_like(tokens))
    assert tokens.pow(2).mean().sqrt() > 0.25 * positions.pow(2).mean().sqrt()
    learned = GPT(GPTConfig(**{**cfg.__dict__, "position": "learned"}))
    assert learned.embed_scale == 1.0  # learned tables start at the embeddings' scale and need none


def test_encoder_decoder_init_is_marians_at_its_width_and_keeps_tokens_above_the_sinusoid():
    """N(0, 1/(3 sqrt d)): Marian's (BART's) N(0, 0.02) at d=256, where it learns per step as fast as
    Marian; at d=64 a fixed 0.02 would leave the scaled token embeddings under a quarter of the sinusoid."""
    torch.manual_seed(0)
    ours = build_model(model_config({"preset": "transformer-small"}))
    cfg = ours.config
    marian = transformers.MarianMTModel(transformers.MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim, encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
        pad_token_id=cfg.pad_id)).model
    pairs = [(ours.embed.weight[1:], marian.shared.weight[1:]),
             (ours.encoder.blocks[0].attn.qkv_proj.weight, marian.encoder.layers[0].self_attn.q_proj.weight),
             (ours.decoder.blocks[0].ffn.down.weight, marian.decoder.layers[0].fc2.weight)]
    for a, b in pairs:
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.05)
    tiny_model = build_model(model_config({"preset": "transformer-tiny"}))
    tokens = tiny_model.embed.weight[1:] * tiny_model.scale
    positions = tiny_model.positions.add(torch.zeros(1, 64, tiny_model.config.d_model))
    assert tokens.pow(2).mean().sqrt() > 0.25 * positions.pow(2).mean().sqrt()
