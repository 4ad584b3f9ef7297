"""What a study compares: variants (recipes x factor levels), seeds, budgets, learning-rate tuning, an
IsoFLOP size axis, the baseline, and its smaller `--quick` version. Plain data, checked here: every
mistake is one ConfigError line naming the key."""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import brief_repr, load_yaml, loads_yaml, parse_override, set_path, unknown_key_error
from ..errors import ConfigError

BUDGET_KINDS = ("flops", "seconds", "steps")
SWEEPABLE = ("seeds", "budget", "budgets", "tune", "isoflop", "extrapolation")
SPEC_KEYS = {"name", "base", "recipes", "set", "factors", "metric", "metric_mode", "baseline", "quick", *SWEEPABLE}
QUICK_KEYS = {"set", "factors", *SWEEPABLE}


@dataclass
class Variant:
    name: str
    run: dict[str, Any]  # a complete run config (plain data)


@dataclass
class Tune:
    """A log-spaced learning-rate sweep around the recipe's: `points` values whose largest is `span` times
    the smallest, each run at `fraction` of the budget."""
    points: int = 5
    span: float = 10.0
    fraction: float = 1.0

    def factors(self) -> list[float]:
        """Multipliers of the recipe's lr; the middle one is exactly 1 when `points` is odd."""
        return [self.span ** (i / (self.points - 1) - 0.5) for i in range(self.points)]


@dataclass
class IsoFLOP:
    """Model sizes tried within every budget: one config key and its values (model.n_layers: [2, 4, 6])."""
    key: str
    values: list[Any]

    def levels(self) -> dict[str, dict[str, Any]]:
        leaf = self.key.rsplit(".", 1)[-1]
        return {f"{leaf}={v}": {self.key: v} for v in self.values}


