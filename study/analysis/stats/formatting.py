"""Numbers in words: p-values, seeds, verdicts and the reading of an interval.

One place for how a p-value is printed (never rounded onto or across alpha, where the
verdict next to it would contradict it) and for the sentence a comparison ends in; the
report and the command line print through these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from study.analysis.stats.correction import CORRECTION_NAMES
from study.analysis.stats.results import (
    PAIRED,
    UNPAIRED,
    Comparison,
    NoteKind,
    as_note,
    note_kind,
)


def verdict(
    c: Comparison,
    *,
    alpha: float,
    correction: str,
    family: int,
    min_effect: float | None = None,
) -> str:
    """The one-sentence verdict of a comparison whose p_adj and reject are set: direction,
    difference with its named interval, seeds, test, adjusted p and the family; or why no
    test was possible. ``min_effect`` adds what a non-significant interval says."""
    adj = f"{CORRECTION_NAMES[correction]}, {family} comparison{'s' * (family != 1)}"
    if not np.isfinite(c.p_adj):
        about_test = [
            note
            for note in c.notes
            if not as_note(note).about_another_test(c.test)
            and note_kind(note) is not NoteKind.SEEDS_LEFT_OUT
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
    numbers = (
        f"{c.a} - {c.b} = {three_digits(c.mean_diff)} ({_interval_words(c)}) {over}, {c.test} "
        f"p_adj = {format_p_value(c.p_adj, alpha=alpha)} ({adj})"
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
        c.ci95, min_effect, three_digits
    )


def _interval_words(c: Comparison) -> str:
    """The verdict's interval, or why there is none (a permutation or rank p is defined
    where every seed gives the same difference; the t interval is not)."""
    if all(x is not None and np.isfinite(x) for x in c.ci95):
        return f"{CI_NAME[c.pairing]} {three_digits(c.ci95[0])} to {three_digits(c.ci95[1])}"
    what = "the differences have" if c.pairing == PAIRED else "both groups have"
    return f"no t CI: {what} zero variance"


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
    return _ci_reading(ci, min_effect, fmt or three_digits).removeprefix("; ")


def three_digits(x: float) -> str:
    """x with three significant digits."""
    return f"{x:.3g}"


def format_p(
    p: Any, alpha: float | None = None, *, digits: int = 4, significant: bool = False
) -> str:
    """The project's one p-value formatter; '–' for a missing p. Never rounded onto or
    across ``alpha``: where the rounded value would equal alpha or fall on the other side
    of it, more digits are printed (p = 0.04996 at alpha 0.05 is '0.04996', not '0.0500';
    p = 0.0497 is '0.0497', not '0.05').

    Two forms, one for each place a p is read:

    - a table's column (the default; the report, the paper table): ``digits`` decimals,
      scientific with 3 significant digits below 0.001, '0' for 0;
    - a sentence (``significant``; verdicts, `study compare`): ``digits`` significant
      digits, scientific with 2 below 1e-4.
    """
    if p is None or not isinstance(p, int | float | np.number) or not np.isfinite(p):
        return NOT_AVAILABLE
    if significant:
        if p < 1e-4:
            return f"{p:.1e}"
        return kept_off_alpha(p, alpha, lambda k: f"{p:.{k}g}", digits)
    if p == 0:
        return "0"
    if p < 1e-3:
        return f"{p:.2e}"
    return kept_off_alpha(p, alpha, lambda k: f"{p:.{k}f}", digits)


def format_p_value(p: float, *, alpha: float | None = None, digits: int = 2) -> str:
    """``format_p``'s sentence form: ``digits`` significant digits (scientific below
    1e-4), never rounded onto or across ``alpha``."""
    return format_p(p, alpha, digits=digits, significant=True)


NOT_AVAILABLE = "–"
"""What a table or a sentence prints for a number that is missing (None, NaN, infinite)."""


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
