"""Tests of study.analysis.stats against published reference values and hand computations.

Sources of the reference values are written next to each one.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.anova import AnovaRM

from study.analysis.stats import (
    PAIRED,
    TIE_ULPS,
    UNPAIRED,
    adjust_p_values,
    aso_epsilon_min,
    compare,
    greenhouse_geisser_epsilon,
    hedges_correction,
    nemenyi_critical_difference,
    omnibus,
    rank_safe_differences,
    sign_flip_permutation_test,
    violation_ratio,
    wilcoxon_signed_rank,
)
from study.errors import UserInputError

# R's `sleep` data (Cushny & Peebles 1905 via Student 1908): extra hours of sleep for the
# same 10 patients (ID 1..10) under drug 1 and drug 2.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

# scipy.stats.wilcoxon docstring example (scipy 1.17): differences in height of cross- and
# self-fertilised corn plants (Darwin, via Fisher's Design of Experiments).
CORN = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]


def long_table(
    groups: dict[str, list[float]], seeds: dict[str, list] | None = None, value_col: str = "value"
) -> pd.DataFrame:
    rows = []
    for g, values in groups.items():
        gseeds = seeds[g] if seeds else list(range(1, len(values) + 1))
        rows += [{"group": g, "seed": s, value_col: v} for s, v in zip(gseeds, values, strict=True)]
    return pd.DataFrame(rows)


def sleep_table() -> pd.DataFrame:
    return long_table({"drug1": SLEEP_1, "drug2": SLEEP_2})


# --------------------------------------------------------------------------------------
# paired t on R's sleep data
# --------------------------------------------------------------------------------------


def test_paired_t_matches_r_sleep_example():
    # R: with(sleep, t.test(extra[group == 1], extra[group == 2], paired = TRUE)) prints
    # t = -4.0621, df = 9, p-value = 0.002833, 95 percent CI -2.4598858 -0.7001142,
    # mean difference -1.58; more digits: t = -4.062128, p = 0.002832890.
    c = compare(sleep_table(), baseline="drug2").comparisons[0]
    assert (c.a, c.b, c.pairing, c.n) == ("drug1", "drug2", PAIRED, 10)
    assert c.mean_diff == pytest.approx(-1.58, abs=1e-12)
    assert c.t == pytest.approx(-4.062128, abs=5e-7)
    assert c.df == 9
    assert c.p_t == pytest.approx(0.002832890, abs=5e-10)
    assert c.ci95[0] == pytest.approx(-2.4598858, abs=5e-8)
    assert c.ci95[1] == pytest.approx(-0.7001142, abs=5e-8)
    ref = stats.ttest_rel(SLEEP_1, SLEEP_2)
    assert c.t == pytest.approx(ref.statistic, rel=1e-9)
    assert c.p_t == pytest.approx(ref.pvalue, rel=1e-9)
    assert c.test == "paired t" and c.p == c.p_t


def test_paired_t_interval_matches_hand_formula():
    c = compare(sleep_table()).comparisons[0]
    d = [x - y for x, y in zip(SLEEP_1, SLEEP_2, strict=True)]
    half = stats.t.ppf(0.975, 9) * statistics.stdev(d) / math.sqrt(10)
    assert c.ci95 == pytest.approx(
        [statistics.mean(d) - half, statistics.mean(d) + half], abs=1e-12
    )
    assert c.sd_diff == pytest.approx(statistics.stdev(d), abs=1e-12)


def test_effect_sizes_use_sd_of_differences():
    c = compare(sleep_table()).comparisons[0]
    d = [x - y for x, y in zip(SLEEP_1, SLEEP_2, strict=True)]
    d_z = statistics.mean(d) / statistics.stdev(d)
    assert c.d_z == pytest.approx(d_z, abs=1e-12)
    # Hedges' exact factor for df = 9: Gamma(4.5) / (sqrt(4.5) Gamma(4)).
    j = math.gamma(4.5) / (math.sqrt(4.5) * math.gamma(4))
    assert c.g_z == pytest.approx(j * d_z, abs=1e-12)
    assert c.effect_size == c.g_z
    # d_z is not the pooled-sd d: (mean1 - mean2) / sqrt((s1^2 + s2^2) / 2) is much smaller.
    pooled = math.sqrt((statistics.variance(SLEEP_1) + statistics.variance(SLEEP_2)) / 2)
    assert abs(c.d_z) > 1.5 * abs(statistics.mean(d) / pooled)


def test_hedges_exact_factor_is_close_to_the_approximation():
    for df in (4, 9, 19, 49):
        assert hedges_correction(df) == pytest.approx(1 - 3 / (4 * df - 1), abs=3e-3)
    # df = 1 (2 seeds): undefined, not 0 (0 would print any effect as g_z = 0.00).
    assert math.isnan(hedges_correction(1))


def test_g_z_is_undefined_with_two_seeds_not_zero():
    # Reviewer's gz_n2.py: d_z = 2.83 with 2 seeds used to come back as g_z = 0.0.
    table = long_table({"A": [0.95, 0.93], "B": [0.90, 0.90]})
    c = compare(table).comparisons[0]
    assert c.d_z == pytest.approx(2 * math.sqrt(2), abs=1e-9)
    assert math.isnan(c.g_z) and math.isnan(c.effect_size)
    assert compare(table).to_dict()["comparisons"][0]["g_z"] is None
    assert any("g_z is undefined with 2 paired seeds" in n for n in c.notes)


def test_p_greater_counts_seeds_where_a_beats_b():
    c = compare(sleep_table()).comparisons[0]
    assert c.p_greater == 0.0  # drug 1 never adds more sleep than drug 2
    c = compare(sleep_table(), pairs=[("drug2", "drug1")]).comparisons[0]
    assert c.p_greater == pytest.approx(0.9)  # one tie (patient 5: -0.1 and -0.1)


# --------------------------------------------------------------------------------------
# Wilcoxon
# --------------------------------------------------------------------------------------


def test_wilcoxon_exact_matches_scipy_documented_example():
    # scipy.stats.wilcoxon docstring: wilcoxon(d) -> (24.0, 0.041259765625), exact.
    w, p, method = wilcoxon_signed_rank(np.array(CORN, dtype=float))
    assert (w, method) == (24.0, "exact")
    assert p == pytest.approx(0.041259765625, abs=1e-12)
    assert p == pytest.approx(stats.wilcoxon(CORN).pvalue, abs=1e-12)


def test_wilcoxon_exact_p_equals_explicit_enumeration():
    ranks = stats.rankdata(np.abs(CORN))
    w_plus = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(CORN))
    ]
    total = len(CORN) * (len(CORN) + 1) / 2
    count = sum(min(wp, total - wp) <= 24 for wp in w_plus)
    assert count == 1352
    _, p, _ = wilcoxon_signed_rank(np.array(CORN, dtype=float))
    assert p == pytest.approx(count / 2**15, abs=1e-15)


def brute_force_signed_rank_p(d) -> float:
    """Two-sided exact conditional p: every one of the 2^n sign vectors on the midranks of
    the non-zero |d| (zeros dropped), counted one by one."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    r = stats.rankdata(np.abs(d))
    total = r.sum()
    obs = min(r[d > 0].sum(), total - r[d > 0].sum())
    hits = sum(
        min(np.dot(s, r), total - np.dot(s, r)) <= obs + 1e-9
        for s in itertools.product([0, 1], repeat=len(d))
    )
    return hits / 2 ** len(d)


