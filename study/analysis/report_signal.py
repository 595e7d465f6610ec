"""The report's section "Where the signal comes from": the dark-knowledge diagnostics of
the distillation roles (``study.diagnostics``), read from their per-epoch curves.

Per role: each diagnostic's mean over the last epochs of a seed (``last_epochs``: the
last tenth of the role's epochs, at least one), then its mean over seeds with the 95% t
interval; a figure of ``dk_grad_share`` and ``teacher_conf`` over the epochs (mean and
95% t band over seeds); and, across the seeds of a role, Spearman's rank correlation
between the dark share and the student's gain over its own teacher on the report's metric,
with a 95% CI by Fisher's z (standard error 1.06 / sqrt(n - 3), Fieller, Hartley & Pearson
1957). A correlation across seeds is an association: seeds whose teacher spreads more of
its gradient on the other classes may differ in other ways too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from study.analysis import figures
from study.analysis.report_data import FigureImage, Report
from study.analysis.table import Table
from study.analysis.units import NOT_AVAILABLE, fmt_num, missing
from study.diagnostics import DIAGNOSTIC_METRICS, GRADIENT

LAST_FRACTION = 0.1
"""The share of a role's epochs, at its end, over which a seed's diagnostics are averaged."""
FIGURE_METRICS = ("dk_grad_share", "teacher_conf")
LABELS = {
    "dk_grad_share": "dark share of the soft-target gradient",
    "dk_grad_share_permuted": "dark share, permuted targets (DKPP)",
    "teacher_conf": "teacher's top-class probability",
    "teacher_entropy": "teacher's entropy (nats)",
    "teacher_correct": "teacher correct on the student's view",
    "cwtm_weight_cv": "CV of the CWTM weights",
}
HEADERS = {
    "dk_grad_share": "dk_grad_share",
    "dk_grad_share_permuted": "dk_grad_share_permuted",
    "teacher_conf": "teacher_conf",
    "teacher_entropy": "teacher_entropy (nats)",
    "teacher_correct": "teacher_correct",
    "cwtm_weight_cv": "cwtm_weight_cv",
}
FISHER_SE = 1.06  # Spearman's z standard error factor (Fieller, Hartley & Pearson 1957)


def last_epochs(epochs: int) -> int:
    """How many of a role's last epochs a seed's diagnostics are averaged over."""
    return max(1, math.ceil(LAST_FRACTION * epochs))


@dataclass
class SignalSection:
    """The section's tables and sentences; ``present`` is False without diagnostics."""

    present: bool
    intro: str
    means: Table | None = None
    association: Table | None = None
    notes: list[str] = field(default_factory=list)


def _measured_roles(rep: Report) -> list[Any]:
    return [r for r in rep.plan.roles if r.kind == "student" and r.loss in GRADIENT]


def per_seed(rep: Report) -> pd.DataFrame:
    """role, seed, metric, value: each seed's mean of each diagnostic over its role's last
    epochs (``last_epochs``), for the finished runs of the distillation roles."""
    columns = ["role", "seed", "metric", "value"]
    curves = rep.collected.curves
    if not len(curves):
        return pd.DataFrame(columns=columns)
    diag = curves[curves["metric"].isin(DIAGNOSTIC_METRICS)]
    frames = []
    for role in _measured_roles(rep):
        assert role.train is not None
        mine = diag[diag["role"] == role.key]
        if not len(mine):
            continue
        first = role.train.epochs - last_epochs(role.train.epochs) + 1
        tail = mine[pd.to_numeric(mine["epoch"]) >= first]
        means = tail.groupby(["seed", "metric"])["value"].mean().reset_index()
        frames.append(means.assign(role=role.key))
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    return out.astype({"seed": int, "value": float})


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval of the mean (NaN bounds with fewer than 2 values)."""
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    low, high = sps.t.interval(0.95, n - 1, loc=mean, scale=sps.sem(values))
    return mean, float(low), float(high)


def spearman_ci(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman's rho, its p-value (scipy) and a 95% CI by Fisher's z (n >= 4)."""
    n = len(x)
    out = {"n": n, "rho": math.nan, "p": math.nan, "low": math.nan, "high": math.nan}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = sps.spearmanr(x, y)
    rho = float(res.statistic)
    out.update(rho=rho, p=float(res.pvalue))
    if n >= 4 and abs(rho) < 1:
        z, half = math.atanh(rho), sps.norm.ppf(0.975) * FISHER_SE / math.sqrt(n - 3)
        out.update(low=math.tanh(z - half), high=math.tanh(z + half))
    return out


def gains(rep: Report) -> pd.DataFrame:
    """role, seed, gain: each student's metric minus its own teacher's (same seed)."""
    metric = rep.protocol.analysis.metric
    table = rep.collected.table
    values = {
        (r, int(s)): float(v)
        for r, s, v in zip(table["role"], table["seed"], pd.to_numeric(table[metric]), strict=True)
        if not missing(float(v))
    }
    rows = []
    for role in _measured_roles(rep):
        for (r, s), v in values.items():
            if r == role.key and (role.teacher, s) in values:
                rows.append({"role": r, "seed": s, "gain": v - values[(role.teacher, s)]})
    return pd.DataFrame(rows, columns=["role", "seed", "gain"])


