"""Every bad input the CLI can be given ends in ONE line on stderr, `archlab VERB: error: ...` (exit 2), or
`archlab VERB: warning: ...` for what it can still do; never a traceback. The CLI runs in-process (cli.main),
and once as a real `python -m archlab` to prove no traceback reaches the terminal."""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_trainer import SRC, digits_run

from archlab import cli
from archlab.runs import train_run
from archlab.tasks.run import load_run_config
from archlab.train import checkpoint as ckpt

NO_RUN = "no-such-run"  # argument checks come before a run is opened


def one_line(capsys, argv: list, verb: str, match: str, kind: str = "error", code: int = 2) -> str:
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith(f"archlab {verb}: {kind}: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert match in lines[0], lines[0]
    return captured.out


def fast_finish(m: pytest.MonkeyPatch) -> None:
    from archlab.tasks.image_classification import ImageClassification

    m.setattr(ImageClassification, "finish", lambda self, model, run_dir: self.evaluate(model, "test"))
    m.setattr("archlab.viz.plot_training_curves", lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def no_final_plots(monkeypatch):
    fast_finish(monkeypatch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished two-step digits run (read-only for the tests: they copy it)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as m:
        fast_finish(m)
        train_run(load_run_config(digits_run(max_steps=2)), run_dir, quiet=True)
    return run_dir


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(digits_run(max_steps=2)))
    return path


def copy_run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "copy"))


# --- values out of range: recipe and options -------------------------------------------------------

@pytest.mark.parametrize("setting, said", [
    ("train.max_steps=0", "max_steps must be at least 1, got 0"),
    ("train.max_steps=-5", "max_steps must be at least 1, got -5"),
    ("train.epochs=0", "epochs must be a positive, finite number, got 0.0"),
    ("train.epochs=.inf", "epochs must be a positive, finite number, got inf"),
    ("train.max_seconds=-1", "max_seconds must be a positive, finite number, got -1.0"),
    ("train.eval_every=-1", "eval_every must be at least 0, got -1"),
    ("train.save_every=-1", "save_every must be at least 0, got -1"),
    ("train.patience=-1", "patience must be at least 0, got -1"),
    ("train.warmup_steps=-1", "warmup_steps must be at least 0, got -1"),
    ("train.eval_batches=0", "eval_batches must be at least 1, got 0"),
    ("train.weight_decay=-0.1", "weight_decay must be >= 0 and finite, got -0.1"),
    ("train.warmup_fraction=1.5", "warmup_fraction must be in [0, 1), got 1.5"),
    ("train.min_lr=0.1", "min_lr must be in [0, lr=0.001], got 0.1"),
    ("train.grad_clip=-1", "grad_clip must be >= 0 and finite, got -1.0"),
    ("train.momentum=1", "momentum must be in [0, 1), got 1.0"),
    ("train.eps=0", "eps must be a positive, finite number, got 0.0"),
    ("train.betas=[0.9, 1.0]", "betas[1] must be in [0, 1), got 1.0"),
    ("train.threads=0", "threads must be at least 1, got 0"),
    ("train.keep_last=0", "keep_last must be at least 1, got 0"),
    ("train.lr=.inf", "lr must be a positive, finite number, got inf"),
    ("train.lr=.nan", "train.lr: expected a number, got nan"),
    ("data.valid_frac=1.0", "valid_frac must be in (0, 1), got 1.0"),
    ("data.eval_batch_size=0", "eval_batch_size must be at least 1, got 0"),
    ("data.train_subset=0", "train_subset must be at least 1, got 0"),
    ("data.classes=[a]", "classes: name two or more different classes"),
])
def test_recipe_values_out_of_range(capsys, recipe, setting, said):
    one_line(capsys, ["train", recipe, "--set", setting, "--quiet"], "train", said)


