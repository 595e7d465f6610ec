"""Tests of study.analysis.stats.precision and where compare uses it: which values are equal
up to float rounding (issue 15, point 2) and what happens near the ends of float64 (point 3).

Each defect test reproduces the issue's example and checks the answer against scipy on the
exact numbers; each failed on the code before the fix (commit ce5a9fb).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from study.analysis.stats import TIE_ULPS, compare, omnibus, rank_safe_differences
from study.analysis.stats.precision import exponent, grid_units, is_float32, rounding_tolerance
from study.cli import app
from study.errors import UserInputError
from tests.test_stats import SLEEP_1, SLEEP_2, long_table


def paired(a, b) -> pd.DataFrame:
    return long_table({"A": list(a), "B": list(b)})


# --------------------------------------------------------------------------------------
# the tie rule: each value's own precision
# --------------------------------------------------------------------------------------


def test_float64_integers_near_1e15_keep_their_differences():
    # Issue 15: 1e15 + {3,5,2,8,4} vs 1e15 + {1,2,2,1,3} reported "all paired differences
    # are zero"; the differences 2, 3, 0, 7, 1 are exact in float64 (ulp 0.125).
    a = 1e15 + np.array([3.0, 5, 2, 8, 4])
    b = 1e15 + np.array([1.0, 2, 2, 1, 3])
    c = compare(paired(a, b)).comparisons[0]
    ref = stats.ttest_rel(a, b)
    assert c.t == pytest.approx(2.1517753, abs=1e-6) and c.t == pytest.approx(ref.statistic)
    assert c.p == pytest.approx(0.0977867, abs=1e-6) and c.p == pytest.approx(ref.pvalue)
    assert c.mean_diff == 2.6 and c.w is not None
    assert not any("are zero" in note for note in c.notes)


def test_values_near_1e9_differing_by_tens_are_not_float_rounding():
    # Issue 15: differences of 10-100 at 1e9 were zeroed "up to float rounding".
    b = 1e9 + np.array([0.0, 3, 7, 1, 5, 2])
    a = b + np.array([10.0, 50, 100, 30, 70, -20])
    c = compare(paired(a, b), test="wilcoxon").comparisons[0]
    assert c.t == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    assert c.p == pytest.approx(stats.wilcoxon(a - b, method="exact").pvalue, abs=1e-15)
    assert not any("float rounding" in note for note in c.notes)


def test_a_small_difference_of_continuous_float64_data_is_kept():
    # Issue 15: a difference of 6.4e-7 at 0.9 was dropped as rounding (1e-6 x 0.9), which
    # moved a Wilcoxon p; float64 rounding at 0.9 is 1.1e-16.
    rng = np.random.default_rng(4)
    b = 0.9 + rng.normal(0, 1e-3, 10)
    d = np.array(
        [3.1e-4, -5.2e-4, 6.4e-7, 2.2e-4, -1.5e-4, 4.0e-4, -0.9e-4, 1.3e-4, 2.9e-4, -3.3e-4]
    )
    a = b + d
    assert not is_float32(np.concatenate([a, b]))
    c = compare(paired(a, b), test="wilcoxon").comparisons[0]
    assert c.wilcoxon_method == "exact" and not any("dropped" in note for note in c.notes)
    assert c.p == pytest.approx(stats.wilcoxon(a - b, method="exact").pvalue, abs=1e-15)


def test_float32_values_merge_within_a_few_float32_ulps_and_no_further():
    # A test set of a million images, float32 accuracies near 1: one image is 1e-6, about
    # 8 float32 ulps (1.2e-7 above 1); the old relative 1e-6 zeroed those differences.
    n_test = 1_000_000
    kb = np.array([999_100, 999_300, 999_050, 999_200, 999_150, 999_250, 999_000, 999_120])
    images = np.array([1, 2, 1, 3, -1, 2, 1, 2])
    a = np.float32((kb + images) / n_test).astype(float)
    b = np.float32(kb / n_test).astype(float)
    d = rank_safe_differences(a, b)
    assert np.all(d != 0)
    assert len(np.unique(np.abs(d))) == 3  # 1, 2 and 3 images: ties within rounding merged
    c = compare(paired(a, b), test="wilcoxon").comparisons[0]
    assert c.p == pytest.approx(_exact_w(images), abs=1e-15)
    assert any("float32" in note and "float rounding" in note for note in c.notes)


def _exact_w(images: np.ndarray) -> float:
    """Exact Wilcoxon p of integer differences with ties, by enumerating sign vectors."""
    ranks = stats.rankdata(np.abs(images))
    w_plus = np.array(
        [
            sum(r for r, s in zip(ranks, signs, strict=True) if s)
            for signs in _all_signs(len(images))
        ]
    )
    observed = ranks[images > 0].sum()
    w = min(observed, ranks.sum() - observed)
    return min(1.0, 2 * np.mean(w_plus <= w + 1e-9))


def _all_signs(n: int) -> np.ndarray:
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)


def test_the_tolerance_is_a_few_ulps_of_the_values_own_precision():
    a32 = np.array([float(np.float32(0.9))])
    assert rounding_tolerance(a32, a32) == TIE_ULPS * float(np.spacing(np.float32(0.9)))
    a64 = np.array([0.9 + 1e-12])
    assert rounding_tolerance(a64, a64) == TIE_ULPS * np.spacing(0.9 + 1e-12)


def test_grid_units_find_the_images_of_float32_accuracies():
    k = np.array([3, 4, 2, 3, -1, 2, 2, -1])
    kb = np.array([8873, 8845, 8852, 9091, 9188, 9170, 9067, 9187])
    a, b = np.float32((kb + k) / 10_000).astype(float), np.float32(kb / 10_000).astype(float)
    grid = grid_units(a - b, rounding_tolerance(a, b))
    assert grid is not None and list(grid.units) == list(k)
    assert grid.unit == pytest.approx(1e-4, rel=1e-3)  # float32 rounding: 3e-8 a value
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    assert grid_units(x, rounding_tolerance(x, np.zeros(12))) is None  # continuous data


@pytest.mark.parametrize("offset", [3e6, 5e6, 1e7, 1.6e7])
def test_whole_numbers_that_float32_holds_exactly_keep_their_differences(offset):
    # Every whole number below 2^24 is a float32 value, so 5e6 + {3,5,2,8,4} against
    # 5e6 + {1,2,2,1,3} was judged "float32 values" and differences within 4 float32 ulps
    # (2 at 5e6, 4 at 1e7) were zeroed: t = 1.45 and 1.0 for the exact 2.15.
    a = offset + np.array([3.0, 5, 2, 8, 4])
    b = offset + np.array([1.0, 2, 2, 1, 3])
    c = compare(paired(a, b)).comparisons[0]
    assert c.t == pytest.approx(2.1517753, abs=1e-6) and c.p == pytest.approx(0.0977867, abs=1e-6)
    w = compare(paired(a, b), test="wilcoxon").comparisons[0]
    assert w.p == _exact_w(np.array([2, 3, 0, 7, 1]))
    assert not any("float rounding" in note for note in c.notes + w.notes)


def test_whole_numbers_near_4e15_are_exact_though_4_ulps_apart():
    # float64's ulp at 4e15 is 0.5: differences of 1 and 2 were within 4 ulps and zeroed.
    # A whole number below 2^52 has no rounding to merge (a computation's would show as a
    # fraction of 0.5 there).
    a = 4e15 + np.array([3.0, 5, 2, 8, 4])
    b = 4e15 + np.array([1.0, 2, 2, 1, 3])
    c = compare(paired(a, b)).comparisons[0]
    assert c.t == pytest.approx(2.1517753, abs=1e-6) and c.mean_diff == 2.6
    assert list(rank_safe_differences(a, b)) == [2, 3, 0, 7, 1]
    # Above 2^52 every float64 is whole, and the few-ulps rule holds: 2^53 + 2 (one ulp)
    # against 2^53 is rounding.
    assert list(rank_safe_differences(np.array([2.0**53 + 2]), np.array([2.0**53]))) == [0]


def test_even_whole_numbers_above_2_to_the_24_are_not_all_equal():
    # 2e7 + even numbers are float32 values too (ulp 2): every difference (2 to 6) was
    # within 4 ulps, "all paired differences are zero".
    a = 2e7 + np.array([4.0, 6, 2, 8, 4])
    b = np.full(5, 2e7 + 2)
    c = compare(paired(a, b)).comparisons[0]
    assert c.t == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    assert c.wilcoxon_method == "exact"


def test_float32_values_against_float64_ones_merge_in_float32():
    # Mixed input: A logged in float32, B typed as float64 k / N. Judged float64 as a whole,
    # seeds that win by the same number of images had |A - B| 3e-8 apart: no tie, and the
    # Wilcoxon ranks split what the images tie.
    kb = np.array([8873, 8845, 8852, 9091, 9188, 9170, 9067, 9187])
    images = np.array([3, 4, 2, 3, -1, 2, 2, -1])
    a = np.float32((kb + images) / 10_000).astype(float)
    b = kb / 10_000
    d = rank_safe_differences(a, b)
    assert len(np.unique(np.abs(d))) == 4  # 1, 2, 3 and 4 images: ties merged, no more
    assert np.allclose(d * 10_000, images, atol=1e-3)
    c = compare(paired(a, b), test="wilcoxon").comparisons[0]
    assert c.p == pytest.approx(_exact_w(images), abs=1e-15)
    assert rounding_tolerance(a, b)[0] == TIE_ULPS * float(np.spacing(np.float32(a[0])))
    assert rounding_tolerance(b, b)[0] == TIE_ULPS * np.spacing(b[0])


def test_mann_whitney_and_friedman_tie_values_equal_up_to_rounding():
    # The rank tests of values (not of differences) ranked the raw floats: a float32
    # accuracy and a float64 one of the same k / N differ by 1e-8 and were not tied, so
    # the exact Mann-Whitney p was 0.143 for the exact 0.206 (and 0.93 for 0.74), the share
    # of (a, b) pairs with a > b counted ties as wins, and Friedman split the ties.
    correct_a, correct_b = (
        np.array([9002, 9001, 9003, 9002]),
        np.array([9001, 9000, 9003, 9000, 9001]),
    )
    a = np.float32(correct_a / 10_000).astype(float)
    b = correct_b / 10_000
    apart = {"A": [1, 2, 3, 4], "B": [5, 6, 7, 8, 9]}
    c = compare(long_table({"A": list(a), "B": list(b)}, seeds=apart), test="wilcoxon")
    u = c.comparisons[0]
    ranks = stats.rankdata(np.r_[correct_a, correct_b])
    assert u.u == ranks[:4].sum() - 10
    assert u.p == pytest.approx(_exact_rank_sum_p(ranks, 4), abs=1e-15)
    assert u.p_greater == np.mean(correct_a[:, None] > correct_b[None, :])
    # Friedman: three roles over 6 seeds, the third typed as float64.
    counts = np.array(
        [
            [9001, 9001, 9000],
            [9003, 9002, 9002],
            [9000, 9001, 9001],
            [9002, 9002, 9002],
            [9004, 9001, 9003],
            [9000, 9000, 9002],
        ]
    )
    wide = pd.DataFrame(np.float32(counts / 10_000).astype(float), columns=["x", "y", "z"])
    wide["z"] = counts[:, 2] / 10_000
    om = omnibus(wide)
    ref_q = stats.friedmanchisquare(*counts.T)
    assert om.q == pytest.approx(ref_q.statistic, rel=1e-12)
    assert om.p_friedman == pytest.approx(ref_q.pvalue, rel=1e-12)
    assert om.mean_ranks == pytest.approx(
        dict(zip("xyz", stats.rankdata(counts, axis=1).mean(axis=0), strict=True))
    )


def _exact_rank_sum_p(ranks: np.ndarray, n_a: int) -> float:
    """Exact two-sided p of A's rank sum over every split, midranks kept (enumeration)."""
    sums = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(len(ranks)), n_a)])
    observed = ranks[:n_a].sum()
    return min(1.0, 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9)))


