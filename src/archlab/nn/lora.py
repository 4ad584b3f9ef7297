"""LoRA (Hu et al., 2021): a frozen Linear W plus a trainable low-rank update, y = W x + b + (alpha/r) B A x.

B starts at zero, so an adapted model starts as exactly the base model. An adapted layer keeps its
name and its base tensors (``attn.qkv_proj.weight``/``.bias``) and adds ``.lora_A`` (r, in) and
``.lora_B`` (out, r): a base checkpoint loads into the adapted model unchanged, and the adapters
(with the task head) can be saved and loaded on their own, a file of ~1% of the model.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

ADAPTER_KEYS = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    """An nn.Linear that shares its weight and bias with the layer it adapts (nothing is copied)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # adopt the base's parameters instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)  # None for a bias-free layer
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and the paper's code
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # (x A^T) B^T: r (in + out) multiply-adds per token, never the (out, in) product B A
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(self.lora_dropout(x), self.lora_A),
                                                             self.lora_B) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear holding W + (alpha/r) B A (the base weight is updated in place)."""
        with torch.no_grad():
            self.weight += self.scaling * (self.lora_B @ self.lora_A)
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, targets, rank: int, alpha: float, dropout: float = 0.0,
               trainable_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Adapt every Linear named by `targets` (a last name such as "qkv_proj", or a dotted suffix),
    in place; freeze everything but the adapters and the parameters under `trainable_prefixes`
    (the task head). Returns the adapted layers' names."""
    if rank < 1:
        raise ValueError(f"LoRA rank (finetune.lora.rank) must be at least 1, got {rank}")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha (finetune.lora.alpha) must be positive, got {alpha}")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout (finetune.lora.dropout) must be in [0, 1), got {dropout}")
    if not targets:
        raise ValueError("finetune.lora.targets is empty: name the Linear layers to adapt, e.g. [qkv_proj, out_proj]")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)}
    chosen = [n for n in linears if _matches(n, targets) and not (n + ".").startswith(tuple(trainable_prefixes))]
    if not chosen:
        names = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(f"finetune.lora.targets {list(targets)} match no Linear layer of this model; "
                         f"its Linear layers are: {', '.join(names)}")
    for name in chosen:
        _set_child(model, name, LoRALinear(linears[name], rank, alpha, dropout))
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith(ADAPTER_KEYS) or name.startswith(tuple(trainable_prefixes))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain Linear layers back (in place): the
    model then has its original structure, for export or a plain checkpoint."""
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_child(model, name, m.merged())
    return model


def adapter_state(state: dict[str, Tensor], head_prefixes: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """The adapters and the task head out of a full state dict."""
    return {k: v for k, v in state.items() if k.endswith(ADAPTER_KEYS) or k.startswith(tuple(head_prefixes))}


def save_adapters(path: str | Path, state: dict[str, Tensor], targets, rank: int, alpha: float,
                  head_prefixes: tuple[str, ...] = ()) -> None:
    """Write adapters + head as safetensors, with what attach_adapters needs in the metadata."""
    tensors = {k: v.contiguous() for k, v in adapter_state(state, head_prefixes).items()}
    meta = {"format": "archlab-lora", "targets": ",".join(targets), "rank": str(rank), "alpha": repr(float(alpha)),
            "head": ",".join(head_prefixes)}
    save_file(tensors, str(path), metadata=meta)


def attach_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """A base model + an adapters file (save_adapters) = the fine-tuned model, in place."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no adapters file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "archlab-lora":
            raise ValueError(f"{path} is not an archlab LoRA adapters file (no 'archlab-lora' metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    head = tuple(p for p in meta["head"].split(",") if p)
    apply_lora(model, meta["targets"].split(","), int(meta["rank"]), float(meta["alpha"]), 0.0, head)
    own = model.state_dict()
    unknown = sorted(k for k in tensors if k not in own)
    absent = sorted(k for k in adapter_state(own, head) if k not in tensors)
    if unknown or absent:
        raise ValueError(f"{path} does not fit this model: unknown tensors {unknown[:5]}, missing {absent[:5]}")
    model.load_state_dict(tensors, strict=False)  # shape mismatches raise here
    return model