@pytest.mark.parametrize(
    "images,expected",
    [
        ([1, 1, 1, 1, 2], 0.0625),  # 5 seeds, A better on every one: 2 / 2^5
        ([2, 2, 2, 2, 2, -1], 0.0625),  # 6 seeds, one against: 4 / 2^6
        ([1, 1, 1, 1], 0.125),  # constant +1 image on 4 seeds: 2 / 2^4
        ([2, 2, 1, 1, 3, 0], 0.0625),  # a zero is dropped (Wilcoxon's convention): n = 5
        ([1, 1, 2, 2, 3, 3], 0.03125),
    ],
)
def test_wilcoxon_with_ties_is_exact_at_small_n(images, expected):
    # Accuracies on a 359-image test set: differences are multiples of 1/359 and tie. The
    # normal approximation gave 0.0477, 0.0455 and 0.0718 for the first three (reviewer's
    # wilcoxon_ties.py); the exact conditional null over the midranks gives these values,
    # equal to a brute-force enumeration of all 2^n sign vectors and to scipy's
    # PermutationMethod (which enumerates exactly when 2^n <= its 9999 resamples).
    d = np.array(images, dtype=float) / 359
    w, p, method = wilcoxon_signed_rank(d)
    assert method == "exact"
    assert p == pytest.approx(expected, abs=1e-15)
    assert p == pytest.approx(brute_force_signed_rank_p(d), abs=1e-15)
    ref = stats.wilcoxon(d, zero_method="wilcox", method=stats.PermutationMethod())
    assert p == pytest.approx(ref.pvalue, abs=1e-12) and w == pytest.approx(ref.statistic)


def test_five_tied_seeds_cannot_be_significant_with_wilcoxon():
    base = np.array([330, 328, 333, 331, 329]) / 359
    table = long_table({"A": list(base + np.array([1, 1, 1, 1, 2]) / 359), "B": list(base)})
    c = compare(table, test="wilcoxon").comparisons[0]
    assert c.p == pytest.approx(0.0625) and not c.reject
    assert any("midranks" in n and "exact" in n for n in c.notes)


def test_wilcoxon_sleep_data_with_a_zero_and_ties_is_exact():
    # R's wilcox.test(paired = TRUE) gives the normal approximation here (V = 0,
    # p = 0.009091) because of the tie and the zero. With the zero dropped, 9 non-zero
    # differences all of one sign: the exact conditional p is 2 / 2^9 = 0.00390625.
    c = compare(sleep_table(), test="wilcoxon").comparisons[0]
    assert c.wilcoxon_method == "exact"
    assert c.w == 0.0
    assert c.p_wilcoxon == pytest.approx(2 / 2**9, abs=1e-15)
    assert c.p_wilcoxon == pytest.approx(
        brute_force_signed_rank_p(rank_safe_differences(np.array(SLEEP_1), np.array(SLEEP_2))),
        abs=1e-15,
    )
    assert any("1 zero difference(s) dropped" in note for note in c.notes)


def test_wilcoxon_above_fifty_uses_tie_corrected_normal_approximation():
    rng = np.random.default_rng(3)
    d = rng.integers(-3, 6, 60).astype(float)  # ties and zeros, 60 seeds
    nonzero = d[d != 0]
    assert len(nonzero) > 50
    w, p, method = wilcoxon_signed_rank(d)
    assert method == "approx"
    ref = stats.wilcoxon(d, zero_method="wilcox", correction=True, method="asymptotic")
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    # By hand: tie-corrected variance, continuity correction.
    n = len(nonzero)
    _, t = np.unique(np.abs(nonzero), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(t**3 - t) / 48
    z = (w - n * (n + 1) / 4 + 0.5) / math.sqrt(var)
    assert p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-12)


def test_min_p_value_agrees_with_the_tied_exact_wilcoxon():
    from study.analysis.power import min_p_value

    for n in (4, 5, 6, 10):
        d = np.ones(n)  # all tied, all positive: the most extreme data
        assert wilcoxon_signed_rank(d)[1] == pytest.approx(min_p_value("wilcoxon", n))


def test_rank_safe_differences_remove_subtraction_roundoff():
    a = np.array([0.3, 0.7, 0.1 + 0.2])
    b = np.array([0.1 + 0.2, 0.6, 0.3])
    d = rank_safe_differences(a, b)
    assert d[0] == 0.0 and d[2] == 0.0
    assert d[1] == pytest.approx(0.1, abs=1e-15)


def test_rank_safe_differences_do_not_chain_distinct_values_or_borrow_a_large_scale():
    # Ten genuinely different float32 differences, each 3 float32 ulps above the last
    # (within the 4-ulp rounding of its neighbour): merging neighbours in a chain would
    # make them one tied value; a group is never wider than the rounding it absorbs.
    ulp = float(np.spacing(np.float32(1.001)))
    b = np.ones(10)
    a = np.array([float(np.float32(1.001)) + 3 * ulp * i for i in range(10)])
    assert all(float(np.float32(x)) == x for x in a)
    d = rank_safe_differences(a, b)
    groups = np.unique(d)
    assert len(groups) == 5
    for value in groups:
        members = (a - b)[d == value]
        assert np.ptp(members) <= TIE_ULPS * ulp
    # The same steps in float64 data (0.8e-6 apart at 1.001, far above float64 rounding)
    # are real differences: issue 15 point 2, the old 1e-6 relative rule merged them into 5.
    a64 = 1.001 + 0.8e-6 * np.arange(10)
    assert len(np.unique(rank_safe_differences(a64, b))) == 10
    # One diverged seed (NLL 1000) no longer sets the tolerance of the others: 5e-5 apart
    # is far above their own rounding (5e-7) and stays apart.
    a = np.array([0.5001, 0.50015, 1000.5])
    b = np.array([0.5, 0.5, 0.5])
    d = rank_safe_differences(a, b)
    assert d[0] == pytest.approx(1e-4, rel=1e-9) and d[1] == pytest.approx(1.5e-4, rel=1e-9)
    # Seed-wise rounding is still absorbed: float32 k/N stored values tie exactly.
    a32 = np.array([float(np.float32(k / 359)) for k in (320, 301, 333)])
    b32 = np.array([float(np.float32(k / 359)) for k in (319, 300, 332)])
    d = rank_safe_differences(a32, b32)
    assert len(set(d)) == 1 and d[0] == pytest.approx(1 / 359, abs=1e-7)


