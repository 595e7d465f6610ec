"""Comparisons of groups across seeds, with the statistics a paper needs.

The input is the tidy table of results: one row per (group, seed) with a numeric value, for
example the test accuracy of each student generation for each seed. ``compare`` pairs the
groups by seed (seed s of a student against seed s of its teacher), and for every comparison
reports n, the means, the mean difference with a t interval and a BCa bootstrap interval,
the paired t, Wilcoxon signed-rank and sign-flip permutation tests, effect sizes and a
p-value corrected across the family of comparisons. With three groups or more it adds an
omnibus block (Friedman with Kendall's W and the Nemenyi critical difference, and the
repeated-measures ANOVA with the Greenhouse-Geisser correction).

Pitfalls this module avoids on purpose (each is also marked where it happens):

- the paired bootstrap resamples seeds (pairs of values), never each group on its own;
- d_z divides by the sd of the differences, not by a pooled sd of the two groups;
- normality is checked on the differences, not on the groups' columns;
- the ``seed`` argument drives every random number (bootstrap, permutations, ASO);
- corrected p-values come back in the original order of the comparisons.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy
from scipy import special, stats
from statsmodels.stats.multitest import multipletests

from study.errors import UserInputError

TESTS = ("t", "wilcoxon", "permutation")
CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "bonferroni": "bonferroni", "none": None}
CORRECTION_NAMES = {
    "holm": "Holm",
    "bh": "Benjamini-Hochberg",
    "bonferroni": "Bonferroni",
    "none": "no correction",
}
PAIRED = "paired by seed"
UNPAIRED = "unpaired"
# Exact enumeration of the permutation distribution up to this many rearrangements
# (2^n sign vectors for paired data, C(n_a + n_b, n_a) label splits for unpaired data).
EXACT_PERMUTATION_LIMIT = 100_000
# The exact null distributions of the rank tests are used up to this sample size.
EXACT_RANK_TEST_MAX_N = 50

_TEST_NAMES = {
    PAIRED: {
        "t": "paired t",
        "wilcoxon": "Wilcoxon signed-rank",
        "permutation": "sign-flip permutation",
    },
    UNPAIRED: {
        "t": "Welch t",
        "wilcoxon": "Mann-Whitney U",
        "permutation": "permutation (independent samples)",
    },
}
# scipy renamed the normal approximation of the rank tests from 'approx' to 'asymptotic' in 1.13.
_SCIPY_VERSION = tuple(int(part) for part in scipy.__version__.split(".")[:2])
_ASYMPTOTIC = "asymptotic" if _SCIPY_VERSION >= (1, 13) else "approx"
_RNG_KEYWORD = "rng" if _SCIPY_VERSION >= (1, 15) else "random_state"

SeedLike = int | np.integer | np.random.Generator | np.random.SeedSequence | None


# --------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedSample:
    """The values two groups contribute to one comparison.

    Paired (``pairing == 'paired by seed'``): ``values_a[i]`` and ``values_b[i]`` come from
    the same seed ``seeds[i]``; seeds present in only one group are listed in ``unpaired_a``
    / ``unpaired_b`` and left out of the pairs. Unpaired (the groups share no seed): all the
    values of each group, ``seeds`` is empty and ``unpaired_a`` / ``unpaired_b`` list every
    seed of each group.
    """

    a: str
    b: str
    pairing: str
    seeds: tuple[Any, ...]
    values_a: np.ndarray
    values_b: np.ndarray
    unpaired_a: tuple[Any, ...]
    unpaired_b: tuple[Any, ...]

    @property
    def n(self) -> int:
        """Number of pairs (paired) or of values in both groups together (unpaired)."""
        if self.pairing == PAIRED:
            return len(self.seeds)
        return len(self.values_a) + len(self.values_b)

    @property
    def differences(self) -> np.ndarray:
        """Seed-wise A - B, cleaned of subtraction roundoff (paired samples only)."""
        if self.pairing != PAIRED:
            raise ValueError(f"{self.a} and {self.b} share no seed: there are no differences")
        return rank_safe_differences(self.values_a, self.values_b)


@dataclass
class Comparison:
    """One comparison A vs B. Differences are always A - B.

    ``n``: paired seeds (paired) or n_a + n_b (unpaired); ``ci95``: t interval of the mean
    difference, always 95% whatever alpha; ``ci95_bca``: 95% BCa bootstrap interval (None,
    with ``ci95_bca_reason``, when degenerate); ``t``, ``df``, ``p_t``: paired t (Welch t
    when unpaired); ``wilcoxon_method``: 'exact', 'approx' or 'none' (all differences 0);
    ``permutation_method``: 'exact' or 'monte carlo'; ``test`` and ``p``: the primary test
    and its raw p; ``p_adj``: corrected across the call's comparisons; ``reject``: p_adj <
    alpha; ``effect_size``: g_z (paired) or g (unpaired), named in ``effect_size_name``;
    ``notes``: anything unusual (zeros dropped, zero variance, Monte Carlo p).

    Keys that do not apply to the pairing are None: the Wilcoxon and d_z/g_z keys for
    unpaired groups, the Mann-Whitney and pooled-sd keys for paired ones. Undefined numbers
    (zero variance) are NaN, and None in ``to_dict``.
    """

    a: str
    b: str
    pairing: str
    test: str
    n: int
    n_a: int
    n_b: int
    seeds: list[Any]
    unpaired_a: list[Any]
    unpaired_b: list[Any]
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float | None
    sd_pooled: float | None
    ci95: list[float]
    ci95_bca: list[float] | None
    ci95_bca_reason: str | None
    t: float
    df: float
    p_t: float
    w: float | None
    p_wilcoxon: float | None
    wilcoxon_method: str | None
    u: float | None
    p_mannwhitney: float | None
    mannwhitney_method: str | None
    p_permutation: float
    permutation_method: str
    d_z: float | None
    g_z: float | None
    g: float | None
    effect_size: float | None
    effect_size_name: str
    p_greater: float
    shapiro_p: float | None
    p: float
    p_adj: float = math.nan
    reject: bool = False
    verdict: str = ""
    aso_epsilon_min: float | None = None
    aso_violation_ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN and infinities become None."""
        return _jsonable(asdict(self))


