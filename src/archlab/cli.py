"""The `archlab` command: one thin sub-command per verb; the work lives in the library."""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .errors import ArchlabError, ConfigError


def at_least(option: str, value: int | None, low: int, why: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(f"{option} must be at least {low}{why}, got {value}")


def finite(option: str, value: float, low: float | None = None, positive: bool = False) -> None:
    """A finite number (nan and inf refused), >= low or > 0 when asked."""
    if not math.isfinite(value) or (low is not None and value < low) or (positive and value <= 0):
        bound = " > 0" if positive else f" >= {low:g}" if low is not None else ""
        raise ConfigError(f"{option} must be a finite number{bound}, got {value}")


def utf8_texts(what: str, texts: list[str], allow_empty: bool = False) -> None:
    """Texts from the command line: valid UTF-8 (Python keeps undecodable argv bytes as lone surrogates),
    and not empty unless allowed."""
    for i, text in enumerate(texts, 1):
        name = what if what.startswith("-") else f"{what} {i}"  # an option holds one text; arguments are counted
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            byte = ord(text[e.start]) - 0xDC00 if 0xDC80 <= ord(text[e.start]) <= 0xDCFF else None
            shown = f" (byte {byte:#04x})" if byte is not None else ""
            raise ConfigError(f"{name} is not valid UTF-8{shown}; pass UTF-8 text") from None
        if not allow_empty and not text.strip():
            raise ConfigError(f"{name} is empty; give a text to work on")


def cmd_summary(args) -> None:
    from .summary import summarize

    at_least("--batch", args.batch, 1)
    at_least("--seq-len", args.seq_len, 1)
    summarize(args.target, batch=args.batch, seq_len=args.seq_len)


def cmd_train(args) -> None:
    from .runs import default_run_dir, train_run
    from .tasks.run import load_run_config

    run = load_run_config(args.config, args.set or [])
    name = run.name or Path(args.config).stem
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(name, args.resume or args.overwrite)
    train_run(run, run_dir, resume=args.resume, overwrite=args.overwrite, force=args.force, quiet=args.quiet,
              warn=lambda message: print(f"archlab train: warning: {message}", file=sys.stderr, flush=True))


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
    bad_weights = sum(int((~p.isfinite()).sum()) for p in model.parameters() if p.is_floating_point())
    bad_metrics = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad_weights or bad_metrics:
        found = ([f"{bad_weights:,} weight(s) are NaN or infinite"] if bad_weights else []) + (
            [f"metric(s) {', '.join(bad_metrics)} are NaN or infinite"] if bad_metrics else [])
        print(f"archlab eval: warning: checkpoint {folder}: {'; '.join(found)} (did its training diverge?)",
              file=sys.stderr)


def cmd_predict(args) -> None:
    from .runs import load_run

    at_least("--top", args.top, 1)
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
    from .tasks.translation import BEAM_CAP_WHY, MAX_BEAM

    if args.beam is not None:
        at_least("--beam", args.beam, 1)
        if args.beam > MAX_BEAM:
            raise ConfigError(f"--beam must be at most {MAX_BEAM}, got {args.beam}: {BEAM_CAP_WHY}")
    at_least("--batch-size", args.batch_size, 1)
    if args.max_len_ratio is not None:
        finite("--max-len-ratio", args.max_len_ratio, positive=True)
    if args.length_penalty is not None:
        finite("--length-penalty", args.length_penalty)
    if bool(args.text) == bool(args.input):
        raise ConfigError("give the sentences to translate as arguments or as --input FILE (one per line), not both")
    utf8_texts("sentence", args.text, allow_empty=True)
    if args.output and Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output} is a folder; give the name of a file to write")
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
    beam = task.data.beam if args.beam is None else args.beam  # unset: decode as the run's evaluation did
    out = task.translate(model, lines, beam, args.length_penalty, args.max_len_ratio, args.batch_size)
    if args.output:
        Path(args.output).write_text("".join(t + "\n" for t in out), encoding="utf-8")
    else:
        print("\n".join(out))


def cmd_generate(args) -> None:
    import torch

    from .generate import generate
    from .runs import load_run

    at_least("--max-new-tokens", args.max_new_tokens, 1)
    finite("--temperature", args.temperature, low=0)
    at_least("--num-samples", args.num_samples, 1)
    at_least("--top-k", args.top_k, 1, " (or leave it out: no limit)")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # nan fails this too
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    utf8_texts("--prompt", [args.prompt], allow_empty=True)
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

    at_least("--top", args.top, 1)
    utf8_texts("text", args.text)
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
    s.add_argument("--overwrite", action="store_true",
                   help="train anew into a folder that holds a run: the old run is moved aside (DIR.old-<time>)")
    s.add_argument("--force", action="store_true", help="train even when the memory estimate exceeds the memory free")
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
    s.add_argument("--beam", type=int, help="beam size; 1 = greedy; at most 64 (memory grows with beam x batch); "
                   "default: the run's data.beam")
    s.add_argument("--length-penalty", type=float, help="GNMT's alpha; default: the run's data.length_penalty")
    s.add_argument("--max-len-ratio", type=float, help="longest output = ratio x source length + 10; "
                   "default: the run's data.max_len_ratio")
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
    budget.add_argument("--budgets-flops", metavar="F1,F2,F3",
                        help="3 or more FLOP budgets: a scaling curve per variant, each budget its own full schedule")
    s.add_argument("--seeds", type=int, default=None, help="seeds per variant (default: the spec's, else 3)")
    s.add_argument("--tune", choices=["lr"], help="tune each variant's learning rate (a log-spaced sweep per budget)")
    s.add_argument("--isoflop", metavar="KEY=V1,V2,V3",
                   help="model sizes tried within each budget (the compute-optimal size)")
    s.add_argument("--baseline", help="the variant the others are tested against (default: the first)")
    s.add_argument("--quick", action="store_true", help="the study's smaller version (its quick: section)")
    s.add_argument("--out", help="comparison folder (default runs/compare-<name>)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a base config value")
    runs = s.add_argument_group("where the runs go (default: one after another in this process)")
    runs.add_argument("--workers", type=int, help="a local pool of N processes, cores/N threads each")
    runs.add_argument("--ray", metavar="auto|HOST:PORT", help="a Ray cluster (pip install 'archlab[ray]')")
    runs.add_argument("--cpus-per-run", type=int, help="Ray: CPUs (and torch threads) per run (default: the "
                      "recipe's train.threads, else 1)")
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
        print(f"archlab {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def one_line(e: BaseException) -> str:
    """An error as one line: a library's multi-line message joined, an OSError as 'what: path'."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.filename}: {e.strerror}"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__