# --------------------------------------------------------------------------------------
# permutation test
# --------------------------------------------------------------------------------------


def test_exact_sign_flip_p_equals_explicit_enumeration():
    d = np.array([0.8, -0.3, 1.1, 0.45, 0.2, 0.9, -0.15])
    observed = abs(d.sum())
    flips = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True)))
        for signs in itertools.product([1, -1], repeat=len(d))
    ]
    expected = sum(f >= observed - 1e-12 for f in flips) / 2 ** len(d)
    p, method = sign_flip_permutation_test(d)
    assert method == "exact"
    assert p == pytest.approx(expected, abs=1e-15)
    table = long_table({"A": list(1.0 + d), "B": [1.0] * len(d)})
    c = compare(table, test="permutation").comparisons[0]
    assert c.p_permutation == pytest.approx(expected, abs=1e-12)
    assert c.test == "sign-flip permutation" and c.p == c.p_permutation


def test_permutation_switches_to_seeded_monte_carlo_above_the_exact_limit():
    rng = np.random.default_rng(3)
    d = rng.normal(0.2, 1.0, size=17)  # 2^17 > 100000
    p1, method = sign_flip_permutation_test(d, n_resamples=2000, seed=5)
    p2, _ = sign_flip_permutation_test(d, n_resamples=2000, seed=5)
    p3, _ = sign_flip_permutation_test(d, n_resamples=2000, seed=6)
    assert method == "monte carlo"
    assert p1 == p2 and p1 != p3
    exact_like, _ = sign_flip_permutation_test(d, n_resamples=100_000, seed=1)
    assert p1 == pytest.approx(exact_like, abs=0.05)


# --------------------------------------------------------------------------------------
# multiple comparisons
# --------------------------------------------------------------------------------------


def test_corrections_keep_the_original_order():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm by hand: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06).
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    # BH by hand: 0.005*4/1 = 0.02, 0.01*4/2 = 0.02, 0.03*4/3 = 0.04, 0.04*4/4 = 0.04.
    assert adjust_p_values(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02], abs=1e-12)
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02], abs=1e-12)
    assert adjust_p_values(p, "none") == pytest.approx(p, abs=0)


def test_compare_corrects_across_its_comparisons_in_their_order():
    rng = np.random.default_rng(11)
    base = rng.normal(0, 1, 12)
    table = long_table(
        {
            "teacher": list(base),
            "small": list(base + 0.3 + rng.normal(0, 0.5, 12)),
            "large": list(base + 1.5 + rng.normal(0, 0.5, 12)),
            "none": list(base + rng.normal(0, 0.5, 12)),
        }
    )
    report = compare(table, baseline="teacher", correction="holm")
    assert [(c.a, c.b) for c in report.comparisons] == [
        ("small", "teacher"),
        ("large", "teacher"),
        ("none", "teacher"),
    ]
    raw = [c.p for c in report.comparisons]
    assert np.argmin(raw) == 1  # the smallest p is in the middle: order matters
    m = len(raw)
    order = np.argsort(raw)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[i]))
        holm[i] = running
    assert [c.p_adj for c in report.comparisons] == pytest.approx(list(holm), abs=1e-12)
    assert [c.reject for c in report.comparisons] == [bool(x < 0.05) for x in holm]
    assert report.settings["family_size"] == 3


def test_all_pairs_in_order_of_first_appearance_without_baseline():
    table = long_table({"z": [1, 2, 3.5], "a": [2, 3, 4.1], "m": [0, 1, 2.2]})
    assert [(c.a, c.b) for c in compare(table).comparisons] == [("z", "a"), ("z", "m"), ("a", "m")]


# --------------------------------------------------------------------------------------
# pairing
# --------------------------------------------------------------------------------------


def test_seeds_in_only_one_group_are_reported_not_dropped_silently():
    table = long_table(
        {"A": [1.0, 2.1, 3.3, 4.0, 5.2, 6.1], "B": [1.5, 2.0, 3.9, 4.4, 5.0, 7.0]},
        seeds={"A": [0, 1, 2, 3, 4, 5], "B": [2, 3, 4, 5, 6, 7]},
    )
    report = compare(table)
    c = report.comparisons[0]
    assert c.pairing == PAIRED
    assert c.n == 4 and c.seeds == [2, 3, 4, 5]
    assert c.unpaired_a == [0, 1] and c.unpaired_b == [6, 7]
    assert c.mean_a == pytest.approx(np.mean([3.3, 4.0, 5.2, 6.1]))
    assert report.unpaired_seeds == {"A": [0, 1], "B": [6, 7]}


def test_disjoint_seed_sets_use_welch_and_mann_whitney():
    a = [0.71, 0.74, 0.69, 0.75, 0.72]
    b = [0.66, 0.70, 0.64, 0.68, 0.67, 0.65]  # no ties: exact Mann-Whitney
    table = long_table(
        {"A": a, "B": b}, seeds={"A": [0, 1, 2, 3, 4], "B": [10, 11, 12, 13, 14, 15]}
    )
    c = compare(table).comparisons[0]
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert c.pairing == UNPAIRED and c.test == "Welch t"
    assert c.t == pytest.approx(ref.statistic, rel=1e-12)
    assert c.df == pytest.approx(ref.df, rel=1e-12)
    assert c.p_t == pytest.approx(ref.pvalue, rel=1e-12)
    ci = ref.confidence_interval(0.95)
    assert c.ci95 == pytest.approx([ci.low, ci.high], rel=1e-12)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    assert c.u == mw.statistic and c.p_mannwhitney == pytest.approx(mw.pvalue, rel=1e-12)
    assert c.w is None and c.d_z is None
    # Hedges' g from the pooled sd, exact gamma-form J with df = n_a + n_b - 2 = 9.
    sp = math.sqrt((4 * statistics.variance(a) + 5 * statistics.variance(b)) / 9)
    assert c.g == pytest.approx(hedges_correction(9) * (np.mean(a) - np.mean(b)) / sp, rel=1e-12)
    assert c.unpaired_a == [0, 1, 2, 3, 4] and c.unpaired_b == [10, 11, 12, 13, 14, 15]
    assert c.p_greater == pytest.approx(np.mean([x > y for x in a for y in b]))


