"""What the floats can tell apart: ties up to rounding, the data's grid, and overflow.

Three questions every test here asks of its numbers before it trusts them, answered in one
place so that the rank tests, the permutation tests and the moments agree:

- **Which values are equal up to rounding?** A training logs accuracies as float32 k/N; a
  CSV holds float64. Each value is judged in its own precision: a value that is a float32
  value (``float(np.float32(x)) == x``) and not a whole number is float32-rounded, any
  other is float64 data, and each seed's A - B may be off by ``TIE_ULPS`` ulps of the
  less precise of its two values. So float32 accuracies merge within a few float32 ulps,
  also against a float64 baseline typed into the CSV; float64 values merge only within a
  few float64 ulps (the last bits of a computation such as 0.1 + 0.2 against 0.3), and
  real differences of float64 data (1e15 + 3 against 1e15 + 1, or 6.4e-7 at 0.9) are kept.
  Whole numbers below 2^52 are taken as exact (``exact_whole``): a computation's rounding
  would show as a fraction there, and every whole number up to 2^24 is a float32 value
  whatever its source (5e6 + 3 against 5e6 + 1 is a difference of 2, not a tie).
  ``rank_safe_differences`` applies the rule to differences (the paired tests),
  ``tie_keys`` to values (Mann-Whitney, Friedman).
- **On what grid do the values lie?** Accuracies are k/N: sums of differences tie exactly
  far more often than continuous data would, and a permutation test must see those ties.
  ``grid_units`` writes values as integer multiples of one unit where the rounding allows
  it, so sums are compared exactly in integers.
- **Will a computation overflow?** Sums of squares of values near 1e200 overflow float64.
  ``exponent`` gives the power of two that brings values to [0.5, 1), and scaling by a
  power of two is exact, so moments computed on scaled values and scaled back are right.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from study.errors import UserInputError

TIE_ULPS = 4
"""Differences within this many ulps (of the less precise of a seed's two values, each in
its own precision) count as equal. Each of two rounded values is within half an ulp of the
number it stands for, so A - B is within 1 ulp of the true difference, and two truly equal
differences within 2 ulps of each other; 4 leaves a margin and still keeps apart accuracies
on any test set of fewer than about 4 million images (float32 ulp at 0.9: 6e-8)."""

MAX_GRID_STEPS = 1000
"""``grid_units`` looks for a unit up to this many times smaller than the smallest non-zero
value (a unit of 1/N where the smallest |difference| is up to 1000/N)."""


EXACT_WHOLE_BELOW = 2.0**52
"""Whole numbers below this are taken as exact. float64 has bits below the units' place up
to 2^52 (float32 up to 2^23), so the rounding of a computation shows there as a fraction;
a whole number is a count, an integer typed into a CSV, or rounds to itself. Above 2^52
every float64 is whole and says nothing."""


def exact_whole(values: np.ndarray) -> np.ndarray:
    """Per value: True where it is a whole number below ``EXACT_WHOLE_BELOW`` in magnitude,
    taken as exact (no rounding to merge: 5e6 + 3 against 5e6 + 1 is a difference of 2,
    though both are float32 values, and 4e15 + 3 against 4e15 + 1 too, 4 float64 ulps)."""
    x = np.asarray(values, dtype=float)
    return (x == np.round(x)) & (np.abs(x) < EXACT_WHOLE_BELOW)


def float32_rounded(values: np.ndarray) -> np.ndarray:
    """Per value: True where it is a float32 value (a metric logged in float32 and read back
    as float64 is one; 0.3 typed into a CSV is not) and not an exact whole number (every
    whole number up to 2^24 is a float32 value, whatever its source; ``exact_whole``)."""
    x = np.asarray(values, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        return (x.astype(np.float32).astype(float) == x) & ~exact_whole(x)


def is_float32(values: np.ndarray) -> bool:
    """True when the values are float32 values as a training logs them: every one is a
    float32 value and some are not whole numbers (see ``float32_rounded``)."""
    x = np.asarray(values, dtype=float)
    with np.errstate(over="ignore"):
        exact = bool(np.all(x.astype(np.float32).astype(float) == x))
    return exact and bool(np.any(float32_rounded(x)))


def value_tolerance(values: np.ndarray, *, float32: bool | None = None) -> np.ndarray:
    """How far each value may lie from the number it stands for: 0 for an exact whole number
    (``exact_whole``), else ``TIE_ULPS`` ulps of it, in float32 where it is float32-rounded
    (``float32_rounded``), in float64 otherwise. ``float32`` True or False judges every
    value in that precision instead."""
    x = np.abs(np.asarray(values, dtype=float))
    with np.errstate(over="ignore"):
        spacing32 = np.spacing(x.astype(np.float32)).astype(float)
    if float32 is not None:
        return TIE_ULPS * (spacing32 if float32 else np.spacing(x))
    ulps = np.where(float32_rounded(x), spacing32, np.spacing(x))
    return np.where(exact_whole(x), 0.0, TIE_ULPS * ulps)


def rounding_tolerance(a: np.ndarray, b: np.ndarray, *, float32: bool | None = None) -> np.ndarray:
    """How far A - B may lie from the difference of the numbers A and B stand for, per seed:
    ``TIE_ULPS`` ulps of the less precise of its two values, each in its own precision
    (``value_tolerance``: a float32 accuracy against a float64 baseline is judged in
    float32; ``float32`` True or False decides for every value)."""
    return np.maximum(value_tolerance(a, float32=float32), value_tolerance(b, float32=float32))


def rank_safe_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A - B with float rounding removed: differences within rounding of zero are zero, and
    |differences| within rounding of each other are one value (their mean, each sign kept).

    Pitfall avoided: rounding (0.3 - 0.1 - 0.2 != 0; accuracies stored as float32 k/N)
    would split true ties of |A - B| and turn true zeros into tiny non-zeros, which changes
    the rank tests (see the warning in scipy.stats.wilcoxon), and would give a constant
    difference a tiny variance and an absurd t.

    The rounding is that of ``rounding_tolerance``: a seed with a float32 value merges
    within a few float32 ulps of its values, one of float64 values (or whole numbers) only
    within a few float64 ulps, so the rule never erases a difference the data can resolve.
    Seed i's rounding is measured on its own values, so one diverged seed (an NLL of 1e3)
    does not widen every other seed's tolerance. Sorted by magnitude, a group starts at its
    smallest value m and takes the next ones while they lie within max(tol) of m: a group
    is never wider than the rounding it absorbs, so a run of genuinely different values,
    each within rounding of its neighbour, is not chained into one.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    d = a - b
    tol = rounding_tolerance(a, b)
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
        k = exponent(magnitude[group])  # the mean of two 1.7e308 is not inf
        out[group] = np.sign(d[group]) * float(np.ldexp(np.mean(np.ldexp(magnitude[group], -k)), k))
        start = end
    return out


def tie_keys(values: np.ndarray) -> np.ndarray:
    """Integers to rank in place of ``values``: the same order, and one key for values equal
    up to their rounding (``value_tolerance``), so that a rank test of the values ties a
    float32 accuracy with a float64 one of the same k / N. Sorted, a group starts at its
    smallest value and takes the next ones while they lie within rounding of it (as
    ``rank_safe_differences`` groups magnitudes)."""
    x = np.asarray(values, dtype=float)
    tol = value_tolerance(x)
    keys = np.empty(len(x), dtype=np.int64)
    first = None
    key = -1
    for i in np.argsort(x, kind="stable"):
        with np.errstate(over="ignore"):
            apart = first is None or x[i] - x[first] > max(tol[first], tol[i])
        if apart:
            first, key = i, key + 1
        keys[i] = key
    return keys


@dataclass(frozen=True)
class Grid:
    """Values written as ``units`` x ``unit`` (integers), each within its rounding."""

    units: np.ndarray
    unit: float


def grid_units(values: np.ndarray, tolerance: np.ndarray) -> Grid | None:
    """The values as integer multiples of one unit u, |value_i - m_i u| <= tolerance_i with
    u > 4 max(tolerance), or None when there is no such unit.

    The unit is sought as the smallest non-zero |value| divided by j = 1, 2, ...,
    ``MAX_GRID_STEPS``: the integers m_i that candidate gives fit when some u satisfies
    every |value_i - m_i u| <= tolerance_i, an intersection of intervals, one a value
    (``_unit_range``). Each value keeps its own tolerance: float32 accuracies pooled with
    exact float64 ones fit, where one least-squares u, pulled by the float32 rounding,
    missed the exact values' few float64 ulps.

    On k/N data (u = 1/N, a few hundred ulps or more) the integers are the data's own:
    sums of them with signs, or over subsets, are compared exactly. Off any grid, n values
    all within rounding of multiples of a unit that is not theirs is improbable for float64
    data (about (2 tol / u)^(n - 1); none in 2,000 sets of 2 to 11 normal values), not for
    a few float32 values (a unit fits about half of such sets of differences of float32
    values near 0.9, through its 1,000 candidates). Harmless: two sums whose integers are
    equal lie within the summed tolerances of each other, which is the fallback's tie up
    to rounding too, and sums whose integers differ are at least u - 2 sum(tol) apart.
    """
    x = np.asarray(values, dtype=float)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=float), x.shape)
    nonzero = np.abs(x) > tol
    if not nonzero.any():
        return Grid(np.zeros(x.shape, dtype=np.int64), 1.0)
    smallest = float(np.min(np.abs(x[nonzero])))
    floor = 4 * float(np.max(tol))
    steps = np.arange(1, MAX_GRID_STEPS + 1, dtype=float)
    steps = steps[smallest / steps > floor]
    for block in np.array_split(steps, max(1, len(steps) * len(x) // 50_000)):
        # Candidate units, one a row: their integers and the units that fit them.
        m = np.rint(x[None, :] * (block[:, None] / smallest))
        low, high = _unit_range(x, tol, m)
        low = np.maximum(low, np.nextafter(floor, np.inf))
        fits = (low <= high) & (np.sum(np.abs(m), axis=1) < 2**52)
        if fits.any():
            first = int(np.argmax(fits))
            # The least-squares unit where it fits (it is the data's 1/N to a few digits).
            ls = float(np.sum(m[first] * x) / np.sum(m[first] * m[first]))
            unit = float(np.clip(ls, low[first], high[first]))
            return Grid(m[first].astype(np.int64), unit)
    return None


def _unit_range(x: np.ndarray, tol: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of integers ``m``: the units u with |x_i - m_i u| <= tol_i for every i,
    as (low, high), each bound widened by the rounding of its division; low > high where
    none fits (or a value whose m_i is 0 lies beyond its tolerance of 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        below, above = (x - tol) / m, (x + tol) / m
    low = np.where(m > 0, below, above)
    high = np.where(m > 0, above, below)
    low = np.where(m == 0, -np.inf, low - np.spacing(np.abs(low)))
    high = np.where(m == 0, np.inf, high + np.spacing(np.abs(high)))
    zeros_fit = np.all((m != 0) | (np.abs(x) <= tol), axis=1)
    return np.where(zeros_fit, low.max(axis=1), np.inf), high.min(axis=1)


def exponent(*arrays: np.ndarray) -> int:
    """The power of two k with max |x| / 2^k in [0.5, 1) over all the arrays (0 when they
    are all zero or empty): ``np.ldexp(x, -k)`` scales them exactly, without overflow."""
    top = max((float(np.max(np.abs(x))) for x in arrays if np.size(x)), default=0.0)
    if top == 0.0 or not np.isfinite(top):
        return 0
    return int(np.frexp(top)[1])


def require_finite(
    quantities: Iterable[tuple[str, float | None]], *, where: str, source: str | None = None
) -> None:
    """Refuse (``UserInputError``, exit status 2 at the command line) a result that float64
    cannot hold, given as (name, value) pairs, naming the comparison ``where`` and the
    quantity: a verdict must never come from an infinity. NaN is not refused here (it
    means undefined, e.g. zero variance, and every caller says why)."""
    for name, value in quantities:
        if value is not None and math.isinf(value):
            raise UserInputError(
                f"{where}: {name} is beyond the float64 range (about 1.8e308), so no test "
                "result can be given; divide the values by a power of ten and compare again",
                source=source,
            )
