"""archlab.search's n-gram repeat guard (`no_repeat_ngram`): cached, batched greedy with the guard equals a
plain per-sentence reference that recomputes everything and bans with Python sets; beam outputs hold no
repeated n-gram; off (the default) changes nothing."""
from __future__ import annotations

import pytest
import torch

from archlab.models.registry import build_model
from archlab.search import ban_repeats, beam_search, greedy_search

BOS, EOS, PAD, V = 1, 2, 0, 24


@pytest.fixture(scope="module")
def looping_model():
    """A random, untrained encoder-decoder over 24 tokens: its greedy outputs loop, as an undertrained one's do."""
    torch.manual_seed(3)
    model = build_model({"family": "encdec", "vocab_size": V, "d_model": 32, "n_heads": 4, "d_ff": 64,
                         "n_encoder_layers": 1, "n_decoder_layers": 1, "max_seq_len": 64, "dropout": 0.0})
    src = torch.randint(3, V, (5, 7))  # equal lengths: no padding, so one sentence alone decodes the same
    return model.eval(), src


def repeated_ngrams(row: list[int], n: int) -> int:
    grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
    return len(grams) - len(set(grams))


def reference_greedy(model, src: torch.Tensor, steps: int, n: int) -> list[list[int]]:
    """One sentence at a time, the whole decoder re-run on the whole prefix, banned tokens found with sets."""
    outs = []
    for s in src:
        row: list[int] = []
        for _ in range(steps):
            with torch.no_grad():
                logits = model(s[None], torch.tensor([[BOS] + row]))[0, -1].clone()
            tail = tuple(row[len(row) - n + 1:]) if n > 1 else ()
            banned = {row[j + n - 1] for j in range(len(row) - n + 1) if tuple(row[j:j + n - 1]) == tail}
            logits[sorted(banned)] = float("-inf")
            token = int(logits.argmax())
            if token == EOS:
                break
            row.append(token)
        outs.append(row)
    return outs


def test_unguarded_outputs_loop(looping_model):
    model, src = looping_model
    out = greedy_search(model, src, BOS, EOS, torch.full((5,), 30))
    assert sum(repeated_ngrams(r, 3) > 0 for r in out) >= 3  # so the guard below has something to remove
    # off is the default, and 0 is off
    assert out == greedy_search(model, src, BOS, EOS, torch.full((5,), 30), no_repeat_ngram=0)
    assert beam_search(model, src, BOS, EOS, torch.full((5,), 30), beam=3) == \
        beam_search(model, src, BOS, EOS, torch.full((5,), 30), beam=3, no_repeat_ngram=0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_guarded_greedy_equals_the_reference(looping_model, n):
    model, src = looping_model
    steps = 20 if n > 1 else V - 3  # n = 1 bans every token already said: the vocabulary runs out
    out = greedy_search(model, src, BOS, EOS, torch.full((5,), steps), no_repeat_ngram=n)
    assert out == reference_greedy(model, src, steps, n)
    assert all(repeated_ngrams(r, n) == 0 for r in out)


@pytest.mark.parametrize("n", [2, 3])
def test_guarded_beam_has_no_repeated_ngram(looping_model, n):
    model, src = looping_model
    limit = torch.full((5,), 25)
    out = beam_search(model, src, BOS, EOS, limit, beam=4, no_repeat_ngram=n)
    assert all(repeated_ngrams(r, n) == 0 for r in out) and all(len(r) > n for r in out)
    assert beam_search(model, src, BOS, EOS, limit, beam=1, no_repeat_ngram=n) == \
        greedy_search(model, src, BOS, EOS, limit, no_repeat_ngram=n)


def test_ban_repeats_on_a_hand_made_row():
    seqs = torch.tensor([[5, 6, 7, 5, 6, 9, 5, 6],   # tail "5 6" was followed by 7 and 9: both banned for n=3
                         [3, 3, 3, 4, 4, 4, 4, 4]])  # tail "4 4" was followed by 4 only
    out = ban_repeats(torch.zeros(2, 12), seqs, 3)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [7, 9]
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [4]
    assert torch.equal(ban_repeats(torch.zeros(2, 12), seqs[:, :2], 3), torch.zeros(2, 12))  # too short: nothing