def test_mann_whitney_with_ties_is_exact_for_small_groups():
    """Accuracies tie; the normal approximation is not the small-sample answer then. Two
    groups of 3 with ties: the exact conditional p over all C(6, 3) = 20 splits, counted by
    brute force and by scipy's exact permutation method."""
    a, b = [0.71, 0.72, 0.72], [0.70, 0.70, 0.71]
    table = long_table({"A": a, "B": b}, seeds={"A": [0, 1, 2], "B": [10, 11, 12]})
    c = compare(table).comparisons[0]
    pooled = np.array(a + b)
    ranks = stats.rankdata(pooled)
    observed = ranks[:3].sum()
    sums = [ranks[list(idx)].sum() for idx in itertools.combinations(range(6), 3)]
    lower = np.mean([x <= observed + 1e-9 for x in sums])
    upper = np.mean([x >= observed - 1e-9 for x in sums])
    brute = min(1.0, 2 * min(lower, upper))
    assert c.p_mannwhitney == pytest.approx(brute, abs=1e-12) == pytest.approx(0.2, abs=1e-12)
    ref = stats.mannwhitneyu(a, b, method=stats.PermutationMethod(n_resamples=np.inf))
    assert c.p_mannwhitney == pytest.approx(ref.pvalue, abs=1e-12)
    asymptotic = stats.mannwhitneyu(a, b, method="asymptotic").pvalue
    assert abs(asymptotic - brute) > 0.05  # what the old code reported instead
    assert c.u == ref.statistic


def test_exact_rank_sum_p_is_the_exact_fraction_and_not_rejected_at_it():
    """3 seeds against 9, A holding ranks 1, 2 and 7 (rank sum 10): 11 of the C(12, 3) =
    220 splits have a rank sum <= 10, so p = 22 / 220 = 0.1 exactly. Float counts made it
    0.09999999999999999, which p_adj < alpha rejected at alpha = 0.1."""
    from study.analysis.stats import rank_sum_exact_p

    assert rank_sum_exact_p(np.arange(1.0, 13.0), 3, 10.0) == 0.1
    b = [3.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    table = long_table(
        {"A": [1.0, 2.0, 7.0], "B": b},
        seeds={"A": [0, 1, 2], "B": list(range(10, 19))},  # no seed shared: Mann-Whitney
    )
    c = compare(table, test="wilcoxon", alpha=0.1).comparisons[0]
    assert c.p == 0.1 and not c.reject
    # Beyond int64 (C(100, 50) ~ 1e29) the counts are Python integers, exact.
    assert rank_sum_exact_p(np.arange(1.0, 101.0), 50, float(sum(range(1, 51)))) == 2 / (
        math.comb(100, 50)
    )


def test_paired_bootstrap_resamples_seeds_not_groups():
    # Strong seed effect, small treatment noise: resampling each group on its own would give
    # an interval dominated by the seed effect (about 10x wider than the paired one).
    rng = np.random.default_rng(7)
    seed_effect = rng.normal(0, 5.0, 15)
    table = long_table(
        {
            "A": list(seed_effect + 1.0 + rng.normal(0, 0.3, 15)),
            "B": list(seed_effect + rng.normal(0, 0.3, 15)),
        }
    )
    c = compare(table).comparisons[0]
    width_t = c.ci95[1] - c.ci95[0]
    width_bca = c.ci95_bca[1] - c.ci95_bca[0]
    assert 0.7 < width_bca / width_t < 1.3
    assert c.ci95_bca[0] < c.mean_diff < c.ci95_bca[1]


def test_bca_is_none_with_a_reason_when_differences_are_all_equal():
    table = long_table({"A": [1.5, 2.5, 3.5, 4.5], "B": [1.0, 2.0, 3.0, 4.0]})
    c = compare(table).comparisons[0]
    assert c.ci95_bca is None and "degenerate" in c.ci95_bca_reason


def test_seed_argument_makes_resampling_reproducible():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1, 20)
    table = long_table({"A": list(base + rng.normal(0.3, 1, 20)), "B": list(base)})
    r1 = compare(table, seed=123, test="permutation", n_resamples=2000, aso=True)
    r2 = compare(table, seed=123, test="permutation", n_resamples=2000, aso=True)
    r3 = compare(table, seed=124, test="permutation", n_resamples=2000, aso=True)
    c1, c2, c3 = r1.comparisons[0], r2.comparisons[0], r3.comparisons[0]
    assert c1.permutation_method == "monte carlo"
    assert c1.to_dict() == c2.to_dict()
    assert c1.p_permutation != c3.p_permutation
    assert c1.ci95_bca != c3.ci95_bca
    assert c1.aso_epsilon_min != c3.aso_epsilon_min


def test_comparison_results_do_not_depend_on_the_other_comparisons():
    table = long_table(
        {"A": [1.0, 2.2, 2.9, 4.4], "B": [1.1, 2.0, 3.2, 4.0], "C": [0.5, 1.7, 3.1, 3.8]}
    )
    alone = compare(table, pairs=[("A", "B")]).comparisons[0]
    among = compare(table).comparisons[0]
    assert alone.ci95_bca == among.ci95_bca


# --------------------------------------------------------------------------------------
# verdict and JSON
# --------------------------------------------------------------------------------------


def test_verdict_states_direction_ci_test_and_adjusted_p():
    c = compare(sleep_table()).comparisons[0]
    assert c.reject
    assert c.verdict.startswith(
        "drug1 is lower than drug2: drug1 - drug2 = -1.58 "
        "(unadjusted 95% t CI of the mean difference -2.46 to -0.7) over 10 paired seeds, "
        "paired t p_adj = 0.0028"
    )
    assert c.verdict.endswith("significant at alpha = 0.05")
    table = long_table({"A": [1.0, 2.1, 2.9, 4.2], "B": [1.1, 2.0, 3.0, 4.1]})
    c = compare(table).comparisons[0]
    assert not c.reject and c.verdict.startswith("A vs B: not significant at alpha = 0.05")
    assert "no significant difference" not in c.verdict


def test_non_significant_verdict_reads_the_ci_against_min_effect():
    # CI of A - B: about -0.10 to 0.15 (mean 0.025, 4 seeds).
    table = long_table({"A": [1.0, 2.1, 2.9, 4.2], "B": [1.1, 2.0, 3.0, 4.1]})
    wide = compare(table, min_effect=0.05).comparisons[0]
    assert not wide.reject
    assert wide.verdict.endswith(
        "inconclusive: the CI includes differences of min_effect (0.05) or more"
    )
    narrow = compare(table, min_effect=0.5).comparisons[0]
    assert narrow.verdict.endswith("the CI lies within ±min_effect (±0.5)")
    assert "inconclusive" not in narrow.verdict
    assert "min_effect" not in compare(table).comparisons[0].verdict  # not set: no reading
    with pytest.raises(UserInputError):
        compare(table, min_effect=-1.0)


def test_wilcoxon_verdict_names_the_t_interval_it_shows():
    c = compare(sleep_table(), test="wilcoxon").comparisons[0]
    assert "(unadjusted 95% t CI of the mean difference -2.46 to -0.7)" in c.verdict
    assert "Wilcoxon signed-rank p_adj" in c.verdict


