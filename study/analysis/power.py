"""How many seeds a comparison needs, and what the seeds at hand can detect.

``plan_seeds`` reads the same tidy table as ``study.analysis.stats.compare`` (a pilot
study, or the study so far), estimates the noise of each comparison from it (the sd of the
seed-wise differences for paired groups) and answers the planning questions: how many seeds
the chosen test needs to see ``effect`` with the requested power, the smallest effect the
current seeds can detect, the power they have now, and whether the test can reach
significance at all with so few seeds (an exact rank or permutation test cannot go below
2 / 2^n).

Each test is planned with its own power (``power_of_test``): the t test from the noncentral
t; the Wilcoxon / Mann-Whitney and permutation tests by simulating the test's own decision
rule (exact null distribution, p < alpha) on normal differences, where their discreteness
and lower efficiency matter, and from a documented efficiency factor where it does not
(the rank tests beyond ``SIMULATION_MAX_N`` seeds: asymptotic relative efficiency 3/pi
against t under normality; the Monte Carlo permutation tests: efficiency 1, their power is
the t test's). Every power is for normal differences; heavier tails favour the rank tests.

A pilot's sd is itself uncertain: a plan on the estimate reaches its power only when the
true sd is not larger, which for a 5-seed pilot is about 4 times in 10. ``sd_confidence``
plans for the one-sided upper confidence bound of the sd instead, and a pilot of fewer than
``PILOT_MIN_SEEDS`` seeds gets a warning that says what that bound would need.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from study.analysis.stats import (
    CORRECTION_NAMES,
    EXACT_PERMUTATION_LIMIT,
    EXACT_RANK_TEST_MAX_N,
    PAIRED,
    TESTS,
    PairedSample,
    check_test_and_correction,
    pair_groups,
)
from study.analysis.stats.parametric import pooled_sd
from study.analysis.stats.parametric import sd as sample_sd
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
ROW_DETAILS = ["sd_planned", "pilot_warning"]
"""Per-row values ``plan_seeds`` keeps in ``frame.attrs`` (one list each, in row order)
rather than as columns, so that the table keeps the columns its readers rely on."""
PILOT_MIN_SEEDS = 10
"""A pilot with fewer seeds (pairs; per group when unpaired) gets the uncertainty warning."""
PILOT_BOUND = 0.8
"""The confidence of the sd's upper bound that the small-pilot warning quotes."""
RANK_DRAWS = 10_000
"""Simulated studies per power of a rank test (standard error 0.004 at power 0.8)."""
PERMUTATION_DRAWS = 2_000
"""Simulated studies per power of an exact permutation test (standard error 0.009 at 0.8):
each enumerates every sign vector or split, which costs more."""
SIMULATION_MAX_N = 200
"""Rank tests are simulated up to this many seeds (per group when unpaired); beyond, their
power is the t test's at 3/pi times the seeds (asymptotic relative efficiency)."""
WILCOXON_ARE = 3 / math.pi
_SIMULATION_SEED = 15


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
        arrangements = 2**n
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


# --------------------------------------------------------------------------------------
# each test's power, for normal differences with mean es (in sd units)
# --------------------------------------------------------------------------------------


def power_of_test(test: str, es: float, n: int, alpha: float, *, n_b: int | None = None) -> float:
    """Power of the two-sided ``test`` at level ``alpha`` for a standardised effect ``es``:
    n pairs of normal differences with mean es and sd 1 (``n_b`` None), or groups of n and
    ``n_b`` normal values whose means differ by es sd.

    't': the noncentral t (``t_power``). 'wilcoxon': the signed-rank / Mann-Whitney test's
    exact rule (p < alpha from the exact null up to 50 values, the continuity-corrected
    normal approximation above) simulated on ``RANK_DRAWS`` studies, up to
    ``SIMULATION_MAX_N`` seeds; beyond, ``t_power`` at 3/pi times the seeds.
    'permutation': the exact test simulated on ``PERMUTATION_DRAWS`` studies where it
    enumerates (2^n or C(n + n_b, n) <= ``EXACT_PERMUTATION_LIMIT``), else ``t_power``.
    The draws are fixed for each n (common random numbers): the same question gets the
    same answer, and the power is a smooth function of es.
    """
    if test == "t":
        return _t_test_power(es, n, alpha, n_b)
    if test == "wilcoxon":
        if max(n, n_b or 0) > SIMULATION_MAX_N:
            return _t_test_power(
                es, n * WILCOXON_ARE, alpha, None if n_b is None else n_b * WILCOXON_ARE
            )
        return (
            _signed_rank_power(es, n, alpha) if n_b is None else _rank_sum_power(es, n, n_b, alpha)
        )
    if n_b is None:
        if 2**n > EXACT_PERMUTATION_LIMIT:
            return _t_test_power(es, n, alpha, None)
        return _sign_flip_power(es, n, alpha)
    if math.comb(n + n_b, n) > EXACT_PERMUTATION_LIMIT:
        return _t_test_power(es, n, alpha, n_b)
    return _split_power(es, n, n_b, alpha)


