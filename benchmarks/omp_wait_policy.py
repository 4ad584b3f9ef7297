"""OMP_WAIT_POLICY and a shared CPU: archlab training speed with the OpenMP threads spinning (ACTIVE), sleeping
(PASSIVE) or the runtime's default (unset), alone and beside a second busy process.

Each measurement is a fresh subprocess (the policy is read when the OpenMP runtime loads, with torch): the baby
GPT of configs/gpt_char_bible.yaml trains `--steps` steps after 10 warm-up steps; tokens/s = tokens / seconds of
those steps. "Beside" starts a neighbour first: another process multiplying 256x256 matrices in a loop on 2
torch threads (its OMP_WAIT_POLICY left unset), whose own rate is reported too. Conditions alternate within each
round (the machine drifts); the table gives medians over rounds.

    python benchmarks/omp_wait_policy.py [--steps 200] [--rounds 2] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from cpuinfo import cpu_name

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("unset", "ACTIVE", "PASSIVE")


def trainer_worker(steps: int, threads: int) -> None:
    import torch
    import yaml

    sys.path.insert(0, str(ROOT / "src"))
    from archlab.runs import open_task
    from archlab.tasks.run import load_run_config
    from archlab.train.trainer import Trainer

    run = yaml.safe_load((ROOT / "configs" / "gpt_char_bible.yaml").read_text())
    run["train"].update(max_steps=10 ** 6, threads=threads, precision="fp32")
    run = load_run_config(run)
    task = open_task(run)
    trainer = Trainer(task, task.build_model, run.train, "/tmp/archlab-omp-bench", quiet=True)
    trainer._setup()
    plan = task.epoch_plan(0, run.train.batch_size, 0)
    trainer.step = 0
    for i in range(10 + steps):
        if i == 10:
            t0 = time.perf_counter()
        trainer._train_step(plan[i])
        trainer.step += 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"tokens_s": steps * run.train.batch_size * task.block / seconds, "threads": torch.get_num_threads()}))


def busy_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    done, t0 = 0, time.perf_counter()

    def report(*_):
        print(json.dumps({"matmuls_s": done / (time.perf_counter() - t0)}), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print("ready", flush=True)
    while True:
        a @ b
        done += 1


def env_with(policy: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    return env


def measure(policy: str, beside: bool, steps: int, threads: int) -> dict:
    me = [sys.executable, str(Path(__file__).resolve())]
    busy = None
    if beside:
        busy = subprocess.Popen([*me, "--busy"], env=env_with("unset", threads), stdout=subprocess.PIPE, text=True)
        busy.stdout.readline()  # "ready": torch loaded and the loop started
    try:
        r = subprocess.run([*me, "--train", str(steps)], env=env_with(policy, threads), capture_output=True, text=True,
                           check=True)
    finally:
        neighbour = None
        if busy is not None:
            busy.send_signal(signal.SIGTERM)
            out, _ = busy.communicate(timeout=30)
            neighbour = json.loads(out.strip().splitlines()[-1])["matmuls_s"]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return {"tokens_s": result["tokens_s"], "neighbour_matmuls_s": neighbour}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--train", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train:
        return trainer_worker(args.train, args.threads)
    if args.busy:
        return busy_worker(args.threads)
    t_start = time.time()
    raw = {(p, b): [] for p in POLICIES for b in (False, True)}
    alone_neighbour = []
    for r in range(args.rounds):
        order = POLICIES if r % 2 == 0 else POLICIES[::-1]
        for beside in (False, True):
            for policy in order:
                m = measure(policy, beside, args.steps, args.threads)
                raw[(policy, beside)].append(m)
                print(f"round {r} {policy:7s} {'beside' if beside else 'alone '}: {m['tokens_s']:,.0f} tokens/s"
                      + (f", neighbour {m['neighbour_matmuls_s']:,.0f} matmuls/s" if beside else ""), flush=True)
        alone_neighbour.append(neighbour_alone(args.threads))
    cpu = cpu_name()
    import torch
    med = {f"{p}|{'beside' if b else 'alone'}": {
        "tokens_s": statistics.median(m["tokens_s"] for m in ms),
        "neighbour_matmuls_s": statistics.median(m["neighbour_matmuls_s"] for m in ms) if b else None}
        for (p, b), ms in raw.items()}
    result = {"cpu": cpu, "nproc": os.cpu_count(), "torch": torch.__version__, "date": str(date.today()),
              "threads": args.threads, "steps": args.steps, "rounds": args.rounds, "medians": med,
              "neighbour_alone_matmuls_s": statistics.median(alone_neighbour),
              "raw": {f"{p}|{b}": ms for (p, b), ms in raw.items()}, "seconds": time.time() - t_start,
              "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "omp_wait_policy.json").write_text(json.dumps(result, indent=2))
    write_markdown(result, out / "omp_wait_policy.md")
    print((out / "omp_wait_policy.md").read_text())


def neighbour_alone(threads: int, seconds: float = 3.0) -> float:
    busy = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--busy"], env=env_with("unset", threads),
                            stdout=subprocess.PIPE, text=True)
    busy.stdout.readline()
    time.sleep(seconds)
    busy.send_signal(signal.SIGTERM)
    out, _ = busy.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])["matmuls_s"]


def write_markdown(r: dict, path: Path) -> None:
    med = r["medians"]
    lines = ["## OMP_WAIT_POLICY on a shared CPU (benchmarks/omp_wait_policy.py)", "",
             f"{r['date']}, {r['cpu']} ({r['nproc']} logical CPUs), torch {r['torch']}, {r['threads']} threads per "
             f"process; baby GPT (configs/gpt_char_bible.yaml, fp32) training tokens/s over {r['steps']} steps, medians of "
             f"{r['rounds']} alternating rounds; the neighbour: a 2-thread 256x256 matmul loop (policy unset), "
             f"{r['neighbour_alone_matmuls_s']:,.0f} matmuls/s alone. Command: `{r['command']}`.", "",
             "| OMP_WAIT_POLICY of the training | alone tokens/s | beside the neighbour tokens/s | neighbour matmuls/s "
             "beside it |", "|---|---|---|---|"]
    base_alone, base_beside = med["unset|alone"]["tokens_s"], med["unset|beside"]["tokens_s"]
    for p in POLICIES:
        a, b = med[f"{p}|alone"], med[f"{p}|beside"]
        lines.append(f"| {p} | {a['tokens_s']:,.0f} ({a['tokens_s'] / base_alone - 1:+.1%}) | {b['tokens_s']:,.0f} "
                     f"({b['tokens_s'] / base_beside - 1:+.1%}) | {b['neighbour_matmuls_s']:,.0f} |")
    passive_cost = 1 - med["PASSIVE|alone"]["tokens_s"] / max(med["ACTIVE|alone"]["tokens_s"], base_alone)
    gain = med["PASSIVE|beside"]["tokens_s"] / min(med["ACTIVE|beside"]["tokens_s"], base_beside) - 1
    lines += ["", f"PASSIVE costs {passive_cost:.1%} alone (against the faster of unset/ACTIVE) and gains {gain:+.1%} "
              "beside the neighbour (against the slower of unset/ACTIVE). Percentages in the table are against unset.",
              "", "Rule (issue 17): the CLI sets PASSIVE by default only if it costs < 5% alone. "
              + (f"It costs {passive_cost:.0%}: the CLI leaves OMP_WAIT_POLICY alone; on a shared machine set "
                 "`OMP_WAIT_POLICY=PASSIVE` yourself (as `make demo` and `make test` do)."
                 if passive_cost >= 0.05 else f"It costs {passive_cost:.1%}: the CLI sets PASSIVE unless the user set it."),
              ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
