"""Generation speed: archlab's KV-cached decoding against Hugging Face `generate` on the same GPT-2 shape.

500 new tokens at batch 1, sampled (temperature 1), side by side in one run, alternating rounds,
median tokens/s: archlab with and without the cache, Hugging Face GPT2LMHeadModel (built from a
config, no download) with use_cache=True. The shapes: the baby GPT (4 layers, 4 heads, 128 wide)
and gpt-mini (6 x 6 x 384), both with a 1024-position table so 500 tokens fit.

    python benchmarks/generate.py [--threads 2] [--rounds 5] [--tokens 500]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archlab.generate import generate  # noqa: E402
from archlab.models import build_model  # noqa: E402


def hf_twin(ours):
    """A GPT2LMHeadModel with our weights (so both compute the same function)."""
    import transformers

    from archlab.models.hf import to_hf

    config, state = to_hf(ours)
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config, bos_token_id=0, eos_token_id=0)).eval()
    model.load_state_dict(state, strict=False)
    return model


def time_it(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench(shape: dict, tokens: int, rounds: int) -> dict:
    torch.manual_seed(0)
    ours = build_model({"family": "gpt", "vocab_size": 96, "max_seq_len": 1024, "activation": "gelu_tanh", **shape}).eval()
    hf = hf_twin(ours)
    prompt = torch.randint(0, 96, (1, 8))
    with torch.no_grad():  # same function: same greedy continuation
        a = generate(ours, prompt, 30, temperature=0)
        b = hf.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=True, pad_token_id=0)
    same = bool(torch.equal(a, b))

    def run_ours(cache=True, compile_=False):
        return lambda: generate(ours, prompt, tokens, temperature=1.0, generator=torch.Generator().manual_seed(0),
                                use_cache=cache, compile=compile_)

    def run_hf():
        torch.manual_seed(0)
        return hf.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, top_k=0,
                           use_cache=True, pad_token_id=0)

    for fn in (run_ours(), run_hf):  # warm-up
        fn()
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled_same = bool(torch.equal(generate(ours, prompt, 30, temperature=0, compile=True), a))
    compile_seconds = time.perf_counter() - t0
    t = {"archlab_cache": [], "hf_cache": [], "archlab_compiled": [], "archlab_no_cache": []}
    for _ in range(rounds):  # alternate, so drift hits all
        t["archlab_cache"] += time_it(run_ours(), 1)
        t["hf_cache"] += time_it(run_hf, 1)
        t["archlab_compiled"] += time_it(run_ours(compile_=True), 1)
    t["archlab_no_cache"] = time_it(run_ours(False), max(1, rounds // 2))
    rates = {k: tokens / statistics.median(v) for k, v in t.items()}
    return {"shape": f"{shape['n_layers']} layers x {shape['n_heads']} heads x {shape['d_model']} wide",
            **{f"{k}_tokens_s": v for k, v in rates.items()}, "ratio_vs_hf": rates["archlab_cache"] / rates["hf_cache"],
            "compiled_ratio_vs_hf": rates["archlab_compiled"] / rates["hf_cache"], "compile_seconds": compile_seconds,
            "greedy_outputs_identical": same and compiled_same}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import transformers

    cpu = subprocess.run("lscpu | grep 'Model name' | cut -d: -f2", shell=True, capture_output=True,
                         text=True).stdout.strip()
    rows = [bench(dict(n_layers=4, n_heads=4, d_model=128), args.tokens, args.rounds),
            bench(dict(n_layers=6, n_heads=6, d_model=384), args.tokens, args.rounds)]
    for r in rows:
        print(json.dumps(r, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": str(date.today()), "cpu": cpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds}
    (out / "generate.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    lines = ["## Text generation speed (benchmarks/generate.py)", "",
             f"{meta['date']}, {cpu}, torch {meta['torch']}, transformers {meta['transformers']}, {args.threads} threads. "
             f"{args.tokens} new tokens, batch 1, sampling; median of {args.rounds} alternating rounds. Hugging Face "
             "runs GPT2LMHeadModel with archlab's weights (greedy outputs compared token for token).", "",
             "| shape | archlab, KV cache | archlab, KV cache, compiled | archlab, no cache | HF generate, cache | "
             "archlab / HF | compiled / HF | same greedy tokens |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['archlab_cache_tokens_s']:,.0f} tok/s | {r['archlab_compiled_tokens_s']:,.0f} tok/s"
                     f" | {r['archlab_no_cache_tokens_s']:,.0f} tok/s | {r['hf_cache_tokens_s']:,.0f} tok/s | "
                     f"{r['ratio_vs_hf']:.2f}× | {r['compiled_ratio_vs_hf']:.2f}× | {r['greedy_outputs_identical']} |")
    lines += ["", "Compiled: `archlab generate --compile` (torch.compile of the model, dynamic shapes); its one-off "
              "compilation took " + ", ".join(f"{r['compile_seconds']:.0f} s ({r['shape']})" for r in rows) +
              " and is not in the rates."]
    (out / "generate.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