@dataclass
class Omnibus:
    """Tests across all compared groups on the seeds every group has.

    Mean ranks rank the groups within each seed, 1 = lowest value (ties get the mean rank).
    """

    groups: list[str]
    k: int
    n_seeds_common: int
    seeds_common: list[Any]
    q: float
    p_friedman: float
    w_kendall: float
    mean_ranks: dict[str, float]
    q_alpha: float
    cd: float
    F: float
    df1: float
    df2: float
    p_anova: float
    gg_epsilon: float
    p_anova_gg: float
    anova_applicable: bool
    shapiro_p: dict[str, float | None]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN and infinities become None."""
        return _jsonable(asdict(self))


@dataclass
class ComparisonReport:
    """Everything ``compare`` found, in the order the comparisons were asked for."""

    comparisons: list[Comparison]
    omnibus: Omnibus | None
    omnibus_note: str | None
    unpaired_seeds: dict[str, list[Any]]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: ``comparisons`` (a list of objects with ``a`` and ``b``),
        ``omnibus`` (an object or None), ``omnibus_note``, ``unpaired_seeds``, ``settings``."""
        return {
            "comparisons": [c.to_dict() for c in self.comparisons],
            "omnibus": self.omnibus.to_dict() if self.omnibus is not None else None,
            "omnibus_note": self.omnibus_note,
            "unpaired_seeds": _jsonable(self.unpaired_seeds),
            "settings": _jsonable(self.settings),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison (for tables in reports)."""
        return pd.DataFrame([asdict(c) for c in self.comparisons])


# --------------------------------------------------------------------------------------
# The table: validation and pairing
# --------------------------------------------------------------------------------------


def tidy_results(
    table: pd.DataFrame,
    *,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    source: str | None = None,
) -> pd.DataFrame:
    """The table reduced to validated columns ``group`` (str), ``seed`` and ``value`` (float).

    Raises ``UserInputError`` for a missing column, a missing or non-numeric value, a missing
    group or seed, or a (group, seed) that appears twice.
    """
    if not isinstance(table, pd.DataFrame):
        raise UserInputError(
            f"expected a table (pandas DataFrame), got {type(table).__name__}", source=source
        )
    for option, col in (("value_col", value_col), ("group_col", group_col), ("seed_col", seed_col)):
        if col not in table.columns:
            raise UserInputError(
                f"column '{col}' ({option}) is missing; the table has columns "
                f"{[str(c) for c in table.columns]}",
                source=source,
                field=col,
            )
    if len(table) == 0:
        raise UserInputError("the table has no rows", source=source)

    # Positional arrays: the table's index may have duplicate or non-integer labels.
    labels = table.index.to_numpy()
    raw = table[value_col].to_numpy()
    groups = table[group_col].to_numpy()
    seed_values = table[seed_col].to_numpy()
    values = pd.to_numeric(table[value_col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    for i in np.flatnonzero(~np.isfinite(values)):
        if pd.isna(raw[i]):
            what = "is missing"
        elif np.isnan(values[i]):
            what = f"is not a number: {_plain(raw[i])!r}"
        else:
            what = f"is not finite: {_plain(raw[i])!r}"
        row, group, seed = (_plain(labels[i]), _plain(groups[i]), _plain(seed_values[i]))
        raise UserInputError(
            f"value {what} (row {row!r}, group {group!r}, seed {seed!r}); "
            "every row needs a finite numeric value",
            source=source,
            field=value_col,
        )
    for col, column in ((group_col, groups), (seed_col, seed_values)):
        missing = pd.isna(column)
        if missing.any():
            raise UserInputError(
                f"{col} is missing in row {_plain(labels[np.argmax(missing)])!r}",
                source=source,
                field=col,
            )

    seeds = table[seed_col]
    if pd.api.types.is_float_dtype(seeds) and np.all(np.mod(seeds.to_numpy(), 1) == 0):
        seeds = seeds.astype(np.int64)  # seeds read as 0.0, 1.0, ... from a CSV
    tidy = pd.DataFrame(
        {"group": [str(g) for g in groups], "seed": seeds.to_numpy(), "value": values}
    )
    dup = tidy.duplicated(["group", "seed"], keep=False)
    if dup.any():
        first = tidy[dup].iloc[0]
        in_group = int((dup & (tidy["group"] == first["group"])).sum())
        raise UserInputError(
            f"group {first['group']!r} has {in_group} rows sharing seeds (first: seed "
            f"{_plain(first['seed'])!r}); each (group, seed) must appear once",
            source=source,
            field=seed_col,
        )
    return tidy


def pair_groups(
    table: pd.DataFrame,
    *,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> list[PairedSample]:
    """The comparisons a table asks for, each with its values paired by seed.

    With ``baseline``: every other group against it (A = the group, B = the baseline). With
    ``pairs``: those pairs, in that order. With neither: all pairs of groups in the order
    the groups first appear in the table.
    """
    tidy = tidy_results(
        table, value_col=value_col, group_col=group_col, seed_col=seed_col, source=source
    )
    return _pair(tidy, _resolve_pairs(tidy, baseline, pairs, source), seed_col, source)


def _resolve_pairs(
    tidy: pd.DataFrame,
    baseline: str | None,
    pairs: Sequence[tuple[str, str]] | None,
    source: str | None,
) -> list[tuple[str, str]]:
    groups = list(dict.fromkeys(tidy["group"]))
    if baseline is not None and pairs is not None:
        raise UserInputError(
            "give either a baseline or pairs, not both", source=source, field="pairs"
        )
    if baseline is not None:
        baseline = str(baseline)
        if baseline not in groups:
            raise UserInputError(
                f"baseline group {baseline!r} is not in the table; groups are {groups}",
                source=source,
                field="baseline",
            )
        if len(groups) < 2:
            raise UserInputError(
                f"only the baseline {baseline!r} is in the table: nothing to compare it with",
                source=source,
                field="baseline",
            )
        return [(g, baseline) for g in groups if g != baseline]
    if pairs is not None:
        if len(pairs) == 0:
            raise UserInputError("pairs is empty", source=source, field="pairs")
        resolved: list[tuple[str, str]] = []
        for pair in pairs:
            if isinstance(pair, str) or len(pair) != 2:
                raise UserInputError(
                    f"each pair must name two groups, got {pair!r}", source=source, field="pairs"
                )
            a, b = str(pair[0]), str(pair[1])
            for g in (a, b):
                if g not in groups:
                    raise UserInputError(
                        f"pair ({a!r}, {b!r}) names group {g!r}, which is not "
                        f"in the table; groups are {groups}",
                        source=source,
                        field="pairs",
                    )
            if a == b:
                raise UserInputError(
                    f"pair ({a!r}, {b!r}) compares a group with itself",
                    source=source,
                    field="pairs",
                )
            if (a, b) in resolved or (b, a) in resolved:
                raise UserInputError(
                    f"pair ({a!r}, {b!r}) is listed twice", source=source, field="pairs"
                )
            resolved.append((a, b))
        return resolved
    if len(groups) < 2:
        raise UserInputError(
            f"the table has one group ({groups[0]!r}): nothing to compare",
            source=source,
            field="group",
        )
    return list(itertools.combinations(groups, 2))


def _pair(
    tidy: pd.DataFrame, pairs: list[tuple[str, str]], seed_col: str, source: str | None
) -> list[PairedSample]:
    by_group = {
        g: dict(zip(df["seed"], df["value"], strict=True))
        for g, df in tidy.groupby("group", sort=False)
    }
    samples = []
    for a, b in pairs:
        va, vb = by_group[a], by_group[b]
        common = _sorted_seeds(set(va) & set(vb))
        only_a = _sorted_seeds(set(va) - set(vb))
        only_b = _sorted_seeds(set(vb) - set(va))
        if len(common) >= 2:
            samples.append(
                PairedSample(
                    a,
                    b,
                    PAIRED,
                    tuple(common),
                    np.array([va[s] for s in common]),
                    np.array([vb[s] for s in common]),
                    tuple(only_a),
                    tuple(only_b),
                )
            )
        elif len(common) == 0 and len(va) >= 2 and len(vb) >= 2:
            # No seed in common: the groups are independent samples, compared unpaired.
            samples.append(
                PairedSample(
                    a,
                    b,
                    UNPAIRED,
                    (),
                    np.array([va[s] for s in only_a]),
                    np.array([vb[s] for s in only_b]),
                    tuple(only_a),
                    tuple(only_b),
                )
            )
        else:
            raise UserInputError(
                f"{a!r} vs {b!r}: {len(common)} paired seed(s) ({a!r} has {len(va)} seeds, "
                f"{b!r} has {len(vb)}); a paired comparison needs at least 2 seeds present in "
                "both groups, an unpaired one (no seed shared) at least 2 seeds in each",
                source=source,
                field=seed_col,
            )
    return samples


def _sorted_seeds(seeds: set[Any]) -> list[Any]:
    try:
        return sorted(seeds)
    except TypeError:  # mixed types
        return sorted(seeds, key=str)


# --------------------------------------------------------------------------------------
# Building blocks (each usable on its own)
# --------------------------------------------------------------------------------------


FLOAT_TIE_RESOLUTION = 1e-6
"""Differences closer than this, relative to the values they come from, are one value:
float32 metrics (the accuracies a training logs) carry ~6e-8 relative rounding, so two
seeds that each win by one test image differ by a few 1e-8 in A - B."""


def rank_safe_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A - B with float rounding removed: differences within float rounding of zero are
    zero, and |differences| within float rounding of each other are one value (their mean,
    each sign kept).

    Pitfall avoided: rounding (0.3 - 0.1 - 0.2 != 0; accuracies stored as float32 k/N)
    would split true ties of |A - B| and turn true zeros into tiny non-zeros, which changes
    the rank tests (see the warning in scipy.stats.wilcoxon), and would give a constant
    difference a tiny variance and an absurd t.

    Seed i's rounding is measured on its own values: tol_i = ``FLOAT_TIE_RESOLUTION`` x
    max(|a_i|, |b_i|), so one diverged seed (an NLL of 1e3) does not widen every other
    seed's tolerance. Sorted by magnitude, a group starts at its smallest value m and takes
    the next ones while they lie within max(tol) of m: a group is never wider than the
    rounding it absorbs, so a run of genuinely different values, each within rounding of
    its neighbour, is not chained into one (rounding to a grid instead would split a tie
    straddling a grid line).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    d = a - b
    tol = FLOAT_TIE_RESOLUTION * np.maximum(np.abs(a), np.abs(b))
    magnitude = np.abs(d)
    out = np.zeros_like(d)
    order = np.flatnonzero(magnitude > tol)
    order = order[np.argsort(magnitude[order], kind="stable")]
    start = 0
    while start < len(order):
        first = order[start]
        end = start + 1
        while end < len(order) and magnitude[order[end]] - magnitude[first] <= max(
            tol[first], tol[order[end]]
        ):
            end += 1
        group = order[start:end]
        out[group] = np.sign(d[group]) * float(np.mean(magnitude[group]))
        start = end
    return out


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
        res = stats.wilcoxon(d, method=_ASYMPTOTIC, correction=True, zero_method="wilcox")
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


def sign_flip_permutation_test(
    differences: np.ndarray, *, n_resamples: int = 10_000, seed: SeedLike = 0
) -> tuple[float, str]:
    """Two-sided sign-flip permutation test of the mean difference: (p, method).

    Under H0 each seed's difference is as likely to be +d as -d. Exact enumeration of all
    2^n sign vectors when 2^n <= 100000 (method 'exact'); otherwise ``n_resamples`` random
    sign vectors drawn from ``seed`` (method 'monte carlo', p = (count + 1) / (R + 1)).
    """
    d = np.asarray(differences, dtype=float)
    exact = 2.0 ** len(d) <= EXACT_PERMUTATION_LIMIT
    res = stats.permutation_test(
        (d, np.zeros_like(d)),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=np.inf if exact else n_resamples,
        **{_RNG_KEYWORD: _generator(seed)},
    )
    return float(min(res.pvalue, 1.0)), "exact" if exact else "monte carlo"


def independent_permutation_test(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, seed: SeedLike = 0
) -> tuple[float, str]:
    """Two-sided permutation test of mean(A) - mean(B) for independent samples: (p, method).

    Exact over all C(n_a + n_b, n_a) splits when there are at most 100000 of them,
    otherwise Monte Carlo with ``n_resamples`` random splits drawn from ``seed``.
    """
    exact = math.comb(len(a) + len(b), len(a)) <= EXACT_PERMUTATION_LIMIT
    res = stats.permutation_test(
        (np.asarray(a, float), np.asarray(b, float)),
        _mean_difference,
        permutation_type="independent",
        vectorized=True,
        n_resamples=np.inf if exact else n_resamples,
        **{_RNG_KEYWORD: _generator(seed)},
    )
    return float(min(res.pvalue, 1.0)), "exact" if exact else "monte carlo"


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def violation_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """The ASO violation ratio eps_W2(A, B) of del Barrio et al. (2018).

    With F^-1, G^-1 the (left-continuous, empirical) quantile functions of A and B:
    eps = int_{F^-1 < G^-1} (F^-1(t) - G^-1(t))^2 dt / int_0^1 (F^-1(t) - G^-1(t))^2 dt,
    the share of the squared Wasserstein-2 distance where A's quantiles fall below B's.
    0 means A's quantiles are everywhere >= B's (A stochastically dominates B), 1 the
    reverse. The empirical quantile functions are step functions, so the integrals are
    computed exactly on the union of their breakpoints (no grid). NaN if A and B have the
    same quantile function.
    """
    return float(
        _violation_ratios(
            np.sort(np.asarray(a, float))[None, :], np.sort(np.asarray(b, float))[None, :]
        )[0]
    )


def _violation_ratios(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """Violation ratio of each row of a_sorted against the same row of b_sorted."""
    na, nb = a_sorted.shape[1], b_sorted.shape[1]
    # Breakpoints of both step functions on the integer scale t * na * nb (exact arithmetic).
    ends = np.union1d(np.arange(1, na + 1) * nb, np.arange(1, nb + 1) * na)
    widths = np.diff(ends, prepend=0) / (na * nb)
    ia = (ends + nb - 1) // nb - 1  # F^-1(t) = x_(ceil(t na)) on (previous end, end]
    ib = (ends + na - 1) // na - 1
    gap = a_sorted[:, ia] - b_sorted[:, ib]
    total = np.sum(widths * gap**2, axis=1)
    violated = np.sum(widths * np.minimum(gap, 0.0) ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, violated / np.where(total > 0, total, 1.0), np.nan)


def aso_epsilon_min(
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: SeedLike = 0,
    paired: bool = True,
) -> tuple[float, float]:
    """Almost Stochastic Order of A over B: (eps_min, violation ratio).

    eps_min (del Barrio, Cuesta-Albertos & Matran 2018; Dror, Shlomov & Reichart 2019) is the
    upper confidence bound at level 1 - alpha of the violation ratio eps_W2(A, B):
    eps_min = eps_hat - Phi^-1(alpha) * sigma_hat / sqrt(n_a n_b / (n_a + n_b)), where
    sigma_hat is the bootstrap sd of sqrt(n_a n_b / (n_a + n_b)) * (eps* - eps_hat); the
    scaling cancels, so eps_min = eps_hat + z_(1-alpha) * sd(eps*). eps_min < 0.5 says A is
    almost stochastically larger than B (the smaller, the stronger); eps_min = 0 is
    stochastic dominance. Clipped to [0, 1].

    The bootstrap resamples seeds (pairs) when ``paired`` (pitfall avoided: resampling each
    group independently would ignore the pairing), each group on its own otherwise. NaN if
    A and B have the same empirical distribution.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    eps_hat = violation_ratio(a, b)
    if not np.isfinite(eps_hat):
        return math.nan, math.nan
    rng = _generator(seed)
    if paired:
        idx = rng.integers(0, len(a), size=(n_resamples, len(a)))
        idx_a = idx_b = idx
    else:
        idx_a = rng.integers(0, len(a), size=(n_resamples, len(a)))
        idx_b = rng.integers(0, len(b), size=(n_resamples, len(b)))
    boot = _violation_ratios(np.sort(a[idx_a], axis=1), np.sort(b[idx_b], axis=1))
    boot = boot[np.isfinite(boot)]
    sigma = float(np.std(boot, ddof=1)) if len(boot) > 1 else 0.0
    eps_min = eps_hat + stats.norm.ppf(1 - alpha) * sigma
    return float(np.clip(eps_min, 0.0, 1.0)), eps_hat


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Nemenyi critical difference of mean ranks (Demsar 2006): (cd, q_alpha).

    q_alpha = studentized range quantile (1 - alpha, k groups, infinite df) / sqrt(2);
    cd = q_alpha * sqrt(k (k + 1) / (6 n)). Two groups whose mean ranks differ by more than
    cd differ significantly.
    """
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))
    return q_alpha * math.sqrt(k * (k + 1) / (6 * n)), q_alpha


def greenhouse_geisser_epsilon(wide: np.ndarray) -> float:
    """Greenhouse-Geisser epsilon of an (n seeds x k groups) table.

    From the k x k covariance S of the groups across seeds, double-centred (equivalent to
    projecting on k - 1 orthonormal contrasts): eps = tr(S_c)^2 / ((k - 1) tr(S_c^2)),
    between 1/(k - 1) (maximal violation of sphericity) and 1 (sphericity).
    """
    x = np.asarray(wide, dtype=float)
    k = x.shape[1]
    s = np.cov(x, rowvar=False)
    h = np.eye(k) - np.ones((k, k)) / k
    sc = h @ s @ h
    if np.trace(sc) <= 1e-12 * max(np.trace(s), 1e-300):  # no variation between groups
        return math.nan
    return float(np.trace(sc) ** 2 / ((k - 1) * np.trace(sc @ sc)))


def adjust_p_values(
    p_values: Sequence[float], correction: str = "holm", *, count_undefined: bool = True
) -> np.ndarray:
    """p-values corrected for multiple comparisons, in the order given.

    ``correction``: 'holm', 'bh' (Benjamini-Hochberg), 'bonferroni' or 'none'. NaN entries
    (a planned test that could not be computed) stay NaN. With ``count_undefined`` (the
    default) they still count in the family size m, as if their p were 1: conservative,
    since dropping them would make the correction of the others less strict. Without it
    the family is the defined p-values only.
    """
    if correction not in CORRECTIONS:
        raise UserInputError(
            f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}",
            field="correction",
        )
    p = np.asarray(p_values, dtype=float)
    out = p.copy()
    ok = np.isfinite(p)
    method = CORRECTIONS[correction]
    # A family of one needs no correction (and multipletests is slow for it: it collects
    # garbage on every call, which costs more than all the tests of a small comparison).
    family = len(p) if count_undefined else int(ok.sum())
    if method is not None and family > 1 and ok.any():
        # multipletests returns the corrected values in the input order (pitfall avoided:
        # a correction computed on sorted p-values must not be reported against the sorted
        # order). An undefined p enters as 1: it counts in m and never lowers another's
        # adjusted value (Holm, Bonferroni and BH alike).
        filled = np.where(ok, p, 1.0) if count_undefined else p[ok]
        adjusted = multipletests(filled, method=method)[1]
        out[ok] = adjusted[ok] if count_undefined else adjusted
    return out


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------


def compare(
    table: pd.DataFrame,
    *,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    alpha: float = 0.05,
    correction: str = "holm",
    test: str = "t",
    seed: int | None = 0,
    n_resamples: int = 10_000,
    aso: bool = False,
    min_effect: float | None = None,
    source: str | None = None,
) -> ComparisonReport:
    """Compare groups across seeds, paired by seed, with a corrected p-value per comparison.

    Which comparisons: every other group against ``baseline``; or the given ``pairs``; or
    all pairs of groups in the order they first appear. Differences are A - B.

    Paired (the two groups share at least 2 seeds): paired t (``t``, ``df``, ``p_t``), its
    95% interval ``ci95``, a BCa bootstrap interval ``ci95_bca`` (resampling seeds),
    Wilcoxon signed-rank (``w``, ``p_wilcoxon``), sign-flip permutation (``p_permutation``),
    ``d_z`` = mean_diff / sd_diff and ``g_z`` = J(n - 1) d_z with Hedges' exact gamma-form
    factor J (see ``hedges_correction``), ``p_greater`` = share of seeds with A > B and
    ``shapiro_p`` = Shapiro-Wilk on the differences. Seeds present in only one group are
    listed in ``unpaired_a`` / ``unpaired_b``.

    Unpaired (no seed shared): Welch t with its 95% interval, Mann-Whitney U (``u``,
    ``p_mannwhitney``), an independent-samples permutation test, Hedges' g from the pooled
    sd (``g``), and ``p_greater`` = share of all (a, b) value pairs with a > b.

    ``test`` picks the primary test ('t', 'wilcoxon' or 'permutation'; the unpaired
    counterparts are Welch t, Mann-Whitney U and the independent permutation test) whose p
    is corrected across this call's comparisons by ``correction`` ('holm', 'bh',
    'bonferroni', 'none') into ``p_adj``; ``reject`` = p_adj < alpha. ``seed`` seeds every
    resampling (None: not reproducible). ``aso`` adds ``aso_epsilon_min`` (see
    ``aso_epsilon_min``) at level 1 - alpha.

    The correction family is every comparison of the call: one whose p is undefined
    (e.g. every seed gives the same difference, so the t-test has zero variance) still
    counts in m, which is conservative. ``min_effect`` (the smallest difference of interest,
    in the table's units) sharpens the verdict of a non-significant comparison: "the CI lies
    within +-min_effect" or "inconclusive: the CI includes differences of min_effect or
    more". Every verdict names its interval (the unadjusted 95% t interval of the mean
    difference, whatever the primary test).

    With three compared groups or more and at least 2 seeds common to all of them, the
    report has an ``omnibus`` block (see ``omnibus``).

    Raises ``UserInputError`` for a bad table or option, with ``source`` naming the table.
    """
    _check_options(
        alpha=alpha,
        correction=correction,
        test=test,
        seed=seed,
        n_resamples=n_resamples,
        source=source,
    )
    if min_effect is not None and not (
        isinstance(min_effect, int | float) and math.isfinite(min_effect) and min_effect > 0
    ):
        raise UserInputError(
            f"min_effect must be a positive number, got {min_effect!r}",
            source=source,
            field="min_effect",
        )
    tidy = tidy_results(
        table, value_col=value_col, group_col=group_col, seed_col=seed_col, source=source
    )
    resolved = _resolve_pairs(tidy, baseline, pairs, source)
    samples = _pair(tidy, resolved, seed_col, source)

    comparisons = [
        _compare_sample(
            s,
            test=test,
            alpha=alpha,
            n_resamples=n_resamples,
            aso=aso,
            seed_sequence=_comparison_seed(seed, s.a, s.b),
        )
        for s in samples
    ]
    # Every planned comparison counts in the family, an undefined p too (conservative).
    p_adj = adjust_p_values([c.p for c in comparisons], correction, count_undefined=True)
    family = len(comparisons)
    for c, padj in zip(comparisons, p_adj, strict=True):
        c.p_adj = float(padj)
        c.reject = bool(np.isfinite(padj) and padj < alpha)
        c.verdict = _verdict(
            c, alpha=alpha, correction=correction, family=family, min_effect=min_effect
        )

    involved = {g for pair in resolved for g in pair}
    groups = [g for g in dict.fromkeys(tidy["group"]) if g in involved]  # table order
    omni, omni_note = None, None
    if len(groups) >= 3:
        wide = (
            tidy[tidy["group"].isin(groups)]
            .pivot(index="seed", columns="group", values="value")[groups]
            .dropna()
        )
        if len(wide) >= 2:
            omni = omnibus(wide, alpha=alpha)
        else:
            omni_note = (
                f"no omnibus test: {len(wide)} seed(s) are present in all "
                f"{len(groups)} groups, at least 2 are needed"
            )
    else:
        omni_note = "no omnibus test: fewer than three groups are compared"

    settings = {
        "value_col": value_col,
        "group_col": group_col,
        "seed_col": seed_col,
        "baseline": baseline,
        "pairs": [list(p) for p in resolved],
        "alpha": alpha,
        "correction": correction,
        "family_size": family,
        "min_effect": min_effect,
        "test": test,
        "seed": seed,
        "n_resamples": n_resamples,
        "aso": aso,
        "source": source,
    }
    return ComparisonReport(comparisons, omni, omni_note, _unpaired_seeds(tidy, groups), settings)


def _check_options(
    *, alpha: float, correction: str, test: str, seed: Any, n_resamples: int, source: str | None
) -> None:
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise UserInputError(
            f"alpha must lie strictly between 0 and 1, got {alpha!r}", source=source, field="alpha"
        )
    if correction not in CORRECTIONS:
        raise UserInputError(
            f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}",
            source=source,
            field="correction",
        )
    if test not in TESTS:
        raise UserInputError(
            f"unknown test {test!r}; choose one of {list(TESTS)}", source=source, field="test"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise UserInputError(
            f"seed must be an integer or None, got {seed!r}", source=source, field="seed"
        )
    if (
        isinstance(n_resamples, bool)
        or not isinstance(n_resamples, int | np.integer)
        or n_resamples < 100
    ):
        raise UserInputError(
            f"n_resamples must be an integer >= 100, got {n_resamples!r}",
            source=source,
            field="n_resamples",
        )


def _comparison_seed(seed: int | None, a: str, b: str) -> np.random.SeedSequence:
    """One random stream per comparison, derived from ``seed`` and the two group names, so a
    comparison's resampling does not depend on which other comparisons share the call."""
    key = (zlib.crc32(a.encode()), zlib.crc32(b.encode()))
    return np.random.SeedSequence(seed, spawn_key=key)


