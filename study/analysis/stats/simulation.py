"""Simulated studies with a known truth, run through the code ``compare`` runs.

A p-value or an interval is only as good as its behaviour when the truth is known. These
simulations draw null studies (nothing differs; noise normal, skewed or on an accuracy
grid), send them through ``paired_tests``, ``bca_interval`` and ``adjust_p_values``, and
count how often each test rejects at alpha = 0.05, how often each 95% interval covers the
true difference, and how often Holm's correction lets any of 8 comparisons against one
shared baseline through. scripts/calibrate.py runs them at full size and writes
docs/statistics.md and ``calibration.json``; tests/test_calibration.py runs the type-I
part small enough for CI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from study.analysis.stats.correction import adjust_p_values
from study.analysis.stats.paired import PairedTests, paired_tests
from study.analysis.stats.resampling import bca_interval

ALPHA = 0.05
NOISES = ("normal", "skewed", "grid")
"""Null differences the calibration draws: normal (sd 1); skewed (a centred exponential:
mean 0, skewness 2); grid (accuracies as a training logs them, float32 k / 10000, each
role's count of correct images within about 2 of the seed's own, so ties are the rule).
``null_values`` also draws 'mixed': grid data whose last group is float64 k / N, as a
baseline typed into a CSV is (tests/test_calibration.py)."""
TEST_KEYS = ("t", "wilcoxon", "permutation")


def binomial_interval(count: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion, count out of trials."""
    ci = stats.binomtest(count, trials).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def null_values(
    noise: str, n: int, rng: np.random.Generator, *, groups: int = 2
) -> list[np.ndarray]:
    """The values of ``groups`` groups on n seeds under the null: a seed effect shared by
    all groups (what pairing by seed removes) and independent noise of kind ``noise`` (see
    ``NOISES``) per group; for 'skewed', the first group carries the skewed difference and
    the others none (a skewed difference needs an asymmetric design)."""
    seed_effect = rng.normal(0.0, 2.0, n)
    if noise == "normal":
        return [10 + seed_effect + rng.normal(0.0, 2**-0.5, n) for _ in range(groups)]
    if noise == "skewed":
        first = 10 + seed_effect + rng.exponential(1.0, n) - 1.0
        return [first] + [10 + seed_effect for _ in range(groups - 1)]
    if noise in ("grid", "mixed"):
        base = 9000 + np.rint(rng.normal(0.0, 30.0, n))
        correct = [base + np.rint(rng.normal(0.0, 2.0, n)) for _ in range(groups)]
        values = [np.float32(k / 10_000).astype(float) for k in correct]
        if noise == "mixed":  # the last group typed into a CSV: float64 k / N
            values[-1] = correct[-1] / 10_000
        return values
    raise ValueError(f"unknown noise {noise!r}; choose one of {list(NOISES) + ['mixed']}")


def _p_values(tests: PairedTests) -> dict[str, float]:
    return {"t": tests.t.p, "wilcoxon": tests.wilcoxon[1], "permutation": tests.permutation.p}


def type1_counts(
    noise: str, n: int, replicates: int, rng: np.random.Generator, *, n_resamples: int = 10_000
) -> dict[str, int]:
    """Per test, in how many of ``replicates`` null studies of n paired seeds it rejects
    at ``ALPHA`` (an undefined p, e.g. zero variance, does not reject)."""
    counts = dict.fromkeys(TEST_KEYS, 0)
    for _ in range(replicates):
        a, b = null_values(noise, n, rng)
        p = _p_values(paired_tests(a, b, n_resamples=n_resamples, seed=rng))
        for key in TEST_KEYS:
            counts[key] += bool(p[key] < ALPHA)
    return counts


def coverage_counts(
    noise: str, n: int, replicates: int, rng: np.random.Generator, *, n_resamples: int = 10_000
) -> dict[str, int]:
    """In how many of ``replicates`` studies the 95% t interval and the 95% BCa interval
    of the paired mean difference cover the true one (0)."""
    counts = {"t": 0, "bca": 0}
    for _ in range(replicates):
        a, b = null_values(noise, n, rng)
        tests = paired_tests(a, b, n_resamples=100, seed=rng)
        lo, hi = tests.t.ci95
        counts["t"] += bool(lo <= 0.0 <= hi)
        bca, _ = bca_interval((tests.differences,), np.mean, n_resamples, rng)
        counts["bca"] += bool(bca is not None and bca[0] <= 0.0 <= bca[1])
    return counts


def holm_counts(
    n: int,
    replicates: int,
    rng: np.random.Generator,
    *,
    comparisons: int = 8,
    n_resamples: int = 10_000,
) -> dict[str, int]:
    """Per test, in how many of ``replicates`` null studies of ``comparisons`` groups
    against one shared baseline (normal noise, n seeds) Holm's correction rejects any."""
    counts = dict.fromkeys(TEST_KEYS, 0)
    for _ in range(replicates):
        baseline, *others = null_values("normal", n, rng, groups=comparisons + 1)
        p = [
            _p_values(paired_tests(x, baseline, n_resamples=n_resamples, seed=rng)) for x in others
        ]
        for key in TEST_KEYS:
            adjusted = adjust_p_values([q[key] for q in p], "holm")
            counts[key] += bool(np.any(adjusted < ALPHA))
    return counts


def calibrate(
    replicates: int,
    coverage_replicates: int,
    seed: int,
    *,
    sizes: tuple[int, ...] = (5, 10, 20, 50),
    coverage_sizes: tuple[int, ...] = (3, 5, 10, 20, 50),
    holm_sizes: tuple[int, ...] = (5, 10, 20),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole calibration record (the content of ``calibration.json``): type-I error
    per noise, n and test; coverage per interval, noise and n; Holm's family-wise error
    per n and test; each as {count, trials, rate, ci} with a 95% Clopper-Pearson ci."""
    rng = np.random.default_rng(seed)

    def cell(count: int, trials: int) -> dict[str, Any]:
        return {
            "count": count,
            "trials": trials,
            "rate": count / trials,
            "ci": list(binomial_interval(count, trials)),
        }

    record: dict[str, Any] = {"alpha": ALPHA, "type1": {}, "coverage": {"t": {}, "bca": {}}}
    for noise in NOISES:
        for n in sizes:
            counts = type1_counts(noise, n, replicates, rng)
            for key, count in counts.items():
                record["type1"].setdefault(key, {}).setdefault(noise, {})[str(n)] = cell(
                    count, replicates
                )
            if progress:
                progress(f"type-I error, {noise} noise, n = {n}")
    for noise in ("normal", "skewed"):
        for n in coverage_sizes:
            counts = coverage_counts(noise, n, coverage_replicates, rng)
            for key, count in counts.items():
                record["coverage"][key].setdefault(noise, {})[str(n)] = cell(
                    count, coverage_replicates
                )
            if progress:
                progress(f"coverage, {noise} noise, n = {n}")
    record["holm"] = {}
    for n in holm_sizes:
        for key, count in holm_counts(n, coverage_replicates, rng).items():
            record["holm"].setdefault(key, {})[str(n)] = cell(count, coverage_replicates)
        if progress:
            progress(f"Holm over 8 comparisons, n = {n}")
    return record
