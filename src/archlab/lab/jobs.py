"""What a worker runs: one job (a resolved run config and where its folder is) -> its result record. It runs
wherever archlab is importable: in the study's process, in a pool worker, in a Ray task on another machine.

A job's folder runs/<key>/ holds the engine's run (config.yaml, checkpoints/, metrics.json), job.json (what
was asked), attempts.jsonl (one line per start: a retried run shows two) and result.json (what the study
aggregates). A run that was interrupted resumes from its last checkpoint; a finished one is not run again.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingDiverged

FINAL = ("ok", "diverged")  # a diverged run is a result (that lr is too high), not a failure to retry


def job_dir(job: dict[str, Any]) -> Path:
    return Path(job["out"]) / "runs" / job["key"]


def write_json(path: Path, data: Any) -> None:
    """Atomically: a reader (the study, another worker) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished(job: dict[str, Any]) -> dict[str, Any] | None:
    result = read_json(job_dir(job) / "result.json")
    return result if isinstance(result, dict) and result.get("status") in FINAL else None


def failed_result(job: dict[str, Any], error: str) -> dict[str, Any]:
    return {"key": job["key"], "status": "failed", "error": error}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train the job's run (or resume it) and measure it. Errors are recorded, never raised: one failing run
    must not lose the others."""
    run_dir = job_dir(job)
    done = finished(job)  # a resumed study, or a retry of a task whose first attempt had finished
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "job.json").exists():
        write_json(run_dir / "job.json", job)
    with open(run_dir / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(),
                            "threads": job.get("threads")}) + "\n")
    t0 = time.time()
    try:
        result = {"status": "ok", **measure(job, run_dir)}
    except TrainingDiverged as e:
        result = {"status": "diverged", "error": str(e)}
    except Exception as e:
        lines = str(e).splitlines()
        result = {"status": "failed", "error": f"{type(e).__name__}: {lines[0] if lines else ''}",
                  "traceback": traceback.format_exc()[-4000:]}
    attempts = len((run_dir / "attempts.jsonl").read_text().splitlines())
    result = {"key": job["key"], **result, "wall_seconds": round(time.time() - t0, 2), "attempts": attempts}
    write_json(run_dir / "result.json", result)
    return result


def measure(job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from ..runs import train_run
    from ..tasks.run import load_run_config

    run = copy.deepcopy(job["run"])
    if job.get("threads"):  # the executor's share of the machine, not the recipe's
        run["train"]["threads"] = job["threads"]
    if os.path.isdir(job["cwd"]):  # relative data paths in the recipe mean the study's folder
        os.chdir(job["cwd"])
    cfg = load_run_config(run)
    if not (run_dir / "metrics.json").exists():
        train_run(cfg, run_dir, resume=run_dir.exists(), quiet=True)  # a run killed before its first checkpoint restarts
    metrics = json.loads((run_dir / "metrics.json").read_text())
    final = end_of_schedule(run_dir, metrics)
    out = {k: v for k, v in final.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({k: metrics[k] for k in ("steps", "train_seconds", "throughput", "throughput_unit") if k in metrics})
    out["best_during_training"] = metrics.get("best_" + cfg.train.metric)
    out["curve"] = validation_curve(run_dir, job["metric"])
    if job.get("extrapolation") and cfg.task == "language_modeling":
        out["extrapolation"] = extrapolate(run_dir, job["extrapolation"])
    return out


def end_of_schedule(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The final metrics of the weights at the end of the schedule. The engine reports its best checkpoint;
    when that is an earlier one (a run that got worse: an lr too high, overfitting), the last weights are
    evaluated the same way here, so every run of a study is measured at the end of its own schedule."""
    best = run_dir / "checkpoints" / "best" / "step.txt"
    if not best.exists() or int(best.read_text().strip()) == metrics["steps"]:
        return metrics
    cached = read_json(run_dir / "end" / "metrics.json")
    if cached is not None:
        return cached
    from ..runs import load_run

    task, model, _ = load_run(run_dir, prefer="last")
    task.prepare()
    (run_dir / "end").mkdir(exist_ok=True)
    with torch.no_grad():
        final = task.finish(model, run_dir / "end")
    final = {k: v for k, v in final.items() if isinstance(v, (int, float, str))}
    write_json(run_dir / "end" / "metrics.json", final)
    return final


def validation_curve(run_dir: Path, metric: str) -> list[list[float]]:
    """[[step, value], ...] of the metric at every evaluation during training."""
    from ..train.logging import read_metrics

    key = metric if metric.startswith("val_") else "val_" + metric.split("_", 1)[-1]
    return [[rec["step"], rec[key]] for rec in read_metrics(run_dir) if rec.get("split") == "valid" and key in rec]


def extrapolate(run_dir: Path, factors: list[int]) -> dict[str, Any]:
    from ..runs import load_run

    task, model, _ = load_run(run_dir, prefer="last")
    task.prepare()
    return extrapolation_losses(model, task.validation_tokens(), model.config.max_seq_len, factors)


def extrapolation_losses(model, tokens: torch.Tensor, context: int, factors: list[int], windows: int = 16) -> dict:
    """Validation loss of a causal LM at f x its training context, per position group [0,T), [T,2T), [2T,4T)."""
    out = {}
    model.eval()
    for f in factors:
        L = f * context
        n = min(windows, (len(tokens) - 1) // L)
        if n < 1:
            continue
        x = tokens[: n * L].view(n, L)
        y = tokens[1: n * L + 1].view(n, L)
        try:
            with torch.no_grad():
                logits = model(x)
        except ValueError as e:  # learned positions: no embedding past the table
            out[f"{f}x"] = {"error": str(e).split(";")[0]}
            continue
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view(n, L)
        groups, start, k = {}, 0, 1
        while start < L:
            end = min(L, context * k)
            groups[f"[{start},{end})"] = loss[:, start:end].mean().item()
            start, k = end, k * 2
        out[f"{f}x"] = {"loss": loss.mean().item(), "groups": groups}
    return out
