"""Fashion-MNIST on a CPU: time-to-accuracy of the recipes, and our Trainer against a plain PyTorch loop.

In one run, on 2 CPU threads:
  1. speed: images/s of the article's seed-cnn (Adam, batch 64) trained by a plain PyTorch loop written
     here (the model as an nn.Sequential, its own shuffling and batching) and by archlab's Trainer
     (configs/fashion_mnist_seed_cnn.yaml), in alternating rounds (other jobs make the machine drift:
     medians). The plain loop runs twice: NCHW as written, and channels-last as the Trainer's ConvNet.
  2. time-to-accuracy: each recipe trained in full through the Trainer, at each seed (--seeds) and precision
     (--precisions: auto = bf16 where the CPU computes it natively, and fp32); validation accuracy after
     each epoch (logged by the Trainer) and test accuracy of each epoch's checkpoint (evaluated afterwards),
     against training seconds (steps only; evaluation is not counted). The best recipe is held to 94.0%
     mean test accuracy within 5 minutes of training in bf16 and 10 minutes in fp32; a recipe with a time
     budget (train.max_seconds, its schedule spanning it) trains for exactly that limit in its precision.

    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/fashion_mnist.py [--recipes seed_cnn best vit]
        [--seeds 0 1 2] [--precisions auto fp32] [--rounds 5]
Writes benchmarks/results/fashion_mnist.json (every number, with the machine of each part), .md and .png; a run
replaces only the parts it measured on this CPU (e.g. --recipes best --precisions fp32 --rounds 0 adds the fp32
seeds; rows from another CPU stay beside them, never averaged with them), and drops a re-measured recipe's rows from
an earlier version of its file. Run it alone, as the CLI runs, with
OMP_WAIT_POLICY as you left it (each row records it): PASSIVE is for sharing the cores, and slows a run alone.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cpuinfo import cpu_name  # noqa: E402

from archlab.data import images as img  # noqa: E402
from archlab.models import build_model  # noqa: E402
from archlab.models.finetune import checkpoint_model_config  # noqa: E402
from archlab.runs import train_run  # noqa: E402
from archlab.tasks.image_classification import ImageClassification  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.train import checkpoint as ckpt  # noqa: E402
from archlab.train.logging import read_metrics  # noqa: E402
from archlab.train.trainer import resolve_precision  # noqa: E402

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
    run = load_run_config(RECIPES["seed_cnn"], [f"train.max_steps={steps}", "train.epochs=null", "data.test_subset=1000",
                                                "train.precision=fp32"])  # as the plain loop: fp32
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


def time_to_accuracy(name: str, seed: int, precision: str, threads: int, overrides: list[str], work: Path,
                     test_curve: bool, eval_epochs: int) -> dict:
    """Train one recipe at one seed and precision; validation accuracy after each epoch (logged by the
    Trainer), with `test_curve` also the test accuracy of each epoch's checkpoint, against training seconds."""
    info = machine()
    every_epoch = ["train.keep_last=1000"] if test_curve else []  # a checkpoint per epoch
    run = load_run_config(RECIPES[name], [*every_epoch, f"train.seed={seed}", f"train.precision={precision}",
                                          f"train.threads={threads}", *overrides])
    if run.train.max_seconds and not any(o.startswith("train.max_seconds=") for o in overrides):
        # a recipe with a time budget trains for the target's limit in the precision it runs in
        run.train.max_seconds = TIME_LIMIT[resolve_precision(run.train.precision, torch.device("cpu"))[0]]
    task = ImageClassification(run)
    task.prepare()
    if eval_epochs > 1:  # evaluation does not change training (its random numbers are keyed by the step)
        run.train.eval_every = eval_epochs * len(task.epoch_plan(0, run.train.batch_size, seed))
    run_dir = work / f"{name}-{precision}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    final = train_run(run, run_dir, quiet=True)
    wall = time.perf_counter() - t0
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    folders = {int((f / "step.txt").read_text()): f for f in (run_dir / "checkpoints").iterdir()
               if f.name.startswith("step-") or f.name == "last"}
    epochs, steps_per_epoch = [], final["steps"] / final["epochs"]
    for r in (r for r in records if r["split"] == "valid"):
        epochs.append({"epoch": round(r["step"] / steps_per_epoch, 2), "step": r["step"],
                       "train_seconds": seconds_at(train, r["step"]), "val_accuracy": r["val_accuracy"]})
        if test_curve:
            epochs[-1]["test_accuracy"] = test_accuracy(task, folders[r["step"]], final["precision"])
        print(f"{name} {final['precision']} seed {seed}: {epochs[-1]}", flush=True)
    info["load_average_end"] = Path("/proc/loadavg").read_text().split()[:3]
    keep = ("test_accuracy", "val_accuracy", "train_seconds", "throughput", "parameters", "steps", "epochs")
    return {"recipe": name, "config": RECIPES[name], "recipe_sha256": recipe_sha256(name), "seed": seed,
            "precision": final["precision"],
            "overrides": overrides, "final": {k: final[k] for k in keep}, "wall_seconds": wall, "per_epoch": epochs,
            "eval_every_epochs": eval_epochs, "machine": info}


