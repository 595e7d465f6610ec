"""How many seeds a comparison needs, and what the seeds at hand can detect.

``plan_seeds`` reads the same tidy table as ``study.analysis.stats.compare`` (a pilot
study, or the study so far), estimates the noise of each comparison from it (the sd of the
seed-wise differences for paired groups) and answers the planning questions: how many seeds
for a paired t-test to see ``effect`` with the requested power, the smallest effect the
current seeds can detect, the power they have now, and whether the chosen test can reach
significance at all with so few seeds (an exact rank or permutation test cannot go below
2 / 2^n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

from study.analysis.stats import (
    EXACT_PERMUTATION_LIMIT,
    EXACT_RANK_TEST_MAX_N,
    PAIRED,
    TESTS,
    pair_groups,
)
from study.errors import UserInputError

PLAN_COLUMNS = [
    "a",
    "b",
    "pairing",
    "n",
    "sd_diff",
    "n_required",
    "mde",
    "power_at_n",
    "min_p_possible",
    "warning",
]


def min_p_value(test: str, n: int, *, n_b: int | None = None, n_resamples: int = 10_000) -> float:
    """The smallest two-sided p-value ``test`` can produce with n seeds.

    Paired (``n_b`` None, n pairs): 't' 0 (continuous); 'wilcoxon' 2 / 2^n when exact
    (n <= 50, no ties or zeros), else the normal approximation with continuity correction
    at the most extreme rank sum; 'permutation' 2 / 2^n when all 2^n sign vectors are
    enumerated (2^n <= 100000), else 2 / (n_resamples + 1) (Monte Carlo p = (count + 1) /
    (R + 1), doubled for two sides).

    Unpaired (``n_b`` given, groups of n and n_b): 't' 0; 'wilcoxon' (Mann-Whitney U)
    2 / C(n + n_b, n) when exact (both groups <= 50, no ties), else the normal
    approximation; 'permutation' 2 / C(n + n_b, n) when exact (at most 100000 splits),
    else 2 / (n_resamples + 1). Values are capped at 1.
    """
    if test not in TESTS:
        raise UserInputError(f"unknown test {test!r}; choose one of {list(TESTS)}", field="test")
    if n < 1 or (n_b is not None and n_b < 1):
        raise UserInputError(f"need at least one seed, got n = {n}, n_b = {n_b}", field="n")
    if test == "t":
        return 0.0
    if n_b is None:
        arrangements = 2.0**n
        exact = (
            n <= EXACT_RANK_TEST_MAX_N
            if test == "wilcoxon"
            else arrangements <= EXACT_PERMUTATION_LIMIT
        )
        if exact:
            return min(1.0, 2.0 / arrangements)
        if test == "permutation":
            return min(1.0, 2.0 / (n_resamples + 1))
        # Most extreme signed-rank sum n(n+1)/2 against its null mean and sd.
        mean = n * (n + 1) / 4
        sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
        return min(1.0, float(2 * stats.norm.sf((n * (n + 1) / 2 - mean - 0.5) / sd)))
    splits = math.comb(n + n_b, n)
    exact = (
        max(n, n_b) <= EXACT_RANK_TEST_MAX_N
        if test == "wilcoxon"
        else splits <= EXACT_PERMUTATION_LIMIT
    )
    if exact:
        return min(1.0, 2.0 / splits)
    if test == "permutation":
        return min(1.0, 2.0 / (n_resamples + 1))
    mean = n * n_b / 2
    sd = math.sqrt(n * n_b * (n + n_b + 1) / 12)
    return min(1.0, float(2 * stats.norm.sf((n * n_b - mean - 0.5) / sd)))


def plan_seeds(
    table: pd.DataFrame,
    *,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    test: str = "t",
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Seeds needed per comparison to detect a mean difference of ``effect`` (in the table's
    units, e.g. 0.3 accuracy points).

    One row per comparison (chosen as in ``compare``: baseline, pairs, or all pairs), with
    columns: ``a``, ``b``, ``pairing``, ``n`` (paired seeds, or seeds of A + B when the
    groups share none), ``sd_diff`` (sd of the seed-wise differences; for unpaired groups
    the pooled sd), ``n_required`` (paired: smallest number of seeds for which the two-sided
    one-sample t-test of the differences reaches ``power`` at ``alpha`` when the true mean
    difference is ``effect``; unpaired: seeds per group for Welch's/Student's two-sample t),
    ``mde`` (the smallest difference the current seeds detect with that power),
    ``power_at_n`` (the power the current seeds have for ``effect``), ``min_p_possible``
    (see ``min_p_value``) and ``warning`` (text when the chosen test cannot reach p < alpha
    at the current n, else None).

    For rank and permutation tests ``n_required`` is raised where needed so that their
    smallest possible p falls below alpha; the t-based number is otherwise a good guide
    (the Wilcoxon test's efficiency relative to t is 0.955 under normality). ``alpha`` is
    per comparison: with m comparisons and Holm or Bonferroni, plan with alpha / m to be
    safe.
    """
    if not (isinstance(effect, int | float) and math.isfinite(effect) and effect > 0):
        raise UserInputError(
            f"effect must be a positive number (a mean difference in the "
            f"table's units), got {effect!r}",
            source=source,
            field="effect",
        )
    for name, value in (("alpha", alpha), ("power", power)):
        if not (isinstance(value, int | float) and 0 < value < 1):
            raise UserInputError(
                f"{name} must be between 0 and 1, got {value!r}", source=source, field=name
            )
    if test not in TESTS:
        raise UserInputError(
            f"unknown test {test!r}; choose one of {list(TESTS)}", source=source, field="test"
        )
    samples = pair_groups(
        table,
        value_col=value_col,
        group_col=group_col,
        seed_col=seed_col,
        baseline=baseline,
        pairs=pairs,
        source=source,
    )
    rows = []
    for s in samples:
        if s.pairing == PAIRED:
            n = s.n
            sd = float(np.std(s.differences, ddof=1))
            row = _paired_plan(n, sd, effect=effect, alpha=alpha, power=power)
            min_p = min_p_value(test, n)
            floor_n = _smallest_n(test, alpha, paired=True)
            seeds_words = f"{n} paired seeds"
        else:
            n_a, n_b = len(s.values_a), len(s.values_b)
            n = n_a + n_b
            sd = float(
                math.sqrt(
                    (
                        (n_a - 1) * np.var(s.values_a, ddof=1)
                        + (n_b - 1) * np.var(s.values_b, ddof=1)
                    )
                    / (n - 2)
                )
            )
            row = _unpaired_plan(n_a, n_b, sd, effect=effect, alpha=alpha, power=power)
            min_p = min_p_value(test, n_a, n_b=n_b)
            floor_n = _smallest_n(test, alpha, paired=False)
            seeds_words = f"{n_a} + {n_b} unpaired seeds"
        if np.isfinite(row["n_required"]) and floor_n is not None:
            row["n_required"] = max(int(row["n_required"]), floor_n)
        warning = None
        if min_p >= alpha:
            per_group = " per group" if s.pairing != PAIRED else ""
            need = (
                f"at least {floor_n} seeds{per_group} are needed"
                if floor_n is not None
                else "more resamples are needed"
            )
            n_b = None if s.pairing == PAIRED else len(s.values_b)
            words = _test_words(test, len(s.values_a), n_b)
            warning = (
                f"{words} with {seeds_words} cannot go below p = {min_p:.4g}, which is not "
                f"below alpha = {alpha:g}: no result can be significant; {need}"
            )
        rows.append(
            {
                "a": s.a,
                "b": s.b,
                "pairing": s.pairing,
                "n": n,
                "sd_diff": sd,
                **row,
                "min_p_possible": min_p,
                "warning": warning,
            }
        )
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def _paired_plan(n: int, sd: float, *, effect: float, alpha: float, power: float) -> dict:
    if not sd > 0:
        return {"n_required": math.nan, "mde": math.nan, "power_at_n": math.nan}
    analysis = TTestPower()
    n_req = analysis.solve_power(
        effect_size=effect / sd, alpha=alpha, power=power, alternative="two-sided"
    )
    mde = analysis.solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    at_n = analysis.power(effect_size=effect / sd, nobs=n, alpha=alpha, alternative="two-sided")

    def power_at(k: int) -> float:
        return analysis.power(effect_size=effect / sd, nobs=k, alpha=alpha, alternative="two-sided")

    return {
        "n_required": _required_n(n_req, power_at, power),
        "mde": float(mde) * sd,
        "power_at_n": float(at_n),
    }


