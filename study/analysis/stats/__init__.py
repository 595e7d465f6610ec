"""Comparisons of groups across seeds, with the statistics a paper needs.

The input is the tidy table of results: one row per (group, seed) with a numeric value, for
example the test accuracy of each student generation for each seed. ``compare`` pairs the
groups by seed (seed s of a student against seed s of its teacher), and for every comparison
reports n, the means, the mean difference with a t interval and a BCa bootstrap interval,
the paired t, Wilcoxon signed-rank and sign-flip permutation tests, effect sizes and a
p-value corrected across the family of comparisons. With three groups or more it adds an
omnibus block (Friedman with Kendall's W and the Nemenyi critical difference, and the
repeated-measures ANOVA with the Greenhouse-Geisser correction).

The package is split as scipy.stats is, one concern a module, each usable on its own:

- ``results``: the plain data (``PairedSample``, ``Comparison``, ``Omnibus``, ...);
- ``table``: validating the tidy table and pairing its groups;
- ``precision``: which values are equal up to float rounding, the data's grid, overflow;
- ``parametric``: t tests, Hedges' factor, Shapiro-Wilk; ``rank``: the exact rank tests;
- ``resampling``: permutation tests and the BCa bootstrap; ``aso``: Almost Stochastic Order;
- ``omnibus_tests``: Friedman, Nemenyi, repeated-measures ANOVA; ``correction``: Holm, BH, ...;
- ``paired`` and ``unpaired``: the two drivers that fill a ``Comparison``;
- ``family``: ``compare`` itself; ``formatting``: p-values, seeds and verdicts in words;
- ``simulation`` and ``calibration``: the project's own simulation of its tests and what it
  found (docs/statistics.md).

Every public name is importable from here, as it was from the single module this was, but
``FLOAT_TIE_RESOLUTION``, which issue 15 retired: importing it says what replaced it.

Pitfalls this package avoids on purpose (each is also marked where it happens):

- the paired bootstrap resamples seeds (pairs of values), never each group on its own;
- d_z divides by the sd of the differences, not by a pooled sd of the two groups;
- normality is checked on the differences, not on the groups' columns;
- the ``seed`` argument drives every random number (bootstrap, permutations, ASO);
- corrected p-values come back in the original order of the comparisons;
- ties are judged at the data's own precision, and permutation tests compare sums on the
  data's own grid, so k/N accuracies give exact p-values;
- no verdict comes from an infinity: moments are computed on values scaled by a power of two,
  and a result beyond float64 is refused with a message.
"""

from study.analysis.stats.aso import aso_epsilon_min, violation_ratio
from study.analysis.stats.correction import CORRECTION_NAMES, CORRECTIONS, adjust_p_values
from study.analysis.stats.family import check_test_and_correction, compare
from study.analysis.stats.formatting import (
    CI_NAME,
    NOT_AVAILABLE,
    ci_reading,
    format_p,
    format_p_value,
    format_seeds,
    kept_off_alpha,
)
from study.analysis.stats.omnibus_tests import (
    greenhouse_geisser_epsilon,
    nemenyi_critical_difference,
    omnibus,
)
from study.analysis.stats.paired import PairedTests, paired_tests
from study.analysis.stats.parametric import hedges_correction
from study.analysis.stats.precision import TIE_ULPS, rank_safe_differences, rounding_tolerance
from study.analysis.stats.rank import (
    EXACT_RANK_TEST_MAX_N,
    rank_sum_exact_p,
    signed_rank_exact_p,
    wilcoxon_signed_rank,
)
from study.analysis.stats.resampling import (
    EXACT_PERMUTATION_LIMIT,
    Permutation,
    SeedLike,
    independent_permutation_test,
    paired_permutation,
    sign_flip_permutation_test,
    two_sample_permutation,
)
from study.analysis.stats.results import (
    PAIRED,
    TESTS,
    UNPAIRED,
    Comparison,
    ComparisonReport,
    Note,
    NoteKind,
    Omnibus,
    PairedSample,
    as_note,
    note_kind,
)
from study.analysis.stats.table import pair_groups, tidy_results

RETIRED = {
    "FLOAT_TIE_RESOLUTION": (
        "FLOAT_TIE_RESOLUTION (differences within a relative 1e-6 counted as equal) was "
        "retired by issue 15: it erased real differences of float64 data. Ties up to float "
        "rounding are now judged within TIE_ULPS ulps of each value in its own precision: "
        "use rounding_tolerance(a, b) or rank_safe_differences(a, b)"
    )
}
"""Names the single module had that are gone on purpose, with what replaced them."""


def __getattr__(name: str) -> object:
    # A retired name fails with what replaced it (ImportError, so that ``from ... import``
    # shows the message rather than its own "cannot import name").
    if name in RETIRED:
        raise ImportError(RETIRED[name], name=name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CI_NAME",
    "NOT_AVAILABLE",
    "CORRECTIONS",
    "CORRECTION_NAMES",
    "EXACT_PERMUTATION_LIMIT",
    "EXACT_RANK_TEST_MAX_N",
    "PAIRED",
    "TESTS",
    "TIE_ULPS",
    "UNPAIRED",
    "Comparison",
    "ComparisonReport",
    "Note",
    "NoteKind",
    "Omnibus",
    "PairedSample",
    "PairedTests",
    "Permutation",
    "SeedLike",
    "adjust_p_values",
    "as_note",
    "aso_epsilon_min",
    "check_test_and_correction",
    "ci_reading",
    "compare",
    "format_p",
    "format_p_value",
    "format_seeds",
    "greenhouse_geisser_epsilon",
    "hedges_correction",
    "independent_permutation_test",
    "kept_off_alpha",
    "nemenyi_critical_difference",
    "note_kind",
    "omnibus",
    "pair_groups",
    "paired_permutation",
    "paired_tests",
    "rank_safe_differences",
    "rank_sum_exact_p",
    "rounding_tolerance",
    "sign_flip_permutation_test",
    "signed_rank_exact_p",
    "tidy_results",
    "two_sample_permutation",
    "violation_ratio",
    "wilcoxon_signed_rank",
]