@pytest.mark.parametrize(
    "p,alpha,text",
    [
        (0.0497, 0.05, "0.0497"),  # 2 digits would print 0.05 next to "significant"
        (0.05004, 0.05, "0.05004"),  # 0.050 would read as alpha itself
        (0.0504, 0.05, "0.0504"),
        (0.0123, 0.05, "0.012"),  # far from alpha: 2 digits
        (0.0094, 0.01, "0.0094"),
        (0.05, 0.05, "0.05"),
        (math.nextafter(0.05, 0), 0.05, "0.049999999999999996"),  # 15 digits read 0.05
        (math.nextafter(0.05, 1), 0.05, "0.05000000000000001"),
    ],
)
def test_p_values_are_never_rounded_onto_alpha(p, alpha, text):
    from study.analysis.stats import format_p_value

    assert format_p_value(p, alpha=alpha) == text


def test_borderline_verdict_prints_p_with_enough_digits():
    # Reviewer's rounding.py: p = 0.0497 printed as "p_adj = 0.05 ...: significant".
    n = 8
    tc = stats.t.ppf(1 - 0.0497 / 2, n - 1)
    z = np.array([-1.2, -0.5, 0.1, 0.3, 0.6, 0.9, 1.4, -1.6])
    z = (z - z.mean()) / z.std(ddof=1)
    d = 0.01 * (z + tc / math.sqrt(n))
    table = long_table({"A": list(0.9 + d), "B": [0.9] * n})
    c = compare(table).comparisons[0]
    assert c.p == pytest.approx(0.0497, abs=1e-9) and c.reject
    assert "p_adj = 0.0497 (Holm, 1 comparison)" in c.verdict
    assert "p_adj = 0.05 " not in c.verdict


def test_zero_variance_differences_give_no_t_test_instead_of_p_zero():
    # scipy returns t = -inf, p = 0 here; a constant shift is not evidence of infinite size.
    table = long_table({"A": [1.5, 2.5, 3.5, 4.5], "B": [1.0, 2.0, 3.0, 4.0]})
    c = compare(table).comparisons[0]
    assert math.isnan(c.p_t) and math.isnan(c.p_adj) and not c.reject
    assert c.verdict.startswith("no test possible between A and B")
    assert "every seed gives the same difference A - B = 0.5" in c.verdict
    assert c.p_permutation == pytest.approx(2 / 16)  # the sign-flip test is still defined
    table = long_table({"A": [1.0, 1.0], "B": [2.0, 2.0]}, seeds={"A": [0, 1], "B": [2, 3]})
    c = compare(table).comparisons[0]
    assert c.pairing == UNPAIRED and math.isnan(c.p_t) and not c.reject


def test_primary_test_choice_sets_p_and_name():
    c = compare(sleep_table(), test="wilcoxon").comparisons[0]
    assert c.test == "Wilcoxon signed-rank" and c.p == c.p_wilcoxon == c.p_adj
    assert "Wilcoxon signed-rank p_adj" in c.verdict
    c = compare(sleep_table(), seed=None).comparisons[0]  # unseeded still works
    assert c.ci95_bca[0] < c.mean_diff < c.ci95_bca[1]


def test_to_dict_is_strict_json():
    table = long_table(
        {"A": [1.5, 2.5, 3.5, 4.5], "B": [1.0, 2.0, 3.0, 4.0], "C": [1.2, 2.6, 3.1, 4.9]}
    )
    data = compare(table, aso=True).to_dict()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert [(c["a"], c["b"]) for c in back["comparisons"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    assert back["omnibus"]["k"] == 3
    assert back["comparisons"][0]["d_z"] is None  # zero-variance differences
    assert compare(sleep_table()).to_dict()["omnibus"] is None


# --------------------------------------------------------------------------------------
# omnibus
# --------------------------------------------------------------------------------------

# R's friedman.test example data `RoundingTimes` (Hollander & Wolfe 1973, p. 140): 22 players,
# 3 methods of rounding first base. R: Friedman chi-squared = 11.143, df = 2, p = 0.003805.
ROUNDING_TIMES = np.array(
    [
        [5.40, 5.50, 5.55],
        [5.85, 5.70, 5.75],
        [5.20, 5.60, 5.50],
        [5.55, 5.50, 5.40],
        [5.90, 5.85, 5.70],
        [5.45, 5.55, 5.60],
        [5.40, 5.40, 5.35],
        [5.45, 5.50, 5.35],
        [5.25, 5.15, 5.00],
        [5.85, 5.80, 5.70],
        [5.25, 5.20, 5.10],
        [5.65, 5.55, 5.45],
        [5.60, 5.35, 5.45],
        [5.05, 5.00, 4.95],
        [5.50, 5.50, 5.40],
        [5.45, 5.55, 5.50],
        [5.55, 5.55, 5.35],
        [5.45, 5.50, 5.55],
        [5.50, 5.45, 5.25],
        [5.65, 5.60, 5.40],
        [5.70, 5.65, 5.55],
        [6.30, 6.30, 6.25],
    ]
)


def rounding_table() -> pd.DataFrame:
    groups = ["round out", "narrow angle", "wide angle"]
    return long_table({g: list(ROUNDING_TIMES[:, j]) for j, g in enumerate(groups)})


def test_friedman_matches_r_rounding_times_and_scipy():
    report = compare(rounding_table())
    om = report.omnibus
    assert om is not None and om.k == 3 and om.n_seeds_common == 22
    assert om.q == pytest.approx(11.143, abs=5e-4)
    assert om.p_friedman == pytest.approx(0.003805, abs=5e-7)
    ref = stats.friedmanchisquare(*ROUNDING_TIMES.T)
    assert om.q == pytest.approx(ref.statistic, rel=1e-12)
    assert om.p_friedman == pytest.approx(ref.pvalue, rel=1e-12)
    assert om.w_kendall == pytest.approx(ref.statistic / (22 * 2), rel=1e-12)
    ranks = stats.rankdata(ROUNDING_TIMES, axis=1).mean(axis=0)
    assert list(om.mean_ranks.values()) == pytest.approx(list(ranks), abs=1e-12)


def test_nemenyi_cd_matches_demsar_table():
    # Demsar (2006), JMLR 7, Table 5(a): q_0.05 for k = 4 is 2.569;
    # CD = 2.569 * sqrt(4 * 5 / (6 * 20)) = 1.0488 for n = 20 data sets.
    cd, q_alpha = nemenyi_critical_difference(4, 20, 0.05)
    assert q_alpha == pytest.approx(2.569, abs=5e-4)
    assert cd == pytest.approx(1.0488, abs=5e-4)
    # The same table for k = 3 and k = 10 (its values are cut, not rounded, to 3 decimals).
    assert nemenyi_critical_difference(3, 5)[1] == pytest.approx(2.343, abs=1e-3)
    assert nemenyi_critical_difference(10, 5)[1] == pytest.approx(3.164, abs=1e-3)


def test_greenhouse_geisser_epsilon_matches_box_formula():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 4)) @ np.array(
        [[1, 0.5, 0, 0], [0, 1, 0.8, 0], [0, 0, 1, 2], [0, 0, 0, 1.0]]
    )
    k = x.shape[1]
    s = np.cov(x, rowvar=False)
    # Box (1954) / Greenhouse & Geisser (1959) in terms of the raw covariance entries.
    num = k**2 * (np.mean(np.diag(s)) - s.mean()) ** 2
    den = (k - 1) * (np.sum(s**2) - 2 * k * np.sum(s.mean(axis=1) ** 2) + k**2 * s.mean() ** 2)
    eps = greenhouse_geisser_epsilon(x)
    assert eps == pytest.approx(num / den, rel=1e-12)
    assert 1 / (k - 1) <= eps <= 1
    # Compound symmetry (sphericity holds): epsilon = 1.
    cs = np.full((4, 4), 0.5) + 0.5 * np.eye(4)
    z = rng.multivariate_normal(np.zeros(4), cs, size=5000)
    assert greenhouse_geisser_epsilon(z) == pytest.approx(1.0, abs=0.01)