# --------------------------------------------------------------------------------------
# overflow: computed on rescaled values, or refused with a message
# --------------------------------------------------------------------------------------


def test_values_near_1e200_give_the_t_of_the_rescaled_data():
    # Issue 15: the sd overflowed, t = 0, p = 1, CI +-inf, "not significant".
    a, b = np.array(SLEEP_1) * 1e200, np.array(SLEEP_2) * 1e200
    c = compare(paired(a, b)).comparisons[0]
    assert c.t == pytest.approx(-4.062128, abs=5e-7) and c.p == pytest.approx(0.002832890)
    assert c.ci95 == pytest.approx([-2.4598858e200, -0.7001142e200], rel=1e-7) and c.reject
    # Scaled by a power of two (exact), every number scales exactly or stays the same.
    scale = 2.0**664  # 1.2e200
    big = compare(paired(np.array(SLEEP_1) * scale, np.array(SLEEP_2) * scale)).comparisons[0]
    small = compare(paired(SLEEP_1, SLEEP_2)).comparisons[0]
    assert big.ci95 == [x * scale for x in small.ci95]
    assert big.ci95_bca == [x * scale for x in small.ci95_bca]
    assert (big.t, big.p, big.d_z, big.p_permutation) == (
        small.t,
        small.p,
        small.d_z,
        small.p_permutation,
    )
    apart = {"A": range(10), "B": range(10, 20)}
    u = compare(long_table({"A": list(a), "B": list(b)}, seeds=apart)).comparisons[0]
    u_small = compare(long_table({"A": SLEEP_1, "B": SLEEP_2}, seeds=apart)).comparisons[0]
    assert u.t == pytest.approx(u_small.t, rel=1e-12) and u.g == pytest.approx(u_small.g, rel=1e-12)


