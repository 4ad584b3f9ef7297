"""The structure lab end to end on a tiny character LM (about a second a run): paired seeds, tuned learning
rates, a full schedule per budget, scaling and IsoFLOP fits, failures that keep the finished runs, the
process pool, progress output, and one clear line for every bad input."""
import io
import json
import os
import signal
import socket
import threading
import time

import pytest
import yaml
from rich.console import Console
from test_compare import tiny_lm

from archlab import cli
from archlab.compare import RunsFailed, build_spec, compare
from archlab.errors import ConfigError
from archlab.lab.executors import Pool, available_cores
from archlab.lab.progress import StudyProgress
from archlab.lab.spec import Tune
from archlab.train.logging import read_metrics


def runs_of(out):
    return json.loads((out / "compare.json").read_text())["results"]


def test_seeds_are_paired_across_variants(tmp_path):
    """Seed k of every variant starts from the same weights and sees the same batches: at step 1 (before any
    update) two variants that differ only in their lr have the same loss, and two seeds do not."""
    spec = build_spec([str(tiny_lm(tmp_path, log_every=1))], vary=["train.lr=1e-3,3e-3"])
    spec.seeds = 2
    spec.set_budgets("steps", [3])
    out = tmp_path / "cmp"
    compare(spec, out, quiet=True)
    first = {(r["variant"], r["seed"]): read_metrics(r["run_dir"])[0] for r in runs_of(out)}
    assert all(rec["step"] == 1 and rec["split"] == "train" for rec in first.values())
    for seed in (0, 1):
        assert first[("tiny / 1e-3", seed)]["loss"] == first[("tiny / 3e-3", seed)]["loss"]
    assert first[("tiny / 1e-3", 0)]["loss"] != first[("tiny / 1e-3", 1)]["loss"]


def test_tuned_learning_rates(tmp_path):
    """A log-spaced sweep per variant; the best by the metric is kept, a best at the edge is flagged, the
    comparison's runs use it (the whole schedule scaled), and the seed-0 run is shared with the sweep."""
    spec = build_spec([str(tiny_lm(tmp_path, lr=1e-5, min_lr=1e-6))], vary=["model.position=learned,rope"])
    spec.seeds, spec.tune = 2, Tune(points=3, span=100.0)
    spec.set_budgets("steps", [8])
    out = tmp_path / "cmp"
    summary = compare(spec, out, quiet=True)
    assert len(summary["sweeps"]) == 2
    for sweep in summary["sweeps"]:
        assert sweep["lrs"] == pytest.approx([1e-6, 1e-5, 1e-4])
        best = min(range(3), key=lambda i: sweep["values"][i])
        assert sweep["chosen"] == sweep["lrs"][best] == pytest.approx(1e-4)  # 8 steps at 1e-5 barely move
        assert "highest lr of the sweep" in sweep["note"]
        row = next(r for r in summary["variants"] if r["variant"] == sweep["label"])
        assert row["lr"] == sweep["chosen"] and row["keys"][0] == sweep["keys"][best]  # shared, trained once
        job = json.loads((out / "runs" / row["keys"][1] / "job.json").read_text())
        assert job["run"]["train"]["lr"] == sweep["chosen"]
        assert job["run"]["train"]["min_lr"] == pytest.approx(1e-5)  # min_lr / lr kept at the recipe's 1/10
    assert len({r["key"] for r in summary["results"]}) == 2 * 3 + 2 * 1
    report = (out / "report.md").read_text()
    assert "## Learning-rate sweeps" in report and "the optimum may lie beyond it" in report
    assert (out / "lr_sweeps.png").stat().st_size > 10_000