def test_repeated_measures_anova_and_gg_correction():
    wide = pd.DataFrame(ROUNDING_TIMES, columns=["a", "b", "c"])
    om = omnibus(wide)
    n, k = ROUNDING_TIMES.shape
    grand = ROUNDING_TIMES.mean()
    ss_groups = n * np.sum((ROUNDING_TIMES.mean(axis=0) - grand) ** 2)
    ss_seeds = k * np.sum((ROUNDING_TIMES.mean(axis=1) - grand) ** 2)
    ss_error = np.sum((ROUNDING_TIMES - grand) ** 2) - ss_groups - ss_seeds
    f = (ss_groups / (k - 1)) / (ss_error / ((k - 1) * (n - 1)))
    assert om.F == pytest.approx(f, rel=1e-9)
    assert (om.df1, om.df2) == (2, 42)
    assert om.p_anova == pytest.approx(stats.f.sf(f, 2, 42), rel=1e-9)
    eps = om.gg_epsilon
    assert om.p_anova_gg == pytest.approx(stats.f.sf(f, 2 * eps, 42 * eps), rel=1e-9)
    long = wide.assign(seed=range(n)).melt(id_vars="seed", var_name="g", value_name="v")
    ref = AnovaRM(long, depvar="v", subject="seed", within=["g"]).fit().anova_table
    assert om.F == pytest.approx(ref["F Value"].iloc[0], rel=1e-12)


def test_anova_applicability_is_judged_on_differences():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(30, 3)) + np.array([0, 0.2, 0.4])
    assert omnibus(pd.DataFrame(normal, columns=list("abc"))).anova_applicable
    skewed = normal.copy()
    skewed[:, 2] = skewed[:, 0] + rng.exponential(1.0, 30) ** 3
    om = omnibus(pd.DataFrame(skewed, columns=list("abc")))
    assert not om.anova_applicable and om.shapiro_p["c - a"] < 0.05


def test_omnibus_uses_only_seeds_common_to_all_groups():
    table = long_table(
        {"A": [1.0, 2.0, 3.1, 4.0], "B": [1.2, 2.4, 3.0, 4.5], "C": [0.9, 2.2, 3.3]},
        seeds={"A": [0, 1, 2, 3], "B": [0, 1, 2, 3], "C": [0, 1, 3]},
    )
    report = compare(table)
    assert report.omnibus.n_seeds_common == 3 and report.omnibus.seeds_common == [0, 1, 3]
    assert report.unpaired_seeds == {"A": [2], "B": [2]}
    table = long_table(
        {"A": [1.0, 2.0], "B": [1.2, 2.4], "C": [0.9, 2.2]},
        seeds={"A": [0, 1], "B": [0, 1], "C": [5, 6]},
    )
    report = compare(table)
    assert report.omnibus is None and "at least 2" in report.omnibus_note


# --------------------------------------------------------------------------------------
# Almost Stochastic Order
# --------------------------------------------------------------------------------------


def test_violation_ratio_by_hand():
    # Quantiles on thirds: A = (1, 2, 3), B = (0, 2.5, 2.5): A - B = (1, -0.5, 0.5);
    # violated share = 0.25 / (1 + 0.25 + 0.25).
    assert violation_ratio([1, 2, 3], [0, 2.5, 2.5]) == pytest.approx(1 / 6, abs=1e-15)
    # Unequal sizes: F^-1 = 1 on (0, 1/2], 3 on (1/2, 1]; G^-1 = 2: halves of equal weight.
    assert violation_ratio([1, 3], [2]) == pytest.approx(0.5, abs=1e-15)
    assert violation_ratio([5, 6, 7], [1, 2, 3]) == 0.0
    assert violation_ratio([1, 2, 3], [5, 6, 7]) == 1.0
    assert math.isnan(violation_ratio([1, 2], [2, 1]))


def test_aso_epsilon_min_is_an_upper_bound_and_reproducible():
    rng = np.random.default_rng(9)
    a = rng.normal(1.0, 1.0, 20)
    b = rng.normal(0.0, 1.0, 20)
    eps_min, eps_hat = aso_epsilon_min(a, b, n_resamples=2000, seed=1, paired=False)
    assert 0 <= eps_hat <= eps_min < 0.5
    assert aso_epsilon_min(a, b, n_resamples=2000, seed=1, paired=False) == (eps_min, eps_hat)
    reverse, _ = aso_epsilon_min(b, a, n_resamples=2000, seed=1, paired=False)
    assert reverse > 0.5
    c = compare(long_table({"A": list(a), "B": list(b)}), aso=True).comparisons[0]
    assert 0 <= c.aso_epsilon_min <= 1 and c.aso_violation_ratio == pytest.approx(eps_hat)
    assert compare(long_table({"A": list(a), "B": list(b)})).comparisons[0].aso_epsilon_min is None


# --------------------------------------------------------------------------------------
# bad tables
# --------------------------------------------------------------------------------------


def test_missing_column_names_source_and_field():
    table = sleep_table().rename(columns={"value": "acc"})
    with pytest.raises(UserInputError) as err:
        compare(table, source="results.csv")
    assert err.value.source == "results.csv" and err.value.field == "value"
    assert compare(table, value_col="acc").comparisons[0].n == 10


