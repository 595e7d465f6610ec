"""The analysis across conditions: each contrast pooled over the conditions of a study.

For every contrast A - B (the protocol's ``[analysis] contrasts``, and by default the
comparisons of the per-condition report as well), each condition gives the mean y_c of its
seed-wise differences and its variance v_c = s_c^2 / n_c; the conditions are pooled by the
random-effects model (``stats.meta``: Paule-Mandel tau^2, HKSJ interval and p, Q, I^2, the
prediction interval for a new condition), and Holm corrects across the contrasts. As
sensitivity: the equal-weight t test and the exact sign-flip test on the C per-condition
means, the count of conditions where the contrast is significant on its own, and the
Bayesian normal-normal posterior. With few conditions the report says what cannot be
claimed: exact rank and sign tests over C conditions cannot go below p = 2 / 2^C.

The ranking of roles over conditions is descriptive: mean ranks, with cliques of roles
that pairwise Wilcoxon signed-rank tests over the conditions (Holm) do not separate, not
the Nemenyi test, whose mean-rank comparisons depend on which other roles are in the pool
(Benavoli et al. 2016).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from study import __version__
from study.analysis.collect import Collected, collect
from study.analysis.condition_power import plan_over_conditions
from study.analysis.power import planning_alpha
from study.analysis.report import FAMILIES, comparison_pairs, long_values
from study.analysis.stats import (
    Permutation,
    adjust_p_values,
    nemenyi_critical_difference,
    paired_permutation,
    paired_tests,
    wilcoxon_signed_rank,
)
from study.analysis.stats.meta import MetaAnalysis, Posterior, posterior, random_effects
from study.analysis.stats.parametric import TTest, one_sample_t
from study.analysis.units import UNITS, Units
from study.conditions import Study
from study.plan import expand
from study.protocol import AnalysisSection, Protocol
from study.track import Tracker

DECLARED = "declared contrast"
POWER = 0.8


@dataclass(frozen=True)
class ConditionEffect:
    """One condition's contrast: n paired seeds, the mean difference y_c, its variance
    v_c = s_c^2 / n_c, the t interval, and the protocol's test's unadjusted p."""

    condition: str
    n: int
    mean: float
    variance: float
    ci95: tuple[float, float]
    p: float
    reason: str | None = None  # why the condition is left out of the pooling


@dataclass
class Contrast:
    a: str
    b: str
    family: str
    effects: list[ConditionEffect]
    meta: MetaAnalysis | None = None
    reason: str | None = None  # why there is no pooled estimate
    equal_weight: TTest | None = None
    sign_flip: Permutation | None = None
    posterior: Posterior | None = None
    power: dict[str, Any] = field(default_factory=dict)
    p_adj: float = math.nan
    reject: bool = False

    @property
    def pooled(self) -> list[ConditionEffect]:
        return [e for e in self.effects if e.reason is None]

    @property
    def testable(self) -> bool:
        """At least 2 conditions with 2 paired seeds: in the correction family."""
        return len(self.pooled) >= 2

    def significant_in(self, alpha: float) -> tuple[int, int, int]:
        """(conditions significantly above 0, below 0, conditions tested), unadjusted."""
        tested = [e for e in self.pooled if not math.isnan(e.p)]
        up = sum(1 for e in tested if e.p < alpha and e.mean > 0)
        down = sum(1 for e in tested if e.p < alpha and e.mean < 0)
        return up, down, len(tested)


@dataclass
class Ranking:
    """Mean ranks of the roles over the conditions (rank 1: the lowest metric in a
    condition) and the cliques pairwise Wilcoxon-Holm tests do not separate."""

    roles: list[str]
    conditions: list[str]
    mean_ranks: dict[str, float]
    pairwise: list[dict[str, Any]]
    cliques: list[list[str]]
    nemenyi_cd: float


@dataclass
class Across:
    study: Study
    collected: list[tuple[Protocol, Collected]]
    contrasts: list[Contrast]
    means: pd.DataFrame  # condition, role, n, mean, sd, half (95% t half-width)
    ranking: Ranking | None
    ranking_note: str | None
    header: dict[str, Any]

    @property
    def analysis(self) -> AnalysisSection:
        return self.study.protocols[0].analysis

    @property
    def units(self) -> Units:
        return UNITS[self.analysis.metric]

    @property
    def conditions(self) -> list[str]:
        return [str(p.condition) for p, _ in self.collected]

    @property
    def tested(self) -> list[Contrast]:
        return [c for c in self.contrasts if c.testable]

    @property
    def rank_claim_min(self) -> int:
        """The fewest conditions with which an exact rank or sign test over conditions can
        reach alpha (its smallest p is 2 / 2^C): 6 at alpha = 0.05."""
        c = 1
        while 2 / 2**c >= self.analysis.alpha:
            c += 1
        return c


def collect_conditions(
    study: Study, tracker: Tracker, identities: dict[str | None, str] | None = None
) -> list[tuple[Protocol, Collected]]:
    """Each condition's results from the tracker (``identities``: the data identity each
    condition was trained on; without one, the identity its runs were tagged with)."""
    return [
        (p, collect(expand(p), tracker, (identities or {}).get(p.condition)))
        for p in study.protocols
    ]


def with_results(
    study: Study, collected: list[tuple[Protocol, Collected]]
) -> tuple[list[tuple[Protocol, Collected]], list[str]]:
    """The conditions with results (a run of any status), and the names of the others:
    they get no report and the report across conditions leaves them out."""
    kept = [(p, c) for p, c in collected if not (c.runs["status"] == "ABSENT").all()]
    names = {str(p.condition) for p, _ in kept}
    return kept, [c for c in study.names if c not in names]


def build_across(study: Study, collected: list[tuple[Protocol, Collected]]) -> Across:
    """Every number of the report across conditions, from each condition's results."""
    analysis = study.protocols[0].analysis
    metric = analysis.metric
    longs = {str(p.condition): long_values(c.table, metric) for p, c in collected}
    roles = [r.key for r in expand(collected[0][0]).roles]
    contrasts = [
        _contrast(a, b, family, longs, analysis)
        for a, b, family in contrast_pairs(collected[0][0], analysis)
    ]
    tested = [c for c in contrasts if c.testable]
    p_values = [c.meta.p if c.meta is not None else math.nan for c in tested]
    adjusted = adjust_p_values(p_values, analysis.correction) if tested else []
    alpha_plan = planning_alpha(analysis.alpha, max(len(tested), 1), analysis.correction)
    for c, p_adj in zip(tested, adjusted, strict=True):
        c.p_adj = float(p_adj)
        c.reject = bool(p_adj < analysis.alpha)
        differences = {e.condition: _differences(longs[e.condition], c.a, c.b) for e in c.pooled}
        c.power = plan_over_conditions(
            differences, effect=analysis.min_effect, alpha=alpha_plan, power=POWER
        )
    ranking, note = _ranking(longs, roles, analysis.alpha)
    return Across(
        study=study,
        collected=collected,
        contrasts=contrasts,
        means=_means(longs, roles),
        ranking=ranking,
        ranking_note=note,
        header=_header(study, collected, len(tested), alpha_plan),
    )


