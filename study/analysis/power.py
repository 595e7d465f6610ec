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
from scipy import optimize, stats

from study.analysis.stats import (
    CORRECTION_NAMES,
    CORRECTIONS,
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
    "alpha_planned",
    "n_required",
    "n_required_unadjusted",
    "mde",
    "power_at_n",
    "min_p_possible",
    "warning",
]


def min_p_value(test: str, n: int, *, n_b: int | None = None, n_resamples: int = 10_000) -> float:
    """The smallest two-sided p-value ``test`` can produce with n seeds.

    Paired (``n_b`` None, n pairs): 't' 0 (continuous); 'wilcoxon' 2 / 2^n when exact
    (n <= 50 non-zero differences; ties among |differences| keep the test exact, see
    ``stats.wilcoxon_signed_rank``, and zeros are dropped, so n zero-free pairs is the best
    case), else the normal approximation with continuity correction at the most extreme
    rank sum; 'permutation' 2 / 2^n when all 2^n sign vectors are
    enumerated (2^n <= 100000), else 2 / (n_resamples + 1) (Monte Carlo p = (count + 1) /
    (R + 1), doubled for two sides).

    Unpaired (``n_b`` given, groups of n and n_b): 't' 0; 'wilcoxon' (Mann-Whitney U)
    2 / C(n + n_b, n) when exact (both groups <= 50; ties keep it exact, see
    ``stats.rank_sum_exact_p``, and no ties is the best case), else the normal
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


def planning_alpha(alpha: float, comparisons: int, correction: str) -> float:
    """The per-comparison level to plan at: alpha / m for Holm and Bonferroni (Bonferroni's
    level, which Holm's smallest p must beat; conservative for Holm's later steps), and for
    Benjamini-Hochberg too (conservative: BH's threshold for the best p is alpha / m, for
    the k-th best k alpha / m); alpha itself with no correction or m = 1."""
    if correction == "none" or comparisons <= 1:
        return alpha
    return alpha / comparisons


def plan_seeds(
    table: pd.DataFrame,
    *,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    test: str = "t",
    comparisons: int = 1,
    correction: str = "holm",
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Seeds needed per comparison to detect a mean difference of ``effect`` (in the table's
    units, e.g. 0.3 accuracy points), in a family of ``comparisons`` (m) comparisons
    corrected by ``correction``.

    The planning level is ``alpha_planned`` = alpha / m for 'holm', 'bonferroni' and
    (conservatively) 'bh', alpha for 'none' or m = 1 (see ``planning_alpha``). m is the
    size of the whole correction family the results will be corrected over, which may be
    larger than the comparisons in this table (at least their number is used).

    One row per comparison (chosen as in ``compare``: baseline, pairs, or all pairs), with
    columns: ``a``, ``b``, ``pairing``, ``n`` (paired seeds, or seeds of A + B when the
    groups share none), ``sd_diff`` (sd of the seed-wise differences; for unpaired groups
    the pooled sd), ``alpha_planned``, ``n_required`` (paired: smallest number of seeds for
    which the two-sided one-sample t-test of the differences at ``alpha_planned`` reaches
    ``power`` when the true mean difference is ``effect``; unpaired: seeds per group for the
    two-sample t), ``n_required_unadjusted`` (the same at ``alpha``, as if the comparison
    were alone), ``mde`` (the smallest difference the current seeds detect with that power
    at ``alpha_planned``), ``power_at_n`` (the power the current seeds have for ``effect``
    at ``alpha_planned``), ``min_p_possible`` (see ``min_p_value``) and ``warning`` (text
    when the chosen test cannot reach significance after the correction at the current n:
    m * min_p >= alpha; else None). Where the chosen test cannot reach ``alpha_planned`` at
    the current n, ``power_at_n`` is 0 and ``mde`` NaN (no effect is detectable).

    Power is computed from the noncentral t directly; where scipy's noncentral t returns
    NaN for a far tail (large standardised effects), that tail comes from a normal
    approximation instead, so a huge effect gets power ~1, never NaN.

    For rank and permutation tests ``n_required`` is raised where needed so that their
    smallest possible p falls below ``alpha_planned``; the t-based number is otherwise a
    good guide (the Wilcoxon test's efficiency relative to t is 0.955 under normality).
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
                f"{name} must lie strictly between 0 and 1, got {value!r}",
                source=source,
                field=name,
            )
    if test not in TESTS:
        raise UserInputError(
            f"unknown test {test!r}; choose one of {list(TESTS)}", source=source, field="test"
        )
    if correction not in CORRECTIONS:
        raise UserInputError(
            f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}",
            source=source,
            field="correction",
        )
    if (
        isinstance(comparisons, bool)
        or not isinstance(comparisons, int | np.integer)
        or (comparisons < 1)
    ):
        raise UserInputError(
            f"comparisons must be a whole number >= 1, got {comparisons!r}",
            source=source,
            field="comparisons",
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
    m = max(int(comparisons), len(samples))
    alpha_plan = planning_alpha(alpha, m, correction)
    family_words = (
        f"{CORRECTION_NAMES[correction]} over {m} comparisons, planned at "
        f"alpha / {m} = {alpha_plan:.4g}"
        if alpha_plan != alpha
        else ""
    )
    rows = []
    for s in samples:
        if s.pairing == PAIRED:
            n = s.n
            sd = float(np.std(s.differences, ddof=1))
            row = _paired_plan(n, sd, effect=effect, alpha=alpha_plan, power=power)
            raw = _paired_plan(n, sd, effect=effect, alpha=alpha, power=power)
            min_p = min_p_value(test, n)
            floor_n = _smallest_n(test, alpha_plan, paired=True)
            floor_raw = _smallest_n(test, alpha, paired=True)
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
            row = _unpaired_plan(n_a, n_b, sd, effect=effect, alpha=alpha_plan, power=power)
            raw = _unpaired_plan(n_a, n_b, sd, effect=effect, alpha=alpha, power=power)
            min_p = min_p_value(test, n_a, n_b=n_b)
            floor_n = _smallest_n(test, alpha_plan, paired=False)
            floor_raw = _smallest_n(test, alpha, paired=False)
            seeds_words = f"{n_a} + {n_b} unpaired seeds"
        n_required = _raise_to_floor(row["n_required"], floor_n)
        n_raw = _raise_to_floor(raw["n_required"], floor_raw)
        if min_p >= alpha_plan:
            # The chosen test cannot reach the planned level at this n: whatever the t-test
            # could see, this test has no power and no detectable effect here.
            row = {**row, "mde": math.nan, "power_at_n": 0.0}
        warning = None
        # The floor check against the correction: the best adjusted p is m * min_p (Holm,
        # Bonferroni; BH too when this comparison alone reaches its floor).
        if min_p >= alpha_plan:
            per_group = " per group" if s.pairing != PAIRED else ""
            need = (
                f"at least {floor_n} seeds{per_group} are needed"
                if floor_n is not None
                else "more resamples are needed"
            )
            n_b = None if s.pairing == PAIRED else len(s.values_b)
            words = _test_words(test, len(s.values_a), n_b)
            if min_p >= alpha:
                why = f"which is not below alpha = {alpha:g}: no result can be significant"
            elif correction == "bh":
                why = (
                    f"so {m} x p = {m * min_p:.4g} is not below alpha = {alpha:g}: under "
                    f"Benjamini-Hochberg over {m} comparisons it can be significant only if "
                    f"at least {math.ceil(m * min_p / alpha + 1e-12)} comparisons reach "
                    "the floor together"
                )
            else:
                why = (
                    f"so the {CORRECTION_NAMES[correction]}-adjusted p is at least "
                    f"{m} x p = {min(1.0, m * min_p):.4g}, not below alpha = {alpha:g} "
                    f"({m} comparisons): no result can be significant after the correction"
                )
            warning = (
                f"{words} with {seeds_words} cannot go below p = {min_p:.4g}, {why}; {need}"
                + (f" (at alpha / {m} = {alpha_plan:.4g})" if alpha_plan != alpha else "")
            )
        rows.append(
            {
                "a": s.a,
                "b": s.b,
                "pairing": s.pairing,
                "n": n,
                "sd_diff": sd,
                "alpha_planned": alpha_plan,
                **row,
                "n_required": n_required,
                "n_required_unadjusted": n_raw,
                "min_p_possible": min_p,
                "warning": warning,
            }
        )
    frame = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    frame.attrs["family"] = family_words
    frame.attrs["comparisons"] = m
    frame.attrs["alpha_planned"] = alpha_plan
    return frame


def _raise_to_floor(n_required: float, floor_n: int | None) -> float:
    if np.isfinite(n_required) and floor_n is not None:
        return max(int(n_required), floor_n)
    return n_required


def t_power(
    effect_size: float | np.ndarray, nobs: float | np.ndarray, alpha: float, *, df=None, scale=None
) -> np.ndarray | float:
    """Power of the two-sided t-test at level ``alpha`` for a standardised effect.

    One-sample / paired t (default): df = nobs - 1, noncentrality = effect_size * sqrt(nobs).
    Two-sample t: pass ``df`` (n_a + n_b - 2) and ``scale`` = sqrt(n_a n_b / (n_a + n_b)).
    power = P(T' > c) + P(T' < -c) with T' noncentral t and c the (1 - alpha/2) t quantile.
    scipy's noncentral t returns NaN for a tail far from the noncentrality (e.g. the lower
    tail at effect 5 sd with 6 seeds); such a tail is taken from the normal approximation
    P(T' > c) ~ Phi((delta - c (1 - 1/(4 df))) / sqrt(1 + c^2 / (2 df))), which is ~0 or ~1
    there, so NaN never reaches the caller.
    """
    es = np.asarray(effect_size, dtype=float)
    nobs = np.asarray(nobs, dtype=float)
    df = nobs - 1 if df is None else np.asarray(df, dtype=float)
    scale = np.sqrt(nobs) if scale is None else np.asarray(scale, dtype=float)
    nc = es * scale
    crit = stats.t.ppf(1 - alpha / 2, df)
    with np.errstate(all="ignore"):
        upper = stats.nct.sf(crit, df, nc)
        lower = stats.nct.cdf(-crit, df, nc)
        shrink = 1 - 1 / (4 * df)
        spread = np.sqrt(1 + crit**2 / (2 * df))
        upper_n = stats.norm.cdf((nc - crit * shrink) / spread)
        lower_n = stats.norm.cdf((-nc - crit * shrink) / spread)
    upper = np.where(np.isfinite(upper), upper, upper_n)
    lower = np.where(np.isfinite(lower), lower, lower_n)
    out = np.clip(upper + lower, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


def _paired_plan(n: int, sd: float, *, effect: float, alpha: float, power: float) -> dict:
    if not sd > 0:
        return {"n_required": math.nan, "mde": math.nan, "power_at_n": math.nan}
    es = effect / sd

    def power_at(k):
        return t_power(es, k, alpha)

    def power_of(e: float) -> float:
        return t_power(e, n, alpha)

    return {
        "n_required": _required_n(power_at, power),
        "mde": _mde(power_of, power) * sd,
        "power_at_n": float(power_at(n)),
    }


def _unpaired_plan(
    n_a: int, n_b: int, sd: float, *, effect: float, alpha: float, power: float
) -> dict:
    if not sd > 0:
        return {"n_required": math.nan, "mde": math.nan, "power_at_n": math.nan}
    es = effect / sd

    def power_at(k):  # k seeds per group
        k = np.asarray(k, dtype=float)
        return t_power(es, k, alpha, df=2 * k - 2, scale=np.sqrt(k / 2))

    def power_of(e: float) -> float:
        return t_power(e, n_a, alpha, df=n_a + n_b - 2, scale=math.sqrt(n_a * n_b / (n_a + n_b)))

    return {
        "n_required": _required_n(power_at, power),
        "mde": _mde(power_of, power) * sd,
        "power_at_n": float(
            t_power(es, n_a, alpha, df=n_a + n_b - 2, scale=math.sqrt(n_a * n_b / (n_a + n_b)))
        ),
    }


def _required_n(power_at, power: float, limit: int = 100_000) -> float:
    """The smallest n >= 2 whose power reaches the target (the power grows with n), by
    evaluating the power on every n, block by block (2-64, 65-1024, ...) up to ``limit``;
    NaN when none does."""
    lo = 2
    for hi in (64, 1024, 16_384, limit):
        ks = np.arange(lo, hi + 1)
        reached = np.flatnonzero(np.asarray(power_at(ks)) >= power)
        if len(reached):
            return int(ks[reached[0]])
        lo = hi + 1
    return math.nan


def _mde(power_of, power: float) -> float:
    """The standardised effect whose power is ``power`` at the current n (root of a
    monotone function, bracketed by doubling)."""
    hi = 1.0
    while power_of(hi) < power:
        hi *= 2
        if hi > 1e6:
            return math.nan
    return float(optimize.brentq(lambda e: power_of(e) - power, 0.0, hi, xtol=1e-12))


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