def test_omnibus_near_1e200_equals_the_rescaled_omnibus():
    rng = np.random.default_rng(2)
    wide = pd.DataFrame(rng.normal(size=(8, 3)) + [0.0, 0.5, 1.0], columns=["x", "y", "z"])
    big, small = omnibus(wide * 1e200), omnibus(wide)
    assert math.isfinite(big.F) and big.F == pytest.approx(small.F, rel=1e-9)
    assert big.p_anova_gg == pytest.approx(small.p_anova_gg, rel=1e-9)


@pytest.mark.parametrize("test", ["t", "wilcoxon", "permutation"])
def test_a_difference_beyond_float64_is_refused_naming_the_groups(test):
    # Issue 15: values near +-1.5e308 gave A - B = inf and a permutation p of 0,
    # "significant" (the smallest p at n = 3 is 0.25).
    a = [1.5e308, 1.4e308, 1.6e308]
    with pytest.raises(UserInputError) as err:
        compare(paired(a, [-x for x in a]), test=test, source="huge.csv")
    text = str(err.value)
    assert "A vs B" in text and "beyond the float64 range" in text and "seed 1" in text
    with pytest.raises(UserInputError, match="span more than the float64 range"):
        compare(long_table({"A": a, "B": [-x for x in a]}, seeds={"A": [1, 2, 3], "B": [4, 5, 6]}))


