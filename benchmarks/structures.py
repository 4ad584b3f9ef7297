"""The structures after the Transformer, side by side at about equal parameters (~0.8M, the baby GPT's):
gpt-baby, mamba2-baby, gdn-baby (gated DeltaNet) and hybrid-baby (mamba2, mamba2, attention, mamba2).

  1. training speed: tokens/s of archlab's own training steps (configs/*_char_bible.yaml: Bible characters,
     batch 12, context 64), in alternating rounds (the machine drifts; medians), as benchmarks/lm.py measures;
     with the analytic training FLOPs per token and where the time of a step goes (torch.profiler, the top
     operators by self time);
  2. decoding speed: tokens/s of single-token steps with each family's cache, batch 1 (one thread by default),
     when the context holds 1x and 8x the training context (64 and 512 tokens), and the cache bytes then.

    python benchmarks/structures.py [--threads 2] [--rounds 5] [--steps 10] [--compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cpuinfo import cpu_name  # noqa: E402

from archlab.models import build_model, count_parameters, get_family  # noqa: E402
from archlab.runs import open_task  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.train.trainer import Trainer  # noqa: E402

RECIPES = {"gpt-baby": "gpt_char_bible", "mamba2-baby": "mamba2_char_bible", "gdn-baby": "gdn_char_bible",
           "hybrid-baby": "hybrid_char_bible"}
CONTEXT = 64  # the recipes' training context


def trainer_for(recipe: str, threads: int, compile_: bool, work: Path) -> Trainer:
    run = load_run_config(ROOT / "configs" / f"{recipe}.yaml",
                          ["train.max_steps=1000000", "train.eval_every=1000000", f"train.threads={threads}",
                           f"train.compile={'true' if compile_ else 'false'}"])
    task = open_task(run)
    trainer = Trainer(task, task.build_model, run.train, work / recipe, quiet=True)
    trainer._setup()
    trainer.step = 0
    return trainer


def timed(step, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def profile_step(step, n: int = 3, top: int = 4) -> list[tuple[str, float]]:
    """The operators with the most self time over n steps, as shares of the total."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in events[:top]]


def training_speed(threads: int, rounds: int, steps: int, compile_: bool, work: Path) -> tuple[list[dict], int]:
    """Rows per model, and the Bible's character vocabulary the recipes found."""
    trainers = {name: trainer_for(recipe, threads, compile_, work) for name, recipe in RECIPES.items()}
    plans = {name: t.task.epoch_plan(0, t.cfg.batch_size, 0) for name, t in trainers.items()}

    def stepper(name):
        t = trainers[name]

        def step():
            t._train_step(plans[name][t.step % len(plans[name])])
            t.step += 1
        return step

    steppers = {name: stepper(name) for name in trainers}
    times = {name: [] for name in trainers}
    for step in steppers.values():
        timed(step, 3)  # warm-up (and compilation)
    for _ in range(rounds):
        for name, step in steppers.items():
            times[name] += timed(step, steps)
    rows = []
    for name, t in trainers.items():
        cfg = t.model.config
        tokens_s = t.cfg.batch_size * CONTEXT / statistics.median(times[name])
        flops = get_family(cfg.family).cost(cfg, CONTEXT).train_flops
        rows.append({"model": name, "parameters": count_parameters(t.model), "tokens_s": tokens_s,
                     "train_flops_per_token": flops, "gflop_s": tokens_s * flops / 1e9,
                     "top_ops": profile_step(steppers[name])})
    gpt = rows[0]["tokens_s"]
    for r in rows:
        r["vs_gpt"] = r["tokens_s"] / gpt
    return rows, trainers["gpt-baby"].task.tokenizer.vocab_size


@torch.inference_mode()
def decode_speed(name: str, vocab: int, context: int, steps: int = 32, repeats: int = 5) -> dict:
    """Median seconds of one single-token step with the cache holding `context` tokens (batch 1). The models
    are built with max_seq_len = context + steps so that nothing is refilled while timing (GPT's learned
    position table, the attention caches); untrained weights decode as fast as trained ones."""
    model = build_model({"preset": name, "vocab_size": vocab, "max_seq_len": context + steps}).eval()
    ids = torch.randint(0, vocab, (1, context + steps))
    times = []
    for _ in range(repeats):
        caches = model.new_caches(1, context + steps)
        model(ids[:, :context], caches=caches)
        times += timed(lambda: model(ids[:, context:context + 1], caches=caches), 1)  # the first step
        for i in range(context + 1, context + steps):
            times += timed(lambda i=i: model(ids[:, i:i + 1], caches=caches), 1)
    cfg = model.config
    return {"tokens_s": 1 / statistics.median(times),
            "cache_bytes": get_family(cfg.family).cache_bytes(cfg, context) * context}


