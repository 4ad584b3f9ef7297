"""Image classification end to end: real learning on Fashion-MNIST, predict on image files (good and
corrupt), the ViT recipe, and the digits fallback when Fashion-MNIST is absent."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from archlab import cli
from archlab.config import ConfigError
from archlab.data import images
from archlab.runs import load_run, train_run
from archlab.tasks.image_classification import ImageClassification, attention_rollout
from archlab.tasks.run import load_run_config

from conftest import require_path

FMNIST = "/usr/share/datasets/fashion-mnist"
SMALL = ["data.train_subset=2000", "data.test_subset=1000", "data.valid_frac=0.02", "train.threads=2", "train.log_every=1"]


def train(tmp_path, config, name, overrides):
    run_dir = tmp_path / name
    metrics = train_run(load_run_config(config, overrides), run_dir, quiet=True)
    return run_dir, metrics


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """The article's seed-cnn recipe, one epoch on 2,000 real training images (62 steps of 32)."""
    require_path(FMNIST, "dataset-fashion-mnist")
    return train(tmp_path_factory.mktemp("seed"), "configs/fashion_mnist_seed_cnn.yaml", "seed",
                 SMALL + ["train.epochs=1", "train.batch_size=32"])


def test_seed_cnn_learns_fashion_mnist(seed_run):
    run_dir, m = seed_run
    assert m["dataset"] == "fashion-mnist" and m["data_source"] == FMNIST
    assert m["parameters"] == 93_322 and m["steps"] == 62 and m["test_examples"] == 1000
    assert m["test_accuracy"] > 0.6  # chance is 0.1; one short epoch gets ~0.70
    # per-class accuracies weighted by class counts give back the overall accuracy
    counts = torch.bincount(images.load_idx_dataset("fashion-mnist", FMNIST).test_y[:1000], minlength=10)
    per_class = torch.tensor(list(m["per_class_accuracy"].values()))
    assert abs(float((per_class * counts).sum() / counts.sum()) - m["test_accuracy"]) < 1e-6
    for plot in ["confusion_matrix", "filters", "misclassified", "feature_maps_stage1", "feature_maps_stage3"]:
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 5000, plot
    report = (run_dir / "report.md").read_text()
    assert "fashion-mnist from /usr/share/datasets/fashion-mnist" in report and "| Ankle boot |" in report


WHITEN_STAGES = ("model.stages=[{type: whiten, kernel: 3, padding: 1, channels: 18, pool: max}, "
                 "{type: residual, channels: 32, blocks: 1, pool: max}]")


def test_a_whiten_stage_is_fitted_to_the_training_images_kept_in_the_checkpoint_and_learns(tmp_path):
    require_path(FMNIST, "dataset-fashion-mnist")
    overrides = SMALL + [WHITEN_STAGES, "train.epochs=3", "train.batch_size=64", "data.tta=false"]
    task = ImageClassification(load_run_config("configs/fashion_mnist_best.yaml", overrides))
    task.prepare()
    whitening = task.build_model().stages[0][0]
    # its filters turn the training images' 3x3 patches into decorrelated unit-variance features
    patches = task.train_inputs[:500].unfold(2, 3, 1).unfold(3, 3, 1).reshape(-1, 9)
    features = patches @ whitening.weight[:9].reshape(9, 9).T
    assert torch.allclose(features.T @ features / len(features), torch.eye(9), atol=0.05)
    run_dir, m = train(tmp_path, "configs/fashion_mnist_best.yaml", "whiten", overrides)
    assert m["test_accuracy"] > 0.6  # chance is 0.1; 93 steps get ~0.72
    _, model, _ = load_run(run_dir)
    assert torch.equal(model.stages[0][0].weight, whitening.weight)  # the fitted filters are in the checkpoint
    for stages, error in (
            (["{type: whiten, kernel: 3, channels: 16}"], "channels must be 2 x in_channels x kernel² = 18"),
            (["{channels: 8}", "{type: whiten, kernel: 2, channels: 8}"], "stages\\[1\\]: a whiten stage .* first stage")):
        with pytest.raises(ConfigError, match=error):
            load_run_config("configs/fashion_mnist_best.yaml", [f"model.stages=[{', '.join(stages)}]"])


def test_collate_is_the_normalised_training_image(tmp_path):
    require_path(FMNIST, "dataset-fashion-mnist")
    task = ImageClassification(load_run_config("configs/fashion_mnist_seed_cnn.yaml", ["data.train_subset=100"]))
    task.prepare()
    x, y = task.splits["train"]
    batch = task.collate([3, 7], torch.Generator(), torch.device("cpu"))
    assert torch.equal(batch["inputs"], task.to_input(x[[3, 7]], torch.device("cpu")))
    assert torch.equal(batch["targets"], y[[3, 7]])
    assert abs(batch["inputs"].mean()) < 1 and task.train_inputs.shape == (100, 1, 28, 28)


def test_alternate_flip_mirrors_each_image_in_every_other_epoch():
    require_path(FMNIST, "dataset-fashion-mnist")
    flips = ["data.augment={hflip: true, alternate_flip: true}", "data.tta=false"]
    task = ImageClassification(load_run_config("configs/fashion_mnist_seed_cnn.yaml", ["data.train_subset=200"] + flips))
    task.prepare()
    plans = [dict(pair for batch in task.epoch_plan(epoch, 50, 0) for pair in batch) for epoch in range(3)]
    assert plans[0].keys() == plans[1].keys() == set(range(200))  # a shuffle of every image, with a flag each
    assert all(plans[0][i] != plans[1][i] and plans[0][i] == plans[2][i] for i in range(200))
    assert 70 < sum(plans[0].values()) < 130  # which epochs an image is mirrored in: a coin per image
    batch = task.epoch_plan(1, 50, 0)[0]
    inputs = task.collate(batch, torch.Generator(), torch.device("cpu"))["inputs"]
    for (i, mirrored), x in zip(batch, inputs):
        assert torch.equal(x, task.train_inputs[i].flip(-1) if mirrored else task.train_inputs[i])
    with pytest.raises(ConfigError, match="alternate_flip alternates the mirror of hflip; set hflip: true"):
        load_run_config("configs/fashion_mnist_seed_cnn.yaml", ["data.augment={alternate_flip: true}", "data.tta=false"])


