"""Time-to-loss speedrun: nanoGPT's CPU baby GPT against archlab's fastest recipe, one evaluator for both.

Side by side in one run on the same machine:
  1. the data: archlab's `bible-web` corpus, char tokenizer, the last 10% by position for validation
     (configs/gpt_char_bible.yaml). The benchmark writes nanoGPT's train.bin / val.bin / meta.pkl from exactly
     archlab's split and vocabulary, so both train on the same tokens;
  2. nanoGPT: its own train.py from a checkout named by NANOGPT_DIR (get it with
     `git clone https://github.com/karpathy/nanoGPT`; none of its code is in this repository), with the
     "I only have a macbook" settings of its README: --device=cpu --compile=False --eval_iters=20
     --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
     --lr_decay_iters=2000 --dropout=0.0 on config/train_shakespeare_char.py (eval every 250 iterations), plus
     --always_save_checkpoint=True so that every evaluation writes ckpt.pt, which the benchmark copies. Without a
     checkout a fallback reference loop (benchmarks/lm.py's nanoGPT-style model and loop, the same settings)
     stands in, and the report says so;
  3. archlab: `archlab train configs/gpt_char_bible_fast.yaml`, saving a checkpoint every few steps;
  4. one evaluator, written once here: the mean cross-entropy over every non-overlapping 64-token window of the
     whole validation split, from each saved checkpoint's weights, in float64 sums. Each checkpoint's time is
     the wall-clock second (from the launch of its process) at which its weights file was complete.

    NANOGPT_DIR=/path/to/nanoGPT python benchmarks/speedrun.py [--out benchmarks/results]
    python benchmarks/speedrun.py --ablation        # which lever gave what (shorter runs, every 4th window)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # lm.py: the fallback reference

from cpuinfo import cpu_name  # noqa: E402

from archlab.runs import open_task  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402

BASE_CONFIG = ROOT / "configs" / "gpt_char_bible.yaml"
FAST_CONFIG = ROOT / "configs" / "gpt_char_bible_fast.yaml"
NANOGPT_ARGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]
DATASET = "bible_char"
GET_NANOGPT = "git clone https://github.com/karpathy/nanoGPT && export NANOGPT_DIR=$PWD/nanoGPT"


# --- data -----------------------------------------------------------------------------------------

def archlab_task(config: Path = BASE_CONFIG):
    """archlab's language-modeling task of the recipe, prepared: its splits and tokenizer."""
    return open_task(load_run_config(yaml.safe_load(config.read_text())))


def export_nanogpt_data(task, folder: Path) -> Path:
    """nanoGPT's data prep (its data/shakespeare_char/prepare.py format) from archlab's split and vocabulary:
    train.bin / val.bin of uint16 ids and meta.pkl with vocab_size, itos and stoi."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = task.tokenizer.vocab_size
    assert vocab < 2 ** 16
    for split, name in (("train", "train.bin"), ("valid", "val.bin")):
        task.splits[split].numpy().astype(np.uint16).tofile(folder / name)
    itos = {i: task.tokenizer.id_to_token(i) for i in range(vocab)}
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": vocab, "itos": itos, "stoi": {s: i for i, s in itos.items()}}, f)
    return folder


# --- the one evaluator ----------------------------------------------------------------------------

def eval_windows(n_tokens: int, block: int, every: int = 1) -> torch.Tensor:
    """Offsets of the non-overlapping (block + 1)-token windows that predict every token of the split once
    (every k-th of them with every=k)."""
    n = (n_tokens - 1) // block
    return torch.arange(0, n, every) * block


@torch.no_grad()
def evaluate(logits_fn, tokens: torch.Tensor, block: int, offsets: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy over the windows at `offsets`; logits_fn(inputs, targets) -> (B, T, V).
    Summed per window in float64, so the result does not depend on the order or batching of the windows
    beyond float32 rounding inside the model."""
    total, count = 0.0, 0
    for i in range(0, len(offsets), batch_size):
        w = tokens[offsets[i:i + batch_size, None] + torch.arange(block + 1)]
        x, y = w[:, :-1], w[:, 1:].contiguous()
        logits = logits_fn(x, y).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        total += loss.double().sum().item()
        count += y.numel()
    return total / count