def decoding(vocab: int, rounds: int) -> list[dict]:
    rows = []
    for name in RECIPES:
        row = {"model": name}
        for context in (CONTEXT, 8 * CONTEXT):
            runs = [decode_speed(name, vocab, context) for _ in range(rounds)]
            row[f"tokens_s_{context}"] = statistics.median(r["tokens_s"] for r in runs)
            row[f"cache_bytes_{context}"] = runs[0]["cache_bytes"]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per model per round")
    ap.add_argument("--decode-threads", type=int, default=1,
                    help="threads for batch-1 decoding: its ops are tiny, a second thread only adds OpenMP "
                         "synchronisation (10-200x slower steps, measured, when the cores are shared)")
    ap.add_argument("--compile", action="store_true", help="also time training with train.compile: true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path("/tmp/archlab-bench-structures")
    cpu = cpu_name()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    results = {"date": str(date.today()), "torch": torch.__version__, "threads": args.threads, "cpu": cpu,
               "load_before": load, "rounds": args.rounds, "steps": args.steps}
    results["training"], vocab = training_speed(args.threads, args.rounds, args.steps, False, work)
    print(json.dumps(results["training"], indent=2), flush=True)
    if args.compile:
        results["training_compiled"], _ = training_speed(args.threads, args.rounds, args.steps, True, work)
        print(json.dumps(results["training_compiled"], indent=2), flush=True)
    torch.set_num_threads(args.decode_threads)
    results["decode_threads"] = args.decode_threads
    results["decoding"] = decoding(vocab, args.rounds)
    print(json.dumps(results["decoding"], indent=2), flush=True)
    results["load_after"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(results, out / "structures.md")


def write_markdown(r: dict, path: Path) -> None:
    lines = ["## The structures after the Transformer (benchmarks/structures.py)", "",
             f"{r['date']}, {r['cpu']}, torch {r['torch']}, {r['threads']} threads; load average "
             f"{' / '.join(r['load_before'])} before, {' / '.join(r['load_after'] or ['?'])} after (2 cores, shared). "
             f"Median of {r['rounds']} alternating rounds of {r['steps']} steps.", ""]
    for key, label in (("training", "eager"), ("training_compiled", "train.compile: true")):
        if key not in r:
            continue
        lines += [f"Training ({label}): archlab's training steps of the recipes (configs/*_char_bible.yaml: World "
                  "English Bible characters, batch 12, context 64, fp32 AdamW); training FLOPs per token from each "
                  "family's analytic cost (3x forward); the operators with the most self time (torch.profiler):", "",
                  "| model | parameters | tokens/s | vs gpt-baby | train FLOPs/token | GFLOP/s | top operators |",
                  "|---|---|---|---|---|---|---|"]
        for row in r[key]:
            ops = ", ".join(f"{op} {share:.0%}" for op, share in row["top_ops"])
            lines.append(f"| {row['model']} | {row['parameters']:,} | {row['tokens_s']:,.0f} | {row['vs_gpt']:.2f}x | "
                         f"{row['train_flops_per_token'] / 1e6:.2f} M | {row['gflop_s']:.1f} | {ops} |")
        lines.append("")
    lines += [f"Decoding ({r['decode_threads']} thread{'s' if r['decode_threads'] > 1 else ''}): single-token steps "
              "with each family's cache, batch 1, once the context holds 64 (1x the training context) and 512 (8x) "
              "tokens; the bytes the caches hold then for the sequence (fp32; a recurrent state does not grow):", "",
              "| model | tokens/s at 64 | tokens/s at 512 | cache at 64 | cache at 512 |", "|---|---|---|---|---|"]
    for row in r["decoding"]:
        lines.append(f"| {row['model']} | {row['tokens_s_64']:,.0f} | {row['tokens_s_512']:,.0f} | "
                     f"{row['cache_bytes_64'] / 1024:,.0f} KiB | {row['cache_bytes_512'] / 1024:,.0f} KiB |")
    lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
