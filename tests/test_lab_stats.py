"""The lab's statistics against scipy's own and against data with a known answer."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from archlab.lab import stats


def test_t_interval_is_scipys():
    x = [2.31, 2.25, 2.40, 2.28]
    mean, half = stats.t_interval(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert mean == pytest.approx(np.mean(x), abs=1e-12)
    assert (mean - half, mean + half) == pytest.approx((lo, hi), abs=1e-12)
    assert stats.t_interval([1.0])[0] == 1.0 and math.isnan(stats.t_interval([1.0])[1])


def test_paired_test_is_ttest_rel_and_pairing_removes_seed_noise():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.3, 5)  # large seed-to-seed noise shared by both variants
    base = 2.0 + seed_effect
    variant = 1.95 + seed_effect + rng.normal(0, 0.005, 5)  # 0.05 better, every seed
    pair = stats.paired_test(list(variant), list(base))
    assert pair["p"] == pytest.approx(sps.ttest_rel(variant, base).pvalue, rel=1e-12)
    assert pair["p"] < 0.001 and pair["diff"] == pytest.approx(np.mean(variant - base), abs=1e-12)
    assert pair["diff"] + pair["half"] < 0  # the interval of the difference excludes 0
    # unpaired, the same numbers are indistinguishable: the seed noise swamps the effect
    assert sps.ttest_ind(variant, base).pvalue > 0.5
    same = stats.paired_test(list(base + rng.normal(0, 0.01, 5)), list(base))
    assert same["p"] >= 0.05 and same["diff"] - same["half"] < 0 < same["diff"] + same["half"]
    assert stats.paired_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0
    assert math.isnan(stats.paired_test([1.0], [2.0])["p"])


def test_holm():
    assert stats.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_power_law_fit_recovers_known_parameters_and_its_uncertainty_covers_them():
    rng = np.random.default_rng(1)
    flops = np.array([3e11, 1e12, 3e12, 1e13, 3e13])
    a, b, c = 2.0e3, 0.3, 1.2  # loss = a C^-b + c
    truth = a * flops ** -b + c
    per_seed = truth[:, None] + rng.normal(0, 0.003, (5, 4))
    fit = stats.fit_scaling(list(flops), list(per_seed.mean(1)), per_seed.tolist())
    assert fit["kind"] == "power" and fit["std_source"].startswith("bootstrap")
    assert fit["b"] == pytest.approx(b, abs=3 * fit["b_std"] + 0.02)
    assert fit["c"] == pytest.approx(c, abs=3 * fit["c_std"] + 0.02)
    assert fit["predict_10x"] == pytest.approx(a * (10 * flops[-1]) ** -b + c, abs=0.02)
    exact = stats.fit_scaling(list(flops), list(truth))  # no noise, one seed: the covariance gives the spread
    assert exact["b"] == pytest.approx(b, rel=1e-3) and exact["c"] == pytest.approx(c, rel=1e-3)
    assert exact["a"] == pytest.approx(a, rel=1e-2) and exact["std_source"] == "covariance of the fit"


def test_scaling_fit_falls_back_to_log_linear_and_says_so(monkeypatch):
    import scipy.optimize

    flops, loss = [1e10, 1e11, 1e12, 1e13], [4.0, 2.0, 1.0, 0.5]  # halves every decade: b = log10(2), c = 0
    assert stats.fit_scaling(flops, loss)["b"] == pytest.approx(math.log10(2), rel=1e-3)

    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: The maximum number of function evaluations is exceeded.")

    monkeypatch.setattr(scipy.optimize, "curve_fit", no_convergence)
    fit = stats.fit_scaling(flops, loss, [[x, x * 1.01] for x in loss])
    assert fit["kind"] == "loglinear" and "maximum number of function evaluations" in fit["reason"]
    assert fit["b"] == pytest.approx(math.log10(2), rel=1e-2) and fit["c"] == 0.0
    assert math.isfinite(fit["b_std"]) and fit["std_source"].startswith("bootstrap")


def test_isoflop_parabola_finds_the_optimum():
    n = [1e5, 3e5, 1e6, 3e6, 1e7]
    loss = [2.0 + 0.5 * (math.log10(x) - 6.2) ** 2 for x in n]
    fit = stats.fit_parabola(n, loss)
    assert fit["optimum"] == pytest.approx(10 ** 6.2, rel=1e-6) and fit["inside"]
    edge = stats.fit_parabola(n[:3], loss[:3])  # all on the falling side: the minimum lies beyond
    assert not edge["inside"] and "outside" in edge["note"]
    assert stats.fit_parabola(n, [-x for x in loss])["optimum"] is None
    assert stats.optimal_size_exponent([1e12, 1e13, 1e14], [1e6, 10 ** 6.5, 1e7]) == pytest.approx(0.5)
