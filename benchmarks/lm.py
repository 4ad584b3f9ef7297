"""Language-model training: archlab's Trainer against an independent nanoGPT-style reference.

Side by side in one run, same data (World English Bible, characters), same seed:
  1. quality: both train configs/gpt_char_bible.yaml's baby GPT for 2000 iterations; validation
     loss on the same fixed 200 validation batches;
  2. speed: tokens/s of training steps, in alternating rounds (the machine drifts; medians), at the
     baby shape and at 6 layers x 384 wide x context 256;
  3. hardware use at the larger shape: FLOPs per token (6N + 12*L*d*T) x tokens/s against the
     machine's fp32 matrix-multiply rate measured in the same run.

    python benchmarks/lm.py [--threads 2] [--iters 2000] [--rounds 5] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cpuinfo import cpu_name  # noqa: E402

from archlab.runs import open_task  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.train.trainer import Trainer  # noqa: E402

# --- the reference: nanoGPT's model.py, condensed ---------------------------------------------------

class RefAttention(nn.Module):
    def __init__(self, d, h, bias):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.h = h

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, d, h, bias):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.attn = RefAttention(d, h, bias)
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab, block, n_layer, n_head, d, bias=False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.h = nn.ModuleList(RefBlock(d, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.wte(idx) + self.wpe(pos)
        for b in self.h:
            x = b(x)
        return self.lm_head(self.ln_f(x))


def ref_optimizer(model, lr, wd, betas):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, fused=fused)


def ref_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / (decay_iters - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


class RefTrainer:
    """nanoGPT's train.py loop: random blocks, AdamW, warm-up + cosine, grad clip 1.0."""

    def __init__(self, data, vocab, block, n_layer, n_head, d, batch, iters, seed, bf16=False):
        torch.manual_seed(seed)
        self.data, self.block, self.batch, self.iters = data, block, batch, iters
        self.bf16 = bf16  # nanoGPT's CPU runs are fp32; bf16=True is its autocast, as it runs on a GPU
        self.model = RefGPT(vocab, block, n_layer, n_head, d)
        self.opt = ref_optimizer(self.model, 1e-3, 0.1, (0.9, 0.99))
        self.it = 0

    def get_batch(self):
        ix = torch.randint(len(self.data) - self.block, (self.batch,))
        x = torch.stack([self.data[i:i + self.block] for i in ix])
        y = torch.stack([self.data[i + 1:i + 1 + self.block] for i in ix])
        return x, y

    def step(self):
        for g in self.opt.param_groups:
            g["lr"] = ref_lr(self.it, decay_iters=self.iters)
        x, y = self.get_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.it += 1
        return loss.item()


# --- archlab ---------------------------------------------------------------------------------------