@dataclass
class Spec:
    name: str
    variants: list[Variant]
    seeds: int = 3
    budget_kind: str | None = None  # flops / seconds / steps; None: the recipes' own length
    budgets: list[float] = field(default_factory=list)
    metric: str | None = None  # default: the first recipe's train.metric
    metric_mode: str | None = None
    extrapolation: list[int] = field(default_factory=list)  # context multiples for language models
    tune: Tune | None = None
    isoflop: IsoFLOP | None = None
    baseline: str | None = None  # default: the first variant

    def set_budgets(self, kind: str, values: list[float]) -> None:
        self.budget_kind, self.budgets = kind, [float(v) for v in values]

    @property
    def baseline_name(self) -> str:
        return self.baseline or self.variants[0].name

    def validate(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ConfigError(f"seeds must be a whole number of at least 1, got {brief_repr(self.seeds)}")
        where = f"budget {self.budget_kind}"
        for b in self.budgets:
            if not math.isfinite(b) or b <= 0:
                raise ConfigError(f"{where}: every budget must be a positive finite number, got {b:g}")
        if len(set(self.budgets)) < len(self.budgets):
            raise ConfigError(f"{where}: the same budget is given twice ({', '.join(f'{b:g}' for b in self.budgets)})")
        if len(self.budgets) == 2:
            raise ConfigError(f"{where}: a scaling curve needs at least 3 budgets, got 2 "
                              f"({', '.join(f'{b:g}' for b in self.budgets)}); give one budget or three or more")
        if self.tune is not None:
            t = self.tune
            if isinstance(t.points, bool) or not isinstance(t.points, int) or t.points < 2:
                raise ConfigError(f"tune.lr.points={brief_repr(t.points)}: a sweep needs at least 2 learning rates")
            if not math.isfinite(t.span) or t.span <= 1:
                raise ConfigError(f"tune.lr.span={t.span:g} must be above 1 (the largest lr over the smallest)")
            if not 0 < t.fraction <= 1:
                raise ConfigError(f"tune.lr.fraction={t.fraction:g} must be in (0, 1] (a fraction of the budget)")
            if t.fraction < 1 and not self.budgets:
                raise ConfigError("tune.lr.fraction below 1 needs a budget (budget: or --budget-flops) to take it of")
        if self.isoflop is not None and len(self.isoflop.values) < 3:
            raise ConfigError(f"isoflop {self.isoflop.key}: a parabola needs at least 3 sizes, got "
                              f"{len(self.isoflop.values)} ({', '.join(map(str, self.isoflop.values))})")
        if self.isoflop is not None and len(set(map(str, self.isoflop.values))) < len(self.isoflop.values):
            raise ConfigError(f"isoflop {self.isoflop.key}: the same size is given twice")
        for f in self.extrapolation:
            if isinstance(f, bool) or not isinstance(f, int) or f < 1:
                raise ConfigError(f"extrapolation: context multiples must be whole numbers >= 1, got {brief_repr(f)}")
        names = [v.name for v in self.variants]
        if self.baseline is not None and self.baseline not in names:
            raise ConfigError(f"baseline {self.baseline!r} is not a variant; the variants are: {', '.join(names)}")


def apply_overrides(run: dict, overrides: dict[str, Any]) -> dict:
    run = copy.deepcopy(run)
    for key, value in overrides.items():
        set_path(run, key.split("."), value)
    return run


def split_values(text: str, option: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` -> (key, [values read as YAML])."""
    if "=" not in text:
        raise ConfigError(f"{option} expects key=v1,v2,..., got {brief_repr(text)}")
    key, raw = (part.strip() for part in text.split("=", 1))
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not key or not values:
        raise ConfigError(f"{option} {brief_repr(text)}: needs a key and at least one value")
    return key, [loads_yaml(v, f"{option} {key}") for v in values]


def factor_from_vary(text: str) -> tuple[str, dict[str, dict]]:
    """--vary model.position=rope,alibi -> ("model.position", {"rope": {...}, "alibi": {...}})."""
    key, values = split_values(text, "--vary")
    raw = [v.strip() for v in text.split("=", 1)[1].split(",") if v.strip()]
    if len(values) < 2:
        raise ConfigError(f"--vary {key}={raw[0]}: a sweep of one value compares nothing; "
                          f"give two or more values, or use --set {key}={raw[0]}")
    return key, {name: {key: v} for name, v in zip(raw, values)}


def parse_budgets(text: str, option: str = "--budgets-flops") -> list[float]:
    values = []
    for v in text.split(","):
        try:
            values.append(float(v))
        except ValueError:
            raise ConfigError(f"{option}: {brief_repr(v.strip())} is not a number") from None
    if len(values) < 3:
        raise ConfigError(f"{option} {text}: a scaling curve needs at least 3 budgets, got {len(values)} "
                          f"(use --budget-flops for one)")
    return values


def parse_isoflop(text: str) -> IsoFLOP:
    key, values = split_values(text, "--isoflop")
    return IsoFLOP(key, values)


def _number(value: Any, where: str) -> float:
    try:  # YAML 1.1 reads 2e12 (no dot) as a string
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {brief_repr(value)} is not a number") from None


def _budget_fields(data: dict, where: str) -> dict[str, Any]:
    if "budget" in data and "budgets" in data:
        raise ConfigError(f"{where}: give budget (one) or budgets (a list), not both")
    key = "budget" if "budget" in data else "budgets"
    spec = data[key]
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in BUDGET_KINDS:
        raise ConfigError(f"{where}: {key} must be one of {{flops: F}}, {{seconds: S}}, {{steps: N}}"
                          f"{' with a list' if key == 'budgets' else ''}; got {brief_repr(spec)}")
    kind, values = next(iter(spec.items()))
    if key == "budgets" and not isinstance(values, list):
        raise ConfigError(f"{where}: budgets.{kind} must be a list, got {brief_repr(values)}")
    values = values if key == "budgets" else [values]
    return {"budget_kind": kind, "budgets": [_number(v, f"{where}: {key}.{kind}") for v in values]}


def _tune(value: Any, where: str) -> Tune | None:
    if value is None or value is False:
        return None
    if value == "lr":
        return Tune()
    if not isinstance(value, dict) or set(value) != {"lr"}:
        raise ConfigError(f"{where}: tune must be `lr` or {{lr: {{points, span, fraction}}}}, got {brief_repr(value)}")
    lr = value["lr"]
    if lr is None or lr is True:
        return Tune()
    if not isinstance(lr, dict):
        raise ConfigError(f"{where}: tune.lr must map points/span/fraction to values, got {brief_repr(lr)}")
    for k in lr:
        if k not in ("points", "span", "fraction"):
            raise unknown_key_error(k, ["points", "span", "fraction"], f"{where}: tune.lr")
    return Tune(points=lr.get("points", 5), span=_number(lr.get("span", 10.0), f"{where}: tune.lr.span"),
                fraction=_number(lr.get("fraction", 1.0), f"{where}: tune.lr.fraction"))


def _isoflop(value: Any, where: str) -> IsoFLOP | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or not isinstance(next(iter(value.values())), list):
        raise ConfigError(f"{where}: isoflop must be one key and its sizes, e.g. {{model.n_layers: [2, 4, 6]}}; "
                          f"got {brief_repr(value)}")
    key, values = next(iter(value.items()))
    return IsoFLOP(str(key), list(values))


def _merge_quick(data: dict, where: str) -> dict:
    """The spec with its `quick:` section applied: its keys replace the spec's, `set` is merged into it."""
    quick = data.get("quick") or {}
    if not isinstance(quick, dict):
        raise ConfigError(f"{where}: quick must be a mapping of spec keys, got {brief_repr(quick)}")
    for k in quick:
        if k not in QUICK_KEYS:
            raise unknown_key_error(k, sorted(QUICK_KEYS), f"{where}: quick")
    if "budget" in quick or "budgets" in quick:  # the quick budget(s) replace whichever form the spec used
        data = {k: v for k, v in data.items() if k not in ("budget", "budgets")}
    return {**data, **quick, "set": {**(data.get("set") or {}), **(quick.get("set") or {})}}


def shrink(spec: Spec) -> None:
    """--quick for a spec without a quick: section: at most 2 seeds, a tenth of every budget, 3 learning rates."""
    spec.seeds = min(spec.seeds, 2)
    spec.budgets = [b / 10 for b in spec.budgets]
    if spec.tune is not None:
        spec.tune.points = min(spec.tune.points, 3)


def build_spec(configs: list[str], vary: list[str] | None = None, sets: list[str] | None = None,
               quick: bool = False) -> Spec:
    """From comparison specs (a mapping with `base` or `recipes`) and/or plain recipes (one variant each)."""
    variants_base: list[Variant] = []
    factors: dict[str, dict[str, dict]] = {}
    fields: dict[str, Any] = {}
    names, quick_given = [], False
    for c in configs:
        path = Path(c)
        data = load_yaml(path)
        if "base" not in data and "recipes" not in data:
            variants_base.append(Variant(path.stem, data))
            names.append(path.stem)
            continue
        for k in data:
            if k not in SPEC_KEYS:
                raise unknown_key_error(k, sorted(SPEC_KEYS), str(path))
        if quick and "quick" in data:
            data, quick_given = _merge_quick(data, str(path)), True
        recipes = [data["base"]] if "base" in data else list(data["recipes"])
        for r in recipes:
            rp = (path.parent / r).resolve()
            run = apply_overrides(load_yaml(rp), data.get("set") or {})
            variants_base.append(Variant(rp.stem if len(recipes) > 1 else "", run))
        for fname, levels in (data.get("factors") or {}).items():
            if not isinstance(levels, dict) or not levels:
                raise ConfigError(f"{path}: factors.{fname} must map level names to overrides")
            if len(levels) < 2:
                raise ConfigError(f"{path}: factors.{fname} has one level ({next(iter(levels))}); a sweep of one "
                                  f"value compares nothing: put it in set: instead")
            factors[fname] = {str(k): dict(v or {}) for k, v in levels.items()}
        plain = ("seeds", "metric", "metric_mode", "extrapolation", "baseline")
        fields.update({k: data[k] for k in plain if k in data})
        if "budget" in data or "budgets" in data:
            fields.update(_budget_fields(data, str(path)))
        if "tune" in data:
            fields["tune"] = _tune(data["tune"], str(path))
        if "isoflop" in data:
            fields["isoflop"] = _isoflop(data["isoflop"], str(path))
        names.append(data.get("name", path.stem))
    if not variants_base:
        raise ConfigError("compare needs at least one recipe or comparison spec")
    for text in vary or []:
        key, levels = factor_from_vary(text)
        factors[key] = levels
    overrides = {}
    for text in sets or []:
        p, v = parse_override(text)
        overrides[".".join(p)] = v
    variants = []
    for base in variants_base:
        for combo in itertools.product(*[list(levels.items()) for levels in factors.values()]) if factors else [()]:
            run = apply_overrides(base.run, overrides)
            parts = [base.name] if base.name else []
            for level_name, level_overrides in combo:
                run = apply_overrides(run, level_overrides)
                parts.append(level_name)
            variants.append(Variant(" / ".join(parts) or "base", run))
    if len({v.name for v in variants}) < len(variants):
        raise ConfigError("two variants have the same name; give the recipes or levels distinct names")
    spec = Spec(name="-".join(names), variants=variants, **fields)
    if quick and not quick_given:
        shrink(spec)
    return spec
