"""Run the shipped structure studies (configs/compare/*.yaml) and copy their reports to
benchmarks/results/compare_<study>.md (+ the metric-vs-FLOPs plot).

    python benchmarks/compare_studies.py [positions_norm moe cnn_vit] [--seeds N] [--threads 2]
"""
import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from archlab.compare import build_spec, compare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("studies", nargs="*", default=["positions_norm", "moe", "cnn_vit"])
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/studies")
    args = ap.parse_args()
    results = ROOT / "benchmarks" / "results"
    for study in args.studies:
        overrides = [f"train.threads={args.threads}"]
        spec = build_spec([str(ROOT / "configs" / "compare" / f"{study}.yaml")], sets=overrides)
        if args.seeds:
            spec.seeds = args.seeds
        out = Path(args.work) / study
        compare(spec, out)
        report = (out / "report.md").read_text()
        report = re.sub(r"^# Comparison: .*", f"## Structure study: {study} (archlab compare configs/compare/{study}.yaml)",
                        report, count=1, flags=re.M)
        report = report.replace("](metric_vs_flops.png)", f"](benchmarks/results/compare_{study}.png)")
        report = re.sub(r"^## ", "### ", report.split("\n", 1)[1], flags=re.M)
        header = f"## Structure study: {study} (`archlab compare configs/compare/{study}.yaml`)\n"
        (results / f"compare_{study}.md").write_text(header + report)
        shutil.copy(out / "metric_vs_flops.png", results / f"compare_{study}.png")


if __name__ == "__main__":
    main()
