"""The report's figures with their captions, drawn by ``figures`` from the report's data.

Learning curves put only comparable quantities on one axis: validation and test accuracy
and NLL for every trained role, and each training objective (a loss with its parameters)
on a panel of its own, since CE, KD with its T^2 factor, BAN, CWTM and DKPP measure
different things.
"""

from __future__ import annotations

import math

from study.analysis import figures
from study.analysis.report_data import FigureImage, Report
from study.analysis.report_signal import signal_figures
from study.analysis.units import UNITS, fmt_num, missing
from study.plan import TEACHER, Plan

CURVE_PANELS = ("val_acc", "test_acc", "val_nll", "test_nll")


def report_figures(rep: Report) -> list[FigureImage]:
    """The report's figures as PNG bytes (drawn at dpi 100)."""
    out = _value_figures(rep) + _curve_figures(rep) + signal_figures(rep)  # [diagnostics]
    om = rep.omnibus
    if om is not None:
        u = rep.units
        rejects = not missing(om["p_friedman"]) and om["p_friedman"] < rep.protocol.analysis.alpha
        out.append(
            FigureImage(
                "critical_difference",
                f"Critical-difference diagram: mean ranks of {u.name} over "
                f"{om['n_seeds_common']} seeds (rank 1 = the lowest {u.name} on a seed). "
                f"Bars join roles whose mean ranks differ by less than the Nemenyi "
                f"CD = {fmt_num(om['cd'], 2)} (not significantly different). The post-hoc "
                f"test applies only when the Friedman test rejects"
                + ("." if rejects else "; it does not here, so the diagram is descriptive only."),
                figures.critical_difference(
                    om["mean_ranks"],
                    om["cd"] if om["cd"] is not None else math.nan,
                    f"mean rank of {u.name} (1 = lowest)",
                ),
            )
        )
    return out


def _value_figures(rep: Report) -> list[FigureImage]:
    u = rep.units
    metric = rep.protocol.analysis.metric
    table = rep.collected.table
    values = table[["role", "seed", metric]].rename(columns={metric: "value"}).dropna()
    if not len(values):
        return []
    values = values.assign(value=values["value"].astype(float) * u.factor)
    kinds = {r.key: r.kind for r in rep.plan.roles}
    order = [r.key for r in rep.plan.roles]
    chains = _chains(rep.plan)
    return [
        FigureImage(
            "distributions",
            f"{u.title} per role: box (quartiles, whiskers to 1.5 IQR) and "
            "one point per seed. Blue: teacher, orange: students, green: ensembles.",
            figures.distributions(values, order, kinds, u.label),
        ),
        FigureImage(
            "paired_seeds",
            f"{u.title} of each seed across "
            + ("the generations of each arm" if chains[0][0] != "all roles" else "roles")
            + ": one grey line per seed, the red line is the mean. Comparisons are paired "
            "along these lines.",
            figures.paired_lines(values, chains, u.label),
        ),
    ]


def _curve_figures(rep: Report) -> list[FigureImage]:
    curves = rep.collected.curves
    if not len(curves):
        return []
    trained = [r.key for r in rep.plan.roles if r.kind != "ensemble"]
    out = []
    panels = [
        figures.Panel(m, UNITS[m].label, tuple(trained), UNITS[m].factor) for m in CURVE_PANELS
    ]
    png = figures.learning_curves(curves, trained, panels, columns=2)
    if png is not None:
        out.append(
            FigureImage(
                "learning_curves",
                "Learning curves: mean over seeds per epoch and its 95% t interval (band) of "
                "the validation and test accuracy and NLL, every trained role (ensembles "
                "are not trained). The test split is plotted, never used to select a model.",
                png,
            )
        )
    objectives = _objectives(rep.plan)
    panels = [
        figures.Panel("train_loss", "training loss", tuple(roles), title=title)
        for title, roles in objectives
    ]
    png = figures.learning_curves(curves, trained, panels, columns=min(3, len(panels)))
    if png is not None:
        out.append(
            FigureImage(
                "training_objectives",
                "Training objectives: the loss each role minimises, mean over seeds per "
                "epoch (95% t band), one panel per objective (a loss with its parameters): "
                "different objectives are different quantities and share no axis.",
                png,
            )
        )
    return out


def _objectives(plan: Plan) -> list[tuple[str, list[str]]]:
    """(panel title, roles) for each distinct training objective, in plan order."""
    groups: dict[str, list[str]] = {}
    for role in plan.roles:
        if role.kind == "ensemble":
            continue
        params = ", ".join(f"{k} = {v:g}" for k, v in role.loss_params.items() if _number(v))
        title = f"{role.loss} loss" + (f" ({params})" if params else "")
        groups.setdefault(title, []).append(role.key)
    return list(groups.items())


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _chains(plan: Plan) -> list[tuple[str, list[str]]]:
    """teacher -> gen1 -> gen2 ... for each arm with more than one generation; else all
    roles in plan order."""
    chains = [
        (f"arm {arm.name}", [TEACHER, *(f"{arm.name}/gen{k}" for k in range(1, g + 1))])
        for arm in plan.protocol.arms
        if (g := arm.generations) > 1
    ]
    return chains or [("all roles", [r.key for r in plan.roles])]
