"""Set two runs of one structure study side by side: each variant's metric and rank before and after (e.g. the
positions x norm study at the recipe's one learning rate, then with tuned learning rates), read from the
fragments compare_studies.py wrote.

    python benchmarks/study_changes.py compare_positions_norm_untuned compare_positions_norm \
        --title "positions x norm: one learning rate -> tuned learning rates"
Writes benchmarks/results/<after>_changes.md.
"""
import argparse
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def first_table(text: str) -> dict[str, dict[str, str]]:
    """{variant: {column: cell}} of the first markdown table whose first column is `variant`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def mean_of(row: dict[str, str], metric: str) -> float:
    cell = next(v for k, v in row.items() if k.startswith(metric))
    return float(re.match(r"[-+]?[\d.]+", cell).group())


def ranks(values: dict[str, float], lower_is_better: bool) -> dict[str, int]:
    order = sorted(values, key=values.get, reverse=not lower_is_better)
    return {v: order.index(v) + 1 for v in values}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--metric", default="val_loss")
    ap.add_argument("--higher-is-better", action="store_true")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    try:  # a missing fragment or one without a results table: one line, exit 2
        before, after = (first_table((RESULTS / f"{name}.md").read_text()) for name in (args.before, args.after))
    except (OSError, StopIteration) as e:
        ap.error(f"{e}" if isinstance(e, OSError) else "a fragment holds no '| variant |' table")
    common = [v for v in after if v in before]
    if not common:
        raise SystemExit(f"{args.before} and {args.after} share no variant")
    b = {v: mean_of(before[v], args.metric) for v in common}
    a = {v: mean_of(after[v], args.metric) for v in common}
    rb, ra = ranks(b, not args.higher_is_better), ranks(a, not args.higher_is_better)
    has_lr = any("lr" in after[v] for v in common)
    lines = [f"### {args.title or f'{args.before} -> {args.after}'}", "",
             f"Each variant's mean {args.metric} in `{args.before}.md` and `{args.after}.md` (written by "
             f"`python benchmarks/study_changes.py {args.before} {args.after}`); rank 1 is the best.", "",
             "| variant | before | after | change | rank before | rank after | verdict after |"
             + (" lr after |" if has_lr else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if has_lr else "")]
    for v in sorted(common, key=ra.get):
        lr = f" {after[v]['lr']} |" if "lr" in after[v] else ""
        lines.append(f"| {v} | {b[v]:.4f} | {a[v]:.4f} | {a[v] - b[v]:+.4f} | {rb[v]} | {ra[v]} | "
                     f"{after[v].get('verdict', '')} |{lr}")
    out = RESULTS / f"{args.after}_changes.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
