"""Tests of the permutation tests on the data's own resolution (issue 15, point 1).

Accuracies are k/N: sums of the differences tie exactly far more often than continuous
data would, and a permutation test must count a sign pattern whose sum equals the observed
one as "as extreme". Every reference p here is counted in exact integers (images) by
enumerating every sign vector or split; the old code (ce5a9fb) failed these tests.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from study.analysis.stats import (
    compare,
    paired_permutation,
    rounding_tolerance,
    sign_flip_permutation_test,
    two_sample_permutation,
)
from tests.test_stats import long_table

IMAGES = [3, 4, 2, 3, -1, 2, 2, -1]  # issue 15: A - B in test images of 10,000, 8 seeds
BASE = [8873, 8845, 8852, 9091, 9188, 9170, 9067, 9187]  # images B gets right per seed


def accuracies(correct, n_test: int = 10_000, *, float32: bool = True) -> list[float]:
    values = np.asarray(correct, dtype=float) / n_test
    return list(np.float32(values).astype(float) if float32 else values)


def all_signs(n: int) -> np.ndarray:
    return ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1


def exact_sign_flip_p(images: np.ndarray) -> float:
    """2 min(P(S >= s), P(S <= s)) over all sign vectors, in integers."""
    sums = all_signs(len(images)) @ np.asarray(images, dtype=np.int64)
    observed = int(np.sum(images))
    return min(1.0, 2 * min(np.sum(sums >= observed), np.sum(sums <= observed)) / len(sums))


def exact_split_p(correct: np.ndarray, n_a: int) -> float:
    """The same over all splits of the pooled values into groups of n_a and the rest."""
    sums = np.array(
        [correct[list(c)].sum() for c in itertools.combinations(range(len(correct)), n_a)]
    )
    observed = correct[:n_a].sum()
    return min(1.0, 2 * min(np.sum(sums >= observed), np.sum(sums <= observed)) / len(sums))


@pytest.mark.parametrize("float32", [True, False])
def test_the_issue_example_gives_the_exact_14_of_256(float32):
    # compare used to give 0.03125, "significant", for float32 accuracies (and for these
    # float64 k / N too): sign patterns whose sum equals 14 were counted as less extreme.
    b = np.array(BASE)
    a = b + np.array(IMAGES)
    table = long_table({"A": accuracies(a, float32=float32), "B": accuracies(b, float32=float32)})
    c = compare(table, test="permutation").comparisons[0]
    assert exact_sign_flip_p(np.array(IMAGES)) == 14 / 256
    assert c.p == 14 / 256 == 0.0546875 and not c.reject
    assert c.permutation_method == "exact" and c.permutation_mc_se is None
    assert c.permutation_resolution.startswith("exact, in integer multiples of 0.0001")


def test_sign_flip_p_equals_integer_enumeration_on_accuracy_grids():
    rng = np.random.default_rng(15)
    for i in range(120):
        n = int(rng.integers(4, 13))
        n_test = int(rng.choice([359, 1000, 10_000, 50_000]))
        kb = rng.integers(int(0.8 * n_test), int(0.95 * n_test), n)
        images = np.rint(rng.normal(0, 2, n)).astype(np.int64)
        float32 = i % 2 == 0
        a = accuracies(kb + images, n_test, float32=float32)
        b = accuracies(kb, n_test, float32=float32)
        c = compare(long_table({"A": a, "B": b}), test="permutation").comparisons[0]
        assert c.p == exact_sign_flip_p(images), (n, n_test, float32, list(images))


def test_two_sample_p_equals_integer_enumeration_on_accuracy_grids():
    # Unpaired (no seed shared): the issue measured p too small by up to 0.058 at 6 vs 6.
    rng = np.random.default_rng(16)
    for i in range(60):
        n_a, n_b = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        n_test = int(rng.choice([359, 10_000]))
        correct = rng.integers(int(0.9 * n_test), int(0.9 * n_test) + 6, n_a + n_b)
        values = accuracies(correct, n_test, float32=i % 2 == 0)
        table = long_table(
            {"A": values[:n_a], "B": values[n_a:]},
            seeds={"A": list(range(n_a)), "B": list(range(100, 100 + n_b))},
        )
        c = compare(table, test="permutation").comparisons[0]
        assert c.pairing == "unpaired"
        assert c.p == exact_split_p(correct, n_a), (n_a, n_b, list(correct))


def test_continuous_data_keep_the_p_of_explicit_enumeration():
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, 11)
    sums = np.abs(all_signs(11) @ d)
    expected = np.mean(sums >= abs(d.sum()) - 1e-12)
    res = paired_permutation(d, tolerance=rounding_tolerance(d + 5.0, np.full(11, 5.0)))
    assert res.p == pytest.approx(expected, abs=1e-15)
    assert res.method == "exact"


def test_monte_carlo_p_reports_its_standard_error_and_honours_ties():
    # 20 seeds: 2^20 sign vectors, above the exact limit. The exact p of integer data is
    # counted by a subset-sum recursion; the Monte Carlo p must lie within 4 of its own
    # standard errors, which compare reports in the field and in the notes.
    rng = np.random.default_rng(5)
    images = np.rint(rng.normal(0.8, 2, 20)).astype(np.int64)
    kb = rng.integers(8800, 9200, 20)
    table = long_table({"A": accuracies(kb + images), "B": accuracies(kb)})
    c = compare(table, test="permutation").comparisons[0]
    assert c.permutation_method == "monte carlo"
    exact = _sign_flip_p_by_counting(images)
    assert c.permutation_mc_se == pytest.approx(2 * math.sqrt((c.p / 2) * (1 - c.p / 2) / 10_000))
    assert abs(c.p - exact) <= 4 * c.permutation_mc_se, (c.p, exact)
    assert any(
        f"Monte Carlo standard error of p: {c.permutation_mc_se:.2g}" in note for note in c.notes
    )


def _sign_flip_p_by_counting(images: np.ndarray) -> float:
    """Exact two-sided sign-flip p of integers: count subsets by their sum (S = 2 sum(+) -
    total), the distribution of every sign vector without listing them."""
    m = np.abs(images)
    total = int(m.sum())
    counts = np.zeros(total + 1, dtype=object)
    counts[0] = 1
    for x in m:
        counts[x:] = counts[x:] + counts[: total + 1 - x].copy()
    sums = 2 * np.arange(total + 1) - total  # S for each subset sum of the '+' signs
    observed = int(np.sum(images))
    upper = int(counts[sums >= observed].sum())
    lower = int(counts[sums <= observed].sum())
    return min(1.0, 2 * min(upper, lower) / 2 ** len(m))


def test_two_sample_monte_carlo_above_the_exact_limit():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.5, 1, 12), rng.normal(0, 1, 12)  # C(24, 12) = 2.7 million splits
    res = two_sample_permutation(a, b, n_resamples=2000, seed=1)
    again = two_sample_permutation(a, b, n_resamples=2000, seed=1)
    assert res.method == "monte carlo" and res == again and res.mc_se is not None
    assert res.arrangements == 2000


# --------------------------------------------------------------------------------------
# mixed precision: float32 values of one role against float64 values of another
# --------------------------------------------------------------------------------------


def test_float32_accuracies_against_float64_ones_keep_the_exact_p():
    # A student's accuracies logged in float32 against a baseline typed into the CSV as
    # float64 k / N: the comparison was judged float64 as a whole, so the float32 rounding
    # of A (3e-8 a value) was no tie, no grid of 1/N was found, and the issue's example
    # gave 12/256 = 0.046875 ("significant") for the exact 14/256.
    b = np.array(BASE)
    a = b + np.array(IMAGES)
    table = long_table({"A": accuracies(a), "B": accuracies(b, float32=False)})
    c = compare(table, test="permutation").comparisons[0]
    assert c.p == 14 / 256 and not c.reject
    assert c.permutation_resolution.startswith("exact, in integer multiples of 0.0001")
    rng = np.random.default_rng(17)
    for i in range(40):
        n, n_test = int(rng.integers(4, 13)), int(rng.choice([10_000, 50_000]))
        kb = rng.integers(int(0.85 * n_test), int(0.95 * n_test), n)
        images = np.rint(rng.normal(0, 2, n)).astype(np.int64)
        a, b = accuracies(kb + images, n_test), accuracies(kb, n_test, float32=False)
        if i % 2:  # one column mixing both precisions, seed by seed
            a[::2], b[::2] = (
                accuracies(kb + images, n_test, float32=False)[::2],
                accuracies(kb, n_test)[::2],
            )
        c = compare(long_table({"A": a, "B": b}), test="permutation").comparisons[0]
        assert c.p == exact_sign_flip_p(images), (n, n_test, list(images))


def test_two_sample_p_of_mixed_precision_equals_integer_enumeration():
    rng = np.random.default_rng(18)
    for _ in range(30):
        n_a, n_b = int(rng.integers(3, 8)), int(rng.integers(3, 8))
        n_test = int(rng.choice([10_000, 50_000]))
        correct = rng.integers(int(0.9 * n_test), int(0.9 * n_test) + 6, n_a + n_b)
        a = accuracies(correct[:n_a], n_test)
        b = accuracies(correct[n_a:], n_test, float32=False)
        table = long_table(
            {"A": a, "B": b}, seeds={"A": list(range(n_a)), "B": list(range(100, 100 + n_b))}
        )
        c = compare(table, test="permutation").comparisons[0]
        assert c.p == exact_split_p(correct, n_a), (n_a, n_b, list(correct))


def test_a_permutation_p_without_a_t_interval_says_so_in_its_verdict():
    # Every seed gives the same difference: the permutation p (0.25 at n = 3) is defined,
    # the t interval is not, and the verdict printed "nan to nan".
    c = compare(long_table({"A": [2.0, 3.0, 4.0], "B": [1.0, 2.0, 3.0]}), test="permutation")
    verdict = c.comparisons[0].verdict
    assert c.comparisons[0].p == 0.25 and "nan" not in verdict
    assert "no t CI: the differences have zero variance" in verdict


@pytest.mark.parametrize("offset", [1e15, 4e15])
def test_whole_numbers_near_1e15_get_the_exact_permutation_p(offset):
    # 1e15 + small integers: the float64 tolerance (4 ulps, 0.5 at 1e15) kept the integers
    # (1 = 8 ulps) off the grid (a unit must exceed 4 tolerances) and the float sums tied
    # within n tolerances: p = 0.39 for the exact 0.0625 (paired), 0.92 for 0.083
    # (unpaired); at 4e15 (ulp 0.5) both were 1. Whole numbers are exact now.
    correct_a = np.array([3, 5, 2, 8, 4, 6, 1, 9])
    correct_b = np.array([1, 2, 2, 1, 3, 5, 2, 4])
    a, b = list(offset + correct_a), list(offset + correct_b)
    c = compare(long_table({"A": a, "B": b}), test="permutation").comparisons[0]
    assert c.p == exact_sign_flip_p(correct_a - correct_b) == 0.0625
    assert c.permutation_resolution == "exact, in integer multiples of 1"
    apart = {"A": list(range(8)), "B": list(range(100, 108))}
    u = compare(long_table({"A": a, "B": b}, seeds=apart), test="permutation").comparisons[0]
    assert u.p == exact_split_p(np.r_[correct_a, correct_b], 8)
    w = compare(long_table({"A": a, "B": b}), test="wilcoxon").comparisons[0]
    assert w.p == 0.0625  # |differences| 2, 3, 1, 7, 1, 1, 1, 5: none within rounding


def test_a_grid_is_found_where_float32_and_exact_values_mix():
    # Unpaired, a float32 group against a float64 one that holds the smallest value: the
    # least-squares unit, pulled by the float32 values' rounding, missed the exact values'
    # tolerance (4 float64 ulps), no grid was found, and the float sums tied within the
    # summed rounding of n_a terms, 2.1e-5 at 45 seeds, above one image of 50,000 (2e-5):
    # p = 0.116 for 0.095. The same random splits on the image counts give the true p.
    rng = np.random.default_rng(3)
    for n in (6, 45, 60):
        correct_a = rng.integers(45001, 45009, n)
        correct_b = rng.integers(45000, 45008, n)
        correct_b[0] = 45000
        a, b = accuracies(correct_a, 50_000), accuracies(correct_b, 50_000, float32=False)
        mixed = two_sample_permutation(np.array(a), np.array(b), seed=1)
        counted = two_sample_permutation(correct_a * 1.0, correct_b * 1.0, seed=1)
        assert mixed.p == counted.p, (n, mixed.p, counted.p)
        assert mixed.resolution.startswith("exact, in integer multiples of 2e-05"), mixed


def test_sign_flip_of_bare_differences_takes_the_values_rounding_when_given():
    # The old module's sign_flip_permutation_test(differences) cannot know that A - B of
    # float32 accuracies carries the rounding of A and B: 12/256 for the exact 14/256,
    # "significant". It takes that rounding as ``tolerance`` now (its docstring says when).
    b = np.array(accuracies(BASE))
    a = np.array(accuracies(np.array(BASE) + np.array(IMAGES)))
    p, method = sign_flip_permutation_test(a - b, tolerance=rounding_tolerance(a, b))
    assert (p, method) == (14 / 256, "exact")
    images = np.array(IMAGES) / 10_000  # float64 differences: their own rounding is right
    assert sign_flip_permutation_test(images) == (14 / 256, "exact")
