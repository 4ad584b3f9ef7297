"""Fashion-MNIST on a CPU: time-to-accuracy of the recipes, and our Trainer against a plain PyTorch loop.

In one run, on 2 CPU threads:
  1. speed: images/s of the article's seed-cnn (Adam, batch 64) trained by a plain PyTorch loop written
     here (the model as an nn.Sequential, its own shuffling and batching) and by archlab's Trainer
     (configs/fashion_mnist_seed_cnn.yaml), in alternating rounds (other jobs make the machine drift:
     medians). The plain loop runs twice: NCHW as written, and channels-last as the Trainer's ConvNet.
  2. time-to-accuracy: each recipe trained in full through the Trainer; validation accuracy after each
     epoch (logged by the Trainer) and test accuracy of each epoch's checkpoint (evaluated afterwards),
     against training seconds (steps only; evaluation is not counted).

    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/fashion_mnist.py [--recipes seed_cnn best vit]
Writes benchmarks/results/fashion_mnist.md and .png (all numbers also in the work folder, fashion_mnist.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archlab.data import images as img  # noqa: E402
from archlab.models import build_model  # noqa: E402
from archlab.models.finetune import checkpoint_model_config  # noqa: E402
from archlab.runs import train_run  # noqa: E402
from archlab.tasks.image_classification import ImageClassification  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.train import checkpoint as ckpt  # noqa: E402
from archlab.train.logging import read_metrics  # noqa: E402

RECIPES = {"seed_cnn": "configs/fashion_mnist_seed_cnn.yaml", "best": "configs/fashion_mnist_best.yaml",
           "vit": "configs/fashion_mnist_vit.yaml"}


# --- 1. speed: the plain loop and the Trainer -----------------------------------------------------------

def seed_cnn_plain() -> nn.Module:
    """The article's Keras model written out in plain PyTorch (93,322 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10))


def plain_images_per_second(x: torch.Tensor, y: torch.Tensor, steps: int, channels_last: bool, seed: int) -> float:
    """Train the plain model for `steps` batches of 64 from pre-normalised images; images/s of the loop."""
    torch.manual_seed(seed)
    model = seed_cnn_plain()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, fused=True)
    order = torch.randperm(len(y))
    t0 = time.perf_counter()
    for i in range(steps):
        idx = order[i * 64:(i + 1) * 64]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * 64 / (time.perf_counter() - t0)


