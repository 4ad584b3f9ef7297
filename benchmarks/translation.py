"""Spanish -> English Bible translation after a fixed CPU budget: archlab recipes vs Hugging Face Marian.

Each `--variant` is the recipe (`--config`) with some overrides, trained by archlab's Trainer for the
same number of training seconds on the same threads (evaluated only at the end, so the budget is the
same); the first variant is the reference. Hugging Face Marian (a MarianMTModel built from a
MarianConfig, trained by a plain PyTorch loop) has the reference variant's shape (post-norm, d_model,
heads, FFN, layers, shared tied embedding, sinusoidal positions, dropout), tokenizer, length-bucketed
token batches, optimizer, schedule, label smoothing and clipping. All are scored on the test books
with sacreBLEU (greedy and beam); validation BLEU (greedy, the validation books) is what a choice
between variants may use. A variant's finished result is kept in its folder and re-used when a
variant resolves to the same whole config again, and Marian's when the first variant does (`--fresh`
trains anew: do so for a comparison that must be measured in one run), so a lever ablation can be
built one variant at a time; the fragment names each column's date. Spell out in each variant the
values it depends on: the recipe changes, and then the same command re-uses the same runs.

    # the recipe beside Marian:
    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation.py --budget-minutes 20
    # benchmarks/results/translation_20min.md (the recipe before 2026-12, candidates, Marian of the first's shape;
    # the recipe's schedule was Noam then):
    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation.py --budget-minutes 20 \
        --variant "recipe until 2026-12: data.max_tokens=2048 model.dropout=0.1 train.schedule=noam train.ema_decay=0" \
        --variant "dropout 0: data.max_tokens=2048 model.dropout=0 train.schedule=noam train.ema_decay=0" \
        --variant "1k-token batches, dropout 0: data.max_tokens=1024 model.dropout=0 train.schedule=noam \
train.ema_decay=0" \
        --variant "1k-token batches, dropout 0, EMA 0.998: data.max_tokens=1024 model.dropout=0 train.schedule=noam \
train.ema_decay=0.998"
    # benchmarks/results/translation_20min_zen5.md (the Noam + EMA recipe against warm-up-stable-decay schedules,
    # dropout, a higher peak, label smoothing 0.2 (the recipe since 2026-12-02) and levers on top of it; on a Zen 5;
    # every variant spells the label smoothing and length penalty it was measured with):
    W="data.max_tokens=1024 data.length_penalty=0.6 train.schedule=wsd train.warmup_steps=300 \
train.decay_fraction=0.2 train.min_lr=0 train.ema_decay=0 model.dropout=0 train.lr=1e-3"
    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation.py --budget-minutes 20 --no-marian \
        --runs runs/bench-translation-20-recipe --out benchmarks/results/translation_20min_zen5.md \
        --variant "Noam + EMA (recipe until 2026-12-02): data.max_tokens=1024 data.length_penalty=0.6 model.dropout=0 \
train.schedule=noam train.lr=1e-3 train.warmup_steps=300 train.ema_decay=0.998 train.label_smoothing=0.1" \
        --variant "WSD 1e-3, no EMA: $W train.label_smoothing=0.1" \
        --variant "WSD 1e-3, no EMA, second run: $W train.label_smoothing=0.1" \
        --variant "WSD 1e-3, no EMA, dropout 0.1: $W train.label_smoothing=0.1 model.dropout=0.1 model.attention_dropout=0" \
        --variant "WSD 1e-3, no EMA, dropout 0.2: $W train.label_smoothing=0.1 model.dropout=0.2 model.attention_dropout=0" \
        --variant "WSD 1.5e-3, no EMA: $W train.label_smoothing=0.1 train.lr=1.5e-3" \
        --variant "WSD 1e-3, no EMA, label smoothing 0.2: $W train.label_smoothing=0.2" \
        --variant "WSD 1e-3, no EMA, label smoothing 0.2, second run: $W train.label_smoothing=0.2" \
        --variant "WSD 1e-3, no EMA, label smoothing 0.2, Muon: $W train.label_smoothing=0.2 train.optimizer=muon" \
        --variant "WSD 1e-3, no EMA, label smoothing 0.2, decay over the last 40%: $W train.label_smoothing=0.2 \
train.decay_fraction=0.4" \
        --variant "WSD 1e-3, no EMA, label smoothing 0.2, AdamW weight decay 0.1: $W train.label_smoothing=0.2 \
train.optimizer=adamw train.weight_decay=0.1" \
        --variant "the recipe of 2026-12-02, a third run (label smoothing 0.2, length penalty 1.0): $W \
train.label_smoothing=0.2 data.length_penalty=1.0"
    # beam width and length penalty of the recipe's two runs, chosen on validation (translation_decoding.md):
    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation_decoding.py \
        runs/bench-translation-20-recipe/wsd-1e-3--no-ema--label-smoothing-0-2 \
        runs/bench-translation-20-recipe/wsd-1e-3--no-ema--label-smoothing-0-2--second-run \
        --beams 4 8 --length-penalties 0.6 1.0 1.4
    # a lever ablation (benchmarks/results/translation_levers_10min.md lists its variants; the schedule was Noam
    # where a variant names none):
    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation.py --budget-minutes 10 --no-marian \
        --out benchmarks/results/translation_levers_10min.md \
        --variant "recipe until 2026-12: data.max_tokens=2048 model.dropout=0.1 train.schedule=noam train.ema_decay=0" \
        --variant "1k-token batches, dropout 0: data.max_tokens=1024 model.dropout=0 train.schedule=noam \
train.ema_decay=0" ...
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from cpuinfo import cpu_name

from archlab.errors import ConfigError
from archlab.lab.plan import job_identity
from archlab.runs import open_task, train_run
from archlab.tasks.base import IGNORE
from archlab.tasks.run import load_run_config
from archlab.tasks.translation import bleu_chrf
from archlab.train.optim import build_optimizer, build_scheduler
from archlab.train.trainer import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
# How idle OpenMP threads wait is left to the caller, as the CLI leaves it (benchmarks/results/omp_wait_policy.md):
# a benchmark runs alone (flock), where sleeping waits (PASSIVE) made this recipe's step 1.24x and 1.29x slower than
# the default (unset) in two alternating measurements (2026-12-02); beside another busy process spinning waits
# collapse instead: set OMP_WAIT_POLICY=PASSIVE then.
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "unset")


def marian_for(task, cfg):
    from transformers import MarianConfig, MarianMTModel

    m, tok = task.model_config(), task.tokenizer
    config = MarianConfig(
        vocab_size=m.vocab_size, decoder_vocab_size=m.vocab_size, d_model=m.d_model, encoder_layers=m.n_encoder_layers,
        decoder_layers=m.n_decoder_layers, encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.ffn_dim, decoder_ffn_dim=m.ffn_dim, activation_function="relu", dropout=m.dropout,
        attention_dropout=m.attn_dropout, activation_dropout=0.0, max_position_embeddings=m.max_seq_len,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
        decoder_start_token_id=tok.bos_id, forced_eos_token_id=None)
    torch.manual_seed(cfg.seed)
    return MarianMTModel(config)


def autocast(cfg):
    """The recipe's precision for both models, resolved as archlab's Trainer resolves it (`auto`: bf16 where the
    CPU computes it natively): bf16 autocast with fp32 weights, or fp32."""
    precision, _ = resolve_precision(cfg.precision, torch.device("cpu"))
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_marian(task, model, cfg, budget: float) -> dict:
    """The plain loop: the task's batches, the same optimizer and schedule, until the budget is spent."""
    seconds, tokens, steps, epoch = 0.0, 0, 0, 0
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 10 ** 9, elapsed=lambda: seconds)  # a decay spans the budget
    device, gen = torch.device("cpu"), torch.Generator()
    model.train()
    while seconds < budget:
        for refs in task.epoch_plan(epoch, cfg.batch_size, cfg.seed):
            t0 = time.perf_counter()
            b = task.collate(refs, gen, device)
            with autocast(cfg):
                logits = model(input_ids=b["src"], attention_mask=b["src"] != task.tokenizer.pad_id,
                               decoder_input_ids=b["tgt_in"]).logits
            n = int((b["targets"] != IGNORE).sum())
            loss = F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(), reduction="sum",
                                   ignore_index=IGNORE, label_smoothing=cfg.label_smoothing) / n
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            seconds += time.perf_counter() - t0
            tokens, steps = tokens + n, steps + 1
            if steps % 100 == 0:
                print(f"marian step {steps}: loss {loss.item():.3f}, {tokens / seconds:,.0f} tokens/s", flush=True)
            if seconds >= budget:
                break
        epoch += 1
    return {"steps": steps, "train_seconds": seconds, "throughput": tokens / seconds, "epochs": steps / len(
        task.epoch_plan(0, cfg.batch_size, cfg.seed))}


