"""Write BENCHMARKS.md from the fragments the benchmark scripts wrote to benchmarks/results/*.md.

Every number in BENCHMARKS.md comes from a script's own output; re-run a benchmark, then this.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["fashion_mnist", "translation_20min", "translation_20min_zen5", "translation_decoding", "translation_levers_10min",
         "lm", "speedrun", "speedrun_ablation", "omp_wait_policy", "structures", "generate", "finetune", "compare_future",
         "compare_future_quick", "compare_positions_norm", "compare_positions_norm_changes", "compare_positions_norm_untuned",
         "compare_positions_norm_quick", "compare_moe", "compare_cnn_vit"]


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    found = {p.stem: p for p in results.glob("*.md")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    parts = ["# Benchmarks", "",
             "Measured by the scripts in `benchmarks/` (each writes its fragment to `benchmarks/results/`; "
             "`python benchmarks/assemble.py` builds this page). Shared machines drift 10–20%: competitors run "
             "side by side in the same process, and the tables quote medians and ratios.", ""]
    for n in names:
        text = found[n].read_text().strip()
        parts += [text, ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"BENCHMARKS.md: {', '.join(names)}")


if __name__ == "__main__":
    main()
