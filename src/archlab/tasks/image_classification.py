"""Image classification (Fashion-MNIST, MNIST, or scikit-learn's digits) with a ConvNet or a ViT."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..config import at_least_one
from ..data import images as img
from ..errors import ConfigError, DataError
from .base import ClassificationTask, epoch_generator, model_device, read_labels

WHITEN_IMAGES = 5000  # training images a whitening layer's patch statistics come from (as in airbench)


@dataclass
class ImageDataConfig:
    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | digits
    data_dir: str | None = None
    fallback: bool = True  # use the bundled digits set when the IDX files are missing
    valid_frac: float = 0.1  # carved from the training set; the test set is only for the final evaluation
    classes: list[str] | None = None  # train on these classes only (e.g. to fine-tune onto a smaller task)
    train_subset: int | None = None  # first N training images only (tests, quick demos)
    test_subset: int | None = None
    augment: img.Augment = field(default_factory=img.Augment)
    tta: bool = False  # evaluate and predict on the mean probabilities over augment.views (shifts, mirror)
    eval_batch_size: int = 1000

    def validate(self) -> None:
        if self.dataset not in ("fashion-mnist", "mnist", "digits"):
            raise ConfigError(f"dataset: {self.dataset!r} is not one of 'fashion-mnist', 'mnist', 'digits'")
        at_least_one(self, ("train_subset", "test_subset", "eval_batch_size"))
        if not 0 < self.valid_frac < 1:
            raise ConfigError(f"valid_frac must be in (0, 1), got {self.valid_frac}")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ConfigError(f"classes: name two or more different classes, got {self.classes}")
        if self.tta and not (self.augment.crop_padding or self.augment.hflip):
            raise ConfigError("tta: test-time augmentation averages over the training augmentation's shifts and "
                              "mirror; set augment.crop_padding or augment.hflip, or tta: false")


class ImageClassification(ClassificationTask):
    name = "image_classification"
    DataConfig = ImageDataConfig
    headline = ("test_accuracy", "val_accuracy", "test_loss")
    kinds = ("image_classifier",)

    def __init__(self, run):
        super().__init__(run)
        self.size = run.model.image_size
        self.input_size = self.size
        self.mean: list[float] = []
        self.std: list[float] = []
        self.dataset_name = self.source = self.description = ""
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.augment = self.data.augment

    # --- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        d = self.data
        ds = img.load_image_dataset(d.dataset, d.data_dir, d.fallback)
        self.dataset_name, self.source, self.classes = ds.name, ds.source, list(d.classes or ds.classes)
        tx, ty, vx, vy = img.split_train_valid(ds.train_x, ds.train_y, d.valid_frac, seed=0)
        test_x, test_y = ds.test_x, ds.test_y
        if d.classes:
            unknown = [c for c in d.classes if c not in ds.classes]
            if unknown or len(set(d.classes)) < 2:
                raise ConfigError(f"data.classes: {unknown or d.classes} — give 2+ distinct classes of {ds.name}: "
                                  f"{', '.join(ds.classes)}")
            keep = [ds.classes.index(c) for c in d.classes]
            tx, ty = _only(tx, ty, keep)
            vx, vy = _only(vx, vy, keep)
            test_x, test_y = _only(test_x, test_y, keep)
        if d.train_subset:
            tx, ty = tx[: d.train_subset], ty[: d.train_subset]
        if d.test_subset:
            test_x, test_y = test_x[: d.test_subset], test_y[: d.test_subset]
        self.input_size = ds.train_x.shape[-1]
        self.splits = {"train": (tx, ty), "valid": (vx, vy), "test": (test_x, test_y)}
        if not self.mean:  # a checkpoint's normalisation is kept: its features were learned under it
            mean, std = img.channel_stats(tx)
            self.mean, self.std = list(mean), list(std)
        # normalised and resized once, not per step: a batch is then one gather (+ augmentation)
        self.train_inputs = self.to_input(tx, torch.device("cpu"))
        self.augment = d.augment.with_fill(tuple(self.mean), tuple(self.std))
        self.description = (f"{ds.name} from {ds.source}: {len(ty)} training, {len(vy)} validation (held out of "
                            f"the training set), {len(test_y)} test images, {len(self.classes)} classes")

    def build_model(self) -> nn.Module:
        """The model; a fresh one (not from a checkpoint) has what its layers compute from the training images
        set here (a whiten stage's filters, from the first WHITEN_IMAGES images)."""
        model = super().build_model()
        if self.pretrained is None and hasattr(model, "fit_to_data"):
            model.fit_to_data(self.train_inputs[:WHITEN_IMAGES])
        return model

    def head_prefixes(self) -> tuple[str, ...]:
        return ("head.",)

    def classifier_prefix(self, model_cfg) -> str:
        """The head's last Linear: a CNN's head is [Linear, ReLU, Dropout] per hidden layer, then the classifier."""
        return f"head.{3 * len(model_cfg.hidden)}." if model_cfg.family == "cnn" else "head."

    def to_input(self, x_uint8: Tensor, device: torch.device) -> Tensor:
        """uint8 (N, C, h, w) -> normalised float (N, C, S, S) at the model's size (digits are 8x8)."""
        x = img.normalize(x_uint8.to(device), tuple(self.mean), tuple(self.std))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def epoch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]] | list[list[tuple[int, bool]]]:
        """Shuffled full batches of image indices; with augment.alternate_flip, (index, mirrored) pairs: an image
        is mirrored in the epochs of one parity, which one a coin per image (drawn once per seed)."""
        n = len(self.splits["train"][1])
        order = torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()
        if self.augment.hflip and self.augment.alternate_flip:
            first = torch.rand(n, generator=epoch_generator(seed, -1)) < 0.5
            mirrored = (first ^ bool(epoch % 2)).tolist()
            order = [(i, mirrored[i]) for i in order]
        return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]  # full batches only

    def collate(self, refs: list[int] | list[tuple[int, bool]], generator: torch.Generator,
                device: torch.device) -> dict[str, Tensor]:
        """refs: image indices, or (index, mirrored) pairs from an alternate_flip plan."""
        mirror = None
        if refs and isinstance(refs[0], tuple):
            refs, mirror = zip(*refs)
            mirror = torch.tensor(mirror)
        idx = torch.tensor(refs)
        inputs = self.train_inputs[idx]
        if self.augment.enabled:
            inputs = self.augment(inputs, generator, mirror)
        return {"inputs": inputs.to(device), "targets": self.splits["train"][1][idx].to(device)}

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return model(batch["inputs"])

    def eval_logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """float32 logits of normalised images; with tta, the log of the mean probabilities over the views
        (all views in one forward pass; log-sum-exp so that a confident view cannot underflow to log 0)."""
        if not self.data.tta:
            return model(x).float()
        views = self.augment.views(x)
        log_probs = model(torch.cat(views)).float().log_softmax(-1).view(len(views), len(x), -1)
        return log_probs.logsumexp(0) - math.log(len(views))

    # --- evaluation ------------------------------------------------------------------------------
    def predict_split(self, model: nn.Module, split: str, max_batches: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(float32 logits, labels, uint8 images) of a split's first max_batches evaluation batches."""
        x, y = self.splits[split]
        device = model_device(model)
        bs = self.data.eval_batch_size
        n = len(y) if max_batches is None else min(len(y), max_batches * bs)
        logits = torch.cat([self.eval_logits(model, self.to_input(x[i:i + bs], device)).cpu() for i in range(0, n, bs)])
        return logits, y[:n], x[:n]

    def evaluate(self, model: nn.Module, split: str = "valid", max_batches: int | None = None) -> dict[str, float]:
        logits, y, _ = self.predict_split(model, split, max_batches)
        return self.accuracy_metrics(logits, y, "val" if split == "valid" else split)

    def finish(self, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        from .. import viz

        val = self.evaluate(model, "valid")
        logits, y, x = self.predict_split(model, "test")
        pred = logits.argmax(-1)
        k = len(self.classes)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (y.numpy(), pred.numpy()), 1)
        per_class = {c: float(confusion[i, i] / max(1, confusion[i].sum())) for i, c in enumerate(self.classes)}
        accuracy = (pred == y).float().mean().item()
        plots = run_dir / "plots"
        viz.plot_confusion(confusion, self.classes, plots / "confusion_matrix.png",
                           f"{self.dataset_name} test set: confusion matrix (accuracy {accuracy:.2%})")
        wrong = torch.nonzero(pred != y).flatten()[:32]
        if len(wrong):
            probs = logits[wrong].softmax(-1).max(-1).values
            titles = [f"true {self.classes[int(y[i])]}\npred {self.classes[int(pred[i])]} {p:.0%}"
                      for i, p in zip(wrong, probs)]
            viz.plot_image_grid(x[wrong], titles, plots / "misclassified.png",
                                f"Misclassified test images (first {len(wrong)} of {int((pred != y).sum())})")
        self.plot_model(model, x[:8], [self.classes[int(c)] for c in y[:8]], plots)
        return {"test_accuracy": accuracy, "test_loss": F.cross_entropy(logits, y).item(), **val,
                "test_examples": len(y), "dataset": self.dataset_name, "data_source": self.source,
                "per_class_accuracy": per_class}

    def plot_model(self, model: nn.Module, examples: Tensor, labels: list[str], plots: Path) -> None:
        """First-layer filters; a ConvNet's feature maps after each stage for one test image, or a ViT's
        attention rollout on a few."""
        from .. import viz
        from ..models.cnn import ConvNet
        from ..models.vit import ViT

        # the first layer with conv filters (a Conv2d, or a whiten stage's fixed ones)
        first = next(m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), Tensor)
                     and m.weight.dim() == 4)
        w = first.detach().float()[:64, 0]  # (out, k, k), first input channel
        viz.plot_image_grid(w, [str(i) for i in range(len(w))], plots / "filters.png",
                            f"First-layer filters ({len(w)} of {len(first)}, {tuple(w.shape[1:])} kernels; "
                            f"red +, blue -)", cmap="RdBu_r", symmetric=True)
        device = model_device(model)
        inputs = self.to_input(examples, device)
        if isinstance(model, ConvNet):
            with torch.no_grad():
                maps = model.features(inputs[:1])
            for s, fmap in enumerate(maps):
                panels = [inputs[0, 0], *fmap[0, :15]]  # the input, then 15 channels
                viz.plot_image_grid(panels, ["input"] + [f"ch {i}" for i in range(len(panels) - 1)],
                                    plots / f"feature_maps_stage{s + 1}.png",
                                    f"Stage {s + 1} feature maps {tuple(fmap.shape[1:])} of a test {labels[0]}",
                                    cmap="viridis")
        elif isinstance(model, ViT):
            with torch.no_grad():
                model(inputs, need_weights=True)
            side = model.config.image_size // model.config.patch_size
            flow = attention_rollout(model.encoder.attention_weights())[:, 0, 1:]  # [CLS] <- patches, (B, side^2)
            viz.plot_image_heatmaps(inputs.cpu(), flow.reshape(-1, side, side), labels, plots / "attention_rollout.png",
                                    "ViT: what the [CLS] token attends to (attention rollout over all layers)")

    def report(self, run_dir: Path, metrics: dict[str, Any]) -> str:
        rows = ["## Data", "", self.description, "", "## Per-class test accuracy", "", "| class | accuracy |", "|---|---|"]
        rows += [f"| {c} | {a:.3f} |" for c, a in metrics.get("per_class_accuracy", {}).items()]
        return "\n".join(rows)

    # --- inference -------------------------------------------------------------------------------
    def save_assets(self, folder: Path) -> None:
        (folder / "labels.json").write_text(json.dumps(
            {"classes": self.classes, "mean": self.mean, "std": self.std, "image_size": self.size,
             "input_size": self.input_size, "dataset": self.dataset_name}, indent=2))

    def adopt(self, pretrained) -> None:
        """Start from an image checkpoint: keep its input normalisation (its classes may differ)."""
        super().adopt(pretrained)
        labels = pretrained.folder / "labels.json"
        if labels.is_file():
            info = json.loads(labels.read_text(encoding="utf-8"))
            self.mean, self.std = info["mean"], info["std"]

    def load_assets(self, folder: Path) -> None:
        info = read_labels(folder / "labels.json", ("classes", "mean", "std", "image_size", "dataset"), self.name)
        self.classes, self.mean, self.std = info["classes"], info["mean"], info["std"]
        self.size, self.dataset_name = info["image_size"], info["dataset"]
        self.input_size = info.get("input_size", self.size)
        self.augment = self.data.augment.with_fill(self.mean, self.std)  # for tta

    def predict_files(self, model: nn.Module, paths: list[str], top: int = 3) -> list[tuple[str, Any]]:
        """[(path, [(class, probability), ...]) or (path, error message)] — a bad file does not stop the rest."""
        images, errors = {}, {}
        for p in paths:
            try:  # at the training images' size, then resized by to_input exactly as they were
                images[p] = img.load_image_file(p, size=(self.input_size, self.input_size))
            except DataError as e:
                errors[p] = str(e)
        if images:
            device = model_device(model)
            with torch.no_grad():
                probs = self.eval_logits(model, self.to_input(torch.stack(list(images.values())), device)).softmax(-1).cpu()
            values, idx = probs.topk(min(top, len(self.classes)))
            ranked = {p: [(self.classes[int(i)], float(v)) for v, i in zip(values[n], idx[n])]
                      for n, p in enumerate(images)}
        return [(p, errors[p] if p in errors else ranked[p]) for p in paths]


def _only(x: Tensor, y: Tensor, keep: list[int]) -> tuple[Tensor, Tensor]:
    """The examples of the classes `keep`, relabelled 0..len(keep)-1 in that order."""
    rows = torch.isin(y, torch.tensor(keep))
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=y.dtype)
    relabel[torch.tensor(keep)] = torch.arange(len(keep), dtype=y.dtype)
    return x[rows], relabel[y[rows]]


def attention_rollout(weights: list[Tensor]) -> Tensor:
    """Abnar & Zuidema (2020): per layer, average the heads, add the residual (identity) and renormalise,
    then multiply through the layers. weights: per layer (B, H, T, T) -> (B, T, T) flow from each token."""
    flow = None
    for w in weights:
        a = w.float().mean(1)
        a = a + torch.eye(a.size(-1), device=a.device)
        a = a / a.sum(-1, keepdim=True)
        flow = a if flow is None else a @ flow
    return flow