@pytest.mark.parametrize("task, data, said", [
    ("translation", {"beam": 100}, "beam must be at most 64, got 100 (beam search keeps beam x batch"),
    ("translation", {"test_sentences": 0}, "test_sentences must be at least 1, got 0"),
    ("translation", {"max_len_ratio": float("inf")}, "max_len_ratio must be a positive, finite number, got inf"),
    ("text_classification", {"vocab_size": 0}, "vocab_size must be at least 1, got 0"),
    ("language_modeling", {"steps_per_epoch": 0}, "steps_per_epoch must be at least 1, got 0"),
    ("language_modeling", {"valid_frac": 0}, "valid_frac must be in (0, 1), got 0.0"),
])
def test_data_values_out_of_range(capsys, tmp_path, task, data, said):
    model = {"translation": {"preset": "transformer-tiny"}, "language_modeling": {"preset": "gpt-baby"},
             "text_classification": {"preset": "gpt-baby"}}[task]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"task": task, "model": model, "data": data, "train": {"max_steps": 1}}))
    one_line(capsys, ["train", path], "train", said)


@pytest.mark.parametrize("argv, said", [
    (["generate", NO_RUN, "--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1"),
    (["generate", NO_RUN, "--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
    (["generate", NO_RUN, "--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["generate", NO_RUN, "--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    (["generate", NO_RUN, "--top-k", "0"], "--top-k must be at least 1 (or leave it out: no limit), got 0"),
    (["generate", NO_RUN, "--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["generate", NO_RUN, "--prompt", "caf\udce9"], "--prompt is not valid UTF-8 (byte 0xe9)"),
    (["predict", NO_RUN, "x.png", "--top", "0"], "--top must be at least 1, got 0"),
    (["predict", NO_RUN, "x.png", "--top", "-2"], "--top must be at least 1, got -2"),
    (["summary", "seed-cnn", "--batch", "-5"], "--batch must be at least 1, got -5"),
    (["translate", NO_RUN, "hola", "--beam", "100000"], "--beam must be at most 64, got 100000: beam search keeps "
                                                       "beam x batch hypotheses"),
    (["translate", NO_RUN, "hola", "--beam", "0"], "--beam must be at least 1, got 0"),
    (["translate", NO_RUN, "hola", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["translate", NO_RUN, "hola", "--max-len-ratio", "inf"], "--max-len-ratio must be a finite number > 0"),
    (["translate", NO_RUN, "hola \udcff"], "sentence 1 is not valid UTF-8 (byte 0xff)"),
    (["classify", NO_RUN, ""], "text 1 is empty"),
    (["classify", NO_RUN, "a text", "  \n"], "text 2 is empty"),
    (["classify", NO_RUN, "\udcff\udcfe"], "text 1 is not valid UTF-8 (byte 0xff)"),
    (["classify", NO_RUN, "a text", "--top", "0"], "--top must be at least 1, got 0"),
])
def test_options_out_of_range_and_bad_texts(capsys, argv, said):
    one_line(capsys, argv, argv[0], said)


def test_translate_output_to_a_folder(capsys, tmp_path):
    one_line(capsys, ["translate", NO_RUN, "hola", "--output", tmp_path], "translate",
             f"--output {tmp_path} is a folder; give the name of a file to write")


# --- files and folders -----------------------------------------------------------------------------

def test_a_folder_given_as_the_recipe(capsys, tmp_path):
    one_line(capsys, ["train", tmp_path], "train", f"{tmp_path}: is a directory, not a YAML file")


def test_a_folder_holding_a_run_and_a_folder_in_use(capsys, tmp_path, trained, recipe):
    run_dir = copy_run(trained, tmp_path)
    one_line(capsys, ["train", recipe, "--run-dir", run_dir], "train",
             "holds a run already; continue it with --resume, or move it aside with --overwrite")
    holder = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        one_line(capsys, ["train", recipe, "--run-dir", run_dir, "--resume"], "train", "is in use by another trainer")
    finally:
        os.close(holder)


@pytest.mark.parametrize("content, said", [
    ([1, 2], "is not an archlab checkpoint config (a mapping with a 'family')"),
    ({"task": "image_classification"}, "is not an archlab checkpoint config (a mapping with a 'family')"),
])
def test_checkpoint_config_json_not_a_config(capsys, tmp_path, trained, recipe, content, said):
    run_dir = copy_run(trained, tmp_path)
    for name in ("best", "last"):
        (run_dir / "checkpoints" / name / "config.json").write_text(json.dumps(content))
    one_line(capsys, ["eval", run_dir / "checkpoints" / "best"], "eval", said)
    one_line(capsys, ["summary", run_dir / "checkpoints" / "best"], "summary", said)
    one_line(capsys, ["train", recipe, "--run-dir", run_dir, "--resume"], "train", said)


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_trainer_state_holding_code_is_refused_by_name(capsys, tmp_path, trained, recipe):
    run_dir = copy_run(trained, tmp_path)
    torch.save({"step": 2, "payload": Payload()}, run_dir / "checkpoints" / "last" / "trainer_state" / "state.pt")
    one_line(capsys, ["train", recipe, "--run-dir", run_dir, "--resume"], "train",
             "state.pt refused: it contains code (pickled objects), which archlab never loads; do not load it with "
             "weights_only=False")


def test_a_read_only_run_folder(capsys, tmp_path, recipe, monkeypatch):
    # tests may run as root, which writes anywhere: the folder is made read-only for os.access
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != read_only and real_access(path, mode))
    one_line(capsys, ["train", recipe, "--run-dir", read_only / "run"], "train",
             f"{read_only} is not writable (read-only or not yours): cannot train into {read_only / 'run'}")
    assert list(read_only.iterdir()) == []


def test_a_full_disk_during_a_save(capsys, tmp_path, recipe, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_model", no_space)
    run_dir = tmp_path / "run"
    one_line(capsys, ["train", recipe, "--run-dir", run_dir, "--quiet"], "train",
             "(step 2) in " + str(run_dir / "checkpoints") + ": No space left on device; the checkpoints already "
             "there are unchanged")
    assert not list((run_dir / "checkpoints").iterdir())  # no half-written temporary folder left


def test_memory_estimate_refuses_or_warns_with_force(capsys, tmp_path, recipe, monkeypatch):
    monkeypatch.setattr("archlab.runs.available_memory", lambda device: 2 ** 20)
    one_line(capsys, ["train", recipe, "--run-dir", tmp_path / "run"], "train",
             "more than the 1.0 MiB available; make train.batch_size or the model smaller, or pass --force")
    assert not (tmp_path / "run").exists()
    out = one_line(capsys, ["train", recipe, "--run-dir", tmp_path / "run", "--force"], "train",
                   "more than the 1.0 MiB available; going on (--force)", kind="warning", code=0)
    assert out.startswith("memory estimate: 6.9 MiB to train on cpu") and (tmp_path / "run" / "metrics.json").exists()


def test_eval_of_nan_weights_warns_naming_the_checkpoint(capsys, tmp_path, trained):
    folder = Path(shutil.copytree(trained / "checkpoints" / "best", tmp_path / "nan"))
    weights = load_file(folder / "model.safetensors")
    first = sorted(weights)[0]
    weights[first].view(-1)[0] = math.nan
    save_file(weights, folder / "model.safetensors")
    out = one_line(capsys, ["eval", folder], "eval", f"checkpoint {folder}: 1 weight(s) are NaN or infinite; metric(s) "
                                                     f"test_loss are NaN or infinite", kind="warning", code=0)
    assert json.loads(out.split("\n", 1)[1])["test_loss"] != json.loads(out.split("\n", 1)[1])["test_loss"]  # nan


def test_no_traceback_from_a_real_process():
    """Undecodable bytes in argv, as a shell passes them: one line, exit 2."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "archlab", "classify", NO_RUN, b"caf\xe9"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == ["archlab classify: error: text 1 is not valid UTF-8 (byte 0xe9); pass UTF-8 text"]