def _compare_sample(
    s: PairedSample,
    *,
    test: str,
    alpha: float,
    n_resamples: int,
    aso: bool,
    seed_sequence: np.random.SeedSequence,
) -> Comparison:
    boot_seed, perm_seed, aso_seed = seed_sequence.spawn(3)
    a, b = s.values_a, s.values_b
    notes: list[str] = []
    paired = s.pairing == PAIRED

    if paired:
        d = s.differences
        n = len(d)
        raw = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        if not np.array_equal(raw, d) and np.max(np.abs(raw - d)) > 1e-12 * max(
            1.0, float(np.max(np.abs(np.concatenate([a, b]))))
        ):
            notes.append(
                "differences equal up to float rounding (within "
                f"{FLOAT_TIE_RESOLUTION:g} x the seed's values, e.g. float32 accuracies) "
                "are treated as equal"
            )
        mean_diff = float(np.mean(d))
        sd_diff = float(np.std(d, ddof=1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The paired t is the one-sample t of the seed-wise differences (= ttest_rel).
            tres = stats.ttest_1samp(d, 0.0)
            ci = tres.confidence_interval(0.95)
        t_ok = sd_diff > 0
        w, p_w, w_method = wilcoxon_signed_rank(d)
        n_zero = int(np.sum(d == 0))
        nonzero_abs = np.abs(d[d != 0])
        if w_method == "none":
            notes.append("all paired differences are zero: no Wilcoxon test")
        else:
            if n_zero:
                notes.append(
                    f"Wilcoxon: {n_zero} zero difference(s) dropped before ranking "
                    "(Wilcoxon's convention)"
                )
            if w_method == "approx":
                notes.append(
                    f"Wilcoxon: normal approximation ({len(nonzero_abs)} non-zero differences, "
                    f"more than {EXACT_RANK_TEST_MAX_N}), tie-corrected, continuity-corrected"
                )
            elif len(np.unique(nonzero_abs)) < len(nonzero_abs):
                notes.append(
                    "Wilcoxon: tied |differences| get midranks; the p-value is exact, "
                    "conditional on the ties"
                )
        p_perm, perm_method = sign_flip_permutation_test(d, n_resamples=n_resamples, seed=perm_seed)
        # d_z: standardised by the sd of the differences (the paired design's own noise),
        # not by a pooled sd of the two groups (pitfall avoided).
        d_z = mean_diff / sd_diff if sd_diff > 0 else math.nan
        g_z = hedges_correction(n - 1) * d_z
        if not t_ok:
            if mean_diff != 0:
                notes.append(
                    f"every seed gives the same difference A - B = {_fmt(mean_diff)}: the "
                    "paired differences have zero variance, so t, its CI and d_z are undefined"
                )
            else:
                notes.append("the paired differences have zero variance: t and d_z are undefined")
        elif n < 3:
            notes.append("g_z is undefined with 2 paired seeds (Hedges' correction needs 3)")
        for group, seeds in ((s.a, s.unpaired_a), (s.b, s.unpaired_b)):
            if seeds:
                notes.append(f"seeds of {group} without a pair, left out: {format_seeds(seeds)}")
        bca, bca_reason = _bca_interval((d,), np.mean, n_resamples, boot_seed)
        p_greater = float(np.mean(d > 0))
        # Normality is checked on the differences (what the paired t assumes), not on each
        # group's column (pitfall avoided).
        shapiro_p = _shapiro(d)
        u = p_u = u_method = None
        sd_pooled = g = None
        effect, effect_name = g_z, "g_z (Hedges-corrected mean difference / sd of differences)"
        n_a = n_b = n
    else:
        n_a, n_b = len(a), len(b)
        mean_diff = float(np.mean(a) - np.mean(b))
        sd_diff = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tres = stats.ttest_ind(a, b, equal_var=False)
            ci = tres.confidence_interval(0.95)
        t_ok = bool(np.ptp(a) > 0 or np.ptp(b) > 0)
        if not t_ok:
            notes.append("both groups have zero variance: Welch t and g are undefined")
        u, p_u, u_method = _mann_whitney(a, b)
        p_perm, perm_method = independent_permutation_test(
            a, b, n_resamples=n_resamples, seed=perm_seed
        )
        dof = n_a + n_b - 2
        sd_pooled = float(
            math.sqrt(((n_a - 1) * np.var(a, ddof=1) + (n_b - 1) * np.var(b, ddof=1)) / dof)
        )
        g = hedges_correction(dof) * mean_diff / sd_pooled if sd_pooled > 0 else math.nan
        d_z = g_z = None
        w = p_w = w_method = None
        # Unpaired: each group is resampled on its own (there are no pairs to keep together).
        bca, bca_reason = _bca_interval((a, b), _mean_difference, n_resamples, boot_seed)
        p_greater = float(np.mean(a[:, None] > b[None, :]))
        shapiro_p = None
        effect, effect_name = g, "g (Hedges-corrected mean difference / pooled sd)"
        n = n_a + n_b
        notes.append("the groups share no seed: compared as independent samples")

    # Zero variance: scipy returns t = +-inf and p = 0, which no paper should report.
    t_stat, t_df, p_t = (float(tres.statistic), float(tres.df), float(tres.pvalue))
    ci95 = [float(ci.low), float(ci.high)]
    if not t_ok:
        t_stat, p_t, ci95 = math.nan, math.nan, [math.nan, math.nan]
    p_by_test = {"t": p_t, "wilcoxon": p_w if paired else p_u, "permutation": p_perm}
    if perm_method == "monte carlo":
        notes.append(f"permutation p from {n_resamples} random permutations")

    aso_eps = aso_ratio = None
    if aso:
        aso_eps, aso_ratio = aso_epsilon_min(
            a, b, alpha=alpha, n_resamples=n_resamples, seed=aso_seed, paired=paired
        )

    return Comparison(
        a=s.a,
        b=s.b,
        pairing=s.pairing,
        test=_TEST_NAMES[s.pairing][test],
        n=n,
        n_a=n_a,
        n_b=n_b,
        seeds=list(s.seeds),
        unpaired_a=list(s.unpaired_a),
        unpaired_b=list(s.unpaired_b),
        mean_a=float(np.mean(a)),
        mean_b=float(np.mean(b)),
        mean_diff=mean_diff,
        sd_diff=sd_diff,
        sd_pooled=sd_pooled,
        ci95=ci95,
        ci95_bca=bca,
        ci95_bca_reason=bca_reason,
        t=t_stat,
        df=t_df,
        p_t=p_t,
        w=w,
        p_wilcoxon=p_w,
        wilcoxon_method=w_method,
        u=u,
        p_mannwhitney=p_u,
        mannwhitney_method=u_method,
        p_permutation=p_perm,
        permutation_method=perm_method,
        d_z=d_z,
        g_z=g_z,
        g=g,
        effect_size=effect,
        effect_size_name=effect_name,
        p_greater=p_greater,
        shapiro_p=shapiro_p,
        p=float(p_by_test[test]),
        aso_epsilon_min=aso_eps,
        aso_violation_ratio=aso_ratio,
        notes=notes,
    )


def _bca_interval(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    n_resamples: int,
    seed: np.random.SeedSequence,
) -> tuple[list[float] | None, str | None]:
    """95% BCa bootstrap interval, or (None, reason) when it cannot be computed.

    For paired data ``data`` is the single array of differences: resampling differences is
    resampling seeds, so the pairs stay together (pitfall avoided: resampling each group
    independently would destroy the pairing and inflate the interval).
    """
    if all(len(np.unique(x)) == 1 for x in data):
        return None, "degenerate: all values are equal, the bootstrap distribution is a point"
    if any(len(x) < 3 for x in data):
        return None, "degenerate: fewer than 3 seeds, the bootstrap distribution has a few points"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            data,
            statistic,
            method="BCa",
            n_resamples=n_resamples,
            confidence_level=0.95,
            vectorized=True,
            **{_RNG_KEYWORD: _generator(seed)},
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, "degenerate: the BCa acceleration or bias correction is undefined"
    return [lo, hi], None


def _mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Mann-Whitney U of A vs B: (U of A, p, method).

    Both groups at most 50 values: p from the exact null distribution of A's rank sum
    conditional on the observed (mid)ranks (``rank_sum_exact_p``), ties included (method
    'exact'; without ties, scipy's ``method='exact'``). Larger: the normal approximation
    with tie-corrected variance and continuity correction (method 'approx')."""
    if max(len(a), len(b)) > EXACT_RANK_TEST_MAX_N:
        res = stats.mannwhitneyu(
            a, b, alternative="two-sided", use_continuity=True, method=_ASYMPTOTIC
        )
        return float(res.statistic), float(res.pvalue), "approx"
    ranks = stats.rankdata(np.concatenate([a, b]))
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


def _shapiro(x: np.ndarray) -> float | None:
    """Shapiro-Wilk p, None where it cannot be computed (n < 3 or constant data)."""
    if len(x) < 3 or np.ptp(x) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.shapiro(x).pvalue)


def _verdict(
    c: Comparison,
    *,
    alpha: float,
    correction: str,
    family: int,
    min_effect: float | None = None,
) -> str:
    adj = f"{CORRECTION_NAMES[correction]}, {family} comparison{'s' * (family != 1)}"
    if not np.isfinite(c.p_adj):
        about_test = [
            note
            for note in c.notes
            if not (note.startswith("Wilcoxon") and not c.test.startswith("Wilcoxon"))
            and not (note.startswith("permutation") and "permutation" not in c.test)
            and not note.startswith("seeds of ")
        ]
        return (
            f"no test possible between {c.a} and {c.b}: {c.test} gives no p-value because "
            f"{'; '.join(about_test) or 'the data are degenerate'}; the comparison still "
            f"counts in the correction family ({adj}), which is conservative"
        )
    over = (
        f"over {c.n} paired seeds"
        if c.pairing == PAIRED
        else f"over {c.n_a} and {c.n_b} unpaired seeds"
    )
    interval = CI_NAME[c.pairing]
    numbers = (
        f"{c.a} - {c.b} = {_fmt(c.mean_diff)} ({interval} {_fmt(c.ci95[0])} to "
        f"{_fmt(c.ci95[1])}) {over}, {c.test} p_adj = {format_p_value(c.p_adj, alpha=alpha)} "
        f"({adj})"
    )
    if c.reject:
        direction = (
            "higher than"
            if c.mean_diff > 0
            else "lower than"
            if c.mean_diff < 0
            else "different from"
        )
        return f"{c.a} is {direction} {c.b}: {numbers}: significant at alpha = {alpha:g}"
    return f"{c.a} vs {c.b}: not significant at alpha = {alpha:g}: {numbers}" + _ci_reading(
        c.ci95, min_effect, _fmt
    )


# The interval every verdict shows, named in full.
CI_NAME = {
    PAIRED: "unadjusted 95% t CI of the mean difference",
    UNPAIRED: "unadjusted 95% Welch t CI of the mean difference",
}


def _ci_reading(ci: Sequence[float] | None, min_effect: float | None, fmt: Any) -> str:
    """What a non-significant result's CI says about effects of min_effect or more."""
    if min_effect is None:
        return ""
    if ci is None or any(x is None or not np.isfinite(x) for x in ci):
        return f"; no CI to compare with min_effect = {fmt(min_effect)}"
    if -min_effect < ci[0] and ci[1] < min_effect:
        return f"; the CI lies within ±min_effect (±{fmt(min_effect)})"
    return f"; inconclusive: the CI includes differences of min_effect ({fmt(min_effect)}) or more"


def ci_reading(ci: Sequence[float] | None, min_effect: float | None, fmt: Any = None) -> str:
    """The min_effect reading of a non-significant result's interval, without the leading
    '; ' (empty when min_effect is None). ``fmt`` formats min_effect."""
    return _ci_reading(ci, min_effect, fmt or _fmt).removeprefix("; ")


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def format_p_value(p: float, *, alpha: float | None = None, digits: int = 2) -> str:
    """p with ``digits`` significant digits (scientific below 1e-4); never rounded onto or
    across ``alpha``: where the rounded value would equal alpha or fall on the other side of
    it, more digits are printed (p = 0.0497 at alpha 0.05 is '0.0497', not '0.05')."""
    if p is None or not np.isfinite(p):
        return "–"
    if p < 1e-4:
        return f"{p:.1e}"
    return kept_off_alpha(p, alpha, lambda k: f"{p:.{k}g}", digits)


def kept_off_alpha(
    p: float, alpha: float | None, render: Callable[[int], str], precision: int
) -> str:
    """``render(precision)``, or with more precision where that text would read as alpha
    itself or as a value on the other side of alpha (a verdict next to it would then
    contradict the number). A p within float rounding of alpha (no text of up to 15 digits
    tells them apart) prints in full (``repr``: 0.049999999999999996)."""
    text = render(precision)
    if alpha is None or p == alpha:
        return text
    for more in range(precision, 16):
        text = render(more)
        shown = float(text)
        if shown != alpha and (shown < alpha) == (p < alpha):
            return text
    return repr(float(p))


def _fmt_p(p: float) -> str:
    return format_p_value(p)


def format_seeds(seeds: Sequence[Any]) -> str:
    """Seeds in short: 0-4, 7, 9-10 for integers; a comma-separated list otherwise."""
    try:
        s = sorted(int(x) for x in seeds)
        if any(int(x) != x for x in seeds):
            raise TypeError
    except (TypeError, ValueError):
        return ", ".join(str(x) for x in seeds)
    out: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ", ".join(out)


def _unpaired_seeds(tidy: pd.DataFrame, groups: list[str]) -> dict[str, list[Any]]:
    """For each compared group, its seeds missing from at least one other compared group."""
    seeds = {g: set(tidy.loc[tidy["group"] == g, "seed"]) for g in groups}
    everywhere = set.intersection(*seeds.values()) if seeds else set()
    return {g: _sorted_seeds(s - everywhere) for g, s in seeds.items() if s - everywhere}


# --------------------------------------------------------------------------------------
# omnibus
# --------------------------------------------------------------------------------------


def omnibus(wide: pd.DataFrame, *, alpha: float = 0.05) -> Omnibus:
    """Omnibus tests on an (n seeds x k groups) table with no missing cell (k >= 3, n >= 2).

    Friedman chi-square ``q`` (tie-corrected, scipy.stats.friedmanchisquare), Kendall's
    ``w_kendall`` = q / (n (k - 1)), mean ranks (1 = lowest value), the Nemenyi critical
    difference ``cd``; the repeated-measures ANOVA ``F`` on (k - 1, (k - 1)(n - 1)) df
    (statsmodels AnovaRM) and its Greenhouse-Geisser corrected p ``p_anova_gg``.
    ``anova_applicable`` is True when Shapiro-Wilk does not reject normality at 0.05 for the
    differences of every group from the first (``shapiro_p``); False when some test rejects,
    when there are fewer than 3 seeds or a constant difference to test, or F is undefined.
    """
    from statsmodels.stats.anova import AnovaRM

    groups = [str(g) for g in wide.columns]
    x = wide.to_numpy(dtype=float)
    n, k = x.shape
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, p_friedman = stats.friedmanchisquare(*x.T)
    ranks = stats.rankdata(x, axis=1)
    cd, q_alpha = nemenyi_critical_difference(k, n, alpha)

    long = pd.DataFrame(
        {"seed": np.repeat(np.arange(n), k), "group": np.tile(groups, n), "value": x.ravel()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = AnovaRM(long, depvar="value", subject="seed", within=["group"]).fit()
    row = table.anova_table.iloc[0]
    f_value, df1, df2 = float(row["F Value"]), float(row["Num DF"]), float(row["Den DF"])
    p_anova = float(row["Pr > F"])
    # No seed x group interaction left (e.g. identical columns): F is 0/0, and AnovaRM
    # returns noise from roundoff; report it as undefined.
    residual = x - x.mean(axis=0) - x.mean(axis=1, keepdims=True) + x.mean()
    if np.sum(residual**2) <= 1e-20 * max(np.sum((x - x.mean()) ** 2), 1e-300):
        f_value = p_anova = math.nan
        notes.append(
            "no residual variance (the groups differ by constants on every seed): "
            "the ANOVA F is undefined"
        )
    if not np.isfinite(q):
        notes.append("every seed ties all groups: the Friedman test is undefined")
    eps = greenhouse_geisser_epsilon(x)
    p_gg = (
        float(stats.f.sf(f_value, eps * df1, eps * df2))
        if np.isfinite(eps) and np.isfinite(f_value)
        else math.nan
    )

    # Normality of the differences from the first group, not of each group (pitfall avoided).
    shapiro_p = {
        f"{g} - {groups[0]}": _shapiro(rank_safe_differences(x[:, j], x[:, 0]))
        for j, g in enumerate(groups)
        if j > 0
    }
    if n < 3:
        notes.append("normality of the differences cannot be checked with fewer than 3 seeds")
    elif any(p is None for p in shapiro_p.values()):
        notes.append("some differences are constant: their normality cannot be checked")
    applicable = (
        np.isfinite(f_value)
        and n >= 3
        and all(p is not None and p >= 0.05 for p in shapiro_p.values())
    )
    return Omnibus(
        groups=groups,
        k=k,
        n_seeds_common=n,
        seeds_common=list(wide.index),
        q=float(q),
        p_friedman=float(p_friedman),
        w_kendall=float(q) / (n * (k - 1)),
        mean_ranks=dict(zip(groups, (float(r) for r in ranks.mean(axis=0)), strict=True)),
        q_alpha=q_alpha,
        cd=cd,
        F=f_value,
        df1=df1,
        df2=df2,
        p_anova=p_anova,
        gg_epsilon=eps,
        p_anova_gg=p_gg,
        anova_applicable=bool(applicable),
        shapiro_p=shapiro_p,
        notes=notes,
    )


# --------------------------------------------------------------------------------------
# small conversions
# --------------------------------------------------------------------------------------


def _generator(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(_plain(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
