"""Resampling: permutation tests of a mean difference and the BCa bootstrap interval.

Permutation tests (paired sign-flip, and independent samples) decide "as extreme as the
observed" on the data's own resolution (``precision``): where the values lie on a grid
(accuracies k/N, float32 or float64), in exact integer units of it; elsewhere, with a
tolerance that is the rounding of the values summed over the terms of the statistic. A
relative 1e-14 (scipy's permutation_test) is far below the rounding of float32 accuracies,
so sign patterns whose sum equals the observed one exactly were counted as less extreme
and p came out too small (the 8-seed example of issue 15: 0.03125 for an exact 14/256).

Every arrangement is enumerated up to ``EXACT_PERMUTATION_LIMIT`` of them (2^n sign
vectors for n pairs: n <= 16; C(n_a + n_b, n_a) splits: 9 + 9 seeds); above, a Monte Carlo
p = (count + 1) / (R + 1) per tail, whose standard error is reported. Two-sided p doubles
the smaller tail (scipy's convention), capped at 1.

What they assume: exchangeability under the null, i.e. for the sign-flip test a
difference as likely to be +d as -d (symmetry), for independent samples that the group
labels are exchangeable (equal distributions). They test the mean difference, but a
skewed difference with mean zero breaks the symmetry and the test is anti-conservative at
small n (docs/statistics.md).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy
from scipy import stats

from study.analysis.stats.precision import exponent, grid_units, rounding_tolerance

# Exact enumeration of the permutation distribution up to this many rearrangements
# (2^n sign vectors for paired data, C(n_a + n_b, n_a) label splits for unpaired data).
EXACT_PERMUTATION_LIMIT = 100_000
_SCIPY_VERSION = tuple(int(part) for part in scipy.__version__.split(".")[:2])
_RNG_KEYWORD = "rng" if _SCIPY_VERSION >= (1, 15) else "random_state"

SeedLike = int | np.integer | np.random.Generator | np.random.SeedSequence | None


def generator(seed: SeedLike) -> np.random.Generator:
    """The random generator ``seed`` stands for (a Generator is used as it is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class Permutation:
    """A permutation test's two-sided ``p``; ``method`` 'exact' or 'monte carlo' over
    ``arrangements`` sign vectors or splits; ``mc_se`` the Monte Carlo standard error of p
    (None when exact); ``resolution`` how ties with the observed statistic were decided."""

    p: float
    method: str
    arrangements: int
    mc_se: float | None
    resolution: str


@dataclass(frozen=True)
class _Terms:
    """The terms a permutation statistic sums: exact integers, or floats and the slack
    within which two sums of them are equal up to rounding."""

    x: np.ndarray
    slack_per_term: np.ndarray | None
    resolution: str
    scale: int

    @classmethod
    def of(cls, values: np.ndarray, tolerance: np.ndarray) -> _Terms:
        # Divided by a power of two (exact), so that no sum of them overflows.
        k = exponent(values)
        values, tolerance = np.ldexp(values, -k), np.ldexp(tolerance, -k)
        grid = grid_units(values, tolerance)
        if grid is not None:
            unit = float(np.ldexp(grid.unit, k))
            return cls(grid.units, None, f"exact, in integer multiples of {unit:.3g}", k)
        # A float sum of n terms is within n eps sum|x| of the exact sum of the floats
        # (Higham, Accuracy and Stability, 4.2), and each float within its tolerance.
        eps = np.finfo(float).eps
        per_term = tolerance + len(values) * eps * np.abs(values)
        return cls(values, per_term, "float sums equal up to their rounding", k)

    def slack(self, terms: int) -> float:
        """Two sums of ``terms`` of the values whose difference is within this are equal."""
        if self.slack_per_term is None:
            return 0
        return 2 * float(np.sort(self.slack_per_term)[::-1][:terms].sum())

    def described(self, terms: int) -> str:
        """How ties of sums of ``terms`` values are decided, in the data's units."""
        if self.slack_per_term is None:
            return self.resolution
        slack = float(np.ldexp(self.slack(terms), self.scale))
        return f"{self.resolution} (within {slack:.2g})"


def paired_permutation(
    differences: np.ndarray,
    *,
    tolerance: np.ndarray | None = None,
    n_resamples: int = 10_000,
    seed: SeedLike = 0,
) -> Permutation:
    """Two-sided sign-flip permutation test of the mean of the differences.

    Under H0 each seed's difference is as likely to be +d as -d. ``tolerance``: how far each
    difference may be from the number it stands for (``precision.rounding_tolerance`` of
    the two values; None: that of the differences themselves as values). Exact over all
    2^n sign vectors when 2^n <= ``EXACT_PERMUTATION_LIMIT``, else ``n_resamples`` random
    sign vectors drawn from ``seed``.
    """
    d = np.asarray(differences, dtype=float)
    if not np.all(np.isfinite(d)):
        raise ValueError("the differences must be finite")
    tol = rounding_tolerance(d, np.zeros_like(d)) if tolerance is None else tolerance
    terms = _Terms.of(d, np.broadcast_to(np.asarray(tol, float), d.shape))
    n = len(d)
    exact = 2**n <= EXACT_PERMUTATION_LIMIT
    if exact:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1
    else:
        signs = np.where(generator(seed).random((n_resamples, n)) < 0.5, -1.0, 1.0)
    # Integer terms are summed in float64, exactly: grid_units keeps sum |m| below 2^52.
    x = terms.x.astype(float)
    return _two_sided(signs @ x, float(x.sum()), terms.slack(n), exact, terms.described(n))


def two_sample_permutation(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, seed: SeedLike = 0
) -> Permutation:
    """Two-sided permutation test of mean(A) - mean(B) for independent samples.

    The statistic is monotone in the sum of A's values, which is what is compared: exact
    over all C(n_a + n_b, n_a) splits when there are at most ``EXACT_PERMUTATION_LIMIT``,
    else ``n_resamples`` random splits drawn from ``seed``. The values enter relative to
    the smallest one, with the rounding of that difference (``precision``).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pooled = np.concatenate([a, b])
    low = np.full_like(pooled, pooled.min())
    with np.errstate(over="ignore"):
        shifted = pooled - low
    if not np.all(np.isfinite(shifted)):
        raise ValueError("the spread of the values must be finite")
    tol = rounding_tolerance(pooled, low)
    terms = _Terms.of(shifted, tol)
    n_a, total = len(a), len(pooled)
    splits = math.comb(total, n_a)
    exact = splits <= EXACT_PERMUTATION_LIMIT
    if exact:
        members = np.array(list(itertools.combinations(range(total), n_a)), dtype=np.intp)
    else:
        rng = generator(seed)
        order = rng.permuted(np.tile(np.arange(total), (n_resamples, 1)), axis=1)
        members = order[:, :n_a]
    sums = terms.x[members].sum(axis=1)
    return _two_sided(sums, terms.x[:n_a].sum(), terms.slack(n_a), exact, terms.described(n_a))


def _two_sided(
    sums: np.ndarray, observed: float, slack: float, exact: bool, resolution: str
) -> Permutation:
    """p = 2 min(P(S >= s), P(S <= s)), capped at 1, from the sums of the arrangements
    (all of them when ``exact``, else random ones: (count + 1) / (R + 1) per tail)."""
    tail = min(
        int(np.count_nonzero(sums >= observed - slack)),
        int(np.count_nonzero(sums <= observed + slack)),
    )
    count = len(sums)
    if exact:
        # One correctly rounded division of integers: an exact 14/256 is the float nearest it.
        return Permutation(min(1.0, 2 * tail / count), "exact", count, None, resolution)
    share = (tail + 1) / (count + 1)
    se = 2 * math.sqrt(share * (1 - share) / count)
    return Permutation(min(1.0, 2 * share), "monte carlo", count, se, resolution)


def sign_flip_permutation_test(
    differences: np.ndarray,
    *,
    tolerance: np.ndarray | None = None,
    n_resamples: int = 10_000,
    seed: SeedLike = 0,
) -> tuple[float, str]:
    """(p, method) of ``paired_permutation``, for callers that need no more.

    ``tolerance`` None takes the differences as the data, with their own rounding: right
    for float64 differences, wrong for A - B of float32 metrics, which carries the rounding
    of A and B (3e-8 at 0.9), not that of A - B (the issue's 8 seeds of float32 accuracies
    give 12/256 for the exact 14/256). Pass ``rounding_tolerance(a, b)`` then, or use
    ``paired_tests`` or ``compare``, which know the values."""
    res = paired_permutation(differences, tolerance=tolerance, n_resamples=n_resamples, seed=seed)
    return res.p, res.method


def independent_permutation_test(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, seed: SeedLike = 0
) -> tuple[float, str]:
    """(p, method) of ``two_sample_permutation``, for callers that need no more."""
    res = two_sample_permutation(a, b, n_resamples=n_resamples, seed=seed)
    return res.p, res.method


def mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(x) - mean(y) along ``axis`` (vectorised, for scipy's resampling)."""
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bca_interval(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    n_resamples: int,
    seed: SeedLike,
) -> tuple[list[float] | None, str | None]:
    """95% BCa bootstrap interval of a statistic that scales with the data (a mean, a mean
    difference), or (None, reason) when it cannot be computed.

    For paired data ``data`` is the single array of differences: resampling differences is
    resampling seeds, so the pairs stay together (pitfall avoided: resampling each group
    independently would destroy the pairing and inflate the interval). Computed on the data
    divided by a power of two and scaled back (exact; no overflow near 1e200). Its coverage
    falls short of 95% at small n (``calibration``).
    """
    if all(len(np.unique(x)) == 1 for x in data):
        return None, "degenerate: all values are equal, the bootstrap distribution is a point"
    if any(len(x) < 3 for x in data):
        return None, "degenerate: fewer than 3 seeds, the bootstrap distribution has a few points"
    k = exponent(*data)
    scaled = tuple(np.ldexp(np.asarray(x, float), -k) for x in data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            scaled,
            statistic,
            method="BCa",
            n_resamples=n_resamples,
            confidence_level=0.95,
            vectorized=True,
            **{_RNG_KEYWORD: generator(seed)},
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, "degenerate: the BCa acceleration or bias correction is undefined"
    with np.errstate(over="ignore"):
        return [float(np.ldexp(lo, k)), float(np.ldexp(hi, k))], None