def recipe_sha256(name: str) -> str:
    """The recipe file's fingerprint: a stored row measured under another version of the file is stale."""
    return hashlib.sha256((ROOT / RECIPES[name]).read_bytes()).hexdigest()


# --- report ----------------------------------------------------------------------------------------------

def machine() -> dict:
    return {"cpu": cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            # how idle OpenMP threads wait: alone on 2 cores, sleeping (PASSIVE) made the best recipe's steps 1.16x and
            # 1.75x slower than the default (unset) in two alternating measurements (2026-12-02)
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
            "load_average_start": Path("/proc/loadavg").read_text().split()[:3]}


# The claim a recipe is held to: mean test accuracy of its seeds within a training-time limit per precision.
TARGET_ACCURACY = 0.94
TARGET_SEEDS = 3
TIME_LIMIT = {"bf16": 300, "fp32": 600}


def run_key(run: dict) -> tuple:
    """What a re-measured row replaces: the same recipe, precision, seed and overrides on the same CPU (a row from
    another CPU stays, in its own group)."""
    return run["recipe"], run["precision"], run["seed"], tuple(run["overrides"]), run["machine"]["cpu"]


def groups(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs grouped by (recipe, precision, overrides, CPU), seeds in order: seeds measured on two machines are
    never averaged together (a time budget buys 1.7x more epochs on one EPYC generation than on the other)."""
    out: dict[tuple, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (list(RECIPES).index(r["recipe"]), r["precision"], r["seed"])):
        out.setdefault((r["recipe"], r["precision"], " ".join(r["overrides"]), r["machine"]["cpu"]), []).append(r)
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    several_cpus = len({cpu for *_, cpu in groups(runs)}) > 1
    for ((name, precision, over, cpu), rs), color in zip(groups(runs).items(), colors):
        for i, r in enumerate(rs):  # one line per seed; the final test accuracy as a star at the end
            t = [e["train_seconds"] for e in r["per_epoch"]]
            shown = over if len(over) <= 40 else "with the overrides in the table"  # a legend line, not a page
            group = f"{name} {precision}{' ' + shown if over else ''}{' on ' + cpu if several_cpus else ''}"
            ax.plot(t, [e["val_accuracy"] for e in r["per_epoch"]], "o--", color=color, ms=2, lw=0.8, alpha=0.6,
                    label=f"{group}: validation, {len(rs)} seed(s)" if i == 0 else None)
            if all("test_accuracy" in e for e in r["per_epoch"]):
                ax.plot(t, [e["test_accuracy"] for e in r["per_epoch"]], "o-", color=color, ms=2.5, lw=1, alpha=0.8,
                        label=f"{group}: test" if i == 0 else None)
            ax.plot(r["final"]["train_seconds"], r["final"]["test_accuracy"], "*", color=color, ms=9,
                    label=f"{group}: final test" if i == 0 else None)
    ax.axhline(TARGET_ACCURACY, color="gray", lw=0.8, ls=":")
    for precision, limit in TIME_LIMIT.items():
        ax.axvline(limit, color="gray", lw=0.8, ls=":")
        ax.text(limit, 0.99, f" {limit // 60} min ({precision})", color="gray", va="top", fontsize=8,
                transform=ax.get_xaxis_transform())  # x in seconds, y at the top of the panel
    ax.set_xlabel("training seconds (2 CPU threads, evaluation not counted)")
    ax.set_ylabel("accuracy after each epoch")
    ax.set_ylim(0.8, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the curves, not over them
    ax.set_title("Fashion-MNIST: accuracy after each epoch against training time")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def machine_line(info: dict) -> str:
    end = f", at the end {' / '.join(info['load_average_end'])}" if "load_average_end" in info else ""
    policy = info.get("omp_wait_policy", "not recorded")
    return (f"{info['cpu']}, torch {info['torch']}, {info['threads']} threads, OMP_WAIT_POLICY {policy}, "
            f"{info['date']}; load average "
            f"(1/5/15 min) at the start {' / '.join(info['load_average_start'])}{end}")


def markdown(spd: dict | None, runs: list[dict], png: str) -> str:
    lines = ["## Fashion-MNIST: time to accuracy on a CPU", "",
             "Command: `flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/fashion_mnist.py` (each part below "
             "names the machine and date it ran on; a part re-run replaces only its own rows).", ""]
    if spd:
        med = spd["median"]
        ours, plain = med["archlab Trainer"], med["plain PyTorch loop (NCHW)"]
        plain_cl = med["plain PyTorch loop (channels-last)"]
        lines += ["### Training speed: seed-cnn, Adam, batch 64, fp32", "",
                  f"Machine: {machine_line(spd['machine'])}." if "machine" in spd else "", "",
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
              f"Target for the best recipe: at least {TARGET_ACCURACY:.1%} test accuracy as the mean of "
              f"{TARGET_SEEDS} seeds on one CPU, "
              f"within {TIME_LIMIT['bf16'] // 60} minutes of training with native bf16 and "
              f"{TIME_LIMIT['fp32'] // 60} minutes in fp32.", "",
              "| recipe | precision | CPU | seeds | parameters | epochs | training s (each seed) | images/s (median) | "
              "best val acc (each seed) | test acc (each seed) | test acc mean | within the target |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, precision, over, cpu), rs in groups(runs).items():
        f = [r["final"] for r in rs]
        mean = statistics.mean(x["test_accuracy"] for x in f)
        slowest = max(x["train_seconds"] for x in f)
        # a run stopped by its time budget ends with the step that crosses it (a fraction of a second over)
        missed = [what for what, bad in (("accuracy", mean < TARGET_ACCURACY),
                                         ("time", round(slowest) > TIME_LIMIT[precision]),
                                         (f"{len(rs)} of {TARGET_SEEDS} seeds", len(rs) < TARGET_SEEDS)) if bad]
        met = (f"no ({' and '.join(missed)})" if missed else "yes") if name == "best" and not over else ""
        def each(key: str, fmt: str) -> str:
            return ", ".join(format(x[key], fmt) for x in f)

        # a time budget ends each seed after its own (fractional) number of epochs
        per_seed = [f"{x['epochs']:.1f}".removesuffix(".0") for x in f]
        epochs = per_seed[0] if len(set(per_seed)) == 1 else ", ".join(per_seed)
        lines.append(
            f"| {name} (`{rs[0]['config']}`{' ' + over if over else ''}) | {precision} | {cpu} | {len(rs)} | "
            f"{f[0]['parameters']:,} | {epochs} | {each('train_seconds', '.0f')} | "
            f"{statistics.median(x['throughput'] for x in f):,.0f} | {each('val_accuracy', '.4f')} | "
            f"{each('test_accuracy', '.4f')} | **{mean:.4f}** | {met} |")
    lines += ["", "Test accuracy is that of the checkpoint with the best validation accuracy (what `archlab train` "
              "reports); the test set played no part in choosing anything (recipes were tuned on the validation "
              "split, 10% of the training images).", "", "Machines:", ""]
    for (name, precision, *_), rs in groups(runs).items():
        lines += [f"- {name} {precision}, seed {r['seed']}: {machine_line(r['machine'])}" for r in rs]
    if any("family" not in r["machine"]["cpu"] for r in runs):
        lines += ["", "A CPU named without its family and model numbers was recorded before this benchmark recorded "
                  "them (benchmarks/cpuinfo.py): its rows stay in their own group, whatever generation it was."]
    lines.append("")
    for (name, precision, *_), rs in groups(runs).items():
        for r in rs:
            lines += [f"<details><summary>{name} {precision}, seed {r['seed']}: per epoch</summary>", "",
                      "| epoch | training s | val acc | test acc |", "|---|---|---|---|"]
            lines += [f"| {e['epoch']:g} | {e['train_seconds']:.0f} | {e['val_accuracy']:.4f} | "
                      f"{e['test_accuracy']:.4f} |" if "test_accuracy" in e else
                      f"| {e['epoch']:g} | {e['train_seconds']:.0f} | {e['val_accuracy']:.4f} | |" for e in r["per_epoch"]]
            lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="*", default=["seed_cnn", "best"], choices=list(RECIPES),
                   help="time-to-accuracy runs (none: only the speed comparison)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of each recipe")
    p.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=["auto", "bf16", "fp32"],
                   help="each recipe at each of these (auto: bf16 where the CPU computes it natively)")
    p.add_argument("--rounds", type=int, default=5, help="speed rounds (0 keeps the stored speed comparison)")
    p.add_argument("--eval-epochs", type=int, default=1, help="validate every N epochs (and at the end)")
    p.add_argument("--test-curve", action="store_true",
                   help="also the test accuracy of every epoch's checkpoint (slower; by default the final one only)")
    p.add_argument("--steps", type=int, default=200, help="training steps per speed round")
    p.add_argument("--set", action="append", default=[], metavar="RECIPE:KEY=VALUE",
                   help="override a recipe for a quick check, e.g. best:train.epochs=1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench_fashion_mnist")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    img.load_image_dataset("fashion-mnist", fallback=False)  # fail now, not after the speed rounds
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "fashion_mnist.json"  # every part's numbers; a run replaces only the parts it measured
    stored = json.loads(store.read_text()) if store.exists() else {"speed": None, "runs": []}
    if args.rounds:
        info = machine()  # its load average before the rounds
        stored["speed"] = {**speed(args.rounds, args.steps, work), "machine": info}
        store.write_text(json.dumps(stored, indent=1))
    overrides = {name: [s.split(":", 1)[1] for s in args.set if s.startswith(name + ":")] for name in args.recipes}
    for name in args.recipes:  # a recipe re-measured: its rows from an earlier version of its file go
        stale = [x for x in stored["runs"] if x["recipe"] == name and x.get("recipe_sha256") != recipe_sha256(name)]
        if stale:
            print(f"{name}: dropping {len(stale)} stored row(s) measured with an earlier version of {RECIPES[name]}")
            stored["runs"] = [x for x in stored["runs"] if x not in stale]
    for name in args.recipes:
        for precision in args.precisions:
            for seed in args.seeds:
                r = time_to_accuracy(name, seed, precision, args.threads, overrides[name], work, args.test_curve,
                                     args.eval_epochs)
                stored["runs"] = [x for x in stored["runs"] if run_key(x) != run_key(r)]
                stored["runs"].append(r)
                store.write_text(json.dumps(stored, indent=1))  # after each run: a stopped benchmark keeps its rows
    plot(stored["runs"], out / "fashion_mnist.png")
    (out / "fashion_mnist.md").write_text(markdown(stored["speed"], stored["runs"], "benchmarks/results/fashion_mnist.png")
                                          + "\n")
    print(f"wrote {out / 'fashion_mnist.md'}")


if __name__ == "__main__":
    main()