def contrast_pairs(p: Protocol, analysis: AnalysisSection) -> list[tuple[str, str, str]]:
    """The contrasts pooled across conditions: the declared ones, then (unless
    ``default_contrasts`` is false) the per-condition report's comparisons; each pair once."""
    asked = [(a, b, DECLARED) for a, b in analysis.contrasts]
    if analysis.default_contrasts:
        asked += comparison_pairs(expand(p), analysis)
    seen: set[frozenset[str]] = set()
    out = []
    for a, b, family in asked:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b, family))
    return out


def _differences(long: pd.DataFrame, a: str, b: str) -> np.ndarray:
    """A - B of the seeds both have, in seed order."""
    wide = long.pivot(index="seed", columns="group", values="value")
    if a not in wide or b not in wide:
        return np.array([])
    both = wide[[a, b]].dropna()
    return (both[a] - both[b]).to_numpy(dtype=float)


def _condition_effect(condition: str, long: pd.DataFrame, a: str, b: str, test: str):
    wide = long.pivot(index="seed", columns="group", values="value")
    both = wide[[a, b]].dropna() if a in wide and b in wide else wide.iloc[:0, :0]
    n = len(both)
    if n < 2:
        why = f"{n} paired seed{'s' * (n != 1)}: a condition needs 2 to give a variance"
        return ConditionEffect(
            condition, n, math.nan, math.nan, (math.nan, math.nan), math.nan, why
        )
    tests = paired_tests(both[a].to_numpy(float), both[b].to_numpy(float))
    d = both[a].to_numpy(float) - both[b].to_numpy(float)
    variance = float(np.var(d, ddof=1)) / n
    p = {"t": tests.t.p, "wilcoxon": tests.wilcoxon[1], "permutation": tests.permutation.p}[test]
    half = float(sps.t.ppf(0.975, n - 1)) * math.sqrt(variance)
    mean = float(np.mean(d))
    why = None if variance > 0 else "its seeds all differ by the same amount (variance 0)"
    return ConditionEffect(condition, n, mean, variance, (mean - half, mean + half), float(p), why)