def archlab_run(iters, run_dir, model=None, eval_every=None, compile_=False, threads=2, precision="fp32"):
    import yaml

    run = yaml.safe_load((ROOT / "configs" / "gpt_char_bible.yaml").read_text())
    run["train"].update(max_steps=iters, eval_every=eval_every or iters, threads=threads, compile=compile_,
                        log_every=max(1, iters // 20), precision=precision)
    if model:
        run["model"] = {**run["model"], **model}
    run = load_run_config(run)
    task = open_task(run)
    return Trainer(task, task.build_model, run.train, run_dir, quiet=True)


def timed_steps(step, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def matmul_rate(sizes=(512, 1024, 2048), repeats=10, dtype=torch.float32):
    """The machine's matrix-multiply rate: the best single product over a few square sizes (the best,
    not the median, so that a moment of contention cannot inflate the utilisation figures)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def speed_round(shape, rounds, steps, threads, compile_, out, precision="fp32"):
    """Alternating rounds of `steps` training steps each; returns median tokens/s of each. With bf16,
    archlab trains in bf16 autocast and the reference runs twice: fp32 (nanoGPT on a CPU) and with
    plain bf16 autocast (nanoGPT's GPU setting)."""
    layers, heads, d, block, batch = shape
    trainer = archlab_run(10 ** 6, out / f"speed-{layers}x{d}", dict(n_layers=layers, n_heads=heads, d_model=d,
                                                                    max_seq_len=block), compile_=compile_,
                          threads=threads, precision=precision)
    trainer.cfg.batch_size = batch
    trainer._setup()
    plan = trainer.task.epoch_plan(0, batch, 0)
    trainer.step = 0
    refs = {"reference": RefTrainer(trainer.task.splits["train"], trainer.task.tokenizer.vocab_size, block, layers,
                                    heads, d, batch, 10 ** 6, 0)}
    if precision == "bf16":
        refs["reference_bf16"] = RefTrainer(trainer.task.splits["train"], trainer.task.tokenizer.vocab_size, block,
                                            layers, heads, d, batch, 10 ** 6, 0, bf16=True)

    def ours():
        trainer._train_step(plan[trainer.step % len(plan)])
        trainer.step += 1

    steppers = {"archlab": ours, **{name: ref.step for name, ref in refs.items()}}
    times = {name: [] for name in steppers}
    for step in steppers.values():
        timed_steps(step, 3)  # warm-up (and compilation)
    for _ in range(rounds):
        for name, step in steppers.items():
            times[name] += timed_steps(step, steps)
    tokens = batch * block
    n_params = sum(p.numel() for p in trainer.model.parameters()) - trainer.model.positions.additive.embedding.weight.numel()
    flops_per_token = 6 * n_params + 12 * layers * d * block
    return {"shape": f"{layers} layers x {d} wide x context {block}, batch {batch}",
            **{f"{name}_tokens_s": tokens / statistics.median(t) for name, t in times.items()},
            "flops_per_token": flops_per_token, "params_non_embedding_pos": n_params}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile archlab's model (train.compile)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="archlab's train.precision (bf16: the reference also runs with bf16 autocast)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.compile and args.precision == "bf16":
        ap.error("--compile with --precision bf16 is not measured by this benchmark; run them separately")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path("/tmp/archlab-bench-lm")
    previous = out / "lm.json"  # a partial re-run (--skip-quality, --compile) keeps the other parts
    results = json.loads(previous.read_text()) if previous.exists() else {}
    results.update({"date": str(date.today()), "torch": torch.__version__, "threads": args.threads,
                    "cpu": cpu_name()})
    suffix = ("_compiled" if args.compile else "") + ("_bf16" if args.precision == "bf16" else "")
    if not args.skip_quality:
        trainer = archlab_run(args.iters, work / "quality-archlab", compile_=args.compile, threads=args.threads,
                              precision=args.precision)
        t0 = time.perf_counter()
        metrics = trainer.fit()
        task = trainer.task
        ref = RefTrainer(task.splits["train"], task.tokenizer.vocab_size, 64, 4, 4, 128, 12, args.iters, 0)
        ref_times = timed_steps(ref.step, args.iters)
        ref.model.eval()
        with torch.no_grad():
            ref_val = task.evaluate(ref.model, "valid", 200)["val_loss"]
            ours_val = task.evaluate(trainer.model.eval(), "valid", 200)["val_loss"]
        results["quality" + suffix] = {"iters": args.iters, "precision": args.precision, "archlab_val_loss": ours_val,
                                       "reference_val_loss": ref_val,
                              "difference": ours_val - ref_val, "archlab_tokens_s": metrics["throughput"],
                              "reference_tokens_s": 12 * 64 * args.iters / sum(ref_times),
                              "archlab_wall_s": time.perf_counter() - t0}
        print(json.dumps(results["quality" + suffix], indent=2))
    rate, rate_bf16 = matmul_rate(), matmul_rate(dtype=torch.bfloat16)
    speed = []
    for shape in [(4, 4, 128, 64, 12), (6, 6, 384, 256, 12)]:
        r = speed_round(shape, args.rounds, 10 if shape[2] < 256 else 4, args.threads, args.compile, work,
                        args.precision)
        r["ratio"] = r["archlab_tokens_s"] / r["reference_tokens_s"]
        r["archlab_mfu"] = r["archlab_tokens_s"] * r["flops_per_token"] / rate
        r["reference_mfu"] = r["reference_tokens_s"] * r["flops_per_token"] / rate
        if args.precision == "bf16":
            r["ratio_vs_reference_bf16"] = r["archlab_tokens_s"] / r["reference_bf16_tokens_s"]
            r["archlab_share_of_bf16_rate"] = r["archlab_tokens_s"] * r["flops_per_token"] / rate_bf16
        speed.append(r)
        print(json.dumps(r, indent=2))
    rate_after = matmul_rate()
    results["speed" + suffix] = {"rows": speed, "matmul_flops_s": rate, "matmul_flops_s_after": rate_after,
                                 "matmul_bf16_flops_s": rate_bf16}
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, out / "lm.md")


def write_markdown(r, path):
    lines = ["## Language-model training (benchmarks/lm.py)", "",
             f"{r['date']}, {r['cpu']}, torch {r['torch']}, {r['threads']} threads. Reference: a nanoGPT-style plain-PyTorch "
             "GPT and training loop written in the benchmark (SDPA attention, fused AdamW, same data and seed).", ""]
    for key, label in [("quality", "fp32"), ("quality_bf16", "archlab in bf16 autocast, the reference in fp32")]:
        if key not in r:
            continue
        q = r[key]
        lines += [f"Baby GPT (configs/gpt_char_bible.yaml) on the World English Bible, characters, {q['iters']} "
                  f"iterations, {label}; validation loss on the same 200 fixed validation batches:", "",
                  "| | validation loss | training tokens/s |", "|---|---|---|",
                  f"| archlab | {q['archlab_val_loss']:.4f} | {q['archlab_tokens_s']:,.0f} |",
                  f"| reference | {q['reference_val_loss']:.4f} | {q['reference_tokens_s']:,.0f} |", "",
                  f"Difference {q['difference']:+.4f} (target: within 0.03). The tokens/s of these runs include "
                  "evaluation pauses and whatever else ran on the machine; the speed tables below are the speed claim.", ""]
    for key, label in [("speed", "eager"), ("speed_compiled", "archlab's model torch.compile-d (train.compile: true)")]:
        if key not in r:
            continue
        sp = r[key]
        lines += [f"Training speed, {label}: median tokens/s of alternating rounds of training steps, and the share of "
                  f"the machine's fp32 matrix-multiply rate (best of 512-2048 square products: "
                  f"{sp['matmul_flops_s'] / 1e9:.1f} GFLOP/s before the rounds, {sp['matmul_flops_s_after'] / 1e9:.1f} "
                  "after); FLOPs per token = 6N + 12·L·d·T:", "",
                  "| shape | archlab tokens/s | reference tokens/s | ratio | archlab MFU | reference MFU |",
                  "|---|---|---|---|---|---|"]
        for s in sp["rows"]:
            lines.append(f"| {s['shape']} | {s['archlab_tokens_s']:,.0f} | {s['reference_tokens_s']:,.0f} | "
                         f"{s['ratio']:.2f}× | {s['archlab_mfu']:.0%} | {s['reference_mfu']:.0%} |")
        lines.append("")
    if "speed_bf16" in r:
        sp = r["speed_bf16"]
        lines += ["Training speed, archlab with `train.precision: bf16` (autocast: bf16 matmuls, fp32 weights, and "
                  "attention kept in fp32 because CPU flash attention's bf16 backward is slower than its fp32 one); "
                  "the reference as nanoGPT runs on a CPU (fp32) and with nanoGPT's GPU setting (plain bf16 autocast). "
                  "Median tokens/s of alternating rounds; useful FLOP/s (6N + 12·L·d·T per token) as a share of the "
                  f"best fp32 ({sp['matmul_flops_s'] / 1e9:.0f} GFLOP/s) and bf16 "
                  f"({sp['matmul_bf16_flops_s'] / 1e9:.0f} GFLOP/s) matrix-multiply rates:", "",
                  "| shape | archlab bf16 | reference fp32 | reference bf16 | vs reference fp32 | vs reference bf16 "
                  "| archlab / fp32 rate | archlab / bf16 rate |", "|---|---|---|---|---|---|---|---|"]
        for s in sp["rows"]:
            lines.append(f"| {s['shape']} | {s['archlab_tokens_s']:,.0f} | {s['reference_tokens_s']:,.0f} | "
                         f"{s['reference_bf16_tokens_s']:,.0f} | {s['ratio']:.2f}× | {s['ratio_vs_reference_bf16']:.2f}× | "
                         f"{s['archlab_mfu']:.0%} | {s['archlab_share_of_bf16_rate']:.0%} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
