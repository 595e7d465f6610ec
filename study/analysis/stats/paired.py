"""The paired driver: one comparison of two groups on the seeds they share.

Seed s of a student distils from seed s of its teacher, so the natural unit is the
seed-wise difference A - B. Everything here is computed on those differences: the paired
t with its interval, the exact Wilcoxon signed-rank and sign-flip permutation tests, the
BCa bootstrap interval (resampling seeds, never each group on its own), d_z and g_z
(standardised by the sd of the differences, not a pooled sd), and Shapiro-Wilk on the
differences (what the t assumes), not on each group's column.

``paired_tests`` runs the three tests exactly as ``compare`` does and nothing else; the
calibration (scripts/calibrate.py, tests/test_calibration.py) simulates through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from study.analysis.stats.aso import aso_epsilon_min
from study.analysis.stats.calibration import bca_coverage
from study.analysis.stats.formatting import format_seeds, three_digits
from study.analysis.stats.parametric import TTest, hedges_correction, mean, one_sample_t, shapiro
from study.analysis.stats.parametric import sd as sample_sd
from study.analysis.stats.precision import (
    TIE_ULPS,
    float32_rounded,
    rank_safe_differences,
    require_finite,
    rounding_tolerance,
)
from study.analysis.stats.rank import EXACT_RANK_TEST_MAX_N, wilcoxon_signed_rank
from study.analysis.stats.resampling import Permutation, SeedLike, bca_interval, paired_permutation
from study.analysis.stats.results import (
    TEST_NAMES,
    Comparison,
    Note,
    NoteKind,
    PairedSample,
    monte_carlo_note,
)
from study.errors import UserInputError


@dataclass(frozen=True)
class PairedTests:
    """The paired tests of one comparison: the cleaned ``differences`` A - B (see
    ``precision.rank_safe_differences``), the paired ``t``, ``wilcoxon`` (W, p, method)
    and the sign-flip ``permutation`` test."""

    differences: np.ndarray
    t: TTest
    wilcoxon: tuple[float, float, str]
    permutation: Permutation


def paired_tests(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, seed: SeedLike = 0
) -> PairedTests:
    """The paired t, Wilcoxon signed-rank and sign-flip permutation tests of A - B, with
    ties up to float rounding as ``precision`` decides them. Raises ValueError where A - B
    is beyond float64 (``compare_paired`` names the groups and seeds first)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        raw = a - b
    if not np.all(np.isfinite(raw)):
        raise ValueError("A - B is beyond the float64 range")
    d = rank_safe_differences(a, b)
    permutation = paired_permutation(
        raw, tolerance=rounding_tolerance(a, b), n_resamples=n_resamples, seed=seed
    )
    return PairedTests(d, one_sample_t(d), wilcoxon_signed_rank(d), permutation)


def compare_paired(
    s: PairedSample,
    *,
    test: str,
    alpha: float,
    n_resamples: int,
    aso: bool,
    seed_sequence: np.random.SeedSequence,
    source: str | None = None,
) -> Comparison:
    """The ``Comparison`` of a paired sample: every statistic of ``compare`` for paired
    groups, the primary ``test``'s p as ``p``. Refuses (UserInputError) a comparison
    whose differences or results float64 cannot hold.

    Long only by the ``Comparison`` it fills, one named field a line (48 of them); the
    statistics themselves take the first twenty lines."""
    boot_seed, perm_seed, aso_seed = seed_sequence.spawn(3)
    a, b = s.values_a, s.values_b
    _refuse_overflow(s, source)
    tests = paired_tests(a, b, n_resamples=n_resamples, seed=perm_seed)
    d, n = tests.differences, len(tests.differences)
    sd_diff = sample_sd(d)
    w, p_w, w_method = tests.wilcoxon
    # d_z: standardised by the sd of the differences (the paired design's own noise),
    # not by a pooled sd of the two groups (pitfall avoided).
    d_z = tests.t.mean / sd_diff if sd_diff > 0 else math.nan
    g_z = hedges_correction(n - 1) * d_z
    bca, bca_reason = bca_interval((d,), np.mean, n_resamples, boot_seed)
    aso_eps = aso_ratio = None
    if aso:
        aso_eps, aso_ratio = aso_epsilon_min(
            a, b, alpha=alpha, n_resamples=n_resamples, seed=aso_seed, paired=True
        )
    p_by_test = {"t": tests.t.p, "wilcoxon": p_w, "permutation": tests.permutation.p}
    c = Comparison(
        a=s.a,
        b=s.b,
        pairing=s.pairing,
        test=TEST_NAMES[s.pairing][test],
        n=n,
        n_a=n,
        n_b=n,
        seeds=list(s.seeds),
        unpaired_a=list(s.unpaired_a),
        unpaired_b=list(s.unpaired_b),
        mean_a=mean(a),
        mean_b=mean(b),
        mean_diff=tests.t.mean,
        sd_diff=sd_diff,
        sd_pooled=None,
        ci95=tests.t.ci95,
        ci95_bca=bca,
        ci95_bca_reason=bca_reason,
        t=tests.t.t,
        df=tests.t.df,
        p_t=tests.t.p,
        w=w,
        p_wilcoxon=p_w,
        wilcoxon_method=w_method,
        u=None,
        p_mannwhitney=None,
        mannwhitney_method=None,
        p_permutation=tests.permutation.p,
        permutation_method=tests.permutation.method,
        d_z=d_z,
        g_z=g_z,
        g=None,
        effect_size=g_z,
        effect_size_name="g_z (Hedges-corrected mean difference / sd of differences)",
        p_greater=float(np.mean(d > 0)),
        # Normality is checked on the differences (what the paired t assumes), not on
        # each group's column (pitfall avoided).
        shapiro_p=shapiro(d),
        p=float(p_by_test[test]),
        aso_epsilon_min=aso_eps,
        aso_violation_ratio=aso_ratio,
        notes=_notes(s, tests, sd_diff, n_resamples),
        permutation_mc_se=tests.permutation.mc_se,
        permutation_resolution=tests.permutation.resolution,
        ci95_bca_coverage=bca_coverage(n) if bca is not None else None,
    )
    _require_finite(c, source)
    return c