def _contrast(
    a: str, b: str, family: str, longs: dict[str, pd.DataFrame], analysis: AnalysisSection
) -> Contrast:
    effects = [_condition_effect(c, long, a, b, analysis.test) for c, long in longs.items()]
    c = Contrast(a, b, family, effects)
    zero = [e.condition for e in effects if e.reason and e.reason.startswith("its seeds")]
    usable = [e for e in effects if e.reason is None]
    if len(usable) + len(zero) < 2:
        c.reason = (
            f"{len(usable)} condition(s) with 2 paired seeds or more: pooling needs 2 or more"
        )
        return c
    y = [e.mean for e in usable]
    v = [e.variance for e in usable]
    if zero:  # in the family (conservative), but no inverse-variance weights
        c.reason = (
            f"no random-effects pooling: in {', '.join(zero)} the seeds all differ by the same "
            "amount, so the condition has no inverse-variance weight; the contrast counts "
            "in the correction family with an undefined p"
        )
    else:
        c.meta = random_effects(y, v, method="pm")
        c.posterior = posterior(y, v, min_effect=analysis.min_effect, tau_scale=analysis.min_effect)
    if len(y) >= 2:
        c.equal_weight = one_sample_t(np.asarray(y))
        c.sign_flip = paired_permutation(np.asarray(y))
    return c


def _means(longs: dict[str, pd.DataFrame], roles: list[str]) -> pd.DataFrame:
    rows = []
    for condition, long in longs.items():
        for role in roles:
            v = long.loc[long["group"] == role, "value"].to_numpy(float)
            n = len(v)
            sd = float(np.std(v, ddof=1)) if n > 1 else math.nan
            half = float(sps.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
            mean = float(np.mean(v)) if n else math.nan
            rows.append(
                {"condition": condition, "role": role, "n": n, "mean": mean, "sd": sd, "half": half}
            )
    return pd.DataFrame(rows, columns=["condition", "role", "n", "mean", "sd", "half"])


def _ranking(
    longs: dict[str, pd.DataFrame], roles: list[str], alpha: float
) -> tuple[Ranking | None, str | None]:
    """Mean ranks over the conditions in which every role has results; cliques of roles
    that pairwise Wilcoxon signed-rank tests on the per-condition means (Holm) do not
    separate."""
    means = {c: long.groupby("group")["value"].mean().reindex(roles) for c, long in longs.items()}
    table = pd.DataFrame(means).T.dropna(axis=1, how="all")
    present = [r for r in roles if r in table.columns]
    table = table[present].dropna()
    if len(present) < 2 or len(table) < 2:
        return None, (
            f"no ranking: {len(table)} condition(s) with results for all of {len(present)} "
            "role(s); a ranking needs 2 of each"
        )
    ranks = table.rank(axis=1, method="average")
    mean_ranks = {r: float(ranks[r].mean()) for r in present}
    pairs = [(x, y) for i, x in enumerate(present) for y in present[i + 1 :]]
    p_raw = [wilcoxon_signed_rank((table[x] - table[y]).to_numpy(float))[1] for x, y in pairs]
    p_adj = adjust_p_values(p_raw, "holm")
    pairwise = [
        {"a": x, "b": y, "n": len(table), "p": float(p), "p_adj": float(q), "reject": q < alpha}
        for (x, y), p, q in zip(pairs, p_raw, p_adj, strict=True)
    ]
    order = sorted(present, key=lambda r: (mean_ranks[r], r))
    separated = {frozenset((d["a"], d["b"])) for d in pairwise if d["reject"]}
    cd, _ = nemenyi_critical_difference(len(present), len(table), alpha)
    ranking = Ranking(
        present, list(table.index), mean_ranks, pairwise, cliques(order, separated), cd
    )
    return ranking, None


def cliques(order: list[str], separated: set[frozenset[str]]) -> list[list[str]]:
    """Maximal runs of consecutive roles (in mean-rank order) no two of which are
    separated; single roles are not cliques."""
    out: list[list[str]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and all(
            frozenset((order[k], order[j + 1])) not in separated for k in range(i, j + 1)
        ):
            j += 1
        if j > i and not (out and order.index(out[-1][-1]) >= j):
            out.append(order[i : j + 1])
    return out


def _header(
    study: Study, collected: list[tuple[Protocol, Collected]], family: int, alpha_plan: float
) -> dict[str, Any]:
    p = study.protocols[0]
    runs = sum(len(c.runs) for _, c in collected)
    finished = sum(int((c.runs["status"] == "FINISHED").sum()) for _, c in collected)
    return {
        "study": study.name,
        "description": p.study.description,
        "protocol_file": study.source,
        "protocol_sha": p.sha256,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "conditions_declared": len(study.conditions),
        "conditions": len(collected),
        "missing": [c for c in study.names if c not in {str(q.condition) for q, _ in collected}],
        "runs_planned": runs,
        "runs_finished": finished,
        "family": family,
        "alpha_planned": alpha_plan,
        "families": [FAMILIES[f] for f in p.analysis.comparisons],
    }
