"""What the floats can tell apart: ties up to rounding, the data's grid, and overflow.

Three questions every test here asks of its numbers before it trusts them, answered in one
place so that the rank tests, the permutation tests and the moments agree:

- **Which values are equal up to rounding?** A training logs accuracies as float32 k/N; a
  CSV holds float64. Values are judged in their own precision: when every value of a
  comparison is a float32 value (``float(np.float32(x)) == x``), differences within
  ``TIE_ULPS`` float32 units in the last place (ulps) of the seed's values are one value;
  otherwise the values are float64 data and only differences within ``TIE_ULPS`` float64
  ulps merge (the last bits of a computation such as 0.1 + 0.2 against 0.3), so real
  differences of float64 data (1e15 + 3 against 1e15 + 1, or 6.4e-7 at 0.9) are kept.
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
"""Differences within this many ulps (of the larger of a seed's two values, in the values'
own precision) count as equal. Each of two rounded values is within half an ulp of the
number it stands for, so A - B is within 1 ulp of the true difference, and two truly equal
differences within 2 ulps of each other; 4 leaves a margin and still keeps apart accuracies
on any test set of fewer than about 4 million images (float32 ulp at 0.9: 6e-8)."""

MAX_GRID_STEPS = 1000
"""``grid_units`` looks for a unit up to this many times smaller than the smallest non-zero
value (a unit of 1/N where the smallest |difference| is up to 1000/N)."""


def is_float32(values: np.ndarray) -> bool:
    """True when every value is exactly a float32 value (a metric logged in float32 and
    read back as float64 is one; 0.3 typed into a CSV is not)."""
    x = np.asarray(values, dtype=float)
    with np.errstate(over="ignore"):
        return bool(np.all(x.astype(np.float32).astype(float) == x))


def rounding_tolerance(a: np.ndarray, b: np.ndarray, *, float32: bool | None = None) -> np.ndarray:
    """How far A - B may lie from the difference of the numbers A and B stand for, per seed:
    ``TIE_ULPS`` ulps of max(|a|, |b|), in float32 when the values are float32 values
    (``float32`` None: judged from ``a`` and ``b`` together, see ``is_float32``)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if float32 is None:
        float32 = is_float32(np.concatenate([a.ravel(), b.ravel()]))
    scale = np.maximum(np.abs(a), np.abs(b))
    spacing = np.spacing(scale.astype(np.float32)).astype(float) if float32 else np.spacing(scale)
    return TIE_ULPS * spacing


def rank_safe_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A - B with float rounding removed: differences within rounding of zero are zero, and
    |differences| within rounding of each other are one value (their mean, each sign kept).

    Pitfall avoided: rounding (0.3 - 0.1 - 0.2 != 0; accuracies stored as float32 k/N)
    would split true ties of |A - B| and turn true zeros into tiny non-zeros, which changes
    the rank tests (see the warning in scipy.stats.wilcoxon), and would give a constant
    difference a tiny variance and an absurd t.

    The rounding is that of ``rounding_tolerance``: float32 values merge within a few
    float32 ulps of the seed's values, float64 values only within a few float64 ulps, so
    the rule never erases a difference the data can resolve. Seed i's rounding is measured
    on its own values, so one diverged seed (an NLL of 1e3) does not widen every other
    seed's tolerance. Sorted by magnitude, a group starts at its smallest value m and takes
    the next ones while they lie within max(tol) of m: a group is never wider than the
    rounding it absorbs, so a run of genuinely different values, each within rounding of
    its neighbour, is not chained into one.
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


@dataclass(frozen=True)
class Grid:
    """Values written as ``units`` x ``unit`` (integers), each within its rounding."""

    units: np.ndarray
    unit: float


def grid_units(values: np.ndarray, tolerance: np.ndarray) -> Grid | None:
    """The values as integer multiples of one unit u, |value_i - m_i u| <= tolerance_i with
    u > 4 max(tolerance), or None when there is no such unit.

    The unit is sought as the smallest non-zero |value| divided by j = 1, 2, ...,
    ``MAX_GRID_STEPS``, refined by least squares on the integers it gives (one value's
    rounding, multiplied by a large m, would otherwise exceed another's tolerance).

    On k/N data (u = 1/N, a few hundred ulps or more) the integers are the data's own:
    sums of them with signs, or over subsets, are compared exactly. Off any grid, n values
    all within rounding of multiples of a unit that is not theirs is improbable (about
    (2 tol / u)^(n - 1)); where it happens anyway (n = 2 float32 values), two sums whose
    integers are equal lie within a few tolerances of each other, which is a tie up to
    rounding in any case.
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
        # Candidate units, one a row: their integers, least-squares unit and residuals.
        m = np.rint(x[None, :] * (block[:, None] / smallest))
        with np.errstate(invalid="ignore", divide="ignore"):
            units = np.sum(m * x, axis=1) / np.sum(m * m, axis=1)
        fits = (
            (units > floor)
            & np.all(np.abs(x[None, :] - m * units[:, None]) <= tol, axis=1)
            & (np.sum(np.abs(m), axis=1) < 2**52)
        )
        if fits.any():
            first = int(np.argmax(fits))
            return Grid(m[first].astype(np.int64), float(units[first]))
    return None


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
