"""The statistics of a study, in plain numpy/scipy.

- mean and 95% t-interval over seeds;
- a paired t-test of every variant against the baseline: seed k of every variant has the same initial
  seed and the same data order (train.seed sets both), so seed-to-seed noise cancels in the differences;
- the scaling law loss = a * C^-b + c over budgets (scipy's curve_fit with bounds; a log-linear fit,
  loss = a * C^-b, when that does not converge), with its uncertainty from a bootstrap over seeds (or the
  fit's covariance with one seed);
- the IsoFLOP parabola of loss against log(parameters) at one budget, whose minimum is the
  compute-optimal size (Hoffmann et al. 2022, approach 2).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

LEVEL = 0.95


def t_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is nan with fewer than 2 values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    half = stats.t.ppf((1 + LEVEL) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def paired_test(values: list[float], baseline: list[float]) -> dict[str, float]:
    """Variant minus baseline over paired seeds: mean difference, its 95% t-interval half-width and the
    two-sided p of the paired t-test (nan with fewer than 2 pairs; 1 when the differences are all equal to 0)."""
    from scipy import stats

    v, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    diff, half = t_interval(list(v - b))
    if len(v) < 2:
        p = math.nan
    elif np.all(v - b == (v - b)[0]):  # no spread: t is infinite (or 0/0); equal means -> p = 1
        p = 1.0 if (v - b)[0] == 0 else 0.0
    else:
        p = float(stats.ttest_rel(v, b).pvalue)
    return {"n": len(v), "diff": diff, "half": half, "p": p}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan): for many variants against one baseline."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def power_law(c: np.ndarray, a: float, b: float, floor: float) -> np.ndarray:
    return a * c ** (-b) + floor


def _fit_once(flops: np.ndarray, loss: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b, c) and their covariance for C in units of the smallest budget (so a is of the loss's size)."""
    from scipy.optimize import curve_fit

    x = flops / flops[0]
    if kind == "power":
        best = float(loss.min())
        if best <= 0:
            raise ValueError("a power law with an offset needs positive values")
        p0 = [max(float(loss[0]) - 0.5 * best, 1e-6), 0.3, 0.5 * best]
        with warnings.catch_warnings():  # three budgets, three parameters: no covariance, said below
            warnings.simplefilter("ignore")
            params, cov = curve_fit(power_law, x, loss, p0=p0, bounds=([0, 0, 0], [np.inf, 5, best]), maxfev=20000)
        if not np.all(np.isfinite(params)):
            raise RuntimeError("non-finite parameters")
        return params, cov
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    return np.array([math.exp(intercept), -slope, 0.0]), np.full((3, 3), np.nan)


def fit_scaling(flops: list[float], loss: list[float], per_seed: list[list[float]] | None = None,
                resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Fit loss = a * C^-b + c to (mean FLOPs, mean loss) per budget; per_seed[i][k] is seed k's value at
    budget i (nan for a seed that diverged), resampled over seeds for the parameters' uncertainty."""
    order = np.argsort(flops)
    c, y = np.asarray(flops, dtype=float)[order], np.asarray(loss, dtype=float)[order]
    kind, reason = "power", ""
    try:
        params, cov = _fit_once(c, y, "power")
    except (RuntimeError, ValueError) as e:
        kind, reason = "loglinear", str(e).splitlines()[0]
        params, cov = _fit_once(c, y, "loglinear")
    std = np.sqrt(np.diag(cov)) if len(c) > 3 and np.all(np.isfinite(cov)) else np.full(3, np.nan)
    source = "covariance of the fit" if np.all(np.isfinite(std[:2])) else ""
    seeds = np.asarray(per_seed, dtype=float)[order] if per_seed is not None else None
    if seeds is not None and seeds.shape[1] >= 2:
        rng, fits = np.random.default_rng(seed), []
        for _ in range(resamples):
            pick = rng.integers(0, seeds.shape[1], seeds.shape[1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a resample of diverged seeds only: mean of nothing
                means = np.nanmean(seeds[:, pick], axis=1)
            if not np.all(np.isfinite(means)):
                continue
            try:
                fits.append(_fit_once(c, means, kind)[0])
            except (RuntimeError, ValueError):
                continue
        if len(fits) >= 10:
            std, source = np.std(fits, axis=0, ddof=1), f"bootstrap over seeds ({len(fits)} resamples)"
    scale = c[0] ** params[1]  # a for C in FLOPs: a_x * (C / C0)^-b = (a_x * C0^b) * C^-b
    predict = float(power_law(np.array([10 * c[-1] / c[0]]), *params)[0])
    return {"kind": kind, "reason": reason, "a": float(params[0] * scale), "b": float(params[1]),
            "c": float(params[2]), "a_std": float(std[0] * scale), "b_std": float(std[1]), "c_std": float(std[2]),
            "std_source": source, "predict_10x": predict, "flops": c.tolist(), "loss": y.tolist()}


def fit_parabola(params: list[float], loss: list[float]) -> dict[str, Any]:
    """loss = A x^2 + B x + C with x = log10(parameters); its minimum is the compute-optimal size at this budget."""
    x, y = np.log10(np.asarray(params, dtype=float)), np.asarray(loss, dtype=float)
    A, B, C = np.polyfit(x, y, 2)
    best = float(10 ** x[int(np.argmin(y))])
    if A <= 0:
        return {"optimum": None, "best_measured": best, "coef": [A, B, C],
                "note": "no minimum (the curve bends down): the best size is at the edge of the sizes tried"}
    x_opt = -B / (2 * A)
    inside = bool(x.min() <= x_opt <= x.max())
    return {"optimum": float(10 ** x_opt), "loss_at_optimum": float(np.polyval([A, B, C], x_opt)),
            "best_measured": best, "coef": [A, B, C], "inside": inside,
            "note": "" if inside else "the minimum lies outside the sizes tried: extrapolated"}


def optimal_size_exponent(flops: list[float], sizes: list[float]) -> float | None:
    """a in N_opt ~ C^a (Chinchilla: ~0.5), from the optimum at each budget."""
    if len(flops) < 2:
        return None
    return float(np.polyfit(np.log(flops), np.log(sizes), 1)[0])