@torch.inference_mode()
def marian_translate(task, model, beam: int, length_penalty: float) -> tuple[list[str], float]:
    """Hugging Face's own generate(), in the same length-sorted batches and length limits as archlab."""
    from torch.nn.utils.rnn import pad_sequence

    from archlab.search import length_limits

    model.eval()
    tok, d = task.tokenizer, task.data
    sources = task.examples["test"][0]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    hyps = [""] * len(sources)
    t0 = time.perf_counter()
    for start in range(0, len(order), d.eval_batch_size):
        idx = order[start:start + d.eval_batch_size]
        src = pad_sequence([sources[i] for i in idx], batch_first=True, padding_value=tok.pad_id)
        limit = int(length_limits(torch.tensor([len(sources[i]) for i in idx]), d.max_len_ratio,
                                  model.config.max_position_embeddings - 1).max())
        out = model.generate(input_ids=src, attention_mask=src != tok.pad_id, num_beams=beam, do_sample=False,
                             max_new_tokens=limit, early_stopping=True, length_penalty=length_penalty,
                             num_return_sequences=1, decoder_start_token_id=tok.bos_id,
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        for i, row in zip(idx, out.tolist()):
            hyps[i] = tok.decode(row).strip()
    return hyps, len(sources) / (time.perf_counter() - t0)


def side_by_side(task, cfg, steps: int) -> dict:
    """Seconds per training step of fresh archlab and Marian models on the same batches, interleaved
    step by step so that load from elsewhere hits both alike: medians and the median ratio."""
    import statistics

    ours, hf = task.build_model(), marian_for(task, cfg)
    opts = {"archlab": build_optimizer(ours, cfg), "marian": build_optimizer(hf, cfg)}
    ours.train(), hf.train()
    forward = {"archlab": lambda b: task.forward(ours, b),
               "marian": lambda b: hf(input_ids=b["src"], attention_mask=b["src"] != task.tokenizer.pad_id,
                                      decoder_input_ids=b["tgt_in"]).logits}
    times: dict[str, list[float]] = {"archlab": [], "marian": []}
    gen, tokens = torch.Generator(), []
    for refs in task.epoch_plan(0, cfg.batch_size, cfg.seed)[:steps + 2]:
        b = task.collate(refs, gen, torch.device("cpu"))
        tokens.append(int((b["targets"] != IGNORE).sum()))
        for name in times:
            t0 = time.perf_counter()
            with autocast(cfg):
                logits = forward[name](b)
            F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(), reduction="sum", ignore_index=IGNORE,
                            label_smoothing=cfg.label_smoothing).div(tokens[-1]).backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    a, m = times["archlab"][2:], times["marian"][2:]  # the first steps warm up allocators
    return {"steps": len(a), "archlab_s": statistics.median(a), "marian_s": statistics.median(m),
            "ratio": statistics.median(y / x for x, y in zip(a, m)), "tokens": statistics.median(tokens[2:])}


