"""Power over conditions and seeds: what more seeds buy, and what only more conditions do.

A contrast pooled over C conditions of n seeds each is estimated with variance

    Var(mu_hat) ~ tau^2 / C + sigma^2 / (n C)

(tau^2: the between-condition variance of the effect; sigma^2: the seed-to-seed variance
of one paired difference within a condition). More seeds shrink only the second term: with
infinitely many the standard error stops at tau / sqrt(C), so when tau is not small, no
number of seeds reaches a given power and only conditions do. The pooled test is the HKSJ
t with C - 1 degrees of freedom, so its power is the noncentral t's with noncentrality
effect / sqrt(Var) (``power.t_power``), at the level the correction family asks for
(``power.planning_alpha``: alpha / m for Holm).

``plan_over_conditions`` plans one contrast from its per-condition differences (the
report's power section); ``plan_conditions`` does it for a tidy table with a condition
column (`study plan-seeds --condition-col`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from study.analysis.power import planning_alpha, t_power
from study.analysis.stats import PAIRED, pair_groups
from study.analysis.stats.meta import random_effects
from study.errors import UserInputError

MAX_CONDITIONS = 10_000
MAX_SEEDS = 100_000
PLAN_COLUMNS = [
    "a",
    "b",
    "conditions",
    "seeds",
    "sigma",
    "tau",
    "se",
    "power",
    "power_2n",
    "power_all_seeds",
    "power_2c",
    "conditions_needed",
    "seeds_needed",
    "warning",
]


def pooled_se(tau2: float, sigma2: float, conditions: float, seeds: float) -> float:
    """sqrt(tau^2 / C + sigma^2 / (n C)); n = inf: the floor tau / sqrt(C)."""
    within = 0.0 if math.isinf(seeds) else sigma2 / (seeds * conditions)
    return math.sqrt(tau2 / conditions + within)


def pooled_power(
    effect: float, tau2: float, sigma2: float, conditions: int, seeds: float, alpha: float
) -> float:
    """Power of the pooled two-sided t test (C - 1 df) for a true effect ``effect``."""
    if conditions < 2:
        return math.nan
    se = pooled_se(tau2, sigma2, conditions, seeds)
    if se == 0:
        return 1.0 if effect else alpha
    return float(t_power(effect / se, conditions, alpha, df=conditions - 1, scale=1.0))


def conditions_needed(
    effect: float, tau2: float, sigma2: float, seeds: float, alpha: float, power: float
) -> float:
    """The fewest conditions (of ``seeds`` seeds each) whose pooled test reaches ``power``;
    NaN beyond MAX_CONDITIONS."""
    return _smallest(
        lambda c: pooled_power(effect, tau2, sigma2, c, seeds, alpha) >= power, MAX_CONDITIONS
    )


def seeds_needed(
    effect: float, tau2: float, sigma2: float, conditions: int, alpha: float, power: float
) -> float:
    """The fewest seeds per condition with which ``conditions`` conditions reach ``power``;
    NaN when even infinitely many do not (the tau^2 / C floor) or beyond MAX_SEEDS."""
    if pooled_power(effect, tau2, sigma2, conditions, math.inf, alpha) < power:
        return math.nan
    return _smallest(
        lambda n: pooled_power(effect, tau2, sigma2, conditions, n, alpha) >= power, MAX_SEEDS
    )


def _smallest(reached, limit: int, lo: int = 2) -> float:
    """The smallest integer >= lo where the monotone ``reached`` holds (doubling, then
    bisection); NaN when it does not hold at ``limit``."""
    if reached(lo):
        return float(lo)
    hi = lo
    while not reached(hi):
        lo, hi = hi, hi * 2
        if hi >= limit:
            if not reached(limit):
                return math.nan
            hi = limit
            break
    while hi - lo > 1:  # reached(hi), not reached(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return float(hi)


def plan_over_conditions(
    differences: Mapping[str, np.ndarray], *, effect: float, alpha: float, power: float
) -> dict[str, float | str | None]:
    """The power row of one contrast from its seed-wise differences in each condition:
    sigma (pooled within-condition sd), tau (Paule-Mandel), the standard error now, the
    power now, with twice the seeds, with infinitely many seeds and with twice the
    conditions, and the conditions (at the current seeds) and seeds (at the current
    conditions) the target power needs. ``alpha``: the planning level (alpha / m)."""
    usable = {c: np.asarray(d, float) for c, d in differences.items() if len(d) >= 2}
    k = len(usable)
    row: dict[str, float | str | None] = {"conditions": k}
    if k < 2:
        return {**row, "warning": f"{k} condition(s) with 2 paired seeds: nothing to plan"}
    dfs = np.array([len(d) - 1 for d in usable.values()])
    s2 = np.array([np.var(d, ddof=1) for d in usable.values()])
    sigma2 = float(np.sum(dfs * s2) / np.sum(dfs))
    n = float(np.median([len(d) for d in usable.values()]))
    means = [float(np.mean(d)) for d in usable.values()]
    variances = [float(v) / len(d) for v, d in zip(s2, usable.values(), strict=True)]
    try:
        tau2 = random_effects(means, variances).tau2
    except ValueError as e:
        return {**row, "seeds": n, "warning": f"no tau^2: {e}"}
    row.update(seeds=n, sigma=math.sqrt(sigma2), tau=math.sqrt(tau2))
    row["se"] = pooled_se(tau2, sigma2, k, n)
    for key, (c, seeds) in {
        "power": (k, n),
        "power_2n": (k, 2 * n),
        "power_all_seeds": (k, math.inf),
        "power_2c": (2 * k, n),
    }.items():
        row[key] = pooled_power(effect, tau2, sigma2, c, seeds, alpha)
    row["conditions_needed"] = conditions_needed(effect, tau2, sigma2, n, alpha, power)
    row["seeds_needed"] = seeds_needed(effect, tau2, sigma2, k, alpha, power)
    row["warning"] = _warning(row, k, power)
    return row


def _warning(row: Mapping, k: int, power: float) -> str | None:
    said = []
    if math.isnan(row["seeds_needed"]):
        said.append(
            f"no number of seeds reaches power {power:g} with {k} conditions: the "
            f"between-condition sd tau = {row['tau']:.3g} leaves a standard error of at "
            f"least tau / sqrt({k}); only more conditions help"
        )
    if k < 6:
        said.append(
            f"tau is estimated from {k} conditions and is very uncertain: the plan holds "
            "only if the next conditions vary as these did"
        )
    return "; ".join(said) or None


def plan_conditions(
    table: pd.DataFrame,
    *,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    correction: str = "holm",
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    condition_col: str = "condition",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """``plan_over_conditions`` for each comparison of a table with a condition column
    (one row per condition, group and seed; the pairs as ``compare`` chooses them), at
    the level a family of ``comparisons`` corrected by ``correction`` asks for."""
    if condition_col not in table.columns:
        raise UserInputError(
            f"column '{condition_col}' is missing; the table has columns "
            f"{[str(c) for c in table.columns]}",
            source=source,
            field="--condition-col",
        )
    by_condition: dict[str, dict[tuple[str, str], np.ndarray]] = {}
    for condition, part in table.groupby(condition_col, sort=False):
        samples = pair_groups(
            part,
            value_col=value_col,
            group_col=group_col,
            seed_col=seed_col,
            baseline=baseline,
            pairs=pairs,
            source=source,
        )
        by_condition[str(condition)] = {
            (s.a, s.b): s.differences for s in samples if s.pairing == PAIRED
        }
    keys = list(dict.fromkeys(k for found in by_condition.values() for k in found))
    m = max(int(comparisons), len(keys))
    alpha_plan = planning_alpha(alpha, m, correction)
    rows = []
    for a, b in keys:
        found = {c: d[(a, b)] for c, d in by_condition.items() if (a, b) in d}
        planned = plan_over_conditions(found, effect=effect, alpha=alpha_plan, power=power)
        rows.append({"a": a, "b": b, **planned})
    frame = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    frame.attrs.update(comparisons=m, alpha_planned=alpha_plan)
    return frame
