"""``compare``: the family of comparisons a table asks for, tested and corrected together.

It validates the options and the table, pairs the groups (``table``), sends each pair to
the paired or the unpaired driver with its own random stream (so a comparison's resampling
does not depend on which others share the call), corrects the primary test's p-values
across the whole family (``correction``), writes each verdict (``formatting``) and adds the
omnibus block when three groups or more are compared.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.correction import CORRECTIONS, adjust_p_values
from study.analysis.stats.formatting import verdict
from study.analysis.stats.omnibus_tests import omnibus
from study.analysis.stats.paired import compare_paired
from study.analysis.stats.results import (
    PAIRED,
    TESTS,
    Comparison,
    ComparisonReport,
    Omnibus,
)
from study.analysis.stats.table import pair_samples, resolve_pairs, tidy_results, unpaired_seeds
from study.analysis.stats.unpaired import compare_unpaired
from study.errors import UserInputError


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

    Ties up to float rounding, the permutation tests' resolution and overflow are decided
    as ``precision`` says: float32 values merge within a few float32 ulps, float64 values
    only within a few float64 ulps; a result float64 cannot hold is refused with a
    ``UserInputError`` naming the comparison, never turned into a verdict.

    With three compared groups or more and at least 2 seeds common to all of them, the
    report has an ``omnibus`` block (see ``omnibus``).

    Raises ``UserInputError`` for a bad table or option, with ``source`` naming the table.

    (Long by this docstring, the reference of the package's entry point; the code is 55
    lines.)
    """
    check_options(
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
    resolved = resolve_pairs(tidy, baseline, pairs, source)
    comparisons = []
    for s in pair_samples(tidy, resolved, seed_col, source):
        driver = compare_paired if s.pairing == PAIRED else compare_unpaired
        comparisons.append(
            driver(
                s,
                test=test,
                alpha=alpha,
                n_resamples=n_resamples,
                aso=aso,
                seed_sequence=comparison_seed(seed, s.a, s.b),
                source=source,
            )
        )
    _correct(comparisons, alpha=alpha, correction=correction, min_effect=min_effect)

    involved = {g for pair in resolved for g in pair}
    groups = [g for g in dict.fromkeys(tidy["group"]) if g in involved]  # table order
    omni, omni_note = _omnibus_block(tidy, groups, alpha)
    settings = {
        "value_col": value_col,
        "group_col": group_col,
        "seed_col": seed_col,
        "baseline": baseline,
        "pairs": [list(p) for p in resolved],
        "alpha": alpha,
        "correction": correction,
        "family_size": len(comparisons),
        "min_effect": min_effect,
        "test": test,
        "seed": seed,
        "n_resamples": n_resamples,
        "aso": aso,
        "source": source,
    }
    return ComparisonReport(comparisons, omni, omni_note, unpaired_seeds(tidy, groups), settings)


def _correct(
    comparisons: list[Comparison], *, alpha: float, correction: str, min_effect: float | None
) -> None:
    """Set p_adj, reject and the verdict of every comparison of the family."""
    # Every planned comparison counts in the family, an undefined p too (conservative).
    p_adj = adjust_p_values([c.p for c in comparisons], correction, count_undefined=True)
    family = len(comparisons)
    for c, padj in zip(comparisons, p_adj, strict=True):
        c.p_adj = float(padj)
        c.reject = bool(np.isfinite(padj) and padj < alpha)
        c.verdict = verdict(
            c, alpha=alpha, correction=correction, family=family, min_effect=min_effect
        )


def _omnibus_block(
    tidy: pd.DataFrame, groups: list[str], alpha: float
) -> tuple[Omnibus | None, str | None]:
    """The omnibus tests over the compared groups on the seeds all of them have, or why
    there are none."""
    if len(groups) < 3:
        return None, "no omnibus test: fewer than three groups are compared"
    wide = (
        tidy[tidy["group"].isin(groups)]
        .pivot(index="seed", columns="group", values="value")[groups]
        .dropna()
    )
    if len(wide) < 2:
        return None, (
            f"no omnibus test: {len(wide)} seed(s) are present in all "
            f"{len(groups)} groups, at least 2 are needed"
        )
    return omnibus(wide, alpha=alpha), None


def check_options(
    *, alpha: float, correction: str, test: str, seed: Any, n_resamples: int, source: str | None
) -> None:
    """Refuse an option ``compare`` cannot use, naming it and what is allowed."""
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise UserInputError(
            f"alpha must lie strictly between 0 and 1, got {alpha!r}", source=source, field="alpha"
        )
    check_test_and_correction(test, correction, source=source)
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


def check_test_and_correction(test: str, correction: str, *, source: str | None) -> None:
    """Refuse an unknown test or correction (``compare`` and ``power.plan_seeds`` alike)."""
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


def comparison_seed(seed: int | None, a: str, b: str) -> np.random.SeedSequence:
    """One random stream per comparison, derived from ``seed`` and the two group names, so a
    comparison's resampling does not depend on which other comparisons share the call."""
    key = (zlib.crc32(a.encode()), zlib.crc32(b.encode()))
    return np.random.SeedSequence(seed, spawn_key=key)