def test_non_numeric_value_is_rejected():
    table = sleep_table().astype({"value": object})
    table.loc[3, "value"] = "n/a"
    with pytest.raises(UserInputError, match="not a number") as err:
        compare(table, source="t.csv")
    assert err.value.field == "value"
    table.loc[3, "value"] = None
    with pytest.raises(UserInputError, match="missing"):
        compare(table)


def test_missing_baseline_is_rejected():
    with pytest.raises(UserInputError) as err:
        compare(sleep_table(), baseline="placebo")
    assert err.value.field == "baseline"


def test_fewer_than_two_paired_seeds_is_rejected():
    table = long_table(
        {"A": [1.0, 2.0, 3.0], "B": [1.0, 2.5, 3.5]}, seeds={"A": [0, 1, 2], "B": [2, 3, 4]}
    )
    with pytest.raises(UserInputError, match="at least 2") as err:
        compare(table)
    assert err.value.field == "seed"


def test_pairs_naming_unknown_groups_and_duplicate_rows_are_rejected():
    with pytest.raises(UserInputError) as err:
        compare(sleep_table(), pairs=[("drug1", "drug3")])
    assert err.value.field == "pairs"
    table = pd.concat([sleep_table(), sleep_table().iloc[[0]]])
    with pytest.raises(UserInputError, match="appear once") as err:
        compare(table)
    assert err.value.field == "seed"
    # every row twice: 20 duplicated rows in each group, not the 40 of both groups
    with pytest.raises(UserInputError, match="'drug1' has 20 rows sharing seeds"):
        compare(pd.concat([sleep_table(), sleep_table()]))


def test_bad_options_are_rejected():
    for kwargs, field in [
        ({"test": "anova"}, "test"),
        ({"correction": "sidak"}, "correction"),
        ({"alpha": 1.5}, "alpha"),
        ({"seed": 1.5}, "seed"),
    ]:
        with pytest.raises(UserInputError) as err:
            compare(sleep_table(), **kwargs)
        assert err.value.field == field


# --------------------------------------------------------------------------------------
# calibration (slow)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_type_one_error_and_coverage_under_the_null():
    """3000 null studies of 10 seeds each (strong seed effect shared by both groups), each
    run through ``compare``: paired t and exact sign-flip (1024 sign vectors) reject in
    4-6% of them at alpha = 0.05, and the t interval covers the true difference (0) in at
    least 94%."""
    rng = np.random.default_rng(20240601)
    n_studies, n = 3000, 10
    seed_effect = rng.normal(0.0, 2.0, size=(n_studies, n))
    a = seed_effect + rng.normal(0.0, 1.0, size=(n_studies, n))
    b = seed_effect + rng.normal(0.0, 1.0, size=(n_studies, n))
    seeds = list(range(n)) * 2
    p_t, p_perm, covered = [], [], []
    for i in range(n_studies):
        table = pd.DataFrame(
            {"group": ["A"] * n + ["B"] * n, "seed": seeds, "value": np.concatenate([a[i], b[i]])}
        )
        c = compare(table, seed=i, test="permutation", n_resamples=100).comparisons[0]
        assert c.permutation_method == "exact"
        p_t.append(c.p_t)
        p_perm.append(c.p_permutation)
        covered.append(c.ci95[0] <= 0.0 <= c.ci95[1])
    assert 0.04 <= np.mean(np.array(p_t) < 0.05) <= 0.06
    assert 0.04 <= np.mean(np.array(p_perm) < 0.05) <= 0.06
    assert np.mean(covered) >= 0.94
    assert p_t == pytest.approx(list(stats.ttest_rel(a, b, axis=1).pvalue), rel=1e-9)


# --------------------------------------------------------------------------------------
# the correction family keeps planned comparisons whose p is undefined
# --------------------------------------------------------------------------------------


def test_undefined_p_still_counts_in_the_correction_family():
    # By hand, Holm over m = 3 with the NaN counted (as p = 1): 0.01 * 3 = 0.03,
    # max(0.03, 0.02 * 2) = 0.04; dropping the NaN (m = 2) would give 0.02 and 0.02.
    p = [0.01, math.nan, 0.02]
    out = adjust_p_values(p, "holm")
    assert out[0] == pytest.approx(0.03) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert adjust_p_values(p, "bonferroni")[[0, 2]] == pytest.approx([0.03, 0.06])
    assert adjust_p_values(p, "bh")[[0, 2]] == pytest.approx([0.03, 0.03])
    dropped = adjust_p_values(p, "holm", count_undefined=False)
    assert dropped[[0, 2]] == pytest.approx([0.02, 0.02])


def test_constant_difference_comparison_counts_in_m_and_says_why_no_p():
    a = [1.0, 2.1, 2.9, 4.2, 5.0, 6.3]
    table = long_table(
        {
            "A": a,
            "B": [x - 0.5 for x in a],  # constant difference: t undefined
            "C": [0.1, 1.2, 2.0, 3.0, 4.1, 5.2],
        }
    )
    report = compare(table, pairs=[("A", "B"), ("A", "C")], correction="bonferroni")
    ab, ac = report.comparisons
    assert math.isnan(ab.p) and report.settings["family_size"] == 2
    assert ac.p_adj == pytest.approx(min(1.0, 2 * ac.p), abs=1e-15)
    assert "(Bonferroni, 2 comparisons)" in ac.verdict
    assert ab.verdict.startswith("no test possible between A and B: paired t gives no p-value")
    assert "every seed gives the same difference A - B = 0.5" in ab.verdict
    assert "still counts in the correction family (Bonferroni, 2 comparisons)" in ab.verdict


def test_seeds_in_one_group_only_are_named_in_the_notes():
    table = long_table(
        {"A": [1.0, 2.1, 3.3, 4.0, 5.2, 6.1], "B": [1.5, 2.0, 3.9, 4.4, 5.0, 7.0]},
        seeds={"A": [0, 1, 2, 3, 4, 5], "B": [2, 3, 4, 5, 6, 7]},
    )
    c = compare(table).comparisons[0]
    assert "seeds of A without a pair, left out: 0-1" in c.notes
    assert "seeds of B without a pair, left out: 6-7" in c.notes


# --------------------------------------------------------------------------------------
# `study compare` on the export's runs.csv and on tables with unpaired seeds
# --------------------------------------------------------------------------------------


def _runs_csv(path, statuses: dict[tuple[str, int], str]) -> str:
    rng = np.random.default_rng(5)
    rows = []
    for role, offset in (("teacher", 0.0), ("ban/gen1", 0.01), ("ban/gen2", 0.012)):
        for seed in range(6):
            status = statuses.get((role, seed), "FINISHED")
            value = 0.9 + offset + rng.normal(0, 0.003) if status == "FINISHED" else ""
            rows.append(f"{role},{seed},{status},{value}\n")
    path.write_text("role,seed,status,test_acc\n" + "".join(rows))
    return str(path)


