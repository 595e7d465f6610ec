"""How the report prints numbers: each metric's units, p-values, and values kept off a
threshold they are read against.

Accuracies (and ECE) are shown in percent with 2 decimals, their differences in percentage
points; NLL in nats with 4 decimals. The statistics are computed on the raw values; these
are only the printed forms, shared by the report, the paper table and `study compare`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from study.analysis.stats import NOT_AVAILABLE, format_p

__all__ = ["NOT_AVAILABLE", "UNITS", "Units", "fmt_num", "format_p", "missing"]
MAX_DIGITS = 12


def missing(x: Any) -> bool:
    """None, NaN or infinite: a number the report prints as NOT_AVAILABLE."""
    return x is None or (isinstance(x, float | np.floating) and not math.isfinite(x))


def fmt_num(x: Any, digits: int = 2) -> str:
    return NOT_AVAILABLE if missing(x) else f"{float(x):.{digits}f}"


@dataclass(frozen=True)
class Units:
    """How a metric is shown: ``factor`` times the raw value, with ``digits`` decimals."""

    name: str  # "test accuracy"
    symbol: str  # "%" or "nats"
    factor: float
    digits: int
    difference: str  # unit of a difference: "points" (percentage points) or "nats"

    def value(self, x: Any) -> str:
        return NOT_AVAILABLE if missing(x) else f"{float(x) * self.factor:.{self.digits}f}"

    def diff(self, x: Any, *, against: Sequence[float] = ()) -> str:
        """A signed difference; with ``against`` (raw thresholds such as 0 and
        ±min_effect), printed with the decimals it takes to stay on its own side of each
        of them: a bound of 0.4962 points read against min_effect 0.50 prints as +0.496,
        not as +0.50, so that a verdict beside it never reads as a contradiction."""
        if missing(x):
            return NOT_AVAILABLE
        shown = float(x) * self.factor
        for digits in range(self.digits, MAX_DIGITS + 1):
            text = f"{shown:+.{digits}f}"
            if all(_same_side(float(text), shown, t * self.factor) for t in against):
                return text
        return f"{shown:+.{MAX_DIGITS}g}"

    def interval(self, ci: Any, *, sign: bool = True, against: Sequence[float] = ()) -> str:
        """[low, high]; signed (a difference) unless ``sign`` is False (a value)."""
        if ci is None or any(missing(v) for v in ci):
            return NOT_AVAILABLE
        if not sign:
            return f"[{self.value(ci[0])}, {self.value(ci[1])}]"
        return f"[{self.diff(ci[0], against=against)}, {self.diff(ci[1], against=against)}]"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.symbol})"

    @property
    def title(self) -> str:
        """The name at the start of a sentence (capitalize() would lower 'NLL')."""
        return self.name[:1].upper() + self.name[1:]


def _same_side(printed: float, true: float, threshold: float) -> bool:
    """The printed number reads as the true one does against ``threshold``: equal to it
    only when the true number is, and otherwise on the same side."""
    if true == threshold:
        return printed == threshold
    return printed != threshold and (printed < threshold) == (true < threshold)


_PERCENT = {"symbol": "%", "factor": 100.0, "digits": 2, "difference": "points"}
_NATS = {"symbol": "nats", "factor": 1.0, "digits": 4, "difference": "nats"}
UNITS = {
    "test_acc": Units("test accuracy", **_PERCENT),
    "val_acc": Units("validation accuracy", **_PERCENT),
    "test_ece": Units("test ECE", **_PERCENT),
    "test_nll": Units("test NLL", **_NATS),
    "val_nll": Units("validation NLL", **_NATS),
    "teacher_agreement": Units("agreement with the teacher", **_PERCENT),
    "train_loss": Units("training loss", **_NATS),
}
RAW = Units("value", "", 1.0, 4, "value units")


def units_of(metric: str) -> Units:
    """The report's units of a metric; raw values with 4 decimals for any other column."""
    return UNITS.get(metric, RAW)
