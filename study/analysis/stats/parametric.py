"""Moment-based statistics: the paired and Welch t tests, Hedges' factor, Shapiro-Wilk.

Each works on the values scaled by a power of two (``precision.exponent``), which is exact,
and scales the mean, sd and interval back: values near 1e200 have squares beyond float64,
and an sd computed on them directly overflows to infinity (t = 0, p = 1, an infinite
interval: a confident wrong answer). The t statistic, its p and d_z do not depend on the
scale. A result that is itself beyond float64 (a mean difference of 3e308) comes back
infinite, and the drivers refuse it with a message (see ``precision.require_finite``).

What they assume: the paired t, that the seed-wise differences are normal (or n large
enough for their mean to be); Welch's t, the same of each group's mean, variances free.
With strongly skewed differences both are anti-conservative at small n (docs/statistics.md).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from study.analysis.stats.precision import exponent


def _unscaled(x: float, k: int) -> float:
    """x * 2^k; infinite where that is beyond float64 (the drivers refuse it, by name)."""
    with np.errstate(over="ignore"):
        return float(np.ldexp(x, k))


@dataclass(frozen=True)
class TTest:
    """A t test of a mean difference: ``mean`` (A - B), ``t``, ``df``, two-sided ``p`` and
    the 95% interval ``ci95``; t, p and the interval are NaN when the data have no variance
    (scipy would give t = +-inf and p = 0, which no paper should report)."""

    mean: float
    t: float
    df: float
    p: float
    ci95: list[float]


def one_sample_t(d: np.ndarray) -> TTest:
    """Two-sided one-sample t test of mean(d) = 0 (the paired t on seed-wise differences;
    scipy.stats.ttest_1samp on d / 2^k, scaled back)."""
    d = np.asarray(d, dtype=float)
    k = exponent(d)
    scaled = np.ldexp(d, -k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_1samp(scaled, 0.0)
        ci = res.confidence_interval(0.95)
    return _result(res, ci, _unscaled(np.mean(scaled), k), k, defined=np.std(scaled) > 0)


def welch_t(a: np.ndarray, b: np.ndarray) -> TTest:
    """Two-sided Welch t test of mean(A) = mean(B) (scipy.stats.ttest_ind with unequal
    variances, on both groups divided by one power of two, scaled back)."""
    k = exponent(a, b)
    sa, sb = np.ldexp(np.asarray(a, float), -k), np.ldexp(np.asarray(b, float), -k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_ind(sa, sb, equal_var=False)
        ci = res.confidence_interval(0.95)
    mean = _unscaled(np.mean(sa) - np.mean(sb), k)
    return _result(res, ci, mean, k, defined=np.ptp(sa) > 0 or np.ptp(sb) > 0)


def _result(res: Any, ci: Any, mean: float, k: int, *, defined: bool) -> TTest:
    """scipy's t test result on data scaled by 2^-k, as a ``TTest`` in the data's units."""
    if not defined:
        return TTest(mean, math.nan, float(res.df), math.nan, [math.nan, math.nan])
    low, high = _unscaled(ci.low, k), _unscaled(ci.high, k)
    return TTest(mean, float(res.statistic), float(res.df), float(res.pvalue), [low, high])


def mean(x: np.ndarray) -> float:
    """The mean, summed on x / 2^k so that values near the float64 limit do not overflow."""
    k = exponent(x)
    return _unscaled(np.mean(np.ldexp(np.asarray(x, float), -k)), k)


def sd(x: np.ndarray) -> float:
    """The sample sd (ddof = 1), computed on x / 2^k: squares of 1e200 overflow."""
    k = exponent(x)
    return _unscaled(np.std(np.ldexp(np.asarray(x, float), -k), ddof=1), k)


def pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)), on scaled values."""
    k = exponent(a, b)
    sa, sb = np.ldexp(np.asarray(a, float), -k), np.ldexp(np.asarray(b, float), -k)
    dof = len(sa) + len(sb) - 2
    pooled = ((len(sa) - 1) * np.var(sa, ddof=1) + (len(sb) - 1) * np.var(sb, ddof=1)) / dof
    return _unscaled(math.sqrt(pooled), k)


def hedges_correction(df: float) -> float:
    """Hedges' small-sample factor J(df), exact gamma form (Hedges 1981).

    J = Gamma(df/2) / (sqrt(df/2) * Gamma((df-1)/2)); the common approximation
    1 - 3/(4 df - 1) is within 0.3% of it from df = 4 on. Undefined (NaN) for df <= 1:
    the gamma form gives J(1) = 0, which would print an effect of any size as g = 0.
    """
    if df <= 1:
        return math.nan
    return float(
        math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    )


def shapiro(x: np.ndarray) -> float | None:
    """Shapiro-Wilk p, None where it cannot be computed (n < 3 or constant data)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 3 or np.ptp(np.ldexp(x, -exponent(x))) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.shapiro(np.ldexp(x, -exponent(x))).pvalue)
