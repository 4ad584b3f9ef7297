"""A stub task and a tiny model that train through the real engine with no archlab task or model: the
engine's whole contract (train/task.py and the model hooks of train/trainer.py) in 60 lines. Imported
by tests/test_engine.py, and run under torchrun by its DDP test."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class StubTask:
    """Three classes of 8-d points separated by a random linear map; a batch plan is a seeded permutation."""
    name, unit, headline = "stub", "examples", ("val_loss",)

    def __init__(self, n: int = 384):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x @ torch.randn(8, 3, generator=g)).argmax(-1)

    def epoch_plan(self, epoch, batch_size, seed):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]

    def collate(self, refs, generator, device):
        idx = torch.tensor(refs)
        return {"x": self.x[idx].to(device), "targets": self.y[idx].to(device)}

    def count(self, batch):
        return len(batch["targets"])

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]), batch["targets"], reduction="sum")

    def evaluate(self, model, split="valid", max_batches=None):
        return {"val_loss": F.cross_entropy(model(self.x), self.y).item(),
                "val_accuracy": (model(self.x).argmax(-1) == self.y).float().mean().item()}

    def finish(self, model, run_dir):
        return self.evaluate(model)

    def report(self, run_dir, metrics):
        return "## Stub\n"

    def save_assets(self, folder):
        (folder / "stub.json").write_text(json.dumps({"classes": 3}))

    def checkpoint_info(self):
        return {"task": "stub"}


@dataclass
class StubConfig:
    hidden: int = 16
    penalty: float = 0.0  # weight of the extra_loss hook: an L2 penalty on the first layer

    def to_dict(self):
        return {"family": "stub", **asdict(self)}


class StubModel(nn.Module):
    def __init__(self, cfg: StubConfig):
        super().__init__()
        self.config = cfg
        self.body = nn.Sequential(nn.Linear(8, cfg.hidden), nn.ReLU())
        self.head = nn.Linear(cfg.hidden, 3)

    def forward(self, x):
        return self.head(self.body(x))

    def extra_loss(self):
        return self.config.penalty * self.body[0].weight.pow(2).sum() if self.config.penalty else None

    def fsdp_units(self):
        return [self.body]


def train_stub(run_dir, resume=False, **train):
    from archlab.train.config import TrainConfig
    from archlab.train.trainer import Trainer

    penalty = train.pop("penalty", 0.0)
    cfg = TrainConfig(**{"max_steps": 12, "batch_size": 32, "lr": 0.05, "optimizer": "sgd", "log_every": 1,
                         "threads": 1, **train})
    return Trainer(StubTask(), lambda: StubModel(StubConfig(penalty=penalty)), cfg, Path(run_dir), resume=resume,
                   quiet=True).fit()


if __name__ == "__main__":  # torchrun entry: python -m torch.distributed.run ... engine_stub.py RUN_DIR STRATEGY STEPS
    train_stub(sys.argv[1], distributed=sys.argv[2], max_steps=int(sys.argv[3]))
