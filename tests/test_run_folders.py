"""A run folder is a transaction: a new run never replaces an old one, nothing is written before everything is
checked, a refused resume changes nothing, one trainer at a time, no debris, interrupted saves cleaned up, and
resume falls back to the newest intact checkpoint. Every run here is the seconds-long digits recipe."""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_trainer import digits_run

from archlab import cli
from archlab.errors import CheckpointError, ConfigError, DataError
from archlab.runs import train_run
from archlab.tasks.run import load_run_config
from archlab.train import checkpoint as ckpt


@pytest.fixture(autouse=True)
def no_final_plots(monkeypatch):
    """The final test-set plots take seconds and are not what is tested here: only the metrics stay."""
    from archlab.tasks.image_classification import ImageClassification

    monkeypatch.setattr(ImageClassification, "finish", lambda self, model, run_dir: self.evaluate(model, "test"))
    monkeypatch.setattr("archlab.viz.plot_training_curves", lambda *args, **kwargs: None)


def train(run_dir: Path, resume: bool = False, overwrite: bool = False, quiet: bool = True, model=None,
          **train_kw) -> dict:
    recipe = digits_run(**{"max_steps": 2, **train_kw})
    if model is not None:
        recipe["model"] = model
    return train_run(load_run_config(recipe), run_dir, resume=resume, overwrite=overwrite, quiet=quiet)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path (the lock file aside)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_new_run_refuses_a_folder_holding_a_run_and_overwrite_moves_it_aside(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(ConfigError, match=r"holds a run already; continue it with --resume, or move it aside with "
                                          r"--overwrite"):
        train(run_dir, lr=3e-3)
    assert snapshot(run_dir) == before  # best/, last/, metrics and config.yaml all unchanged
    with pytest.raises(ConfigError, match="choose one"):
        train(run_dir, resume=True, overwrite=True)

    train(run_dir, overwrite=True, lr=3e-3)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before  # moved aside whole, never deleted
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 3e-3
    assert (run_dir / "checkpoints" / "best" / "model.safetensors").read_bytes() != \
        before["checkpoints/best/model.safetensors"]


def test_stale_assets_are_never_reused_by_a_new_run(tmp_path):
    """A run that failed after writing its labels or tokenizer: the next new run fits its own."""
    stray = {"classes": ["a", "b"], "mean": [0.0], "std": [1.0], "image_size": 28, "dataset": "digits"}
    loose = tmp_path / "loose"  # not a run: files left beside it, the folder is used
    loose.mkdir()
    (loose / "labels.json").write_text(json.dumps(stray))
    train(loose)
    digits = [str(i) for i in range(10)]
    assert json.loads((loose / "checkpoints" / "last" / "labels.json").read_text())["classes"] == digits

    failed = tmp_path / "failed"  # a checkpoint of a failed run with other classes: moved aside, not read
    (failed / "checkpoints" / "last").mkdir(parents=True)
    (failed / "checkpoints" / "last" / "labels.json").write_text(json.dumps(stray))
    with pytest.raises(ConfigError, match="holds a run already"):
        train(failed)
    train(failed, overwrite=True)
    assert json.loads((failed / "checkpoints" / "last" / "labels.json").read_text())["classes"] == digits


def test_a_refused_resume_leaves_the_folder_untouched(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir)
    before = snapshot(run_dir)
    # another task's recipe
    lm = {"task": "language_modeling", "model": {"family": "gpt", "d_model": 32, "n_heads": 2, "n_layers": 1,
                                                 "max_seq_len": 16}, "train": {"max_steps": 4}}
    with pytest.raises(ConfigError, match=r"checkpoint of task 'image_classification', the recipe's task is "
                                          r"'language_modeling'"):
        train_run(load_run_config(lm), run_dir, resume=True, quiet=True)
    # a trainer state holding code: refused, never loaded, and said so without PyTorch's advice
    state = run_dir / "checkpoints" / "last" / "trainer_state" / "state.pt"
    torch.save({"step": 2, "payload": Payload()}, state)
    before["checkpoints/last/trainer_state/state.pt"] = state.read_bytes()
    with pytest.raises(CheckpointError, match=r"state.pt refused: it contains code \(pickled objects\), which "
                                              r"archlab never loads; do not load it with weights_only=False") as e:
        train(run_dir, resume=True, max_steps=4)
    assert "will likely succeed" not in str(e.value)
    assert snapshot(run_dir) == before  # config.yaml included


class Payload:
    """An object pickled by reference: loading it would import and call code."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_second_trainer_in_the_folder_is_refused_by_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)  # another trainer, as the kernel sees it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(holder, b"4242\n")
    try:
        with pytest.raises(ConfigError, match=r"run is in use by another trainer \(process 4242\)"):
            train(run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written
    finally:
        os.close(holder)
    train(run_dir)  # the lock is gone with its holder
    holder = os.open(run_dir / ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and the finished trainer released it
    os.close(holder)


def test_an_edited_architecture_is_refused_on_resume(tmp_path):
    """Not only shapes: an activation changed in config.yaml keeps every shape, and is refused by name."""
    vit = {"family": "vit", "image_size": 28, "patch_size": 7, "d_model": 16, "n_heads": 2, "n_layers": 1,
           "d_ff": 32, "activation": "gelu"}
    run_dir = tmp_path / "vit"
    train(run_dir, model=vit)
    config = run_dir / "config.yaml"
    original = yaml.safe_load(config.read_text())
    for key, value, shown in (("activation", "relu", "'relu' in the recipe but 'gelu'"),
                              ("d_ff", 64, "64 in the recipe but 32")):
        edited = {**original, "model": {**original["model"], key: value}}
        config.write_text(yaml.safe_dump(edited))
        before = snapshot(run_dir)
        with pytest.raises(ConfigError, match=rf"--resume: model.{key} is {shown} in .*last/config.json"):
            train_run(load_run_config(config), run_dir, resume=True, quiet=True)
        assert snapshot(run_dir) == before


def test_a_failed_setup_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "digits.yaml"
    recipe.write_text(yaml.safe_dump(digits_run(max_steps=2)))
    for bad in (["--set", "data.classes=[a, b]"], ["--set", "train.batch_size=4096"]):
        assert cli.main(["train", str(recipe), "--quiet", *bad]) == 2
    assert not (tmp_path / "runs").exists()  # neither runs/digits nor runs/digits-2
    # a failure in the engine's own set-up: the folder it had just created is removed
    from archlab.train.trainer import Trainer

    def broken(self):
        raise DataError("the data went away")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_setup", broken)
        with pytest.raises(DataError):
            train(tmp_path / "runs" / "digits")
    assert not (tmp_path / "runs" / "digits").exists()
    assert cli.main(["train", str(recipe), "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["digits"]  # the real run is the first one
    capsys.readouterr()


def test_stale_temporary_folders_are_removed_on_start(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir)
    root = run_dir / "checkpoints"
    for name in (".tmp-last-99999", ".trash-best-99998"):  # a save killed mid-way
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"partial")
    capsys.readouterr()
    train(run_dir, resume=True, max_steps=3, quiet=False)
    out = capsys.readouterr().out
    assert "removed 2 temporary folder(s) of interrupted saves" in out and ".tmp-last-99999" in out
    assert not list(root.glob(".tmp-*")) and not list(root.glob(".trash-*"))


def test_resume_falls_back_to_the_newest_intact_step_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir, max_steps=3, save_every=1, keep_last=3)
    root = run_dir / "checkpoints"
    assert (root / "last" / "step.txt").read_text() == "3" and [p.name for p in ckpt.step_folders(root)] == \
        ["step-0000002", "step-0000001"]
    weights = root / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated by a crash or a full disk
    capsys.readouterr()
    metrics = train(run_dir, resume=True, max_steps=4, save_every=1, keep_last=3, quiet=False)
    out = "".join(capsys.readouterr().out.split())  # rich folds long lines, even within a path
    for said in ("cannot resume from last", "model.safetensors is corrupt or truncated", "resumed from",
                 "checkpoints/step-0000002 at step 2", "skipped 1 newer unreadable"):
        assert "".join(said.split()) in out, said
    assert metrics["steps"] == 4 and (root / "last" / "step.txt").read_text() == "4"
