"""The random-effects pooling across conditions (study/analysis/stats/meta.py): against
statsmodels' combine_effects, R metafor's published values, hand computations, and a
bounded simulation of its coverage."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats
from statsmodels.stats.meta_analysis import _fit_tau_iterative, combine_effects

from study.analysis.stats.meta import paule_mandel, posterior, prediction_interval, random_effects
from study.analysis.stats.meta_simulation import meta_coverage

# Kacker (2004)'s example as R's metafor pools it (rma(y, v, method = "PM" / "DL"), values
# recorded in statsmodels' tests/results/results_meta.py).
KACKER_Y = [61.0, 61.4, 62.21, 62.3, 62.34, 62.6, 62.7, 62.84, 65.9]
KACKER_V = [0.2025, 1.21, 0.09, 0.2025, 0.3844, 0.5625, 0.0676, 0.0225, 1.8225]


def cases(n_cases: int = 60):
    """Per-condition effects and variances as accuracy differences make them (effects of
    about 1 point, within-condition sd of the mean about 0.1 point), 3 to 30 conditions."""
    rng = np.random.default_rng(22)
    for i in range(n_cases):
        k = (3, 4, 5, 8, 12, 30)[i % 6]
        y = rng.normal(0.01, rng.choice([0.0005, 0.002, 0.006]), k)
        v = (rng.uniform(0.5, 2.0, k) * 1e-3) ** 2
        yield y, v


def test_pooled_estimates_equal_statsmodels_combine_effects_to_1e9() -> None:
    """On the scale of the within-condition standard error (where statsmodels' Paule-Mandel
    iteration converges) every pooled quantity agrees to a relative 1e-9."""
    checked = 0
    for y, v in cases():
        s = math.sqrt(float(np.mean(v)))
        ys, vs = y / s, v / s**2
        _, converged = _fit_tau_iterative(ys, vs, atol=1e-12, maxiter=1000)
        if not converged and paule_mandel(ys, vs) > 0:
            continue  # statsmodels' iteration overshot (see the next test)
        ours = random_effects(ys, vs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = combine_effects(ys, vs, method_re="pm", use_t=True, atol=1e-12, maxiter=1000)
        ci = theirs.conf_int(use_t=True)
        q_based_i2 = max(0.0, float(theirs.i2))  # statsmodels leaves 1 - df / Q unclipped
        expected = {
            "tau2": theirs.tau2,
            "mean": theirs.mean_effect_re,
            "se": theirs.sd_eff_w_re,
            "se_hksj": theirs.sd_eff_w_re_hksj,
            "ci_low": ci[3][0],
            "ci_high": ci[3][1],
            "q": theirs.q,
            "i2": q_based_i2,
        }
        got = {
            "tau2": ours.tau2,
            "mean": ours.mean,
            "se": ours.se,
            "se_hksj": ours.se_hksj,
            "ci_low": ours.ci95[0],
            "ci_high": ours.ci95[1],
            "q": ours.q,
            "i2": ours.i2,
        }
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
        assert ours.q_p == pytest.approx(theirs.test_homogeneity().pvalue, rel=1e-9)
        assert ours.weights == pytest.approx(list(theirs.weights_rel_re), rel=1e-9)
        checked += 1
    assert checked >= 50


def test_raw_accuracy_units_give_the_same_pooling_scaled() -> None:
    """Our pooling is scale-equivariant to 1e-12 (it solves on the standard-error scale);
    statsmodels' iteration in raw accuracy units often stops at tau^2 = 0 after an overshoot
    of its Newton step, where Q(0) > C - 1 says tau^2 > 0."""
    overshoots = 0
    for y, v in cases():
        raw = random_effects(y, v)
        s = 1 / 137.0
        scaled = random_effects(y / s, v / s**2)
        assert raw.tau2 == pytest.approx(scaled.tau2 * s**2, rel=1e-9, abs=1e-300)
        assert raw.mean == pytest.approx(scaled.mean * s, rel=1e-12)
        assert raw.ci95[0] == pytest.approx(scaled.ci95[0] * s, rel=1e-9)
        assert raw.p == pytest.approx(scaled.p, rel=1e-9, abs=1e-300)
        tau2, converged = _fit_tau_iterative(y, v, atol=1e-12, maxiter=1000)
        overshoots += tau2 == 0 and not converged and raw.tau2 > 0
    assert overshoots > 0  # why statsmodels is the reference, not the implementation


def test_kacker_example_matches_metafor() -> None:
    pm = random_effects(KACKER_Y, KACKER_V, method="pm")
    assert pm.tau2 == pytest.approx(0.705395309224248, rel=1e-8)  # metafor tol 1e-9
    assert pm.mean == pytest.approx(62.4076199113286, rel=1e-9)
    assert pm.se == pytest.approx(0.338030602684471, rel=1e-8)
    assert pm.q == pytest.approx(24.801897741835, rel=1e-9)
    assert pm.q_p == pytest.approx(0.00167935146372742, rel=1e-9)
    assert 100 * pm.i2 == pytest.approx(67.744403741711, rel=1e-9)  # metafor's Q-based I^2
    # at the Paule-Mandel root Q_gen = C - 1, so the HKSJ standard error is the usual one
    assert pm.se_hksj == pytest.approx(pm.se, rel=1e-9)
    dl = random_effects(KACKER_Y, KACKER_V, method="dl")
    assert dl.tau2 == pytest.approx(0.288049246973751, rel=1e-9)
    assert dl.mean == pytest.approx(62.3901386044504, rel=1e-9)
    # metafor's rma(method = "DL", test = "knha")
    assert dl.ci95 == pytest.approx((61.710383798052, 63.0698934108488), rel=1e-9)


def test_prediction_interval_is_the_hand_computation() -> None:
    y = [0.012, 0.004, 0.009, 0.015, 0.001]
    v = [2.0e-6, 1.0e-6, 3.0e-6, 1.5e-6, 2.5e-6]
    m = random_effects(y, v)
    # by hand: Paule-Mandel weights, then mu +- t_{C-2} sqrt(tau^2 + 1 / sum w)
    w = [1 / (vi + m.tau2) for vi in v]
    mu = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sum(w)
    assert sum(wi * (yi - mu) ** 2 for wi, yi in zip(w, y, strict=True)) == pytest.approx(4)
    half = stats.t.ppf(0.975, 3) * math.sqrt(m.tau2 + 1 / sum(w))
    assert m.prediction == pytest.approx((mu - half, mu + half), rel=1e-12)
    assert m.mean == pytest.approx(mu, rel=1e-12) and m.tau2 > 0
    assert prediction_interval(mu, 0.001, 1e-6, 2) is None  # a t with 0 df: none


def test_no_heterogeneity_gives_tau_zero_and_i2_zero() -> None:
    y = [0.010, 0.0101, 0.0099, 0.0100]
    v = [1e-6] * 4
    m = random_effects(y, v)
    assert m.tau2 == 0 and m.i2 == 0 and m.q < 3
    assert m.mean == pytest.approx(np.mean(y))  # equal variances: the plain mean


@pytest.mark.parametrize(
    ("y", "v", "words"),
    [
        ([0.01], [1e-6], "2 conditions or more"),
        ([0.01, 0.02], [1e-6, 0.0], "must be > 0"),
        ([0.01, math.nan], [1e-6, 1e-6], "finite"),
    ],
)
def test_refuses_what_cannot_be_pooled(y, v, words) -> None:
    with pytest.raises(ValueError, match=words):
        random_effects(y, v)


def test_coverage_of_pm_hksj_is_nominal_where_pooling_seeds_is_not() -> None:
    """Issue 22's setting (condition sd 0.3, seed sd 0.4, 10 seeds), small: the report's
    interval covers about 95%, one paired test over every seed about 65%."""
    for conditions in (4, 8):
        r = meta_coverage(conditions, 10, tau=0.3, sigma=0.4, reps=600, mu=0.2)
        lo, hi = r["pm_hksj"]["ci95"]
        assert lo <= 0.95 <= hi, r
        assert r["pooled_seeds"]["coverage"] < 0.75, r
        assert r["prediction"]["coverage"] > 0.9, r


def test_posterior_matches_a_direct_two_dimensional_integration() -> None:
    y = np.array([0.006, 0.001, 0.011])
    v = np.array([4e-6, 2e-6, 6e-6])
    m, scale = 0.003, 0.003
    b = posterior(y, v, min_effect=m, tau_scale=scale)

    def density(mu: float, tau: float) -> float:  # flat on mu, half-Cauchy on tau
        prior = 2 / (math.pi * scale * (1 + (tau / scale) ** 2))
        return prior * float(np.prod(stats.norm.pdf(y, mu, np.sqrt(v + tau**2))))

    def mass(lo: float, hi: float) -> float:
        return integrate.dblquad(density, 0, 0.2, lo, hi, epsabs=1e-14, epsrel=1e-9)[0]

    total = mass(-0.1, 0.1)
    assert b.p_above == pytest.approx(mass(m, 0.1) / total, abs=2e-4)
    assert b.p_below == pytest.approx(mass(-0.1, -m) / total, abs=2e-4)
    assert b.p_below + b.p_within + b.p_above == pytest.approx(1)
    assert b.new_ci95[0] < b.ci95[0] < b.mean < b.ci95[1] < b.new_ci95[1]


def test_posterior_with_a_tiny_tau_prior_is_the_fixed_effect_normal() -> None:
    y, v = np.array([0.004, 0.006]), np.array([1e-6, 1e-6])
    b = posterior(y, v, min_effect=0.003, tau_scale=1e-9)
    se = math.sqrt(1 / (2 / 1e-6))
    assert b.mean == pytest.approx(0.005, rel=1e-9)
    assert b.sd == pytest.approx(se, rel=1e-6)
    assert b.p_above == pytest.approx(stats.norm.sf((0.003 - 0.005) / se), rel=1e-6)
