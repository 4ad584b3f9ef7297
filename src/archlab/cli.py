"""The `archlab` command: one thin sub-command per verb; the work lives in the library."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import ArchlabError, ConfigError


def cmd_summary(args) -> None:
    from .summary import summarize

    summarize(args.target, batch=args.batch, seq_len=args.seq_len)


def cmd_train(args) -> None:
    from .runs import default_run_dir, train_run
    from .tasks.run import load_run_config

    run = load_run_config(args.config, args.set or [])
    name = run.name or Path(args.config).stem
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(name, args.resume)
    train_run(run, run_dir, resume=args.resume, quiet=args.quiet)


def cmd_eval(args) -> None:
    import json

    import torch

    from .runs import load_run

    task, model, folder = load_run(args.run, prefer=args.checkpoint)
    task.prepare()
    if hasattr(task, "eval_cap"):
        task.eval_cap = None  # `archlab eval` scores every sentence, training evaluations a sample
    available = list(getattr(task, "splits", None) or ["train", "valid", "test"])
    split = args.split or ("test" if "test" in available else "valid")
    if split not in available:  # a language model has train and valid only
        raise ValueError(f"a {task.name} run has no {split!r} split; choose --split from {available}")
    args.split = split
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


def cmd_translate(args) -> None:
    """`archlab translate RUN [TEXT ...] [--input FILE --output FILE] [--beam N]`."""
    from .runs import load_run

    if args.beam < 1 or args.batch_size < 1:
        raise ConfigError(f"--beam and --batch-size must be at least 1, got {args.beam} and {args.batch_size}")
    if args.max_len_ratio <= 0:
        raise ConfigError(f"--max-len-ratio must be positive, got {args.max_len_ratio}")
    if bool(args.text) == bool(args.input):
        raise ConfigError("give the sentences to translate as arguments or as --input FILE (one per line), not both")
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            lines = path.read_text(encoding="utf-8-sig").split("\n")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 ({e.reason}); re-save it as UTF-8") from None
        if lines and lines[-1] == "":  # the file's final newline ends the last line, it is not a line
            lines.pop()
    else:
        lines = list(args.text)
    task, model, _ = load_run(args.run)
    if task.name != "translation":
        raise ConfigError(f"{args.run} is a {task.name} run; translate works on translation runs")
    out = task.translate(model, lines, args.beam, args.length_penalty, args.max_len_ratio, args.batch_size)
    if args.output:
        Path(args.output).write_text("".join(t + "\n" for t in out), encoding="utf-8")
    else:
        print("\n".join(out))


def cmd_generate(args) -> None:
    import torch

    from .generate import generate
    from .runs import load_run

    task, model, _ = load_run(args.run)
    if task.name != "language_modeling":
        raise ConfigError(f"{args.run} is a {task.name} run; generate needs a causal language model run")
    tok = task.tokenizer
    prompt_ids = tok.encode(args.prompt) if args.prompt else [tok.encode("\n")[0] if tok.encode("\n") else 0]
    limit = model.config.max_seq_len
    if len(prompt_ids) >= limit:
        print(f"note: the prompt has {len(prompt_ids)} tokens; the model sees the last {limit - 1} "
              f"(its context is {limit})", file=sys.stderr)
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    for sample in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {sample + 1} ---")
        print(args.prompt, end="", flush=True)
        shown = ""
        ids_so_far: list[int] = []

        def stream(token: int) -> None:
            nonlocal shown
            ids_so_far.append(token)
            text = tok.decode(ids_so_far)  # whole-sequence decode: byte-level pieces may complete later
            print(text[len(shown):], end="", flush=True)
            shown = text

        t0 = time.perf_counter()
        out = generate(model, torch.tensor([prompt_ids]), args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, generator=generator, eos_id=tok.eos_id, on_token=stream,
                       compile=args.compile)
        n = out.size(1) - len(prompt_ids)
        print(f"\n[{n} tokens in {time.perf_counter() - t0:.2f} s]", file=sys.stderr)


def cmd_classify(args) -> None:
    from .runs import load_run

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    task, model, _ = load_run(args.run)
    if task.name != "text_classification":
        raise ConfigError(f"{args.run} is a {task.name} run; classify needs a text-classification run")
    width = max(len(c) for c in task.classes)
    for text, top in zip(args.text, task.predict(model, args.text, args.top)):
        short = " ".join(text.split())
        print(short[:100] + ("…" if len(short) > 100 else ""))
        for c, p in top:
            print(f"  {c:<{width}}  {p:6.1%}  {'█' * round(p * 30)}")


def cmd_data_prepare(args) -> None:
    from .data.prepare import prepare

    prepare(args)


def cmd_compare(args) -> None:
    from .compare import cli_compare

    cli_compare(args)


def cmd_demo(args) -> None:
    from .demo import cli_demo

    cli_demo(args)


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
    s.add_argument("--split", choices=["train", "valid", "test"],
                   help="default: test, or valid where the task has no test split (language models)")
    s.add_argument("--checkpoint", default="best", choices=["best", "last"])
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="classify image files with an image-classification run")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("images", nargs="+", help="PNG/JPEG files")
    s.add_argument("--top", type=int, default=3)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("translate", help="translate text with a translation run (greedy or beam search)")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("text", nargs="*", help="sentences to translate (or --input FILE)")
    s.add_argument("--input", help="a file with one sentence per line")
    s.add_argument("--output", help="write translations here (default: print)")
    s.add_argument("--beam", type=int, default=4, help="beam size; 1 = greedy")
    s.add_argument("--length-penalty", type=float, default=0.6)
    s.add_argument("--max-len-ratio", type=float, default=1.5, help="longest output = ratio x source length + 10")
    s.add_argument("--batch-size", type=int, default=32)
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("generate", help="generate text with a GPT run (streams tokens, KV cache)")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("--prompt", default="", help="text to continue")
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--compile", action="store_true", help="torch.compile the model first (slow start, faster tokens)")
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("classify", help="classify text with a text-classification run")
    s.add_argument("run", help="run folder or checkpoint folder")
    s.add_argument("text", nargs="+", help="texts to classify")
    s.add_argument("--top", type=int, default=3)
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("data", help="prepare the real data sets")
    data_sub = s.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = data_sub.add_parser("prepare", help="export / split / locate a data set")
    s.add_argument("dataset", choices=["fashion-mnist", "bible", "fortunes", "tang"])
    s.add_argument("--out", help="output folder (default data/<dataset>)")
    s.add_argument("--download", action="store_true", help="fashion-mnist: download (with checksums) when not installed")
    s.add_argument("--src", default="spaRV1909eb", help="bible: source SWORD module")
    s.add_argument("--tgt", default="engWEB2015eb", help="bible: target SWORD module")
    s.add_argument("--books", default="Genesis-Revelation", help="bible: diatheke key range")
    s.set_defaults(func=cmd_data_prepare)

    s = sub.add_parser("compare", help="train variants of a recipe at equal compute, several seeds, and compare")
    s.add_argument("configs", nargs="+", help="recipes (YAML) or comparison specs (configs/compare/*.yaml)")
    s.add_argument("--vary", action="append", metavar="KEY=V1,V2", help="a config key and the values to try")
    budget = s.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, help="training FLOPs per variant (analytic count)")
    budget.add_argument("--budget-seconds", type=float, help="training seconds per variant")
    budget.add_argument("--budget-steps", type=int, help="optimizer steps per variant")
    s.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the spec's, else 3)")
    s.add_argument("--out", help="comparison folder (default runs/compare-<name>)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config value")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("demo", help="the whole article end to end with real data; one HTML report")
    s.add_argument("--quick", action="store_true", help="at most ~2 minutes")
    s.add_argument("--out", help="output folder (default runs/demo-<timestamp>)")
    s.add_argument("--check-data", action="store_true", help="only check that every step's data is there (exit 2 if not)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "translate" and not any(e.startswith("-") for e in extra):
        args.text += extra  # sentences after an option: archlab translate RUN --beam 1 "texto"
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except (ArchlabError, OSError, ValueError, RuntimeError) as e:
        print(f"archlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
