"""Spanish -> English Bible translation after a fixed CPU budget: archlab vs Hugging Face Marian.

Both models have the same shape (post-norm Transformer, d_model 256, 4 heads, FFN 1024, 3 + 3
layers, shared tied embedding, sinusoidal positions, dropout 0.1), see the same tokenizer, the
same length-bucketed token batches, the same Adam + Noam schedule, label smoothing and gradient
clipping, for the same number of training seconds on the same threads. archlab trains through
its Trainer (the recipe, evaluated only at the end so the budget is the same); the baseline is a
MarianMTModel built from a MarianConfig, trained by a plain PyTorch loop. Both are then scored on
the test books with sacreBLEU (greedy and beam 4), and their decoding speed is measured.

    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation.py --budget-minutes 20 --set train.precision=bf16
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path

# OpenMP threads that spin while waiting collapse when another process shares the cores: on this
# 2-core machine a 2-thread step measured 40x slower than with sleeping waits. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from archlab.runs import open_task, train_run  # noqa: E402
from archlab.tasks.base import IGNORE  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.tasks.translation import bleu_chrf  # noqa: E402
from archlab.train.optim import build_optimizer, build_scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def marian_for(task, cfg):
    from transformers import MarianConfig, MarianMTModel

    m, tok = task.model_config(), task.tokenizer
    config = MarianConfig(
        vocab_size=m.vocab_size, decoder_vocab_size=m.vocab_size, d_model=m.d_model, encoder_layers=m.n_encoder_layers,
        decoder_layers=m.n_decoder_layers, encoder_attention_heads=m.n_heads, decoder_attention_heads=m.n_heads,
        encoder_ffn_dim=m.ffn_dim, decoder_ffn_dim=m.ffn_dim, activation_function="relu", dropout=m.dropout,
        attention_dropout=m.dropout, activation_dropout=0.0, max_position_embeddings=m.max_seq_len,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
        decoder_start_token_id=tok.bos_id, forced_eos_token_id=None)
    torch.manual_seed(cfg.seed)
    return MarianMTModel(config)


def autocast(cfg):
    """The recipe's precision for both models: bf16 autocast (fp32 weights), as archlab's Trainer does."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def train_marian(task, model, cfg, budget: float) -> dict:
    """The plain loop: the task's batches, the same optimizer and schedule, until the budget is spent."""
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 10 ** 6)
    device, gen = torch.device("cpu"), torch.Generator()
    seconds, tokens, steps, epoch = 0.0, 0, 0, 0
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


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.processor())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-minutes", type=float, default=20.0, help="training seconds per model / 60")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed-steps", type=int, default=20, help="interleaved steps for the side-by-side speed test")
    p.add_argument("--config", default=str(ROOT / "configs/translation_bible_es_en.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides (both models)")
    p.add_argument("--runs", help="work folder (default runs/bench-translation-<minutes>)")
    p.add_argument("--out", help="result fragment (default benchmarks/results/translation_<minutes>min.md)")
    args = p.parse_args()
    args.runs = args.runs or str(ROOT / f"runs/bench-translation-{args.budget_minutes:g}")
    args.out = args.out or str(ROOT / f"benchmarks/results/translation_{args.budget_minutes:g}min.md")
    budget = args.budget_minutes * 60
    torch.set_num_threads(args.threads)
    overrides = [*args.set, f"train.max_seconds={budget}", f"train.threads={args.threads}",
                 "train.eval_every=1000000000", "train.epochs=1000"]
    run = load_run_config(args.config, overrides)
    run_dir = Path(args.runs) / "archlab"
    ours = train_run(run, run_dir, quiet=True)
    print(json.dumps({k: v for k, v in ours.items() if isinstance(v, (int, float))}, indent=1), flush=True)

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
    write_result(Path(args.out), args, ours, hf, speed, run)


def write_result(path: Path, args, ours: dict, hf: dict, speed: dict, run) -> None:
    rows = [("parameters", f"{ours['parameters']:,}", f"{hf['parameters']:,}"),
            ("optimizer steps", f"{ours['steps']:,}", f"{hf['steps']:,}"),
            ("epochs", f"{ours['epochs']:.2f}", f"{hf['epochs']:.2f}"),
            ("training seconds", f"{ours['train_seconds']:.0f}", f"{hf['train_seconds']:.0f}"),
            ("training target tokens/s", f"{ours['throughput']:,.0f}", f"{hf['throughput']:,.0f}"),
            (f"test BLEU, beam {run.data.get('beam', 4)}", f"{ours['test_bleu']:.2f}", f"{hf['test_bleu_beam']:.2f}"),
            (f"test chrF, beam {run.data.get('beam', 4)}", f"{ours['test_chrf']:.2f}", f"{hf['test_chrf_beam']:.2f}"),
            ("test BLEU, greedy", f"{ours['test_bleu_greedy']:.2f}", f"{hf['test_bleu_greedy']:.2f}"),
            ("test chrF, greedy", f"{ours['test_chrf_greedy']:.2f}", f"{hf['test_chrf_greedy']:.2f}"),
            ("decoding sentences/s, greedy", f"{ours['decode_greedy_sentences_per_s']:.1f}",
             f"{hf['decode_greedy_sentences_per_s']:.1f}"),
            ("decoding sentences/s, beam", f"{ours['decode_beam_sentences_per_s']:.1f}",
             f"{hf['decode_beam_sentences_per_s']:.1f}")]
    lines = [
        f"## Translation: Spanish -> English Bible verses, {args.budget_minutes:g}-minute budget (archlab vs Hugging "
        "Face Marian)", "",
        f"- machine: {machine()}, torch {torch.__version__}, {args.threads} threads "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- budget: {args.budget_minutes:g} minutes of training per model (evaluation not counted), same "
        f"recipe ({Path(args.config).name}{', ' + ', '.join(args.set) if args.set else ''}), tokenizer, batches, "
        f"optimizer and schedule; test = {ours['test_sentences']:,} verses of the held-out books",
        "- archlab: Trainer + EncoderDecoder, decoded by archlab.search (KV cache); baseline: transformers "
        "MarianMTModel from a MarianConfig, plain PyTorch loop, decoded by its generate()",
        "- throughput over the budget and decoding speed are totals (all steps / the whole test set) on a shared "
        "machine whose load changes between the two runs; the interleaved side-by-side step time is the fair "
        "speed comparison", "",
        "| | archlab | HF Marian |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
        f"- training speed side by side (fresh models, the same {speed['steps']} batches of ~{speed['tokens']:,.0f} "
        f"target tokens, interleaved step by step): median {speed['archlab_s']:.3f} s/step archlab, "
        f"{speed['marian_s']:.3f} s/step Marian; median ratio Marian / archlab {speed['ratio']:.2f}x",
        f"- training throughput ratio over the budget, archlab / Marian: {ours['throughput'] / hf['throughput']:.2f}x",
        f"- test BLEU (beam) difference archlab - Marian: {ours['test_bleu'] - hf['test_bleu_beam']:+.2f}",
        f"- decoding speed ratio archlab / Marian: greedy "
        f"{ours['decode_greedy_sentences_per_s'] / hf['decode_greedy_sentences_per_s']:.2f}x, beam "
        f"{ours['decode_beam_sentences_per_s'] / hf['decode_beam_sentences_per_s']:.2f}x; archlab beam / greedy "
        f"{ours['decode_beam_sentences_per_s'] / ours['decode_greedy_sentences_per_s']:.2f}x", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