def _required_n(solved: float, power_at, power: float) -> float:
    """The solver's answer rounded up; where it found none (an effect many sds wide makes
    the root-finder fail), the smallest n >= 2 whose power reaches the target by scanning."""
    solved = float(solved)
    if math.isfinite(solved):
        return max(2, math.ceil(solved - 1e-9))
    for k in range(2, 10_001):
        if power_at(k) >= power:
            return k
    return math.nan


def _unpaired_plan(
    n_a: int, n_b: int, sd: float, *, effect: float, alpha: float, power: float
) -> dict:
    if not sd > 0:
        return {"n_required": math.nan, "mde": math.nan, "power_at_n": math.nan}
    analysis = TTestIndPower()
    n_req = analysis.solve_power(
        effect_size=effect / sd, alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    mde = analysis.solve_power(
        nobs1=n_a, ratio=n_b / n_a, alpha=alpha, power=power, alternative="two-sided"
    )
    at_n = analysis.power(
        effect_size=effect / sd, nobs1=n_a, ratio=n_b / n_a, alpha=alpha, alternative="two-sided"
    )

    def power_at(k: int) -> float:
        return analysis.power(
            effect_size=effect / sd, nobs1=k, ratio=1.0, alpha=alpha, alternative="two-sided"
        )

    return {
        "n_required": _required_n(n_req, power_at, power),
        "mde": float(mde) * sd,
        "power_at_n": float(at_n),
    }


def _smallest_n(test: str, alpha: float, *, paired: bool) -> int | None:
    """Smallest n (pairs, or seeds per group when unpaired) whose smallest p is below alpha;
    None when no n up to 1000 gets there (a Monte Carlo floor 2 / (R + 1) above alpha)."""
    for n in range(2, 1001):
        if min_p_value(test, n, n_b=None if paired else n) < alpha:
            return n
    return None


def _test_words(test: str, n: int, n_b: int | None) -> str:
    if test == "wilcoxon":
        name = "Wilcoxon" if n_b is None else "Mann-Whitney"
        exact = max(n, n_b or 0) <= EXACT_RANK_TEST_MAX_N
        return f"{'exact' if exact else 'approximate'} {name}"
    if test == "permutation":
        arrangements = 2.0**n if n_b is None else math.comb(n + n_b, n)
        exact = arrangements <= EXACT_PERMUTATION_LIMIT
        return f"{'exact' if exact else 'Monte Carlo'} permutation test"
    return "t-test"