def signal_section(rep: Report) -> SignalSection:
    """The section's tables: diagnostics per role, and the association with the gain."""
    seeds = per_seed(rep)
    roles = [r for r in _measured_roles(rep) if r.key in set(seeds["role"])]
    if not roles:
        return SignalSection(
            present=False,
            intro="No dark-knowledge diagnostics in the results: no distillation role, or "
            "runs trained before the diagnostics were logged.",
        )
    metrics = [m for m in DIAGNOSTIC_METRICS if m in set(seeds["metric"])]
    rows = []
    for role in roles:
        assert role.train is not None
        mine = seeds[seeds["role"] == role.key]
        cells = {"role": role.key, "loss": _loss_text(role)}
        cells["last"] = f"{last_epochs(role.train.epochs)} of {role.train.epochs}"
        for m in metrics:
            v = mine.loc[mine["metric"] == m, "value"].to_numpy(float)
            cells[f"{m}_n"] = len(v)
            cells[m] = _mean_ci(v) if len(v) else NOT_AVAILABLE
        cells["n"] = str(max(cells[f"{m}_n"] for m in metrics))
        rows.append(cells)
    means = Table.of(
        rows,
        ("role", "l", lambda r: r["role"]),
        ("loss", "l", lambda r: r["loss"]),
        ("last epochs", "r", lambda r: r["last"]),
        ("n", "r", lambda r: r["n"]),
        *((HEADERS[m], "r", (lambda r, m=m: r[m])) for m in metrics),
    ).factored(["last epochs", "n"])

    unit = rep.units
    gain = gains(rep)
    dark = seeds[seeds["metric"] == "dk_grad_share"][["role", "seed", "value"]]
    joined = dark.merge(gain, on=["role", "seed"])
    assoc = []
    for role in roles:
        mine = joined[joined["role"] == role.key].sort_values("seed")
        r = spearman_ci(mine["value"].to_numpy(float), mine["gain"].to_numpy(float))
        assoc.append(
            {
                "role": role.key,
                "teacher": role.teacher,
                "n": str(r["n"]),
                "gain": unit.diff(float(mine["gain"].mean()) if len(mine) else math.nan),
                "rho": fmt_num(r["rho"], 3),
                "ci": NOT_AVAILABLE
                if missing(r["low"])
                else f"[{r['low']:+.3f}, {r['high']:+.3f}]",
                "p": fmt_num(r["p"], 4),
            }
        )
    association = Table.of(
        assoc,
        ("role", "l", lambda r: r["role"]),
        ("its teacher", "l", lambda r: r["teacher"]),
        ("n", "r", lambda r: r["n"]),
        (f"mean gain ({unit.difference})", "r", lambda r: r["gain"]),
        ("Spearman rho", "r", lambda r: r["rho"]),
        ("95% CI (Fisher z)", "r", lambda r: r["ci"]),
        ("p", "r", lambda r: r["p"]),
    ).factored(["n"])
    tails = sorted({last_epochs(r.train.epochs) for r in roles if r.train is not None})
    intro = (
        "Dark-knowledge diagnostics, measured on the training batches of every epoch "
        "(definitions in the README, 'Dark-knowledge diagnostics'): dk_grad_share is the "
        "share of the squared norm of the soft-target gradient q - p, at the loss's "
        "temperature, on the classes other than the teacher's top class (for mse_logits "
        "of s - t; for cwtm and dkpp at T = 1, the teacher's targets they leave out or "
        "scramble; dk_grad_share_permuted: on the permuted targets DKPP trains on), "
        "teacher_conf the mean probability of the teacher's top class at that temperature, "
        "teacher_entropy the mean entropy of its soft targets, teacher_correct the share "
        "of training views whose teacher argmax is the label, cwtm_weight_cv the "
        "coefficient of variation of CWTM's per-sample weights within a batch. Each seed's "
        f"value is its mean over the last {' or '.join(map(str, tails))} epoch(s) (the last "
        f"{LAST_FRACTION:.0%} of its role's epochs, at least one); the table gives the mean "
        "over seeds and its 95% t interval."
    )
    notes = [
        f"Across the seeds of each role: Spearman's rank correlation between the seed's "
        f"dk_grad_share and its gain over its own teacher (the student's {unit.name} minus "
        f"its teacher's, same seed), with a 95% CI by Fisher's z (standard error 1.06 / "
        "sqrt(n - 3); needs 4 seeds) and scipy's p (t approximation, not corrected for the "
        "number of roles). It describes an association across seeds, not a "
        "cause: a seed whose teacher spreads more of its gradient on the other classes "
        "may differ in other ways too (its teacher's accuracy, its initialisation)."
    ]
    return SignalSection(True, intro, means, association, notes)


def _mean_ci(v: np.ndarray) -> str:
    mean, low, high = t_interval(v)
    if missing(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _loss_text(role: Any) -> str:
    params = ", ".join(
        f"{k} = {v:g}"
        for k, v in role.loss_params.items()
        if k == "temperature" and isinstance(v, int | float)
    )
    return role.loss + (f" ({params})" if params else "")


def signal_figures(rep: Report) -> list[FigureImage]:
    """``dk_grad_share`` and ``teacher_conf`` per epoch: mean and 95% t band over seeds."""
    curves = rep.collected.curves
    roles = [r.key for r in _measured_roles(rep)]
    if not len(curves) or not roles:
        return []
    mine = curves[curves["metric"].isin(FIGURE_METRICS) & curves["role"].isin(roles)]
    if not len(mine):
        return []
    panels = [figures.Panel(m, LABELS[m], tuple(roles), title=m) for m in FIGURE_METRICS]
    png = figures.learning_curves(mine, roles, panels, columns=2)
    if png is None:
        return []
    return [
        FigureImage(
            "dark_knowledge",
            "Where the signal comes from, per epoch: the dark share of the soft-target "
            "gradient (dk_grad_share; cwtm and dkpp: of the teacher's targets at T = 1) and "
            "the teacher's top-class probability at the loss's temperature (teacher_conf), "
            "measured on the training batches; mean over seeds and its 95% t band, one "
            "line per distillation role.",
            png,
        )
    ]