def test_cli_compare_keeps_finished_runs_of_the_export_and_names_the_rest(tmp_path):
    from typer.testing import CliRunner

    from study.cli import app

    path = _runs_csv(tmp_path / "runs.csv", {("ban/gen1", 2): "FAILED", ("ban/gen2", 2): "SKIPPED"})
    args = ["compare", path, "--group-col", "role", "--value-col", "test_acc"]
    res = CliRunner().invoke(app, [*args, "--baseline", "teacher"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "left out 2 rows whose status is not FINISHED" in res.output
    assert "ban/gen1 seed 2 (FAILED)" in res.output and "ban/gen2 seed 2 (SKIPPED)" in res.output
    # teacher's seed 2 has no pair in either comparison: named, not silently dropped.
    assert "seeds of teacher without a pair, left out: 2" in res.output
    assert "over 5 paired seeds" in res.output
    res = CliRunner().invoke(app, [*args, "--baseline", "teacher", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{") :])
    assert [c["n"] for c in data["comparisons"]] == [5, 5]


def test_cli_compare_text_names_seeds_present_in_one_group_only(tmp_path):
    from typer.testing import CliRunner

    from study.cli import app

    rows = [
        (s, g, 0.9 + 0.001 * s + (0.01 if g == "A" else 0.0) + 0.002 * ((s * 7) % 3))
        for g in ("A", "B")
        for s in range(10)
        if not (g == "A" and s == 3) and not (g == "B" and s == 7)
    ]
    path = tmp_path / "missing.csv"
    path.write_text("seed,group,value\n" + "".join(f"{s},{g},{v}\n" for s, g, v in rows))
    res = CliRunner().invoke(app, ["compare", str(path), "--baseline", "B"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "seeds of A without a pair, left out: 7" in res.output
    assert "seeds of B without a pair, left out: 3" in res.output
    assert "of the omnibus): A: 7; B: 3" in res.output


def _float32_accuracies(correct: list[int], n_test: int = 359) -> list[float]:
    """Test accuracies as a training logs them: float32 k / N, read back as floats."""
    return [float(np.float32(k / n_test)) for k in correct]


def test_ties_in_float32_accuracies_are_ties():
    """Two seeds that each win by one test image differ by a few 1e-8 in float32 A - B: the
    exact Wilcoxon must still see the tie (0.0508, not the no-ties 0.037 'significant')."""
    a = _float32_accuracies([335, 327, 315, 309, 320, 322, 320, 330, 305, 333])
    b = _float32_accuracies([334, 329, 313, 307, 319, 321, 318, 329, 304, 332])
    images = np.array([1, -2, 2, 2, 1, 1, 2, 1, 1, 1], dtype=float)  # A - B in test images
    table = long_table({"A": a, "B": b})
    c = compare(table, test="wilcoxon").comparisons[0]
    assert c.p == pytest.approx(wilcoxon_signed_rank(images)[1], abs=1e-15)
    assert c.p == pytest.approx(0.05078125, abs=1e-12) and not c.reject
    assert any("float rounding" in note for note in c.notes)


def test_a_constant_float32_difference_has_no_t():
    b = _float32_accuracies([318, 322, 329, 331, 325])
    a = _float32_accuracies([319, 323, 330, 332, 326])  # every seed wins by one image
    c = compare(long_table({"A": a, "B": b})).comparisons[0]
    assert math.isnan(c.p) and not c.reject
    assert any("every seed gives the same difference" in note for note in c.notes)


# Every public name of the single module the package was split from (ce5a9fb), but the one
# issue 15 retired on purpose.
OLD_PUBLIC_NAMES = """CI_NAME CORRECTIONS CORRECTION_NAMES EXACT_PERMUTATION_LIMIT
EXACT_RANK_TEST_MAX_N PAIRED TESTS UNPAIRED Comparison ComparisonReport Omnibus PairedSample
SeedLike adjust_p_values aso_epsilon_min ci_reading compare format_p_value
format_seeds greenhouse_geisser_epsilon hedges_correction independent_permutation_test
kept_off_alpha nemenyi_critical_difference omnibus pair_groups rank_safe_differences
rank_sum_exact_p sign_flip_permutation_test signed_rank_exact_p tidy_results
violation_ratio wilcoxon_signed_rank""".split()


def test_every_public_name_of_the_old_module_is_importable():
    import study.analysis.stats as package

    assert len(OLD_PUBLIC_NAMES) == 33
    assert [name for name in OLD_PUBLIC_NAMES if not hasattr(package, name)] == []


def test_the_retired_tie_constant_says_what_replaced_it():
    # FLOAT_TIE_RESOLUTION (a relative 1e-6) was the float-tie rule issue 15 found wrong;
    # an import of it must fail and say what took its place, not hand back the old rule.
    with pytest.raises(ImportError, match="TIE_ULPS"):
        from study.analysis.stats import FLOAT_TIE_RESOLUTION  # noqa: F401


def test_notes_carry_their_kind_from_where_they_are_made():
    """Readers pick notes by kind (the report's split, the verdict, `study compare`), not by
    words: the zero dropped is a Wilcoxon note, seed 4 of b is a seed left out."""
    import json

    import pandas as pd

    from study.analysis.report_tables import split_notes
    from study.analysis.stats import Note, NoteKind, compare

    table = pd.DataFrame(
        {
            "group": ["a"] * 4 + ["b"] * 5,
            "seed": [0, 1, 2, 3, 0, 1, 2, 3, 4],
            "value": [1.0, 2.0, 3.0, 4.0, 1.5, 2.0, 3.5, 4.5, 9.0],
        }
    )
    report = compare(table, n_resamples=200)
    kinds = {note.kind for note in report.comparisons[0].notes}
    assert {NoteKind.WILCOXON, NoteKind.SEEDS_LEFT_OUT} <= kinds
    data = report.to_dict()["comparisons"][0]
    assert all(isinstance(n, Note) for n in data["notes"])  # the kind survives to_dict
    assert json.loads(json.dumps(data["notes"])) == [str(n) for n in data["notes"]]
    primary, other = split_notes(data, "t")
    assert all(n.kind is NoteKind.WILCOXON for n in other) and other
    assert not any(n.kind is NoteKind.WILCOXON for n in primary)
    assert split_notes(data, "wilcoxon")[1] == []
    # a note that names a test without being about it stays with the primary test
    assert not Note("the Wilcoxon-like wording of a general note").about_another_test("t")


def test_the_project_has_one_p_value_formatter():
    from study.analysis import report, units
    from study.analysis.stats import format_p, format_p_value

    assert units.format_p is format_p and report.format_p is format_p
    for p in (0.0497, 0.0123, 3e-5, 0.5):
        assert format_p_value(p, alpha=0.05) == format_p(p, 0.05, digits=2, significant=True)
