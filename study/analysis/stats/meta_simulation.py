"""Simulated studies of several conditions with a known pooled effect: how often each way
of pooling a contrast across conditions covers it.

Each simulated study draws C condition effects theta_c = mu + tau z_c and, in each
condition, n seed-wise differences theta_c + sigma e_cs (normal). The intervals compared:

- ``pm_hksj``: the report's, Paule-Mandel tau^2 with the HKSJ t interval (``meta``);
- ``pm_hksj_modified``: the same with the standard error max(SE, SE_HKSJ) (Roever, Knapp
  & Friede 2015's modification: never narrower than the usual interval);
- ``dl_z``: DerSimonian-Laird tau^2 with the usual z interval;
- ``pooled_seeds``: every seed of every condition in one paired t test, as if the
  conditions were one (it ignores tau^2);
- ``equal_weight_t``: the one-sample t interval of the C per-condition means;
- ``prediction``: how often a new condition's effect mu + tau z_new falls in the 95%
  prediction interval (Paule-Mandel, t with C - 2 df).

scripts/meta_coverage.py runs it at full size for docs/statistics.md; tests/test_meta.py
runs it small.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from study.analysis.stats.meta import random_effects
from study.analysis.stats.simulation import binomial_interval

INTERVALS = ("pm_hksj", "pm_hksj_modified", "dl_z", "pooled_seeds", "equal_weight_t", "prediction")


def meta_coverage(
    conditions: int,
    seeds: int,
    *,
    tau: float,
    sigma: float,
    reps: int,
    mu: float = 0.0,
    rng_seed: int = 22,
) -> dict[str, Any]:
    """The coverage of each interval of ``INTERVALS`` over ``reps`` simulated studies, with
    its exact binomial 95% interval."""
    rng = np.random.default_rng([rng_seed, conditions, seeds])
    hits = dict.fromkeys(INTERVALS, 0)
    t_seeds = stats.t.ppf(0.975, conditions * seeds - 1)
    t_means = stats.t.ppf(0.975, conditions - 1)
    for _ in range(reps):
        theta = mu + tau * rng.standard_normal(conditions)
        d = theta[:, None] + sigma * rng.standard_normal((conditions, seeds))
        y, v = d.mean(axis=1), d.var(axis=1, ddof=1) / seeds
        pm = random_effects(y, v, method="pm")
        dl = random_effects(y, v, method="dl")
        hits["pm_hksj"] += pm.ci95[0] <= mu <= pm.ci95[1]
        hits["pm_hksj_modified"] += abs(pm.mean - mu) <= t_means * max(pm.se, pm.se_hksj)
        hits["dl_z"] += dl.ci95_z[0] <= mu <= dl.ci95_z[1]
        flat = d.ravel()
        half = t_seeds * flat.std(ddof=1) / np.sqrt(flat.size)
        hits["pooled_seeds"] += bool(abs(flat.mean() - mu) <= half)
        spread = t_means * y.std(ddof=1) / np.sqrt(len(y))
        hits["equal_weight_t"] += bool(abs(y.mean() - mu) <= spread)
        new = mu + tau * rng.standard_normal()
        if pm.prediction is not None:
            hits["prediction"] += pm.prediction[0] <= new <= pm.prediction[1]
    out: dict[str, Any] = {"conditions": conditions, "seeds": seeds, "tau": tau, "sigma": sigma}
    out["reps"] = reps
    for name, count in hits.items():
        if name == "prediction" and conditions < 3:
            out[name] = None
            continue
        out[name] = {"coverage": count / reps, "ci95": binomial_interval(int(count), reps)}
    return out
