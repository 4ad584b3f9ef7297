"""Greedy and beam search for the encoder-decoder, batched, with the decoder's KV cache.

The source is encoded once; the decoder then runs one position per step against pre-allocated
self-attention caches and a cross-attention cache filled on the first step. Sentences that are
done leave the batch (their cache rows are dropped), so a batch costs what its live sentences cost.

Beam search follows fairseq: at each step the 2K best continuations of the K beams are ranked; an
end-of-sentence among the first K finishes a hypothesis, the K best others go on. A sentence stops
when it has K finished hypotheses or reaches its length limit; the winner has the best score
normalised by the GNMT length penalty ((5 + length) / 6) ** alpha. With K = 1 this is greedy search.

An undertrained model loops ("or or or or ..."). `no_repeat_ngram=n` (off by default, as in the recipes and
benchmarks) forbids any token that would repeat an n-gram the output already holds, as fairseq's and Hugging
Face's `no_repeat_ngram_size`: a decoding guard that hides the symptom, not a better model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def length_limits(src_lengths: Tensor, ratio: float, cap: int) -> Tensor:
    """Most tokens to generate per sentence: ratio x source length + 10, at most `cap`."""
    return (src_lengths.float() * ratio + 10).long().clamp(1, cap)


def _start(model: nn.Module, src: Tensor, rows: int, steps: int):
    """Encode once; -> (memory, source padding mask, caches), each with `rows` rows per sentence."""
    mask = model.padding_mask(src)
    memory = model.encode(src, mask)
    if rows > 1:
        memory, mask = memory.repeat_interleave(rows, 0), mask.repeat_interleave(rows, 0)
    return memory, mask, model.new_caches(src.size(0) * rows, steps)


def _reorder(caches: list, index: Tensor) -> None:
    for self_cache, cross_cache in caches:
        self_cache.reorder(index)
        cross_cache.reorder(index)


def ban_repeats(logits: Tensor, seqs: Tensor, n: int) -> Tensor:
    """logits: (R, V) next-token scores; seqs: (R, t) the tokens generated so far. -> logits with -inf at every
    token that would complete an n-gram already in its row."""
    t = seqs.size(1)
    if n < 1 or t < n:
        return logits
    windows = seqs.unfold(1, n, 1)  # (R, t - n + 1, n): every n-gram so far
    seen = (windows[:, :, :-1] == seqs[:, None, t - n + 1:]).all(-1)  # (R, t - n + 1): it starts like the tail
    # counts, not a bool scatter: two n-grams may end in the same token, one seen and one not
    hits = torch.zeros_like(logits, dtype=torch.long).scatter_add_(1, windows[:, :, -1], seen.long())
    return logits.masked_fill(hits > 0, float("-inf"))


def _cut(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos)] if eos in row else row


@torch.inference_mode()
def greedy_search(model: nn.Module, src: Tensor, bos: int, eos: int, max_len: Tensor,
                  no_repeat_ngram: int = 0) -> list[list[int]]:
    """src: (B, S) padded token ids; max_len: (B,) most tokens per output. -> B token lists (no bos/eos)."""
    B, steps = src.size(0), int(max_len.max())
    memory, mask, caches = _start(model, src, 1, steps)
    out = torch.full((B, steps), eos, dtype=torch.long)
    alive = torch.arange(B)  # sentences still decoding, as rows of `out`
    token = torch.full((B, 1), bos, dtype=torch.long, device=src.device)
    for t in range(steps):
        logits = model.decode(token, memory, mask, caches)[:, -1]  # (b, V)
        if no_repeat_ngram:
            logits = ban_repeats(logits, out[alive, :t].to(logits.device), no_repeat_ngram)
        nxt = logits.argmax(-1)  # (b,)
        out[alive, t] = nxt.cpu()
        keep = (nxt != eos) & (t + 1 < max_len[alive].to(nxt.device))
        if not keep.any():
            break
        if not keep.all():  # drop finished sentences; the cross-attention cache no longer needs memory
            index = keep.nonzero()[:, 0]
            _reorder(caches, index)
            mask, alive = mask[index], alive[index.cpu()]
        token = nxt[keep][:, None]
    return [_cut(row, eos) for row in out.tolist()]


@torch.inference_mode()
def beam_search(model: nn.Module, src: Tensor, bos: int, eos: int, max_len: Tensor, beam: int = 4,
                length_penalty: float = 0.6, no_repeat_ngram: int = 0) -> list[list[int]]:
    """As greedy_search, keeping `beam` hypotheses per sentence; returns the best finished one."""
    B, K, steps = src.size(0), beam, int(max_len.max())
    memory, mask, caches = _start(model, src, K, steps)
    device = src.device
    seqs = torch.full((B * K, steps), eos, dtype=torch.long, device=device)  # tokens of the live beams
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start equal: expand only the first at step 0
    alive = torch.arange(B)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    token = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
    rank = torch.arange(2 * K, device=device)
    for t in range(steps):
        b = len(alive)
        logp = model.decode(token, memory, mask, caches)[:, -1].float().log_softmax(-1)  # (b*K, V)
        if no_repeat_ngram:
            logp = ban_repeats(logp, seqs[:, :t], no_repeat_ngram)
        V = logp.size(-1)
        top, idx = (scores[:, :, None] + logp.view(b, K, V)).view(b, K * V).topk(2 * K, dim=-1)  # (b, 2K)
        src_beam, tok = idx // V, idx % V
        is_eos = tok == eos
        last = (t + 1 >= max_len[alive]).to(device)  # (b,): every hypothesis ends now
        final = (rank < K) & (is_eos | last[:, None])
        for i, c in final.nonzero().tolist():  # finished hypotheses: a few per step, not per token
            row = i * K + int(src_beam[i, c])
            tokens = seqs[row, :t].tolist() + ([] if is_eos[i, c] else [int(tok[i, c])])
            lp = ((5 + t + 1) / 6) ** length_penalty
            finished[int(alive[i])].append((float(top[i, c]) / lp, tokens))
        n_done = torch.tensor([len(finished[s]) for s in alive.tolist()], device=device)
        keep = (n_done < K) & ~last
        if not keep.any():
            break
        # the K best continuations that are not end-of-sentence (there are always K among 2K)
        go_on = ~is_eos
        cols = (go_on & (go_on.cumsum(-1) <= K)).nonzero()[:, 1].view(b, K)
        rows = keep.nonzero()[:, 0]
        index = (rows[:, None] * K + src_beam[rows].gather(1, cols[rows])).flatten()  # (b' * K,)
        _reorder(caches, index)
        mask, seqs = mask[index], seqs[index]
        new_tok = tok[rows].gather(1, cols[rows])
        seqs[:, t] = new_tok.flatten()
        scores = top[rows].gather(1, cols[rows])
        alive = alive[rows.cpu()]
        token = new_tok.view(-1, 1)
    return [max(hyps, key=lambda h: h[0])[1] for hyps in finished]
