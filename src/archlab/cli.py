"""The `archlab` command: one thin sub-command per verb; the work lives in the library."""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError


def cmd_summary(args) -> None:
    from .summary import summarize

    summarize(args.target, batch=args.batch, seq_len=args.seq_len)


def cmd_train(args) -> None:
    from pathlib import Path

    from .runs import default_run_dir
    from .train.config import load_run_config
    from .train.trainer import Trainer

    run = load_run_config(args.config, args.set or [])
    name = run.name or Path(args.config).stem
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(name, args.resume)
    Trainer(run, run_dir, resume=args.resume, quiet=args.quiet).fit()


def cmd_eval(args) -> None:
    import json

    import torch

    from .runs import load_run

    task, model, folder = load_run(args.run, prefer=args.checkpoint)
    task.prepare(None)
    with torch.no_grad():
        metrics = task.evaluate(model, args.split)
    print(f"checkpoint {folder}")
    print(json.dumps(metrics, indent=2))


def cmd_predict(args) -> None:
    from .runs import load_run

    task, model, _ = load_run(args.run)
    if not hasattr(task, "predict_files"):
        raise ValueError(f"{args.run} is a {task.name} run; predict works on image-classification runs")
    failed = 0
    for path, result in task.predict_files(model, args.images, top=args.top):
        if isinstance(result, str):
            failed += 1
            print(f"{path}: error: {result}")
        else:
            print(f"{path}: " + ", ".join(f"{c} {p:.1%}" for c, p in result))
    if failed == len(args.images):
        raise ValueError("no image could be read")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archlab", description="Model structures behind large models, trained for real.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("summary", help="layers, parameters, FLOPs and memory of a preset, config or checkpoint")
    s.add_argument("target", help="preset name (e.g. seed-cnn, transformer-base), YAML recipe, run or checkpoint folder")
    s.add_argument("--batch", type=int, default=32, help="batch size for the memory estimate")
    s.add_argument("--seq-len", type=int, default=None, help="context length for FLOPs (default: the model's)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("train", help="train a recipe (YAML) through the one trainer; torchrun for several processes")
    s.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist_seed_cnn.yaml")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=3e-4")
    s.add_argument("--run-dir", help="output folder (default runs/<name>)")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--quiet", action="store_true", help="no progress bar (for scripts)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="evaluate a run or checkpoint on a split")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("--split", default="test", choices=["train", "valid", "test"])
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="classify image files with an image-classification run")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("images", nargs="+", help="PNG/JPEG files")
    s.add_argument("--top", type=int, default=3)
    s.set_defaults(func=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"archlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