def test_tta_averages_the_probabilities_over_the_views(seed_run):
    run_dir, _ = seed_run
    task, model, _ = load_run(run_dir)
    task.data.tta, task.data.augment = True, images.Augment(crop_padding=2, hflip=True)
    task.load_assets(run_dir / "checkpoints" / "best")  # the black fill follows the run's normalisation
    x = task.to_input(images.load_idx_dataset("fashion-mnist", FMNIST).test_x[:16], torch.device("cpu"))
    with torch.no_grad():
        logits = task.eval_logits(model, x)
        shifted = torch.nn.functional.pad(x, (1, 1, 1, 1), value=task.augment.fill)
        views = [shifted[..., 1 + dy:29 + dy, 1 + dx:29 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        views += [v.flip(-1) for v in views]
        expected = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        plain = model(x).softmax(-1)
    assert torch.allclose(logits.softmax(-1), expected, atol=1e-5)
    assert not torch.allclose(expected, plain, atol=1e-3)  # the views do change the answer
    with pytest.raises(ConfigError, match="tta: .*set augment.crop_padding or augment.hflip"):  # seed-cnn has none
        ImageClassification(load_run_config("configs/fashion_mnist_seed_cnn.yaml", ["data.tta=true"]))


def test_predict_round_trips_a_saved_test_image(seed_run, tmp_path):
    run_dir, _ = seed_run
    task, model, _ = load_run(run_dir)
    test = images.load_idx_dataset("fashion-mnist", FMNIST)
    paths = [images.save_image_file(test.test_x[i], tmp_path / f"test{i}.png") for i in range(4)]
    results = task.predict_files(model, [str(p) for p in paths], top=3)
    with torch.no_grad():
        probs = model(task.to_input(test.test_x[:4], torch.device("cpu"))).softmax(-1)
    for (path, ranked), p in zip(results, probs):
        assert len(ranked) == 3 and ranked[0][1] >= ranked[1][1] >= ranked[2][1]
        assert ranked[0][0] == task.classes[int(p.argmax())]
        assert ranked[0][1] == pytest.approx(float(p.max()), abs=1e-5)  # the PNG is lossless: same pixels


def test_predict_cli_reports_a_corrupt_file_and_classifies_the_rest(seed_run, tmp_path, capsys):
    run_dir, _ = seed_run
    test = images.load_idx_dataset("fashion-mnist", FMNIST)
    good = [images.save_image_file(test.test_x[i], tmp_path / f"good{i}.png") for i in range(2)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good[0].read_bytes()[:60])  # a truncated PNG
    assert cli.main(["predict", str(run_dir), str(good[0]), str(bad), str(good[1]), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[1].startswith(f"{bad}: error:") and "not a readable image" in lines[1]
    for line, path in ((lines[0], good[0]), (lines[2], good[1])):
        assert line.startswith(f"{path}: ") and line.count("%") == 2
    # nothing readable at all is an error of the command
    assert cli.main(["predict", str(run_dir), str(bad), str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().out


def test_vit_recipe_trains(tmp_path):
    require_path(FMNIST, "dataset-fashion-mnist")
    run_dir, m = train(tmp_path, "configs/fashion_mnist_vit.yaml", "vit",
                       ["data.train_subset=2048", "data.test_subset=500", "data.valid_frac=0.02", "train.epochs=null",
                        "train.max_steps=60", "train.batch_size=64", "train.warmup_fraction=0.1", "train.threads=2"])
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert m["steps"] == 60 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2  # from ~2.3 (uniform over 10 classes) downwards
    assert m["test_accuracy"] > 0.3  # chance is 0.1; a ViT starts slower than a CNN (~0.38 here)
    assert (run_dir / "plots" / "attention_rollout.png").exists()


def test_attention_rollout_is_a_distribution():
    w = torch.rand(2, 3, 4, 5, 5).softmax(-1)  # layers, batch, heads, tokens, tokens
    flow = attention_rollout(list(w))
    assert flow.shape == (3, 5, 5) and torch.allclose(flow.sum(-1), torch.ones(3, 5))
    one = w[0].mean(1) + torch.eye(5)
    assert torch.allclose(attention_rollout([w[0]]), one / one.sum(-1, keepdim=True))


def test_digits_fallback_when_fashion_mnist_is_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("ARCHLAB_DATA", raising=False)
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", tmp_path / "no-fashion-mnist-here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir, m = train(tmp_path, "configs/fashion_mnist_seed_cnn.yaml", "fallback",
                           ["train.epochs=3", "train.threads=2"])
    assert any("falling back to scikit-learn digits" in str(w.message) for w in caught)
    assert m["dataset"] == "digits" and "fallback: fashion-mnist not found" in m["data_source"]
    assert m["test_accuracy"] > 0.8  # 8x8 digits upsampled to the model's 28x28
    assert "digits from scikit-learn digits (bundled); fallback" in (run_dir / "report.md").read_text()
    labels = json.loads((run_dir / "checkpoints" / "best" / "labels.json").read_text())
    assert labels["dataset"] == "digits" and labels["input_size"] == 8 and labels["image_size"] == 28
