"""`archlab compare`: the structure lab's command line. Variants of a recipe trained at equal compute, with
tuned learning rates, over several budgets (scaling curves, IsoFLOP), several paired seeds with significance
tests, in-process, on a local process pool or on a Ray cluster. The lab itself is archlab/lab/."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .lab.jobs import extrapolation_losses
from .lab.plan import Planner
from .lab.spec import Spec, Variant, build_spec, parse_budgets, parse_isoflop
from .lab.study import RunsFailed, compare

__all__ = ["Planner", "RunsFailed", "Spec", "Variant", "build_spec", "cli_compare", "compare", "extrapolation_losses",
           "slug"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace(" / ", "__"))


def spec_from_args(args) -> Spec:
    """The spec of the command line: the files, then --quick, then the options (the command line wins)."""
    from .lab.spec import Tune

    spec = build_spec(args.configs, args.vary, args.set, quick=args.quick)
    if args.budget_flops is not None:
        spec.set_budgets("flops", [args.budget_flops])
    elif args.budget_seconds is not None:
        spec.set_budgets("seconds", [args.budget_seconds])
    elif args.budget_steps is not None:
        spec.set_budgets("steps", [args.budget_steps])
    elif args.budgets_flops is not None:
        spec.set_budgets("flops", parse_budgets(args.budgets_flops))
    if args.seeds is not None:
        spec.seeds = args.seeds
    if args.tune and spec.tune is None:
        spec.tune = Tune(points=3) if args.quick else Tune()
    if args.isoflop:
        spec.isoflop = parse_isoflop(args.isoflop)
    if args.baseline:
        spec.baseline = args.baseline
    spec.validate()
    return spec


def cli_compare(args) -> None:
    from .lab.executors import make_executor

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    spec = spec_from_args(args)
    threads = spec.variants[0].run.get("train", {}).get("threads")
    executor = make_executor(args.workers, args.ray, args.cpus_per_run or threads)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{slug(spec.name)}"
    try:
        compare(spec, out, args.quiet, executor)
    finally:
        executor.close()
