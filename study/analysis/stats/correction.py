"""Corrections for multiple comparisons (statsmodels' ``multipletests``), in the order given.

The correction family is every planned comparison, one whose p is undefined included (as
p = 1: conservative). Holm controls the family-wise error rate for any dependence between
the comparisons (8 comparisons against one shared baseline are positively correlated; the
calibration in docs/statistics.md measures it), Benjamini-Hochberg the false discovery rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from statsmodels.stats.multitest import multipletests

from study.errors import UserInputError

CORRECTIONS = {"holm": "holm", "bh": "fdr_bh", "bonferroni": "bonferroni", "none": None}
CORRECTION_NAMES = {
    "holm": "Holm",
    "bh": "Benjamini-Hochberg",
    "bonferroni": "Bonferroni",
    "none": "no correction",
}


def adjust_p_values(
    p_values: Sequence[float], correction: str = "holm", *, count_undefined: bool = True
) -> np.ndarray:
    """p-values corrected for multiple comparisons, in the order given.

    ``correction``: 'holm', 'bh' (Benjamini-Hochberg), 'bonferroni' or 'none'. NaN entries
    (a planned test that could not be computed) stay NaN. With ``count_undefined`` (the
    default) they still count in the family size m, as if their p were 1: conservative,
    since dropping them would make the correction of the others less strict. Without it
    the family is the defined p-values only.
    """
    if correction not in CORRECTIONS:
        raise UserInputError(
            f"unknown correction {correction!r}; choose one of {list(CORRECTIONS)}",
            field="correction",
        )
    p = np.asarray(p_values, dtype=float)
    out = p.copy()
    ok = np.isfinite(p)
    method = CORRECTIONS[correction]
    # A family of one needs no correction (and multipletests is slow for it: it collects
    # garbage on every call, which costs more than all the tests of a small comparison).
    family = len(p) if count_undefined else int(ok.sum())
    if method is not None and family > 1 and ok.any():
        # multipletests returns the corrected values in the input order (pitfall avoided:
        # a correction computed on sorted p-values must not be reported against the sorted
        # order). An undefined p enters as 1: it counts in m and never lowers another's
        # adjusted value (Holm, Bonferroni and BH alike).
        filled = np.where(ok, p, 1.0) if count_undefined else p[ok]
        adjusted = multipletests(filled, method=method)[1]
        out[ok] = adjusted[ok] if count_undefined else adjusted
    return out
