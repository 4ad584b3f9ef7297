"""Beam width and length penalty of trained translation models, chosen on the validation books.

For each run folder (a finished `archlab train` or benchmarks/translation.py run of the translation task), the
final weights (checkpoints/best) decode the whole validation split by beam search at each beam width x length
penalty of the grid (GNMT's penalty, ((5 + length) / 6) ** alpha). One setting for all the runs (the runs are
repeats of one recipe, and a recipe has one setting): the highest mean validation BLEU, the narrowest beam within
BEAM_TOLERANCE of it. It is then scored once on the test books, beside the runs' own setting (data.beam,
data.length_penalty): the test set plays no part in the choice. Decoding runs as the Trainer's final evaluation
does (the run's threads, bf16 autocast where the run's precision resolves to bf16), so the own setting reproduces
the run's test BLEU.

    flock /tmp/archlab-cpu.lock .venv/bin/python benchmarks/translation_decoding.py RUN_DIR [RUN_DIR ...] \
        --beams 4 8 --length-penalties 0.6 1.0 1.4

Each run's scores are kept in its folder (decoding.json, tied to the weights' bytes) and re-used, so a wider grid
decodes only the new settings. Writes benchmarks/results/translation_decoding.md (--out).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cpuinfo import cpu_name  # noqa: E402

from archlab.errors import ArchlabError  # noqa: E402
from archlab.runs import load_run  # noqa: E402
from archlab.tasks.run import load_run_config  # noqa: E402
from archlab.tasks.translation import bleu_chrf  # noqa: E402
from archlab.train.trainer import resolve_precision  # noqa: E402


def weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def score(task, model, split: str, beam: int, length_penalty: float) -> dict:
    sources = task.examples[split][0]
    t0 = time.perf_counter()
    ids = task.decode_ids(model, sources, beam, length_penalty)
    seconds = time.perf_counter() - t0
    hyps = [task.tokenizer.decode(r).strip() for r in ids]
    bleu, chrf = bleu_chrf(hyps, [t for _, t in task.text[split]])
    return {"bleu": bleu, "chrf": chrf, "sentences_per_s": len(sources) / seconds}


# a wider beam costs decoding time in proportion: it is chosen only when it beats the narrower ones' best on
# validation by more than this many BLEU (0.1 is below the spread of the runs)
BEAM_TOLERANCE = 0.1


class RunDecoder:
    """One finished run's final weights, decoding as its Trainer did; scores kept in the run's decoding.json."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.task, self.model, folder = load_run(run_dir, prefer="best")
        if self.task.name != "translation":
            raise SystemExit(f"{run_dir} is a {self.task.name} run; this benchmark decodes translation runs")
        self.task.prepare()
        train = load_run_config(run_dir / "config.yaml").train  # the checkpoint keeps the model and data, not these
        self.threads = train.threads or torch.get_num_threads()
        self.precision, _ = resolve_precision(train.precision, torch.device("cpu"))
        self.own = (self.task.data.beam, self.task.data.length_penalty)
        self.kept_path = run_dir / "decoding.json"
        digest = weights_digest(folder)
        kept = json.loads(self.kept_path.read_text()) if self.kept_path.exists() else {}
        self.kept = kept if kept.get("weights") == digest else {"weights": digest, "valid": {}, "test": {}}

    def measured(self, split: str, beam: int, lp: float) -> dict:
        key = f"{beam} {lp:g}"
        if key not in self.kept[split]:
            torch.set_num_threads(self.threads)
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                self.kept[split][key] = score(self.task, self.model, split, beam, lp)
            print(f"{self.run_dir.name}: {split} beam {beam}, length penalty {lp:g}: "
                  f"BLEU {self.kept[split][key]['bleu']:.2f}", flush=True)
            self.kept_path.write_text(json.dumps(self.kept, indent=1))
        return self.kept[split][key]


def choose(runs: list[RunDecoder], grid: list[tuple[int, float]]) -> tuple[tuple[int, float], dict]:
    """One setting for all the runs (a recipe has one): the highest mean validation BLEU, the narrowest beam
    within BEAM_TOLERANCE of it. -> (setting, {setting: mean validation BLEU})"""
    means = {s: statistics.mean(r.measured("valid", *s)["bleu"] for r in runs) for s in grid}
    best = max(means.values())
    return min((s for s in grid if means[s] >= best - BEAM_TOLERANCE), key=lambda s: (s[0], -means[s])), means


def write_result(path: Path, runs: list[RunDecoder], grid: list[tuple[int, float]]) -> None:
    own = runs[0].own
    chosen, means = choose(runs, grid)
    lines = [f"## Translation decoding: beam width and length penalty chosen on validation "
             f"({datetime.date.today().isoformat()})", "",
             f"{cpu_name()}, torch {torch.__version__}, {runs[0].threads} threads, {runs[0].precision}. "
             "`benchmarks/translation_decoding.py`: each run's final weights decode the whole validation split "
             f"({len(runs[0].task.text['valid']):,} verses) by beam search at each setting (GNMT's length penalty); "
             f"one setting for all the runs, the highest mean validation BLEU (the narrowest beam within "
             f"{BEAM_TOLERANCE:g} BLEU of it), is then scored once on the test books "
             f"({len(runs[0].task.text['test']):,} verses), beside the runs' own setting. sacreBLEU.", "",
             "| validation BLEU | " + " | ".join(r.run_dir.name for r in runs) + " | mean | sentences/s (median) |",
             "|---|" + "---:|" * (len(runs) + 2)]
    for s in grid:
        cells = [r.measured("valid", *s) for r in runs]
        mark = " (own)" if s == own else " (chosen)" if s == chosen else ""
        lines.append(f"| beam {s[0]}, length penalty {s[1]:g}{mark} | " + " | ".join(f"{c['bleu']:.2f}" for c in cells)
                     + f" | {means[s]:.2f} | {statistics.median(c['sentences_per_s'] for c in cells):.1f} |")
    lines += ["", f"| test books | beam {own[0]}, length penalty {own[1]:g}: BLEU (chrF) | beam {chosen[0]}, "
              f"length penalty {chosen[1]:g}: BLEU (chrF) | gain |", "|---|---:|---:|---:|"]
    for r in runs:
        a, b = r.measured("test", *own), r.measured("test", *chosen)
        lines.append(f"| {r.run_dir.name} | {a['bleu']:.2f} ({a['chrf']:.2f}) | {b['bleu']:.2f} ({b['chrf']:.2f}) | "
                     f"{b['bleu'] - a['bleu']:+.2f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="finished translation run folders")
    p.add_argument("--beams", type=int, nargs="+", default=[4])
    p.add_argument("--length-penalties", type=float, nargs="+", default=[0.6, 1.0, 1.4])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/translation_decoding.md"))
    args = p.parse_args()
    if any(b < 2 or b > 32 for b in args.beams):
        raise SystemExit("--beams: each beam width must be 2..32 (greedy decoding is the runs' own report)")
    if any(not 0 <= lp <= 3 for lp in args.length_penalties):
        raise SystemExit("--length-penalties: each must be in 0..3")
    try:
        runs = [RunDecoder(Path(r)) for r in args.runs]
    except ArchlabError as e:
        raise SystemExit(f"error: {e}") from None
    if len({r.own for r in runs}) > 1:
        raise SystemExit("the runs decode with different settings (data.beam, data.length_penalty): compare like runs")
    grid = [(b, lp) for b in args.beams for lp in args.length_penalties]
    if runs[0].own not in grid:
        grid.insert(0, runs[0].own)
    write_result(Path(args.out), runs, grid)


if __name__ == "__main__":
    main()
