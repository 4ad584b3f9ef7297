"""Run the shipped structure studies (configs/compare/*.yaml) and copy their reports to
benchmarks/results/compare_<study>[_quick].md (+ their plots as compare_<study>[_quick]_<plot>.png), with the
command and its CPU time. Run again on a finished study, it re-renders the report from the stored runs (none is
repeated) with the time its runs took (kept in the study folder's timing.json).

    python benchmarks/compare_studies.py [future positions_norm moe cnn_vit] [--quick] [--seeds N]
        [--threads 2] [--workers N | --ray auto|HOST:PORT]
"""
import argparse
import json
import re
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archlab.compare import build_spec, compare  # noqa: E402
from archlab.lab.executors import make_executor  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("studies", nargs="*", default=["future", "positions_norm", "moe", "cnn_vit"])
    ap.add_argument("--quick", action="store_true", help="each study's smaller version")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--ray", default=None)
    ap.add_argument("--work", default="runs/studies")
    args = ap.parse_args()
    results = ROOT / "benchmarks" / "results"
    for study in args.studies:
        spec = build_spec([str(ROOT / "configs" / "compare" / f"{study}.yaml")], sets=[f"train.threads={args.threads}"],
                          quick=args.quick)
        if args.seeds:
            spec.seeds = args.seeds
        out = Path(args.work) / (study + ("-quick" if args.quick else ""))
        executor = make_executor(args.workers, args.ray, args.threads)
        t0, cpu0 = time.time(), cpu_seconds()
        try:
            compare(spec, out, executor=executor)
        finally:
            executor.close()
        # CPU of this process and its pool workers. A resumed study adds to the time its earlier invocations spent
        # (kept in its folder); re-rendering a finished one (no run wrote a result) adds nothing.
        timing_file = out / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {"wall_seconds": 0, "cpu_seconds": 0}
        if any(p.stat().st_mtime >= t0 for p in out.glob("runs/*/result.json")):
            timing["wall_seconds"] += time.time() - t0
            timing["cpu_seconds"] += cpu_seconds() - cpu0
            timing_file.write_text(json.dumps(timing))
        wall, cpu = timing["wall_seconds"], timing["cpu_seconds"]
        command = (f"archlab compare configs/compare/{study}.yaml{' --quick' if args.quick else ''}"
                   f"{f' --workers {args.workers}' if args.workers else ''}")
        stem = f"compare_{study}{'_quick' if args.quick else ''}"  # a quick run never replaces the full study's files
        report = (out / "report.md").read_text()
        for png in out.glob("*.png"):
            name = f"{stem}_{png.stem}.png"
            shutil.copy(png, results / name)
            report = report.replace(f"]({png.name})", f"](benchmarks/results/{name})")
        report = re.sub(r"^## ", "### ", report.split("\n", 1)[1], flags=re.M)
        header = (f"## Structure study: {study}{', quick version' if args.quick else ''} (`{command}`)\n\n"
                  f"{wall / 60:.0f} min wall-clock, {cpu / 3600:.1f} CPU-hours ({executor.name}, "
                  f"{args.threads} thread{'s' if args.threads > 1 else ''} a run).\n")
        (results / f"{stem}.md").write_text(header + report)


if __name__ == "__main__":
    main()