def _t_test_power(es: float, n: float, alpha: float, n_b: float | None) -> float:
    if n_b is None:
        return float(t_power(es, n, alpha))
    return float(t_power(es, n, alpha, df=n + n_b - 2, scale=math.sqrt(n * n_b / (n + n_b))))


def _draws(rows: int, cols: int, key: int) -> np.ndarray:
    """Standard normal draws, the same for the same (rows, cols, key)."""
    return np.random.default_rng((_SIMULATION_SEED, key, rows, cols)).standard_normal((rows, cols))


def _signed_rank_power(es: float, n: int, alpha: float) -> float:
    d = _draws(RANK_DRAWS, n, 1) + es
    ranks = np.argsort(np.argsort(np.abs(d), axis=1), axis=1) + 1
    w_plus = np.sum(np.where(d > 0, ranks, 0), axis=1)
    total = n * (n + 1) // 2
    if n <= EXACT_RANK_TEST_MAX_N:
        cdf = _signed_rank_cdf(n)
        p = np.minimum(1.0, 2 * cdf[np.minimum(w_plus, total - w_plus)])
    else:
        sd = math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
        z = (np.abs(w_plus - total / 2) - 0.5) / sd
        p = 2 * stats.norm.sf(z)
    return float(np.mean(p < alpha))