def trainer_images_per_second(steps: int, run_dir: Path) -> float:
    run = load_run_config(RECIPES["seed_cnn"], [f"train.max_steps={steps}", "train.epochs=null", "data.test_subset=1000"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return train_run(run, run_dir, quiet=True)["throughput"]


def speed(rounds: int, steps: int, work: Path) -> dict:
    run = load_run_config(RECIPES["seed_cnn"])
    task = ImageClassification(run)
    task.prepare()
    x, y = task.train_inputs, task.splits["train"][1]
    assert len(y) >= steps * 64, "not enough training images for the requested steps"
    names = ["plain PyTorch loop (NCHW)", "plain PyTorch loop (channels-last)", "archlab Trainer"]
    results = {n: [] for n in names}
    for r in range(rounds):
        results[names[0]].append(plain_images_per_second(x, y, steps, False, r))
        results[names[1]].append(plain_images_per_second(x, y, steps, True, r))
        results[names[2]].append(trainer_images_per_second(steps, work / "speed"))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:,.0f}" for n, v in results.items()), flush=True)
    return {"rounds": rounds, "steps_per_round": steps, "images_per_second": results,
            "median": {n: statistics.median(v) for n, v in results.items()}}


# --- 2. time-to-accuracy ---------------------------------------------------------------------------------

def seconds_at(train_records: list[dict], step: int) -> float:
    """Training seconds after `step`, interpolated between the logged steps around it."""
    pts = [(r["step"], r["train_seconds"]) for r in train_records]
    before = max((p for p in pts if p[0] <= step), default=(0, 0.0))
    after = min((p for p in pts if p[0] >= step), default=before)
    if after[0] == before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (step - before[0]) / (after[0] - before[0])


def test_accuracy(task: ImageClassification, folder: Path, precision: str) -> float:
    model = build_model(checkpoint_model_config(folder))
    ckpt.load_weights(model, folder)
    model.eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        return task.evaluate(model, "test")["test_accuracy"]


def time_to_accuracy(name: str, overrides: list[str], work: Path) -> dict:
    run = load_run_config(RECIPES[name], ["train.keep_last=1000", *overrides])  # a checkpoint per epoch
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    final = train_run(run, run_dir, quiet=True)
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    task = ImageClassification(run)
    task.prepare()
    folders = {int((f / "step.txt").read_text()): f for f in (run_dir / "checkpoints").iterdir()
               if f.name.startswith("step-") or f.name == "last"}
    epochs, steps_per_epoch = [], final["steps"] / final["epochs"]
    for r in (r for r in records if r["split"] == "valid"):
        epochs.append({"epoch": round(r["step"] / steps_per_epoch, 2), "step": r["step"],
                       "train_seconds": seconds_at(train, r["step"]),
                       "val_accuracy": r["val_accuracy"],
                       "test_accuracy": test_accuracy(task, folders[r["step"]], run.train.precision)})
        print(f"{name}: {epochs[-1]}", flush=True)
    keep = ("test_accuracy", "val_accuracy", "train_seconds", "throughput", "parameters", "steps", "epochs")
    return {"recipe": RECIPES[name], "overrides": overrides, "final": {k: final[k] for k in keep},
            "wall_seconds": wall, "per_epoch": epochs}


# --- report ----------------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
    return {"cpu": model, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "load_average_start": Path("/proc/loadavg").read_text().split()[:3]}


def plot(results: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, r), color in zip(results.items(), ["tab:blue", "tab:red", "tab:green"]):
        t = [e["train_seconds"] for e in r["per_epoch"]]
        ax.plot(t, [e["test_accuracy"] for e in r["per_epoch"]], "o-", color=color, ms=3, label=f"{name}: test")
        ax.plot(t, [e["val_accuracy"] for e in r["per_epoch"]], "s--", color=color, ms=2, alpha=0.6,
                label=f"{name}: validation")
    ax.axhline(target, color="gray", lw=0.8, ls=":")
    ax.axvline(600, color="gray", lw=0.8, ls=":")
    ax.text(600, ax.get_ylim()[0], " 10 min", color="gray", va="bottom", fontsize=8)
    ax.set_xlabel("training seconds (2 CPU threads, evaluation not counted)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(bottom=max(0.7, ax.get_ylim()[0]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Fashion-MNIST: accuracy after each epoch against training time")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def markdown(info: dict, spd: dict | None, tta: dict, png: str) -> str:
    lines = ["## Fashion-MNIST: time to accuracy on a CPU", "",
             f"Machine: {info['cpu']}, torch {info['torch']}, {info['threads']} threads, {info['date']}. "
             f"Load average (1/5/15 min) at the start {' / '.join(info['load_average_start'])}, at the end "
             f"{' / '.join(info['load_average_end'])}: the machine is shared, so other jobs can slow any number here.",
             "", "Command: `flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/fashion_mnist.py`", ""]
    if spd:
        med = spd["median"]
        ours, plain = med["archlab Trainer"], med["plain PyTorch loop (NCHW)"]
        plain_cl = med["plain PyTorch loop (channels-last)"]
        lines += ["### Training speed: seed-cnn, Adam, batch 64, fp32", "",
                  f"{spd['rounds']} alternating rounds of {spd['steps_per_round']} steps each; images/s of the "
                  "training steps (batching included, evaluation excluded).", "",
                  "| loop | median images/s | rounds | vs plain NCHW |", "|---|---|---|---|"]
        lines += [f"| {n} | {med[n]:,.0f} | {', '.join(f'{v:,.0f}' for v in vals)} | {med[n] / plain:.2f}x |"
                  for n, vals in spd["images_per_second"].items()]
        overhead = (f"the engine's own per-step work (batch plan, collation, logging, scheduler) costs "
                    f"{1 - ours / plain_cl:.1%} of the step time" if ours < plain_cl else
                    "the engine's own per-step work (batch plan, collation, logging, scheduler) costs nothing measurable")
        lines += ["", f"The Trainer runs at {ours / plain:.2f}x the plain loop as written and {ours / plain_cl:.2f}x the plain "
                  f"loop in the same (channels-last) layout: {overhead}.", ""]
    lines += ["### Time to accuracy", "", f"![time to accuracy]({png})", "",
              "| recipe | parameters | epochs | training s | wall s (with evaluation) | images/s | best val acc (epoch) "
              "| test acc (final) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in tta.items():
        f, best = r["final"], max(r["per_epoch"], key=lambda e: e["val_accuracy"])
        lines.append(f"| {name} (`{r['recipe']}`{' ' + ' '.join(r['overrides']) if r['overrides'] else ''}) | "
                     f"{f['parameters']:,} | {f['epochs']:.0f} | {f['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
                     f"{f['throughput']:,.0f} | {f['val_accuracy']:.4f} ({best['epoch']:g}) | {f['test_accuracy']:.4f} |")
    lines += ["", "Test accuracy is that of the checkpoint with the best validation accuracy (what `archlab train` "
              "reports); the test set played no part in choosing anything.", ""]
    for name, r in tta.items():
        lines += [f"<details><summary>{name}: per epoch</summary>", "", "| epoch | training s | val acc | test acc |",
                  "|---|---|---|---|"]
        lines += [f"| {e['epoch']:g} | {e['train_seconds']:.0f} | {e['val_accuracy']:.4f} | {e['test_accuracy']:.4f} |"
                  for e in r["per_epoch"]]
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=["seed_cnn", "best"], choices=list(RECIPES))
    p.add_argument("--rounds", type=int, default=5, help="speed rounds (0 skips the speed comparison)")
    p.add_argument("--steps", type=int, default=200, help="training steps per speed round")
    p.add_argument("--set", action="append", default=[], metavar="RECIPE:KEY=VALUE",
                   help="override a recipe for a quick check, e.g. best:train.epochs=1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_fashion_mnist")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    img.load_image_dataset("fashion-mnist", fallback=False)  # fail now, not after the speed rounds
    info, work, out = machine(), Path(args.work), Path(args.out)
    spd = speed(args.rounds, args.steps, work) if args.rounds else None
    overrides = {name: [s.split(":", 1)[1] for s in args.set if s.startswith(name + ":")] for name in args.recipes}
    tta = {name: time_to_accuracy(name, [f"train.threads={args.threads}", *overrides[name]], work)
           for name in args.recipes}
    info["load_average_end"] = Path("/proc/loadavg").read_text().split()[:3]
    out.mkdir(parents=True, exist_ok=True)
    plot(tta, out / "fashion_mnist.png", target=0.94)
    (work / "fashion_mnist.json").write_text(json.dumps({"machine": info, "speed": spd, "time_to_accuracy": tta}, indent=2))
    (out / "fashion_mnist.md").write_text(markdown(info, spd, tta, "benchmarks/results/fashion_mnist.png") + "\n")
    print(f"wrote {out / 'fashion_mnist.md'}")


if __name__ == "__main__":
    main()
