"""Text generation from a causal LM: greedy or sampled (temperature, top-k, top-p), with the KV cache.

The prompt is run once (prefill) into pre-allocated caches; each new token then costs one
single-position forward. When the context is full, the window slides: the cache is refilled with
the last half of the context, so the model never sees more positions than it was built for. A model
whose `context_limit` is None (every layer a sliding window with a rolling cache, positions that go on:
RoPE, not learned) never fills up: it decodes on in bounded memory, and nothing is cut or refilled.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """(B, V) logits with everything outside the top-k / the top-p nucleus set to -inf."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_token(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None) -> Tensor:
    """(B, V) -> (B, 1). temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def compiled(model: nn.Module):
    """torch.compile of the model's forward, made once per model (dynamic shapes: the cache grows)."""
    fn = getattr(model, "_compiled_forward", None)
    if fn is None:
        fn = torch.compile(model, dynamic=True)
        object.__setattr__(model, "_compiled_forward", fn)  # not a submodule: keeps state_dict clean
    return fn


@torch.inference_mode()
def generate(model: nn.Module, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None, on_token: Callable[[int], None] | None = None,
             use_cache: bool = True, compile: bool = False) -> Tensor:
    """idx: (B, T) prompt ids -> (B, T + n) with n <= max_new_tokens (stops early when every row hit EOS).

    on_token(id) is called for each new token of row 0 as soon as it exists (streaming).
    compile=True runs the model through torch.compile (fused kernels, far less per-token overhead);
    the first call pays the compilation (tens of seconds on a CPU), later calls reuse it.
    """
    model.eval()
    step = compiled(model) if compile else model
    limit = getattr(model, "context_limit", model.config.max_seq_len)  # None: no limit
    out = idx
    if not use_cache or not hasattr(model, "new_caches"):  # the reference path (and families without a cache):
        # re-run the whole (cropped) context for every token
        for _ in range(max_new_tokens):
            logits = model(out if limit is None else out[:, -limit:])[:, -1].float()
            tok = next_token(logits, temperature, top_k, top_p, generator)
            out = torch.cat([out, tok], dim=1)
            if on_token is not None:
                on_token(int(tok[0]))
            if eos_id is not None and bool((tok == eos_id).all()):
                break
        return out
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=idx.dtype, device=idx.device)  # no torch.cat per token
    out[:, :T] = idx
    caches = model.new_caches(B, limit or T + max_new_tokens)  # (the bounded caches of limit None take no length)
    logits = step(idx if limit is None else idx[:, -(limit - 1):], caches=caches)[:, -1].float()  # prefill
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    n = T
    for _ in range(max_new_tokens):
        tok = next_token(logits, temperature, top_k, top_p, generator)
        out[:, n] = tok[:, 0]
        n += 1
        if on_token is not None:
            on_token(int(tok[0]))
        if eos_id is not None:
            done |= tok[:, 0] == eos_id
            if bool(done.all()):
                break
        if limit is not None and caches[0].length == limit:  # context full: slide the window by refilling half of it
            caches = model.new_caches(B, limit)
            logits = step(out[:, n - limit // 2:n], caches=caches)[:, -1].float()
        else:
            logits = step(tok, caches=caches)[:, -1].float()
    return out[:, :n]