def test_scaling_curve_with_a_full_schedule_per_budget(tmp_path):
    spec = build_spec([str(tiny_lm(tmp_path, log_every=1))])
    spec.seeds = 2
    spec.set_budgets("steps", [4, 8, 16])
    out = tmp_path / "cmp"
    summary = compare(spec, out, quiet=True)
    for r in summary["results"]:
        train = [rec for rec in read_metrics(r["run_dir"]) if rec["split"] == "train"]
        assert r["steps"] == train[-1]["step"] == r["budget"]
        assert train[-1]["lr"] == pytest.approx(3e-4, rel=1e-6)  # its own cosine schedule ends at min_lr
    fit = summary["scaling"]["tiny"]
    assert fit["kind"] in ("power", "loglinear") and fit["b"] > 0
    rows = sorted((r for r in summary["rows"]), key=lambda r: r["budget"])
    assert fit["flops"] == pytest.approx([r["train_flops"] for r in rows])
    assert fit["loss"] == pytest.approx([r["mean"] for r in rows])
    report = (out / "report.md").read_text()
    assert (out / "scaling.png").exists() and "## Scaling" in report
    assert "With 3 budgets the three-parameter law passes through" in report  # 3 means, 3 parameters: untested


def test_isoflop_sizes_share_each_budget(tmp_path):
    recipe = tiny_lm(tmp_path)
    spec = build_spec([str(recipe)])
    spec.seeds = 1
    spec.set_budgets("flops", [3e8])
    from archlab.lab.spec import parse_isoflop

    spec.isoflop = parse_isoflop("model.n_layers=1,2,3")
    out = tmp_path / "cmp"
    summary = compare(spec, out, quiet=True)
    runs = sorted(summary["results"], key=lambda r: r["size"])
    assert [r["size"] for r in runs] == ["n_layers=1", "n_layers=2", "n_layers=3"]
    assert [r["steps"] for r in runs] == [int(3e8 // r["flops_per_step"]) for r in runs]
    assert runs[0]["steps"] > runs[1]["steps"] > runs[2]["steps"]  # a bigger model gets fewer steps
    fit = summary["isoflop_fits"]["tiny"]["budgets"][0]
    assert len(fit["params"]) == 3 and fit["params"] == sorted(fit["params"])
    best = min(runs, key=lambda r: r["val_loss"])
    assert summary["variants"][0]["size"] == best["size"]  # the row shows each variant at its best size
    assert (out / "isoflop.png").exists() and "IsoFLOP" in (out / "report.md").read_text()


def test_a_failing_run_keeps_the_others_and_the_study_exits_2(tmp_path, capsys):
    recipe = tiny_lm(tmp_path)
    args = ["compare", str(recipe), "--vary", "train.metric=val_loss,val_nope", "--budget-steps", "4", "--seeds", "1",
            "--out", str(tmp_path / "cmp")]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("archlab compare: error: 1 run(s) failed: tiny / val_nope seed 0")
    assert "val_nope" in err[0] and "not among the evaluation metrics" in err[0]
    # one line per finished run on stdout (not a terminal: plain lines)
    assert "run   tiny / val_loss · seed 0 · steps 4 · lr 0.003: val_loss" in captured.out
    runs = {r["variant"]: r for r in runs_of(tmp_path / "cmp")}
    assert runs["tiny / val_loss"]["status"] == "ok" and runs["tiny / val_nope"]["status"] == "failed"
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Failed runs" in report and "| tiny / val_loss | " in report


def test_a_diverged_run_is_a_result_not_a_failure(tmp_path):
    spec = build_spec([str(tiny_lm(tmp_path))], vary=["train.lr=3e-3,1e30"])
    spec.seeds = 2
    spec.set_budgets("steps", [4])
    summary = compare(spec, tmp_path / "cmp", quiet=True)
    row = summary["variants"][1]
    assert row["diverged"] == 2 and row["n"] == 0 and row["verdict"] == "no paired runs"
    assert not summary["failed"]


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("extra,message", [
    (["--budget-flops", "0"], "every budget must be a positive finite number, got 0"),
    (["--budget-flops=-1e9"], "every budget must be a positive finite number, got -1e+09"),
    (["--budget-flops", "nan"], "every budget must be a positive finite number, got nan"),
    (["--budget-steps", "0"], "every budget must be a positive finite number"),
    (["--budgets-flops", "1e9,inf,3e9"], "every budget must be a positive finite number, got inf"),
    (["--budgets-flops", "1e9,2e9"], "--budgets-flops 1e9,2e9: a scaling curve needs at least 3 budgets, got 2"),
    (["--seeds", "0"], "seeds must be a whole number of at least 1, got 0"),
    (["--vary", "train.lr=1e-3"], "--vary train.lr=1e-3: a sweep of one value compares nothing"),
    (["--isoflop", "model.n_layers=1,2"], "isoflop model.n_layers: a parabola needs at least 3 sizes, got 2"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--workers", "2", "--ray", "auto"], "--workers and --ray are two executors: give one"),
    (["--ray", "PORT"], "no Ray cluster reachable there within"),
    (["--ray", "nowhere"], "expected auto or HOST:PORT"),
    (["--vary", "model.n_heads=2,3"], "variant 'tiny / 3' does not build: "),
    (["--baseline", "tiny / 9"], "baseline 'tiny / 9' is not a variant"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, closed_port, extra, message):
    extra = [f"127.0.0.1:{closed_port}" if e == "PORT" else e for e in extra]
    recipe = tiny_lm(tmp_path)
    budget = [] if any(e.startswith("--budget") for e in extra) else ["--budget-steps", "2"]
    t0 = time.time()
    code = cli.main(["compare", str(recipe), *budget, "--out", str(tmp_path / "cmp"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("archlab compare: error: ") and message in err[0], err[0]
    assert time.time() - t0 < 30  # an unreachable Ray address fails fast
    assert not (tmp_path / "cmp" / "runs").exists()  # nothing was trained


def test_spec_keys_for_the_new_axes(tmp_path):
    recipe = tiny_lm(tmp_path)
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump({
        "base": "tiny.yaml",
        "factors": {"pos": {"learned": {"model.position": "learned"}, "rope": {"model.position": "rope"}}},
        "budgets": {"flops": ["1.0e9", 3e9, 1e10]}, "seeds": 3, "tune": {"lr": {"points": 5, "span": 30}},
        "isoflop": {"model.n_layers": [1, 2, 3]}, "baseline": "rope",
        "quick": {"seeds": 2, "budgets": {"flops": [1e8, 3e8, 1e9]}, "tune": {"lr": {"points": 3}}}}))
    spec = build_spec([str(spec_file)])
    spec.validate()
    assert (spec.budget_kind, spec.budgets, spec.seeds, spec.baseline_name) == ("flops", [1e9, 3e9, 1e10], 3, "rope")
    assert (spec.tune.points, spec.tune.span, spec.tune.fraction) == (5, 30.0, 1.0)
    assert spec.tune.factors() == pytest.approx([30 ** -0.5, 30 ** -0.25, 1.0, 30 ** 0.25, 30 ** 0.5])
    assert spec.isoflop.levels() == {"n_layers=1": {"model.n_layers": 1}, "n_layers=2": {"model.n_layers": 2},
                                     "n_layers=3": {"model.n_layers": 3}}
    quick = build_spec([str(spec_file)], quick=True)
    assert (quick.seeds, quick.budgets, quick.tune.points) == (2, [1e8, 3e8, 1e9], 3)
    plain = build_spec([str(recipe)], quick=True)  # no quick: section: a generic smaller version
    assert plain.seeds == 2
    for bad, message in [({"tune": {"lr": {"points": 1}}}, "a sweep needs at least 2 learning rates"),
                         ({"tune": {"lr": {"span": 1}}}, "must be above 1"),
                         ({"tune": {"lr": {"fraction": 0}}}, "must be in (0, 1]"),
                         ({"tune": {"lr": {"pionts": 3}}}, "Did you mean 'points'"),
                         ({"budgets": {"flops": [1e9, 2e9]}}, "at least 3 budgets, got 2"),
                         ({"budgets": {"flops": 1e9}}, "must be a list"),
                         ({"budget": {"flops": 1e9}, "budgets": {"flops": [1, 2, 3]}}, "not both"),
                         ({"factors": {"pos": {"rope": {}}}}, "a sweep of one value compares nothing"),
                         ({"quick": {"bogus": 1}}, "unknown key 'bogus'")]:
        spec_file.write_text(yaml.safe_dump({"base": "tiny.yaml", **bad}))
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            build_spec([str(spec_file)], quick=True).validate()


def test_progress_prints_plain_lines_when_not_a_terminal():
    buf = io.StringIO()
    progress = StudyProgress(Console(file=buf, width=200), every=0.05)
    progress.add(3, 3e9)
    progress.finished(1e9, "run   a · seed 0: val_loss 2.0")
    time.sleep(0.3)
    progress.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "run   a · seed 0: val_loss 2.0"
    assert any(line.startswith("progress: 1/3 runs, 0:00:00 elapsed, ETA 0:00:0") for line in lines[1:])


def attempts(out, key):
    return [json.loads(line) for line in (out / "runs" / key / "attempts.jsonl").read_text().splitlines()]


def kill_one_run_mid_run(out, killed: list, timeout: float = 90.0) -> None:
    """SIGKILL the worker process of the first run seen mid-run (a checkpoint written, no result yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        for run in (out / "runs").glob("*") if (out / "runs").exists() else []:
            if (run / "attempts.jsonl").exists() and (run / "checkpoints" / "last").exists() \
                    and not (run / "result.json").exists():
                pid = attempts(out, run.name)[0]["pid"]
                assert pid != os.getpid()  # a worker, never this test
                os.kill(pid, signal.SIGKILL)
                killed.append(run.name)
                break
        time.sleep(0.01)


def test_process_pool_gives_the_in_process_numbers_even_when_a_worker_dies(tmp_path):
    """--workers: two spawned processes; one is killed mid-run, the pool is restarted, the unfinished runs
    resume from their checkpoints, and every number equals the in-process study's."""
    spec = build_spec([str(tiny_lm(tmp_path, eval_every=15))])
    spec.seeds = 2
    spec.set_budgets("steps", [120])
    here = compare(spec, tmp_path / "here", quiet=True)
    assert Pool(2).threads == max(1, available_cores() // 2)
    pool = Pool(2, threads=1)  # the recipe's thread count: the same arithmetic to the last bit
    out, killed = tmp_path / "pool", []
    killer = threading.Thread(target=kill_one_run_mid_run, args=(out, killed))
    killer.start()
    there = compare(spec, out, quiet=True, executor=pool)
    killer.join()
    assert there["variants"][0]["values"] == here["variants"][0]["values"] and not there["failed"]
    assert {r["key"] for r in there["results"]} == {r["key"] for r in here["results"]}
    assert len(killed) == 1 and len(attempts(out, killed[0])) == 2
    runs = [a for r in there["results"] for a in attempts(out, r["key"])]
    assert len({a["pid"] for a in runs}) >= 2 and {a["threads"] for a in runs} == {1}


def test_runs_failed_is_an_archlab_error():
    from archlab.errors import ArchlabError

    assert issubclass(RunsFailed, ArchlabError)


def test_a_run_keyed_by_an_older_archlab_is_found_not_repeated(tmp_path):
    """A run's key leaves out values at their defaults, so an option archlab gains later does not orphan finished
    runs; a folder an older archlab keyed from a config without that option is renamed to its key, not re-run."""
    def study():
        spec = build_spec([str(tiny_lm(tmp_path))])
        spec.seeds = 1
        spec.set_budgets("steps", [3])
        return spec

    out = tmp_path / "cmp"
    first = compare(study(), out, quiet=True)
    key = first["results"][0]["key"]
    job = json.loads((out / "runs" / key / "job.json").read_text())
    del job["run"]["train"]["ema_decay"]  # as an archlab before train.ema_decay planned it, under its own key
    old = out / "runs" / "0123456789abcdef"
    (out / "runs" / key).rename(old)
    (old / "job.json").write_text(json.dumps({**job, "key": old.name}))
    again = compare(study(), out, quiet=True)
    assert again["results"][0]["key"] == key and not old.exists()
    assert len(attempts(out, key)) == 1 and again["rows"][0]["mean"] == first["rows"][0]["mean"]
    assert json.loads((out / "runs" / key / "result.json").read_text())["key"] == key