@functools.cache
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(W+ <= w), w = 0 .. n(n+1)/2, without ties (the subset-sum count of ranks 1..n)."""
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.int64)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[: len(counts) - r].copy()
    return np.cumsum(counts) / 2.0**n


def _rank_sum_power(es: float, n_a: int, n_b: int, alpha: float) -> float:
    x = np.concatenate([_draws(RANK_DRAWS, n_a, 2) + es, _draws(RANK_DRAWS, n_b, 3)], axis=1)
    ranks = np.argsort(np.argsort(x, axis=1), axis=1) + 1
    rank_sum = np.sum(ranks[:, :n_a], axis=1)
    if max(n_a, n_b) <= EXACT_RANK_TEST_MAX_N:
        lower, upper = _rank_sum_tails(n_a, n_b)
        offset = n_a * (n_a + 1) // 2
        p = np.minimum(1.0, 2 * np.minimum(lower[rank_sum - offset], upper[rank_sum - offset]))
    else:
        u = rank_sum - n_a * (n_a + 1) / 2
        sd = math.sqrt(n_a * n_b * (n_a + n_b + 1) / 12)
        p = 2 * stats.norm.sf((np.abs(u - n_a * n_b / 2) - 0.5) / sd)
    return float(np.mean(p < alpha))


@functools.cache
def _rank_sum_tails(n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """P(R <= r) and P(R >= r) of A's rank sum without ties, r from its minimum up (counts
    of n_a-subsets of 1..N by sum, in floats: probabilities, not fractions, suffice here)."""
    total = n_a + n_b
    top = n_a * (2 * total - n_a + 1) // 2
    counts = np.zeros((n_a + 1, top + 1))
    counts[0, 0] = 1
    for r in range(1, total + 1):
        for k in range(min(r, n_a), 0, -1):
            counts[k, r:] += counts[k - 1, : top + 1 - r]
    dist = counts[n_a, n_a * (n_a + 1) // 2 :] / math.comb(total, n_a)
    return np.cumsum(dist), np.cumsum(dist[::-1])[::-1]


def _sign_flip_power(es: float, n: int, alpha: float) -> float:
    d = _draws(PERMUTATION_DRAWS, n, 4) + es
    # Sign vectors with the first sign +: their |sums| are all |sums| (s and -s agree).
    half = 2 ** (n - 1)
    signs = ((np.arange(half)[:, None] >> np.arange(n - 1)) & 1) * 2.0 - 1
    signs = np.hstack([np.ones((half, 1)), signs])
    rejected = 0
    for rows in np.array_split(d, max(1, len(d) * half // 2**21)):
        sums = np.abs(rows @ signs.T)
        extreme = 2 * np.count_nonzero(sums >= np.abs(rows.sum(axis=1))[:, None], axis=1)
        rejected += int(np.count_nonzero(extreme / 2.0**n < alpha))
    return rejected / len(d)


def _split_power(es: float, n_a: int, n_b: int, alpha: float) -> float:
    x = np.concatenate(
        [_draws(PERMUTATION_DRAWS, n_a, 5) + es, _draws(PERMUTATION_DRAWS, n_b, 6)], axis=1
    )
    members = np.zeros((math.comb(n_a + n_b, n_a), n_a + n_b))
    for i, chosen in enumerate(itertools.combinations(range(n_a + n_b), n_a)):
        members[i, list(chosen)] = 1.0
    rejected = 0
    for rows in np.array_split(x, max(1, len(x) * len(members) // 2**21)):
        sums = rows @ members.T
        observed = rows[:, :n_a].sum(axis=1)[:, None]
        tail = np.minimum(
            np.count_nonzero(sums >= observed, axis=1), np.count_nonzero(sums <= observed, axis=1)
        )
        rejected += int(np.count_nonzero(2 * tail / len(members) < alpha))
    return rejected / len(x)


def power_method(test: str, *, paired: bool = True) -> str:
    """How ``plan_seeds`` computes the power of ``test``, in words (for tables and reports)."""
    if test == "t":
        return "the noncentral t distribution (normal differences)"
    name = {
        ("wilcoxon", True): "Wilcoxon signed-rank",
        ("wilcoxon", False): "Mann-Whitney",
        ("permutation", True): "sign-flip permutation",
        ("permutation", False): "permutation",
    }[test, paired]
    if test == "wilcoxon":
        return (
            f"the {name} test's own decision rule simulated on {RANK_DRAWS:,} studies of "
            f"normal differences up to {SIMULATION_MAX_N} seeds, beyond that the t test's "
            "power at 3/pi of the seeds (its asymptotic relative efficiency)"
        )
    return (
        f"the exact {name} test simulated on {PERMUTATION_DRAWS:,} studies of normal "
        "differences where it enumerates every arrangement, beyond that the t test's power "
        "(the Monte Carlo test's efficiency relative to t is 1)"
    )


def plan_seeds(
    table: pd.DataFrame,
    *,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    test: str = "t",
    comparisons: int = 1,
    correction: str = "holm",
    sd_confidence: float | None = None,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Seeds needed per comparison to detect a mean difference of ``effect`` (in the table's
    units, e.g. 0.3 accuracy points) with ``test``, in a family of ``comparisons`` (m)
    comparisons corrected by ``correction``.

    The planning level is ``alpha_planned`` = alpha / m for 'holm', 'bonferroni' and
    (conservatively) 'bh', alpha for 'none' or m = 1 (see ``planning_alpha``). m is the
    size of the whole correction family the results will be corrected over, which may be
    larger than the comparisons in this table (at least their number is used).

    One row per comparison (chosen as in ``compare``: baseline, pairs, or all pairs), with
    columns: ``a``, ``b``, ``pairing``, ``n`` (paired seeds, or seeds of A + B when the
    groups share none), ``sd_diff`` (sd of the seed-wise differences; for unpaired groups
    the pooled sd), ``alpha_planned``,
    ``n_required`` (the smallest number of seeds, per group when unpaired, for which
    ``test`` at ``alpha_planned`` reaches ``power`` when the true mean difference is
    ``effect``: see ``power_of_test``), ``n_required_unadjusted`` (the same at ``alpha``, as
    if the comparison were alone), ``mde`` (the smallest difference the current seeds
    detect with that power at ``alpha_planned``), ``power_at_n`` (the power the current
    seeds have for ``effect`` at ``alpha_planned``), ``min_p_possible`` (see
    ``min_p_value``), ``warning`` (text when the test cannot reach significance after the
    correction at the current n: m * min_p >= alpha; else None). Where the test cannot
    reach ``alpha_planned`` at the current n, ``power_at_n`` is 0 and ``mde`` NaN.

    Every number is planned on ``sd_planned``: ``sd_diff``, or with ``sd_confidence`` = c
    its one-sided upper confidence bound at level c (from the chi-square distribution of
    a normal sample's variance), which makes the plan reach ``power`` in about a share c
    of pilots instead of about half of them.

    ``frame.attrs`` holds ``family`` (the correction in words), ``comparisons`` (m),
    ``alpha_planned``, ``power_method`` (``power_method``) and, one entry per row,
    ``sd_planned`` and ``pilot_warning`` (text when the pilot has fewer than
    ``PILOT_MIN_SEEDS`` seeds: how uncertain its sd is and what planning for its upper
    bound needs; else None).
    """
    _check_plan_options(
        effect, alpha, power, test, correction, comparisons, sd_confidence, source=source
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
    goal = _Goal(effect, alpha, alpha_plan, power, test, m, correction, sd_confidence)
    rows = [_plan_row(s, goal) for s in samples]
    frame = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    for key in ROW_DETAILS:
        frame.attrs[key] = [row[key] for row in rows]
    frame.attrs["family"] = (
        f"{CORRECTION_NAMES[correction]} over {m} comparisons, planned at "
        f"alpha / {m} = {alpha_plan:.4g}"
        if alpha_plan != alpha
        else ""
    )
    frame.attrs["comparisons"] = m
    frame.attrs["alpha_planned"] = alpha_plan
    paired = all(s.pairing == PAIRED for s in samples)
    frame.attrs["power_method"] = power_method(test, paired=paired)
    return frame


@dataclass(frozen=True)
class _Goal:
    """What every row of one plan is planned for."""

    effect: float
    alpha: float
    alpha_plan: float
    power: float
    test: str
    m: int
    correction: str
    sd_confidence: float | None


def _check_plan_options(
    effect: float,
    alpha: float,
    power: float,
    test: str,
    correction: str,
    comparisons: int,
    sd_confidence: float | None,
    *,
    source: str | None,
) -> None:
    """Refuse an option ``plan_seeds`` cannot use, naming it and what is allowed."""
    if not (isinstance(effect, int | float) and math.isfinite(effect) and effect > 0):
        raise UserInputError(
            f"effect must be a positive number (a mean difference in the "
            f"table's units), got {effect!r}",
            source=source,
            field="effect",
        )
    for name, value in (("alpha", alpha), ("power", power), ("sd_confidence", sd_confidence)):
        if name == "sd_confidence" and value is None:
            continue
        if not (isinstance(value, int | float) and 0 < value < 1):
            raise UserInputError(
                f"{name} must lie strictly between 0 and 1, got {value!r}",
                source=source,
                field=name,
            )
    check_test_and_correction(test, correction, source=source)
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


def _plan_row(s: PairedSample, goal: _Goal) -> dict:
    """One comparison's row of the plan (see ``plan_seeds`` for the columns)."""
    paired = s.pairing == PAIRED
    n_a, n_b = len(s.values_a), None if paired else len(s.values_b)
    sd, df = _noise(s)
    sd_plan = sd * _sd_bound(df, goal.sd_confidence) if goal.sd_confidence else sd
    min_p = min_p_value(goal.test, n_a, n_b=n_b)
    row = {
        "a": s.a,
        "b": s.b,
        "pairing": s.pairing,
        "n": s.n,
        "sd_diff": sd,
        "sd_planned": sd_plan,
        "alpha_planned": goal.alpha_plan,
        "n_required": _seeds_needed(goal, sd_plan, goal.alpha_plan, paired),
        "n_required_unadjusted": _seeds_needed(goal, sd_plan, goal.alpha, paired),
        "mde": math.nan,
        "power_at_n": math.nan,
        "min_p_possible": min_p,
        "warning": None,
        "pilot_warning": _pilot_warning(s, goal, sd, df),
    }
    unplanned = _unplannable(sd_plan, paired)
    if min_p >= goal.alpha_plan:
        # The chosen test cannot reach the planned level at this n: whatever the t-test
        # could see, this test has no power and no detectable effect here.
        row["power_at_n"] = 0.0
        row["warning"] = "; ".join(w for w in (unplanned, _floor_warning(s, goal, min_p)) if w)
    elif unplanned:
        row["warning"] = unplanned
    else:
        es = goal.effect / sd_plan
        row["power_at_n"] = power_of_test(goal.test, es, n_a, goal.alpha_plan, n_b=n_b)
        row["mde"] = _mde_standardised(goal.test, n_a, n_b, goal.alpha_plan, goal.power) * sd_plan
    return row


def _unplannable(sd: float, paired: bool) -> str | None:
    """Why no n can be planned from the pilot's sd (0, or beyond float64), or None."""
    if sd > 0 and math.isfinite(sd):
        return None
    if math.isinf(sd):
        return "the pilot's sd is beyond the float64 range (about 1.8e308): nothing is planned"
    what = (
        "the pilot's differences have no variance (every seed gives the same difference)"
        if paired
        else "neither group of the pilot has any variance"
    )
    return f"{what}: its sd is 0, and the seeds needed cannot be planned from it"


def _noise(s: PairedSample) -> tuple[float, int]:
    """The sd a comparison's test sees and its degrees of freedom: the sd of the seed-wise
    differences (n - 1), or the pooled sd of two independent groups (n_a + n_b - 2), each
    computed on values scaled by a power of two as ``compare`` computes them (squares of
    1e200 overflow, those of 1e-310 vanish)."""
    if s.pairing == PAIRED:
        return sample_sd(s.differences), s.n - 1
    return pooled_sd(s.values_a, s.values_b), len(s.values_a) + len(s.values_b) - 2


def _sd_bound(df: int, confidence: float) -> float:
    """The one-sided upper confidence bound of sigma at ``confidence``, as a multiple of the
    sample sd: sqrt(df / chi2_(1 - confidence, df)) (normal data)."""
    return math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


def _seeds_needed(goal: _Goal, sd: float, alpha: float, paired: bool) -> float:
    """Seeds (pairs, or per group) ``goal.test`` needs at ``alpha`` for ``goal.power``,
    raised where needed so that its smallest possible p falls below ``alpha``."""
    if _unplannable(sd, paired):
        return math.nan
    needed = _required_seeds(goal.test, goal.effect / sd, alpha, goal.power, paired)
    floor_n = _smallest_n(goal.test, alpha, paired=paired)
    if np.isfinite(needed) and floor_n is not None:
        return max(int(needed), floor_n)
    return needed


def _required_seeds(test: str, es: float, alpha: float, power: float, paired: bool) -> float:
    """The smallest n (pairs, or seeds per group) at which ``test`` reaches ``power``.

    The t test's n comes first, from the noncentral t on every n: no test of a mean beats
    the t test on normal differences, so the search for the other tests starts there and
    walks up through the sizes where their power is simulated; beyond them, their power
    is a smooth function of n (``power_of_test``) and is searched as the t test's is.
    """

    def t_at(k: np.ndarray, efficiency: float = 1.0) -> np.ndarray:
        k = np.asarray(k, dtype=float) * efficiency
        if paired:
            return t_power(es, k, alpha)
        return t_power(es, k, alpha, df=2 * k - 2, scale=np.sqrt(k / 2))

    n_t = _required_n(t_at, power)
    if test == "t" or not np.isfinite(n_t):
        return n_t
    largest = _largest_simulated(test, paired)
    for k in range(max(2, int(n_t)), largest + 1):
        if power_of_test(test, es, k, alpha, n_b=None if paired else k) >= power:
            return k
    start = max(int(n_t), largest + 1)
    if test == "permutation":
        return start  # the t test's power from here on, which n_t already reaches
    return _required_n(lambda k: t_at(k, WILCOXON_ARE), power, lo=start)


def _largest_simulated(test: str, paired: bool) -> int:
    """The largest n (pairs, or per group) whose power ``power_of_test`` simulates."""
    if test == "wilcoxon":
        return SIMULATION_MAX_N
    if paired:
        return int(math.log2(EXACT_PERMUTATION_LIMIT))
    k = 1
    while math.comb(2 * (k + 1), k + 1) <= EXACT_PERMUTATION_LIMIT:
        k += 1
    return k


@functools.cache
def _mde_standardised(test: str, n: int, n_b: int | None, alpha: float, power: float) -> float:
    """The standardised effect whose power is ``power`` at the current n (cached: the same
    for every comparison of a report with the same seeds)."""
    xtol = 1e-12 if test == "t" else 1e-4  # a simulated power is a step function of es
    return _mde(lambda e: power_of_test(test, e, n, alpha, n_b=n_b), power, xtol=xtol)


def _pilot_warning(s: PairedSample, goal: _Goal, sd: float, df: int) -> str | None:
    """For a pilot of fewer than ``PILOT_MIN_SEEDS`` seeds: how uncertain its sd is, how
    often a plan on the estimate reaches the power, and what the upper bound needs."""
    paired = s.pairing == PAIRED
    seeds = s.n if paired else min(len(s.values_a), len(s.values_b))
    if seeds >= PILOT_MIN_SEEDS:
        return None
    what = f"{s.n} paired seeds" if paired else f"{seeds} seeds in its smaller group"
    # A plan on sd reaches its power when sigma <= sd: P(chi2_df >= df) for normal data.
    reached = float(stats.chi2.sf(df, df))
    head = f"the pilot has {what} (fewer than {PILOT_MIN_SEEDS}): the sd of A - B is uncertain"
    if goal.sd_confidence is not None:
        return (
            f"{head}; planned for its {goal.sd_confidence:.0%} upper confidence bound "
            f"({_sd_bound(df, goal.sd_confidence):.2f} x the estimate), a plan that reaches "
            f"{goal.power:.0%} power in about {goal.sd_confidence:.0%} of such pilots"
        )
    factor = _sd_bound(df, PILOT_BOUND)
    needed = _seeds_needed(goal, sd * factor, goal.alpha_plan, paired)
    per_group = "" if paired else " per group"
    bound = (
        f"; planning for its {PILOT_BOUND:.0%} upper confidence bound ({factor:.2f} x the "
        f"estimate) needs {int(needed)} seeds{per_group} (study plan-seeds --sd-confidence "
        f"{PILOT_BOUND:g})"
        if np.isfinite(needed)
        else ""
    )
    return (
        f"{head}, and a plan on its estimate reaches {goal.power:.0%} power only when the "
        f"true sd is not larger, in about {reached:.0%} of such pilots{bound}"
    )


def _floor_warning(s: PairedSample, goal: _Goal, min_p: float) -> str:
    """Why the test cannot reach significance at the current n after the correction: the
    best adjusted p is m * min_p (Holm, Bonferroni; BH too when this comparison alone
    reaches its floor)."""
    m, alpha, alpha_plan = goal.m, goal.alpha, goal.alpha_plan
    paired = s.pairing == PAIRED
    floor_n = _smallest_n(goal.test, alpha_plan, paired=paired)
    per_group = "" if paired else " per group"
    need = (
        f"at least {floor_n} seeds{per_group} are needed"
        if floor_n is not None
        else "more resamples are needed"
    )
    n_b = None if paired else len(s.values_b)
    words = _test_words(goal.test, len(s.values_a), n_b)
    seeds_words = f"{s.n} paired seeds" if paired else f"{len(s.values_a)} + {n_b} unpaired seeds"
    if min_p >= alpha:
        why = f"which is not below alpha = {alpha:g}: no result can be significant"
    elif goal.correction == "bh":
        why = (
            f"so {m} x p = {m * min_p:.4g} is not below alpha = {alpha:g}: under "
            f"Benjamini-Hochberg over {m} comparisons it can be significant only if "
            f"at least {math.ceil(m * min_p / alpha + 1e-12)} comparisons reach "
            "the floor together"
        )
    else:
        why = (
            f"so the {CORRECTION_NAMES[goal.correction]}-adjusted p is at least "
            f"{m} x p = {min(1.0, m * min_p):.4g}, not below alpha = {alpha:g} "
            f"({m} comparisons): no result can be significant after the correction"
        )
    return f"{words} with {seeds_words} cannot go below p = {min_p:.4g}, {why}; {need}" + (
        f" (at alpha / {m} = {alpha_plan:.4g})" if alpha_plan != alpha else ""
    )


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


def _required_n(power_at, power: float, limit: int = 100_000, *, lo: int = 2) -> float:
    """The smallest n >= ``lo`` whose power reaches the target (the power grows with n), by
    evaluating the power on every n, block by block (up to 64, 1024, ...) up to ``limit``;
    NaN when none does."""
    for hi in (64, 1024, 16_384, limit):
        if hi < lo:
            continue
        ks = np.arange(lo, hi + 1)
        reached = np.flatnonzero(np.asarray(power_at(ks)) >= power)
        if len(reached):
            return int(ks[reached[0]])
        lo = hi + 1
    return math.nan


def _mde(power_of: Callable[[float], float], power: float, *, xtol: float = 1e-12) -> float:
    """The standardised effect whose power is ``power`` at the current n (root of a
    monotone function, bracketed by doubling)."""
    hi = 1.0
    while power_of(hi) < power:
        hi *= 2
        if hi > 1e6:
            return math.nan
    return float(optimize.brentq(lambda e: power_of(e) - power, 0.0, hi, xtol=xtol))


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
        arrangements = 2**n if n_b is None else math.comb(n + n_b, n)
        exact = arrangements <= EXACT_PERMUTATION_LIMIT
        return f"{'exact' if exact else 'Monte Carlo'} permutation test"
    return "t-test"