def nanogpt_module(nanogpt_dir: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_nanogpt(path: Path, nanogpt_dir: Path | None):
    """A logits function from a nanoGPT ckpt.pt (its GPT class from the checkout) or from a fallback
    reference state dict (benchmarks/lm.py's RefGPT)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if nanogpt_dir is None:
        from lm import RefGPT
        a = ckpt["model_args"]
        model = RefGPT(a["vocab_size"], a["block_size"], a["n_layer"], a["n_head"], a["n_embd"])
        model.load_state_dict(ckpt["model"])
        model.eval()
        return lambda x, y: model(x)
    m = nanogpt_module(nanogpt_dir)
    model = m.GPT(m.GPTConfig(**ckpt["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.eval()
    return lambda x, y: model(x, y)[0]  # nanoGPT returns all positions' logits only when given targets


def load_archlab(folder: Path):
    from archlab.runs import load_run
    _, model, _ = load_run(folder)
    return lambda x, y: model(x)


# --- the runs -------------------------------------------------------------------------------------

def _env(threads: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def run_nanogpt(nanogpt_dir: Path | None, data: Path, work: Path, threads: int) -> dict:
    """Launch nanoGPT's train.py (or the fallback), copy ckpt.pt after each evaluation; [(seconds, iter, file)]."""
    if work.exists():
        shutil.rmtree(work)
    (work / "data").mkdir(parents=True)
    (work / "data" / DATASET).symlink_to(data.resolve())
    out = work / "out"
    if nanogpt_dir is not None:
        # train.py reads configurator.py and data/<dataset> from its working directory
        (work / "configurator.py").symlink_to(nanogpt_dir / "configurator.py")
        cmd = [sys.executable, str(nanogpt_dir / "train.py"), str(nanogpt_dir / "config" / "train_shakespeare_char.py"),
               *NANOGPT_ARGS, f"--dataset={DATASET}", f"--out_dir={out}", "--always_save_checkpoint=True"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--reference-worker", str(data), str(out)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=work, env=_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    points, pending, log = [], None, []
    for line in proc.stdout:
        log.append(line)
        if line.startswith("step "):  # "step 250: train loss ..., val loss ..." then "saving checkpoint ..."
            pending = int(line.split()[1].rstrip(":"))
        elif line.startswith("iter ") and pending is not None:  # the save before this step has finished
            ckpt = out / "ckpt.pt"
            if pending > 0 and ckpt.exists():
                dest = work / f"ckpt-{pending:05d}.pt"
                shutil.copy2(ckpt, dest)
                points.append({"seconds": ckpt.stat().st_mtime - t0, "step": pending, "file": str(dest)})
            pending = None
    proc.wait()
    wall = time.time() - t0
    (work / "log.txt").write_text("".join(log))
    if proc.returncode != 0:
        raise RuntimeError(f"nanoGPT failed ({proc.returncode}):\n{''.join(log[-30:])}")
    ckpt = out / "ckpt.pt"  # the last evaluation (max_iters) is followed by one more step, then the end
    last = work / "ckpt-final.pt"
    shutil.copy2(ckpt, last)
    step = torch.load(last, map_location="cpu", weights_only=True)["iter_num"]
    if not points or points[-1]["step"] != step:
        points.append({"seconds": ckpt.stat().st_mtime - t0, "step": step, "file": str(last)})
    its = [float(s.split("time ")[1].split("ms")[0]) for s in log if s.startswith("iter ") and "time " in s]
    return {"points": points, "process_seconds": wall, "median_step_ms": float(np.median(its[5:])) if its else None,
            "command": " ".join(cmd)}


def run_archlab(config: Path, work: Path, threads: int, overrides: list[str], save_every: int) -> dict:
    """`archlab train` in a subprocess, a checkpoint every save_every steps; [(seconds, step, folder)]."""
    if work.exists():
        shutil.rmtree(work)
    sets = [f"train.save_every={save_every}", "train.keep_last=10000", f"train.threads={threads}", *overrides]
    cmd = [sys.executable, "-m", "archlab", "train", str(config), "--run-dir", str(work), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    r = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"archlab failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    points = []
    for folder in (work / "checkpoints").iterdir():
        if folder.name.startswith("step-") or folder.name == "last":
            f = folder / "model.safetensors"
            points.append({"seconds": f.stat().st_mtime - t0, "step": int((folder / "step.txt").read_text()),
                           "file": str(folder)})
    points.sort(key=lambda p: p["step"])
    metrics = json.loads((work / "metrics.json").read_text())
    return {"points": points, "process_seconds": wall, "throughput": metrics.get("throughput"),
            "train_seconds": metrics.get("train_seconds"), "precision": metrics.get("precision"),
            "command": " ".join(cmd[1:])}


def reference_worker(data: Path, out: Path) -> None:
    """The fallback when no nanoGPT checkout is given: benchmarks/lm.py's nanoGPT-style model and loop with the
    same settings (eval of 20 batches per split every 250 iterations, a checkpoint after each), printing lines
    in nanoGPT's format."""
    from lm import RefTrainer
    out.mkdir(parents=True, exist_ok=True)
    train = torch.from_numpy(np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64))
    val = torch.from_numpy(np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64))
    vocab = pickle.load(open(data / "meta.pkl", "rb"))["vocab_size"]
    ref = RefTrainer(train, vocab, 64, 4, 4, 128, 12, 2000, 1337)
    args = dict(vocab_size=vocab, block_size=64, n_layer=4, n_head=4, n_embd=128)
    for it in range(2001):
        if it % 250 == 0:
            ref.model.eval()
            with torch.no_grad():
                losses = {}
                for name, split in (("train", train), ("val", val)):
                    ix = torch.randint(len(split) - 64, (20, 12))
                    w = split[ix[..., None] + torch.arange(65)]
                    losses[name] = np.mean([F.cross_entropy(ref.model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten()).item()
                                            for b in w])
            ref.model.train()
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            if it > 0:
                torch.save({"model": ref.model.state_dict(), "model_args": args, "iter_num": it}, out / "ckpt.pt")
        t0 = time.time()
        loss = ref.step()
        print(f"iter {it}: loss {loss:.4f}, time {(time.time() - t0) * 1000:.2f}ms")


# --- the report -----------------------------------------------------------------------------------

def time_to(points: list[dict], target: float) -> float | None:
    """The first checkpoint time whose loss is at or below target, linearly interpolated from the one before."""
    prev = None
    for p in points:
        if p["val_loss"] <= target:
            if prev is None:
                return p["seconds"]
            frac = (prev["val_loss"] - target) / (prev["val_loss"] - p["val_loss"])
            return prev["seconds"] + frac * (p["seconds"] - prev["seconds"])
        prev = p
    return None


def score(result: dict, loader, tokens, block, offsets) -> None:
    for p in result["points"]:
        p["val_loss"] = evaluate(loader(Path(p["file"])), tokens, block, offsets)
        print(f"  {p['seconds']:7.1f} s  step {p['step']:5d}  val loss {p['val_loss']:.4f}", flush=True)


def machine() -> dict:
    return {"cpu": cpu_name(), "torch": torch.__version__, "date": str(date.today()), "python": platform.python_version()}


def plot(series: dict, target: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series.items():
        ax.plot([p["seconds"] for p in pts], [p["val_loss"] for p in pts], marker="o", label=name)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"nanoGPT final {target:.4f}")
    ax.set_xlabel("wall-clock seconds from launch")
    ax.set_ylabel("validation loss (whole validation split)")
    ax.set_ylim(top=min(3.0, max(p["val_loss"] for pts in series.values() for p in pts)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main_speedrun(args) -> None:
    torch.set_num_threads(args.threads)
    nanogpt_dir = Path(os.environ["NANOGPT_DIR"]).resolve() if os.environ.get("NANOGPT_DIR") else None
    if nanogpt_dir is not None and not (nanogpt_dir / "train.py").exists():
        sys.exit(f"NANOGPT_DIR={nanogpt_dir} holds no train.py; get nanoGPT with: {GET_NANOGPT}")
    if nanogpt_dir is None:
        print(f"NANOGPT_DIR is not set: the fallback reference loop stands in for nanoGPT (for nanoGPT itself: "
              f"{GET_NANOGPT})")
    work = Path(args.work)
    task = archlab_task()
    data = export_nanogpt_data(task, work / "nanogpt-data")
    tokens, block = task.splits["valid"], task.block
    offsets = eval_windows(len(tokens), block, args.every)
    print(f"evaluator: {len(offsets)} windows of {block} tokens ({len(offsets) * block:,} of {len(tokens):,} "
          f"validation tokens)", flush=True)
    ref = run_nanogpt(nanogpt_dir, data, work / "nanogpt", args.threads)
    print(f"nanoGPT: {ref['process_seconds']:.1f} s", flush=True)
    ours = run_archlab(FAST_CONFIG, work / "archlab", args.threads, args.set, args.save_every)
    print(f"archlab: {ours['process_seconds']:.1f} s", flush=True)
    print("nanoGPT checkpoints:")
    score(ref, lambda f: load_nanogpt(f, nanogpt_dir), tokens, block, offsets)
    print("archlab checkpoints:")
    score(ours, load_archlab, tokens, block, offsets)
    target = ref["points"][-1]["val_loss"]
    ref_wall = ref["points"][-1]["seconds"]
    reach = time_to(ours["points"], target)
    result = {**machine(), "threads": args.threads, "reference": "nanoGPT train.py" if nanogpt_dir else "fallback",
              "nanogpt_commit": _git_head(nanogpt_dir), "nanogpt": ref, "archlab": ours, "target": target,
              "nanogpt_wall": ref_wall, "archlab_reach_seconds": reach,
              "ratio": reach / ref_wall if reach else None, "eval_windows": len(offsets), "eval_every": args.every,
              "command": "NANOGPT_DIR=... python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speedrun.json").write_text(json.dumps(result, indent=2))
    plot({"nanoGPT" if nanogpt_dir else "reference (fallback)": ref["points"], "archlab fast": ours["points"]},
         target, out / "speedrun.png")
    write_markdown(result, out / "speedrun.md")
    print((out / "speedrun.md").read_text())


def _git_head(folder: Path | None) -> str | None:
    if folder is None:
        return None
    r = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def write_markdown(r: dict, path: Path) -> None:
    ref_name = "nanoGPT" if r["reference"] != "fallback" else "reference loop (fallback, no nanoGPT checkout)"
    n, a = r["nanogpt"], r["archlab"]
    lines = ["## Speedrun: time to validation loss, nanoGPT's CPU baby GPT vs archlab (benchmarks/speedrun.py)", "",
             f"{r['date']}, {r['cpu']}, torch {r['torch']}, {r['threads']} threads, one process at a time. "
             f"Reference: **{ref_name}**" + (f" (commit {r['nanogpt_commit']})" if r.get("nanogpt_commit") else "") + ".",
             "", f"Command: `{r['command']}`", "",
             f"Evaluator: the mean cross-entropy over {r['eval_windows']:,} non-overlapping 64-token windows "
             + ("(the whole validation split)" if r["eval_every"] == 1 else f"(every {r['eval_every']}th window of the "
                                                                            "validation split)")
             + ", the same code for both, from each run's saved weights. Seconds: wall clock from the launch of the "
             "training process to the moment the checkpoint's weights file was written (imports, data loading and "
             "in-run evaluations included).", "",
             "| run | checkpoint step | seconds | validation loss |", "|---|---|---|---|"]
    for name, res in ((ref_name.split(" (")[0], n), ("archlab", a)):
        for p in res["points"]:
            lines.append(f"| {name} | {p['step']} | {p['seconds']:.1f} | {p['val_loss']:.4f} |")
    reach = r["archlab_reach_seconds"]
    lines += ["", f"- {ref_name} final (step {n['points'][-1]['step']}) validation loss **{r['target']:.4f}** at "
              f"**{r['nanogpt_wall']:.1f} s** (median step {n['median_step_ms']:.1f} ms)." if n.get("median_step_ms")
              else f"- reference final loss {r['target']:.4f} at {r['nanogpt_wall']:.1f} s.",
              f"- archlab (configs/gpt_char_bible_fast.yaml, precision {a['precision']}) reaches it at "
              + (f"**{reach:.1f} s = {r['ratio']:.2f}x** nanoGPT's wall time" if reach else "**never**")
              + f"; its final loss **{a['points'][-1]['val_loss']:.4f}** at {a['points'][-1]['seconds']:.1f} s "
              f"(training {a['throughput']:,.0f} tokens/s).",
              "- Precision: nanoGPT's train.py trains in fp32 on a CPU (its autocast is for CUDA only); archlab's "
              "`precision: auto` takes bf16 autocast where the CPU computes bf16 natively (AMX or AVX512-BF16) and "
              "fp32 elsewhere.",
              "- Target (issue 17): ≤ 0.5x and a lower final loss: "
              + ("**met**" if reach and r["ratio"] <= 0.5 and a["points"][-1]["val_loss"] < r["target"] else "**not met**")
              + ".", "", "![val loss vs seconds](benchmarks/results/speedrun.png)", ""]
    path.write_text("\n".join(lines))


# --- ablation -------------------------------------------------------------------------------------

COMMON = ["train.eval_batches=20", "train.batch_size=24", "train.lr=2e-3", "train.min_lr=2e-4", "train.warmup_steps=50",
          "train.max_steps=600", "train.eval_every=600"]
ABLATION = [  # cumulative: each row adds its lever to the one before (overrides on configs/gpt_char_bible.yaml)
    ("baseline: gpt_char_bible.yaml (AdamW 1e-3, cosine, batch 12, 2000 steps)", ["train.eval_batches=20",
                                                                                 "train.eval_every=2000"]),
    ("lr 2e-3, batch 24, warm-up 50, 600 steps", COMMON),
    ("+ Muon (hidden matrices)", [*COMMON, "train.optimizer=muon"]),
    ("+ WSD schedule (decay over the last 30% to 0)", [*COMMON, "train.optimizer=muon", "train.schedule=wsd",
                                                       "train.decay_fraction=0.3", "train.min_lr=0"]),
    ("+ QK-norm", [*COMMON, "train.optimizer=muon", "train.schedule=wsd", "train.decay_fraction=0.3", "train.min_lr=0",
                   "model.qk_norm=true"]),
    ("+ ReLU²", [*COMMON, "train.optimizer=muon", "train.schedule=wsd", "train.decay_fraction=0.3", "train.min_lr=0",
                 "model.qk_norm=true", "model.activation=relu2"]),
]


def read_rows(path: str) -> list[tuple[str, list[str]]]:
    """Ablation rows from a JSON file: [[name, [KEY=VALUE, ...]], ...]; ValueError naming the file otherwise."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--rows {path}: {e}") from None
    shape = isinstance(rows, list) and rows and all(
        isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], list)
        and all(isinstance(o, str) and "=" in o for o in r[1]) for r in rows)
    if not shape or len({r[0] for r in rows}) != len(rows):
        raise ValueError(f"--rows {path}: expected a non-empty list of [name, [KEY=VALUE, ...]] with distinct names")
    return [(name, overrides) for name, overrides in rows]


def main_ablation(args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work) / "ablation"
    task = archlab_task()
    tokens, block = task.splits["valid"], task.block
    offsets = eval_windows(len(tokens), block, args.every)
    rows = args.rows or ABLATION
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "speedrun_ablation.json"
    done = json.loads(path.read_text())["rows"] if args.resume_rows and path.exists() else []
    results = [r for r in done if r["name"] in {row[0] for row in rows}]
    for i, row in enumerate(rows):
        name, overrides = row[0], row[1]
        if any(r["name"] == name for r in results):
            continue
        res = run_archlab(BASE_CONFIG, work / f"run{i}", args.threads, [*overrides, *args.set], args.save_every)
        score(res, load_archlab, tokens, block, offsets)
        t = time_to(res["points"], args.target)
        results.append({"name": name, "overrides": overrides, "final": res["points"][-1]["val_loss"],
                        "seconds": res["points"][-1]["seconds"], "time_to_target": t, "throughput": res["throughput"],
                        "points": res["points"], "date": str(date.today())})
        print(f"{name}: final {results[-1]['final']:.4f} at {results[-1]['seconds']:.1f} s, to {args.target}: {t}",
              flush=True)
        results.sort(key=lambda r: [row[0] for row in rows].index(r["name"]))
        summary = {**machine(), "threads": args.threads, "target": args.target, "eval_every": args.every,
                   "command": "python " + " ".join(sys.argv), "rows": results}
        path.write_text(json.dumps(summary, indent=2))
        write_ablation_markdown(summary, out / "speedrun_ablation.md")


def write_ablation_markdown(r: dict, path: Path) -> None:
    lines = ["## Speedrun ablation: which lever gave what (benchmarks/speedrun.py --ablation)", "",
             f"{r['date']}, {r['cpu']}, torch {r['torch']}, {r['threads']} threads. Cumulative rows, each one archlab "
             f"run (overrides on configs/gpt_char_bible.yaml); validation loss by the speedrun's evaluator on every "
             f"{r['eval_every']}th window of the validation split; time to loss {r['target']} (about nanoGPT's final "
             f"loss) from the launch of the process, interpolated between checkpoints (every 100 steps). "
             f"Command: `{r['command']}`.", "",
             "| lever | tokens/s | final loss | at seconds | seconds to loss " + f"{r['target']} |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        t = row["time_to_target"]
        lines.append(f"| {row['name']} | {row['throughput']:,.0f} | {row['final']:.4f} | {row['seconds']:.1f} | "
                     + (f"{t:.1f}" if t is not None else "not reached") + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=1, help="evaluate every k-th validation window (1: all)")
    ap.add_argument("--save-every", type=int, default=100, help="archlab checkpoint interval (steps)")
    ap.add_argument("--set", action="append", default=[], help="extra archlab --set override")
    ap.add_argument("--work", default="/tmp/archlab-speedrun")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--rows", help="ablation rows as JSON [[name, [KEY=VALUE, ...]], ...]")
    ap.add_argument("--target", type=float, default=1.67, help="ablation: time to this validation loss")
    ap.add_argument("--resume-rows", action="store_true", help="ablation: keep the rows already in the results")
    ap.add_argument("--reference-worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:  # before any training: a bad file is one line (exit 2), not a traceback after minutes
        args.rows = read_rows(args.rows) if args.rows else None
    except ValueError as e:
        ap.error(str(e))
    if args.reference_worker:
        torch.set_num_threads(args.threads)
        reference_worker(Path(args.reference_worker[0]), Path(args.reference_worker[1]))
    elif args.ablation:
        main_ablation(args)
    else:
        main_speedrun(args)


if __name__ == "__main__":
    main()