def _require_finite(c: Comparison, source: str | None) -> None:
    """Refuse a comparison whose results float64 cannot hold (an sd of 2e308)."""
    require_finite(
        [
            (f"the mean of {c.a}", c.mean_a),
            (f"the mean of {c.b}", c.mean_b),
            (f"the sd of {c.a} - {c.b}", c.sd_diff),
            *((f"the 95% t interval of {c.a} - {c.b}", x) for x in c.ci95),
            *((f"the BCa interval of {c.a} - {c.b}", x) for x in c.ci95_bca or []),
        ],
        where=f"{c.a} vs {c.b}",
        source=source,
    )


def _refuse_overflow(s: PairedSample, source: str | None) -> None:
    """A difference beyond float64 (1.5e308 - (-1.5e308)) cannot be tested: name it."""
    with np.errstate(over="ignore", invalid="ignore"):
        raw = s.values_a - s.values_b
    bad = np.flatnonzero(~np.isfinite(raw))
    if len(bad):
        i = int(bad[0])
        raise UserInputError(
            f"{s.a} vs {s.b}: {s.a} - {s.b} is beyond the float64 range (about 1.8e308) at seed "
            f"{s.seeds[i]!r} ({s.a} = {s.values_a[i]:.4g}, {s.b} = {s.values_b[i]:.4g}), so "
            "no test result can be given; divide the values by a power of ten and compare again",
            source=source,
        )


def _notes(s: PairedSample, tests: PairedTests, sd_diff: float, n_resamples: int) -> list[Note]:
    """What is unusual about a paired comparison, in words, each note of its kind (a
    reader of another primary test skips the notes on the Wilcoxon and permutation tests)."""
    notes: list[Note] = []
    a, b, d = s.values_a, s.values_b, tests.differences
    raw = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.array_equal(raw, d) and np.max(np.abs(raw - d)) > 1e-12 * max(
        1.0, float(np.max(np.abs(np.concatenate([a, b]))))
    ):
        notes.append(
            Note(
                f"the values are {_precision_words(a, b)}: differences equal up to float "
                f"rounding (within {TIE_ULPS} ulps of the seed's values, float32 ulps where one "
                "of them is a float32 value) are treated as equal"
            )
        )
    notes += _wilcoxon_notes(d, tests.wilcoxon[2])
    mean_diff = tests.t.mean
    if not sd_diff > 0:
        if mean_diff != 0:
            notes.append(
                Note(
                    f"every seed gives the same difference A - B = {three_digits(mean_diff)}: "
                    "the paired differences have zero variance, so t, its CI and d_z are "
                    "undefined"
                )
            )
        else:
            notes.append(Note("the paired differences have zero variance: t and d_z are undefined"))
    elif len(d) < 3:
        notes.append(Note("g_z is undefined with 2 paired seeds (Hedges' correction needs 3)"))
    for group, seeds in ((s.a, s.unpaired_a), (s.b, s.unpaired_b)):
        if seeds:
            left_out = f"seeds of {group} without a pair, left out: {format_seeds(seeds)}"
            notes.append(Note(left_out, NoteKind.SEEDS_LEFT_OUT))
    if tests.permutation.method == "monte carlo":
        notes.append(monte_carlo_note(n_resamples, tests.permutation.mc_se))
    return notes


def _precision_words(a: np.ndarray, b: np.ndarray) -> str:
    """The precision the values were judged in (``precision.float32_rounded``), in words."""
    single = float32_rounded(np.concatenate([a, b]))
    whole = np.concatenate([a, b]) == np.round(np.concatenate([a, b]))
    if np.all(single | whole):
        return "float32 values"
    return "float64 values" if not np.any(single) else "float32 values and float64 values"


def _wilcoxon_notes(d: np.ndarray, method: str) -> list[Note]:
    """Zeros dropped, normal approximation, ties: how the Wilcoxon p was reached."""
    if method == "none":
        return [Note("all paired differences are zero: no Wilcoxon test", NoteKind.WILCOXON)]
    notes = []
    n_zero = int(np.sum(d == 0))
    nonzero_abs = np.abs(d[d != 0])
    if n_zero:
        notes.append(
            Note(
                f"Wilcoxon: {n_zero} zero difference(s) dropped before ranking (Wilcoxon's "
                "convention)",
                NoteKind.WILCOXON,
            )
        )
    if method == "approx":
        notes.append(
            Note(
                f"Wilcoxon: normal approximation ({len(nonzero_abs)} non-zero differences, "
                f"more than {EXACT_RANK_TEST_MAX_N}), tie-corrected, continuity-corrected",
                NoteKind.WILCOXON,
            )
        )
    elif len(np.unique(nonzero_abs)) < len(nonzero_abs):
        notes.append(
            Note(
                "Wilcoxon: tied |differences| get midranks; the p-value is exact, "
                "conditional on the ties",
                NoteKind.WILCOXON,
            )
        )
    return notes
