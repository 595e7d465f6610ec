"""Omnibus tests across three groups or more, on the seeds every group has.

Friedman's rank test with Kendall's W and the Nemenyi critical difference of mean ranks
(Demsar 2006: the post-hoc comparison of many methods over many data sets, here seeds),
and the repeated-measures ANOVA with the Greenhouse-Geisser correction for sphericity
(statsmodels AnovaRM). Friedman assumes only that seeds are independent; the ANOVA adds
normality of the differences between groups, which is checked on the differences (not on
each group's column) before the ANOVA is called applicable.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.anova import AnovaRM

from study.analysis.stats.parametric import shapiro
from study.analysis.stats.precision import exponent, rank_safe_differences, tie_keys
from study.analysis.stats.results import Omnibus


def omnibus(wide: pd.DataFrame, *, alpha: float = 0.05) -> Omnibus:
    """Omnibus tests on an (n seeds x k groups) table with no missing cell (k >= 3, n >= 2).

    Friedman chi-square ``q`` (tie-corrected, scipy.stats.friedmanchisquare), Kendall's
    ``w_kendall`` = q / (n (k - 1)), mean ranks (1 = lowest value), the Nemenyi critical
    difference ``cd``; the repeated-measures ANOVA ``F`` on (k - 1, (k - 1)(n - 1)) df
    (statsmodels AnovaRM) and its Greenhouse-Geisser corrected p ``p_anova_gg``.
    ``anova_applicable`` is True when Shapiro-Wilk does not reject normality at 0.05 for the
    differences of every group from the first (``shapiro_p``); False when some test rejects,
    when there are fewer than 3 seeds or a constant difference to test, or F is undefined.
    The ANOVA runs on the values divided by a power of two (exact; F is scale-free), so
    values near 1e200 do not overflow its sums of squares.
    """
    groups = [str(g) for g in wide.columns]
    raw = wide.to_numpy(dtype=float)
    x = np.ldexp(raw, -exponent(raw))
    n, k = x.shape
    notes: list[str] = []
    # Ranked within each seed with values equal up to rounding tied (``tie_keys``).
    keys = np.array([tie_keys(row) for row in raw])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, p_friedman = stats.friedmanchisquare(*keys.T)
    cd, q_alpha = nemenyi_critical_difference(k, n, alpha)
    f_value, df1, df2, p_anova, eps, p_gg = _anova(x, groups, notes)
    if not np.isfinite(q):
        notes.append("every seed ties all groups: the Friedman test is undefined")

    shapiro_p = _normality_of_differences(raw, groups, notes)
    applicable = (
        np.isfinite(f_value)
        and n >= 3
        and all(p is not None and p >= 0.05 for p in shapiro_p.values())
    )
    return Omnibus(
        groups=groups,
        k=k,
        n_seeds_common=n,
        seeds_common=list(wide.index),
        q=float(q),
        p_friedman=float(p_friedman),
        w_kendall=float(q) / (n * (k - 1)),
        mean_ranks=dict(
            zip(groups, (float(r) for r in stats.rankdata(keys, axis=1).mean(axis=0)), strict=True)
        ),
        q_alpha=q_alpha,
        cd=cd,
        F=f_value,
        df1=df1,
        df2=df2,
        p_anova=p_anova,
        gg_epsilon=eps,
        p_anova_gg=p_gg,
        anova_applicable=bool(applicable),
        shapiro_p=shapiro_p,
        notes=notes,
    )


def _normality_of_differences(
    raw: np.ndarray, groups: list[str], notes: list[str]
) -> dict[str, float | None]:
    """Shapiro-Wilk p of each group's differences from the first group (normality of the
    differences, not of each group: pitfall avoided); None, with a note, where a
    difference is beyond float64 (Shapiro-Wilk on infinities is no test)."""
    out: dict[str, float | None] = {}
    constant = False
    for j, g in enumerate(groups[1:], start=1):
        name = f"{g} - {groups[0]}"
        with np.errstate(over="ignore", invalid="ignore"):
            finite = bool(np.all(np.isfinite(raw[:, j] - raw[:, 0])))
        if not finite:
            out[name] = None
            notes.append(f"{name} is beyond the float64 range: its normality is not checked")
            continue
        out[name] = shapiro(rank_safe_differences(raw[:, j], raw[:, 0]))
        constant = constant or out[name] is None
    if len(raw) < 3:
        notes.append("normality of the differences cannot be checked with fewer than 3 seeds")
    elif constant:
        notes.append("some differences are constant: their normality cannot be checked")
    return out


def _anova(
    x: np.ndarray, groups: list[str], notes: list[str]
) -> tuple[float, float, float, float, float, float]:
    """Repeated-measures ANOVA of an (n x k) table: F, df1, df2, p, Greenhouse-Geisser
    epsilon and the corrected p (F and p NaN, with a note, when no residual is left)."""
    n, k = x.shape
    long = pd.DataFrame(
        {"seed": np.repeat(np.arange(n), k), "group": np.tile(groups, n), "value": x.ravel()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = AnovaRM(long, depvar="value", subject="seed", within=["group"]).fit()
    row = table.anova_table.iloc[0]
    f_value, df1, df2 = float(row["F Value"]), float(row["Num DF"]), float(row["Den DF"])
    p_anova = float(row["Pr > F"])
    # No seed x group interaction left (e.g. identical columns): F is 0/0, and AnovaRM
    # returns noise from roundoff; report it as undefined.
    residual = x - x.mean(axis=0) - x.mean(axis=1, keepdims=True) + x.mean()
    if np.sum(residual**2) <= 1e-20 * max(np.sum((x - x.mean()) ** 2), 1e-300):
        f_value = p_anova = math.nan
        notes.append(
            "no residual variance (the groups differ by constants on every seed): "
            "the ANOVA F is undefined"
        )
    eps = greenhouse_geisser_epsilon(x)
    p_gg = (
        float(stats.f.sf(f_value, eps * df1, eps * df2))
        if np.isfinite(eps) and np.isfinite(f_value)
        else math.nan
    )
    return f_value, df1, df2, p_anova, eps, p_gg


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Nemenyi critical difference of mean ranks (Demsar 2006): (cd, q_alpha).

    q_alpha = studentized range quantile (1 - alpha, k groups, infinite df) / sqrt(2);
    cd = q_alpha * sqrt(k (k + 1) / (6 n)). Two groups whose mean ranks differ by more than
    cd differ significantly.
    """
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))
    return q_alpha * math.sqrt(k * (k + 1) / (6 * n)), q_alpha


def greenhouse_geisser_epsilon(wide: np.ndarray) -> float:
    """Greenhouse-Geisser epsilon of an (n seeds x k groups) table.

    From the k x k covariance S of the groups across seeds, double-centred (equivalent to
    projecting on k - 1 orthonormal contrasts): eps = tr(S_c)^2 / ((k - 1) tr(S_c^2)),
    between 1/(k - 1) (maximal violation of sphericity) and 1 (sphericity).
    """
    x = np.asarray(wide, dtype=float)
    k = x.shape[1]
    s = np.cov(x, rowvar=False)
    h = np.eye(k) - np.ones((k, k)) / k
    sc = h @ s @ h
    if np.trace(sc) <= 1e-12 * max(np.trace(s), 1e-300):  # no variation between groups
        return math.nan
    return float(np.trace(sc) ** 2 / ((k - 1) * np.trace(sc @ sc)))
