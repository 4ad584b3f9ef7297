"""Fine-tuning grid on the Debian fortunes (12 topics): {random init, our pretrained BERT (masked
LM), our pretrained GPT (causal LM), all-MiniLM-L6-v2} x {full, frozen backbone, LoRA}, all at the
same budget (the recipes' 3 epochs of batch 32, texts cut at 128 tokens, best epoch by
validation accuracy, one seed).

    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/finetune.py

Trains configs/fortunes_{bert,gpt}_pretrain.yaml first when their runs are missing; skips cells
already finished, so an interrupted grid resumes; writes OUT/report.md (with a plot) and
benchmarks/results/finetune.md. A random-init row uses its pretrained twin's tokenizer and
architecture, so the two differ in the starting weights only.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cpuinfo import cpu_name  # noqa: E402

from archlab.runs import train_run  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402

PRETRAIN = {"bert": "configs/fortunes_bert_pretrain.yaml", "gpt": "configs/fortunes_gpt_pretrain.yaml"}
# init -> (recipe, the pretraining run it takes weights or tokenizer from)
INITS = {"random BERT": ("configs/fortunes_bert_scratch.yaml", "bert"), "our BERT": ("configs/fortunes_bert.yaml", "bert"),
         "random GPT": ("configs/fortunes_gpt_scratch.yaml", "gpt"), "our GPT": ("configs/fortunes_gpt.yaml", "gpt"),
         "MiniLM": ("configs/fortunes_minilm.yaml", None)}
MODES = ("full", "frozen", "lora")
# Full fine-tuning keeps each recipe's rate: 1e-3 for our small models, random or pretrained alike
# (so that only the starting weights differ), 1e-4 for MiniLM (22.7M parameters). A linear probe
# and LoRA train few parameters from a fixed representation and take larger ones, as usual.
MODE_LR = {"frozen": 3e-3, "lora": 1e-3}
LORA = {"rank": 8, "alpha": 16, "dropout": 0.1, "targets": ["qkv_proj", "out_proj"]}


def cell_overrides(init: str, mode: str, pretrain_dir: Path | None, max_steps: int | None) -> list[str]:
    sets = [f"finetune.mode={mode}", f"finetune.lora={json.dumps(LORA)}"]
    if mode in MODE_LR:
        sets.append(f"train.lr={MODE_LR[mode]}")
    if init.startswith("random"):
        sets.append(f"data.tokenizer={pretrain_dir / 'checkpoints' / 'best' / 'tokenizer.json'}")
    elif pretrain_dir is not None:
        sets.append(f"init_from={pretrain_dir}")
    if max_steps:
        sets += [f"train.max_steps={max_steps}", "train.eval_every=" + str(max_steps)]
    return sets


def train(config: str, overrides: list[str], run_dir: Path) -> dict:
    if (run_dir / "metrics.json").exists():
        print(f"done already: {run_dir}", flush=True)
    else:
        print(f"training {run_dir} ({config} {' '.join(overrides)})", flush=True)
        train_run(load_run_config(ROOT / config, overrides), run_dir, quiet=True)
    return json.loads((run_dir / "metrics.json").read_text())


def ci95(acc: float, n: int) -> float:
    return 1.96 * math.sqrt(acc * (1 - acc) / n)


def table(results: dict) -> list[str]:
    rows = ["| init | mode | test accuracy (95% CI) | macro F1 | trainable parameters | trainable % | "
            "training time (s) | examples/s |", "|---|---|---|---|---|---|---|---|"]
    for (init, mode), m in results.items():
        acc = m["test_accuracy"]
        rows.append(f"| {init} | {mode} | {acc:.3f} ± {ci95(acc, m['test_examples']):.3f} | {m['test_macro_f1']:.3f} | "
                    f"{m['trainable_parameters']:,} | {100 * m['trainable_parameters'] / m['parameters']:.2f} | "
                    f"{m['train_seconds']:.0f} | {m['throughput']:.1f} |")
    return rows


def findings(results: dict) -> list[str]:
    """The expected shape, checked on the numbers (not assumed)."""
    acc = {k: m["test_accuracy"] for k, m in results.items()}
    out = []
    for mode in MODES:
        for family in ("BERT", "GPT"):
            ours, rand = (f"our {family}", mode), (f"random {family}", mode)
            if ours in acc and rand in acc:
                d = acc[ours] - acc[rand]
                out.append(f"- {mode}: our pretrained {family} {'beats' if d > 0 else 'does not beat'} its random "
                           f"init by {100 * d:+.1f} points ({acc[ours]:.3f} vs {acc[rand]:.3f}).")
        others = {i: acc[i, mode] for i in INITS if i != "MiniLM" and (i, mode) in acc}
        if ("MiniLM", mode) in acc and others:
            best = max(others, key=others.get)
            d = acc["MiniLM", mode] - others[best]
            out.append(f"- {mode}: MiniLM {'beats' if d > 0 else 'does not beat'} the best of the others ({best}) "
                       f"by {100 * d:+.1f} points ({acc['MiniLM', mode]:.3f} vs {others[best]:.3f}).")
    for init in INITS:
        if (init, "lora") in results and (init, "full") in results:
            lora = results[init, "lora"]
            d = acc[init, "lora"] - acc[init, "full"]
            out.append(f"- {init}: LoRA {acc[init, 'lora']:.3f} vs full {acc[init, 'full']:.3f} ({100 * d:+.1f} points) "
                       f"with {100 * lora['trainable_parameters'] / lora['parameters']:.2f}% of the parameters trainable.")
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    inits = [i for i in INITS if any(k[0] == i for k in results)]
    for j, mode in enumerate(MODES):
        xs = [i + (j - 1) * 0.26 for i, init in enumerate(inits) if (init, mode) in results]
        ys = [results[init, mode]["test_accuracy"] for init in inits if (init, mode) in results]
        errs = [ci95(results[init, mode]["test_accuracy"], results[init, mode]["test_examples"])
                for init in inits if (init, mode) in results]
        ax.bar(xs, ys, 0.26, yerr=errs, capsize=3, label=mode, color=f"C{j}")
    base = next(iter(results.values()))["majority_baseline_accuracy"]
    ax.axhline(base, color="gray", ls="--", lw=1, label="majority class")
    ax.set_xticks(range(len(inits)), inits)
    ax.set_ylabel("test accuracy")
    ax.set_title("Fortune topics (12 classes): initialisation x fine-tuning mode")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pretraining_line(family: str, m: dict) -> str:
    objective = ("masked-LM" if family == "bert" else "causal-LM")
    extra = (f", masked-token accuracy {m['val_masked_accuracy']:.3f}" if "val_masked_accuracy" in m else "")
    return (f"Our {family.upper()}: {m['parameters']:,} parameters, {objective} pretrained on the `fortunes-pretrain` "
            f"corpus (no validation/test text) for {m['steps']} steps in {m['train_seconds']:.0f} s: validation loss "
            f"{m['val_loss']:.3f} nats/token{extra}.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/finetune-grid")
    p.add_argument("--runs", default="runs", help="where the pretraining runs are (or go): RUNS/fortunes_{bert,gpt}_pretrain")
    p.add_argument("--only", nargs="*", help="cells as INIT:MODE (e.g. MiniLM:lora); default all")
    p.add_argument("--max-steps", type=int, help="a smoke test: this many steps per cell instead of 3 epochs")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "finetune.md"))
    args = p.parse_args()
    out = Path(args.out)
    cells = [(init, mode) for init in INITS for mode in MODES if not args.only or f"{init}:{mode}" in args.only]
    if not cells:
        raise SystemExit(f"--only matches no cell; cells are INIT:MODE with INIT in {list(INITS)}, MODE in {MODES}")
    needed = {INITS[init][1] for init, _ in cells} - {None}
    pretrain_dirs = {f: Path(args.runs) / f"fortunes_{f}_pretrain" for f in PRETRAIN}
    pretrained = {f: train(PRETRAIN[f], [], pretrain_dirs[f]) for f in sorted(needed)}
    results = {}
    for init, mode in cells:
        config, family = INITS[init]
        slug = f"{init.replace(' ', '-').lower()}-{mode}"
        sets = cell_overrides(init, mode, pretrain_dirs.get(family), args.max_steps)
        results[init, mode] = train(config, sets, out / slug)
    plot(results, out / "plots" / "finetune_grid.png")
    first = next(iter(results.values()))
    threads = load_run_config(ROOT / INITS["MiniLM"][0]).train.threads
    head = [f"Machine: {cpu_name()}, torch {torch.__version__}, {threads} thread(s) "
            f"(train.threads), {datetime.date.today().isoformat()}.",
            "",
            f"Data: Debian fortunes, 12 topics, {first['test_examples']} test texts; always answering the most "
            f"frequent class scores {first['majority_baseline_accuracy']:.3f}. Budget per cell: "
            + (f"{args.max_steps} steps (smoke test)" if args.max_steps else "3 epochs of batch 32")
            + ", texts cut at 128 tokens, best epoch by validation accuracy, seed 0. Learning rates: full = each "
              "recipe's (1e-3 for our small models, random or pretrained; 1e-4 for MiniLM), frozen "
              f"{MODE_LR['frozen']}, LoRA {MODE_LR['lora']} (rank {LORA['rank']}, alpha {LORA['alpha']}, on "
              f"{', '.join(LORA['targets'])}). The 95% interval of an "
              f"accuracy near 0.5 on {first['test_examples']} texts is about ±{ci95(0.5, first['test_examples']):.3f}.",
            ""] + [pretraining_line(f, m) for f, m in pretrained.items()] + [""]
    body = head + table(results) + ["", "What the grid shows (computed from the table):", ""] + findings(results)
    (out / "report.md").write_text("\n".join(["# Fine-tuning: initialisation x mode", ""] + body +
                                             ["", "![grid](plots/finetune_grid.png)", ""]))
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text("\n".join(["## Fine-tuning for text classification (benchmarks/finetune.py)", ""] + body)
                            + "\n")
    print("\n".join(body))


if __name__ == "__main__":
    main()