MARIAN_SHAPE = dict(norm_placement="post", norm="layernorm", activation="relu", position="sinusoidal",
                    tie_embeddings=True)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'LABEL: key=value key=value' -> (LABEL, overrides)."""
    label, sep, rest = text.partition(":")
    overrides = rest.split()
    if not sep or not label.strip() or any("=" not in o for o in overrides):
        raise SystemExit(f"--variant {text!r}: expected 'LABEL: key=value key=value ...'")
    return label.strip(), overrides


def read_kept(path: Path, keys: tuple[str, ...]) -> dict | None:
    """A finished result this script stored, or None when there is none or it is unreadable (then said, and the
    model is trained anew)."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and all(k in stored for k in keys):
            return stored
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    print(f"{path}: not a result this script wrote; training anew", flush=True)
    return None


def train_variant(args, label: str, overrides: list[str], budget: float) -> tuple[dict, object, Path]:
    """The variant's archlab run (trained, or re-used when its folder holds a finished one with these overrides)."""
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    run_dir = Path(args.runs) / slug
    overrides = [*overrides, f"train.max_seconds={budget}", f"train.threads={args.threads}",
                 "train.eval_every=1000000000", "train.epochs=1000"]
    run = load_run_config(args.config, overrides)
    # what makes two runs the same: the whole config without values at their defaults (an option added later
    # does not orphan a finished run), the CPU (a time budget buys more steps on a faster one), the threads and
    # how they wait (PASSIVE costs a quarter of the speed alone)
    resolved = json.loads(json.dumps({**job_identity(run), "cpu": cpu_name(), "threads": run.train.threads,
                                      "omp_wait_policy": OMP_WAIT_POLICY}, default=str))
    kept = run_dir / "bench.json"
    stored = None if args.fresh else read_kept(kept, ("resolved", "result", "when"))
    if stored and stored["resolved"] == resolved:
        print(f"{label}: re-using {run_dir} ({stored['when']})", flush=True)
        return stored["result"], run, run_dir
    result = train_run(run, run_dir, quiet=True, overwrite=True)  # an unfinished or other variant: moved aside
    result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    kept.write_text(json.dumps({"resolved": resolved, "result": result,
                                "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(label, json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float))}), flush=True)
    return result, run, run_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-minutes", type=float, default=20.0, help="training seconds per model / 60")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-steps", type=int, default=20, help="interleaved steps for the side-by-side speed test")
    p.add_argument("--config", default=str(ROOT / "configs/translation_bible_es_en.yaml"))
    p.add_argument("--variant", action="append", default=[], metavar="'LABEL: KEY=VALUE ...'",
                   help="a recipe variant (repeatable; the first is the reference Marian copies); default 'recipe:'")
    p.add_argument("--no-marian", action="store_true", help="archlab variants only (a lever ablation)")
    p.add_argument("--fresh", action="store_true", help="train every variant and Marian anew (default: re-use finished ones)")
    p.add_argument("--runs", help="work folder (default runs/bench-translation-<minutes>)")
    p.add_argument("--out", help="result fragment (default benchmarks/results/translation_<minutes>min.md)")
    args = p.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["recipe:"]]
    if len({label for label, _ in variants}) < len(variants):
        raise SystemExit("--variant: two variants share a label")
    args.runs = args.runs or str(ROOT / f"runs/bench-translation-{args.budget_minutes:g}")
    args.out = args.out or str(ROOT / f"benchmarks/results/translation_{args.budget_minutes:g}min.md")
    budget = args.budget_minutes * 60
    reference_run = load_run_config(args.config, variants[0][1])
    reference, args.precision = reference_run.model, reference_run.train.precision  # Marian's too
    if not args.no_marian and any(getattr(reference, k) != v for k, v in MARIAN_SHAPE.items()):
        raise SystemExit(f"--variant: Marian copies the first variant, which must be Marian-shaped ({MARIAN_SHAPE}); "
                         "put such a variant first, or pass --no-marian")
    torch.set_num_threads(args.threads)
    ours = {label: train_variant(args, label, overrides, budget) for label, overrides in variants}
    marian = None if args.no_marian else train_marian_like(args, *ours[variants[0][0]][1:], budget)
    write_result(Path(args.out), args, variants, {k: v[0] for k, v in ours.items()}, marian)


def train_marian_like(args, run, run_dir: Path, budget: float) -> dict:
    """Marian with the reference variant's shape, data and optimizer, trained for the budget, and the side-by-side
    speed test: {"hf": ..., "speed": ..., "when": ...}, re-used from the work folder like a variant when the
    reference resolves the same (its bench.json: config, budget, threads) and the speed test has as many steps."""
    kept = Path(args.runs) / "marian.json"
    key = {"reference": json.loads((run_dir / "bench.json").read_text())["resolved"],
           "speed_steps": args.speed_steps}
    stored = None if args.fresh else read_kept(kept, ("key", "hf", "speed", "when"))
    if stored and stored["key"] == key:
        print(f"HF Marian: re-using {kept} ({stored['when']})", flush=True)
        return stored
    task = open_task(run, run_dir / "checkpoints" / "last")  # the run's own tokenizer: the very same one
    speed = side_by_side(task, run.train, args.speed_steps)
    print(json.dumps(speed), flush=True)
    marian = marian_for(task, run.train)
    hf = train_marian(task, marian, run.train, budget)
    refs = [t for _, t in task.text["test"]]
    for name, beam in (("greedy", 1), ("beam", task.data.beam)):
        hyps, per_s = marian_translate(task, marian, beam, task.data.length_penalty)
        hf[f"test_bleu_{name}"], hf[f"test_chrf_{name}"] = bleu_chrf(hyps, refs)
        hf[f"decode_{name}_sentences_per_s"] = per_s
        (Path(args.runs) / f"marian_test_{name}.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    hf["parameters"] = sum(p.numel() for p in marian.parameters())
    print(json.dumps(hf, indent=1), flush=True)
    stored = {"key": key, "hf": hf, "speed": speed, "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
    kept.write_text(json.dumps(stored, indent=1))
    return stored


def write_result(path: Path, args, variants, ours: dict, marian: dict | None) -> None:
    hf, speed = (marian["hf"], marian["speed"]) if marian else (None, None)
    cols = [ours[label] for label, _ in variants]
    first = cols[0]

    def row(name, key, fmt, marian_key=None):
        cells = [fmt(c[key]) if key in c else "" for c in cols]
        if hf is not None:
            cells.append(fmt(hf[marian_key]) if marian_key and marian_key in hf else "")
        return f"| {name} | " + " | ".join(cells) + " |"

    beam = first.get("beam", 4)
    rows = [row("parameters", "parameters", "{:,}".format, "parameters"),
            row("optimizer steps", "steps", "{:,}".format, "steps"),
            row("epochs", "epochs", "{:.2f}".format, "epochs"),
            row("training seconds", "train_seconds", "{:.0f}".format, "train_seconds"),
            row("training target tokens/s", "throughput", "{:,.0f}".format, "throughput"),
            row("validation BLEU, greedy (for choices)", "val_bleu", "{:.2f}".format),
            row(f"test BLEU, beam {beam}", "test_bleu", "{:.2f}".format, "test_bleu_beam"),
            row(f"test chrF, beam {beam}", "test_chrf", "{:.2f}".format, "test_chrf_beam"),
            row("test BLEU, greedy", "test_bleu_greedy", "{:.2f}".format, "test_bleu_greedy"),
            row("test chrF, greedy", "test_chrf_greedy", "{:.2f}".format, "test_chrf_greedy"),
            row("decoding sentences/s, greedy", "decode_greedy_sentences_per_s", "{:.1f}".format,
                "decode_greedy_sentences_per_s"),
            row("decoding sentences/s, beam", "decode_beam_sentences_per_s", "{:.1f}".format,
                "decode_beam_sentences_per_s"),
            "| test BLEU (beam) vs the first column | " + " | ".join(
                f"{c['test_bleu'] - first['test_bleu']:+.2f}" for c in cols)
            + (f" | {hf['test_bleu_beam'] - first['test_bleu']:+.2f} |" if hf else " |")]
    header = [label for label, _ in variants] + (["HF Marian"] if hf else [])
    stored = {label: json.loads((Path(args.runs) / "".join(c if c.isalnum() else "-" for c in label.lower())
                                 .strip("-") / "bench.json").read_text()) for label, _ in variants}
    title = "archlab recipes" + (" vs Hugging Face Marian" if hf else "")
    precision, why = resolve_precision(args.precision, torch.device("cpu"))  # the first variant's, and Marian's
    lines = [
        f"## Translation: Spanish -> English Bible verses, {args.budget_minutes:g}-minute budget ({title})", "",
        f"- machine: {cpu_name()}, torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={OMP_WAIT_POLICY}, {precision} ({why}); trained "
        + ", ".join(f"{label} {stored[label]['when']}" for label, _ in variants)
        + (f", Marian {marian['when']}" if marian else ""),
        f"- budget: {args.budget_minutes:g} minutes of training per model (evaluation not counted); recipe "
        f"{Path(args.config).name}, each column with its overrides (below); test = {first['test_sentences']:,} "
        "verses of the held-out books; choices between variants use the validation books only",
        *[f"- {label}: {' '.join(o) if o else '(the recipe as it is)'}" for label, o in variants],
        "- one run per column, trained one after another on a machine whose speed "
        "drifts (the tokens/s row; a time budget turns that into steps): read a BLEU point or two as noise",
    ]
    if hf:
        lines += [
            f"- HF Marian: transformers MarianMTModel from a MarianConfig with {variants[0][0]}'s shape, tokenizer, "
            "batches, optimizer and schedule, plain PyTorch loop, decoded by its generate(); archlab: Trainer + "
            "EncoderDecoder, decoded by archlab.search (KV cache)",
            "- throughput over the budget and decoding speed are totals (all steps / the whole test set) on a "
            "machine whose load may change between runs; the interleaved side-by-side step time is the fair speed "
            "comparison"]
    lines += ["", "| | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|", *rows, ""]
    if hf:
        lines += [
            f"- training speed side by side ({variants[0][0]} and Marian, fresh models, the same {speed['steps']} "
            f"batches of ~{speed['tokens']:,.0f} target tokens, interleaved step by step): median "
            f"{speed['archlab_s']:.3f} s/step archlab, {speed['marian_s']:.3f} s/step Marian; median ratio Marian / "
            f"archlab {speed['ratio']:.2f}x",
            f"- decoding speed ratio {variants[0][0]} / Marian: greedy "
            f"{first['decode_greedy_sentences_per_s'] / hf['decode_greedy_sentences_per_s']:.2f}x, beam "
            f"{first['decode_beam_sentences_per_s'] / hf['decode_beam_sentences_per_s']:.2f}x", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # a variant's bad key or value: one line
        raise SystemExit(f"error: {e}")