def test_an_interval_beyond_float64_is_refused_not_printed_as_infinite():
    a = np.array([1.7e308, -1.7e308, 1.6e308, -1.5e308])
    with pytest.raises(UserInputError, match="the sd of A - B is beyond the float64 range"):
        compare(paired(a, np.zeros(4)))


def test_cli_compare_exits_2_on_overflow(tmp_path):
    path = tmp_path / "huge.csv"
    rows = [f"{s},A,{v}" for s, v in enumerate([1.5e308, 1.4e308, 1.6e308])]
    rows += [f"{s},B,{-v}" for s, v in enumerate([1.5e308, 1.4e308, 1.6e308])]
    path.write_text("seed,group,value\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["compare", str(path), "--test", "permutation"])
    assert res.exit_code == 2, res.output
    assert "A vs B" in res.output and "float64 range" in res.output


def test_exponent_scales_exactly():
    x = np.array([3e200, -1e199, 7.5e150])
    k = exponent(x)
    assert 0.5 <= np.max(np.abs(np.ldexp(x, -k))) < 1
    assert np.array_equal(np.ldexp(np.ldexp(x, -k), k), x)


def test_an_integer_beyond_float64_in_the_table_is_refused_not_a_traceback(tmp_path):
    # A 400-digit number made pandas' to_numeric raise OverflowError (a traceback, exit 1).
    table = long_table({"A": [10**400, 1, 2], "B": [1, 2, 3]})
    with pytest.raises(UserInputError, match=r"beyond the float64 range.*group 'A', seed 1"):
        compare(table, source="huge.csv")
    path = tmp_path / "huge.csv"
    path.write_text("seed,group,value\n0,A," + "1" * 400 + "\n1,A,1\n2,A,2\n0,B,1\n1,B,2\n2,B,3\n")
    res = CliRunner().invoke(app, ["compare", str(path), "--baseline", "B"])
    assert res.exit_code == 2, res.output
    assert "beyond the float64 range" in res.output and "group 'A', seed 0" in res.output


def test_the_omnibus_checks_no_normality_on_an_infinite_difference():
    # The pairs avoid it, but the omnibus compares every group with the first: C - A is
    # -3e308, and Shapiro-Wilk on infinities gave p = 1 (with RuntimeWarnings).
    values = {
        "A": [1.5e308, 1.6e308, 1.4e308, 1.55e308],
        "B": [0.0, 1e307, -1e307, 3e307],
        "C": [-1.5e308, -1.4e308, -1.6e308, -1.3e308],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compare(long_table(values), pairs=[("A", "B"), ("B", "C")])
    om = report.omnibus
    assert om.shapiro_p["C - A"] is None and not om.anova_applicable
    assert any("C - A is beyond the float64 range" in note for note in om.notes)
