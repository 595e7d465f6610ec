"""Rank tests: Wilcoxon signed-rank (paired) and Mann-Whitney U (unpaired), exact with ties.

Accuracies are multiples of 1/N, so ties among |differences| and among values are the rule,
not the exception. Both tests here stay exact with ties up to ``EXACT_RANK_TEST_MAX_N``
values: the null distribution is counted over the observed midranks (doubled, they are
integers) by a subset-sum recursion, and each p is one correctly rounded division of two
integer counts. Above that size, the tie-corrected normal approximation.

What they test: the signed-rank test's null is that the differences are symmetric about
zero, not that their mean is zero (a skewed difference with mean zero is rejected more and
more often as n grows); Mann-Whitney's is that a value of A is as likely to exceed one of
B as the reverse. docs/statistics.md has the simulation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy
from scipy import stats

from study.analysis.stats.precision import tie_keys

# The exact null distributions of the rank tests are used up to this sample size.
EXACT_RANK_TEST_MAX_N = 50
# scipy renamed the normal approximation of the rank tests from 'approx' to 'asymptotic' in 1.13.
_SCIPY_VERSION = tuple(int(part) for part in scipy.__version__.split(".")[:2])
ASYMPTOTIC = "asymptotic" if _SCIPY_VERSION >= (1, 13) else "approx"


def wilcoxon_signed_rank(differences: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank test of the differences: (W, p, method).

    Zeros are dropped before ranking (Wilcoxon's convention, as R's ``wilcox.test`` and
    scipy's ``zero_method='wilcox'``); tied |differences| get midranks. W is the smaller of
    the two signed-rank sums.

    Up to ``EXACT_RANK_TEST_MAX_N`` (50) non-zero differences, p comes from the exact null
    distribution of W+ conditional on the observed (mid)ranks: all 2^n sign vectors are
    counted by a dynamic program over the doubled midranks (integers), so ties and zeros do
    not send a small sample to the normal approximation (method 'exact'). Without ties this
    is the classical exact distribution (scipy's ``method='exact'``). Above 50 non-zero
    differences: the normal approximation with tie-corrected variance and continuity
    correction (method 'approx'). 'none': every difference is zero.
    """
    d = np.asarray(differences, dtype=float)
    nonzero = d[d != 0]
    n = len(nonzero)
    if n == 0:
        return math.nan, math.nan, "none"
    ranks = stats.rankdata(np.abs(nonzero))
    total = float(ranks.sum())
    w_plus = float(ranks[nonzero > 0].sum())
    w = min(w_plus, total - w_plus)
    if n <= EXACT_RANK_TEST_MAX_N:
        return w, signed_rank_exact_p(ranks, w), "exact"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(d, method=ASYMPTOTIC, correction=True, zero_method="wilcox")
    return float(res.statistic), float(res.pvalue), "approx"


def signed_rank_exact_p(ranks: np.ndarray, w: float) -> float:
    """P(min(W+, W-) <= w) under H0, exactly, for the given (mid)ranks.

    Under H0 each rank carries a + or - sign with probability 1/2 independently, so W+ is a
    sum over a random subset of the ranks. Midranks are multiples of 1/2, so the doubled
    ranks are integers and the distribution of 2 W+ over all 2^n subsets is counted exactly
    (integers, no rounding) by the subset-sum recursion. Two-sided p = min(1, 2 P(W+ <= w)),
    w = the smaller of the two rank sums (the null distribution is symmetric).
    """
    doubled = np.rint(2 * np.asarray(ranks, dtype=float)).astype(np.int64)
    if not np.allclose(doubled, 2 * np.asarray(ranks, dtype=float)):
        raise ValueError("ranks must be multiples of 1/2 (midranks)")
    counts = np.zeros(int(doubled.sum()) + 1, dtype=object if len(doubled) > 60 else np.int64)
    counts[0] = 1
    for r in doubled:
        counts[r:] = counts[r:] + counts[: len(counts) - r].copy()
    limit = int(math.floor(2 * w + 1e-9))
    tail = int(counts[: limit + 1].sum())
    return float(min(1.0, 2 * tail / 2 ** len(doubled)))


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U of A vs B: (U of A, p, method), values equal up to their
    rounding tied (``precision.tie_keys``: a float32 accuracy and a float64 one of the same
    k / N are one value).

    Both groups at most 50 values: p from the exact null distribution of A's rank sum
    conditional on the observed (mid)ranks (``rank_sum_exact_p``), ties included (method
    'exact'; without ties, scipy's ``method='exact'``). Larger: the normal approximation
    with tie-corrected variance and continuity correction (method 'approx')."""
    keys = tie_keys(np.concatenate([a, b]))  # values equal up to rounding tie
    if max(len(a), len(b)) > EXACT_RANK_TEST_MAX_N:
        res = stats.mannwhitneyu(
            keys[: len(a)],
            keys[len(a) :],
            alternative="two-sided",
            use_continuity=True,
            method=ASYMPTOTIC,
        )
        return float(res.statistic), float(res.pvalue), "approx"
    ranks = stats.rankdata(keys)
    rank_sum = float(ranks[: len(a)].sum())
    u = rank_sum - len(a) * (len(a) + 1) / 2
    return u, rank_sum_exact_p(ranks, len(a), rank_sum), "exact"


def rank_sum_exact_p(ranks: np.ndarray, n_a: int, rank_sum: float) -> float:
    """Two-sided p of A's rank sum under H0 (every split of the pooled values into groups
    of n_a and N - n_a equally likely), exactly, for the given (mid)ranks.

    The doubled midranks are integers, so the number of n_a-subsets with each doubled sum
    is counted by a subset-sum recursion over (subset size, sum). p = min(1, 2 min(P(R <=
    r), P(R >= r))), the doubling convention of scipy's permutation tests (with ties the
    distribution need not be symmetric). The counts are integers (int64 while C(N, n_a)
    fits, Python integers beyond: C(100, 50) ~ 1e29) and p is one correctly rounded
    division of two of them, so an exact p of 1/10 is the float 0.1, not 0.0999...,
    which would be rejected at alpha = 0.1.
    """
    doubled = np.rint(2 * np.asarray(ranks, dtype=float)).astype(np.int64)
    if not np.allclose(doubled, 2 * np.asarray(ranks, dtype=float)):
        raise ValueError("ranks must be multiples of 1/2 (midranks)")
    total = int(doubled.sum())
    splits = math.comb(len(doubled), n_a)
    counts = np.zeros((n_a + 1, total + 1), dtype=np.int64 if splits < 2**62 else object)
    counts[0, 0] = 1
    for i, r in enumerate(doubled):
        for k in range(min(i + 1, n_a), 0, -1):
            counts[k, r:] += counts[k - 1, : total + 1 - r]
    observed = int(round(2 * rank_sum))
    lower, upper = int(counts[n_a, : observed + 1].sum()), int(counts[n_a, observed:].sum())
    return min(1.0, 2 * min(lower, upper) / splits)
