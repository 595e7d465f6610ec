"""The report across conditions: reports/<study>/report.{md,html}, its figures and the
paper table of a study of several conditions (each condition has its own report in
reports/<study>/<condition>/).

``across.build_across`` computes; this module formats (tables, sentences, figures) and
writes. Both renderings are made from the same ``Table`` objects and sentences, so they
carry the same numbers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study import __version__
from study.analysis import figures
from study.analysis.across import Across, Contrast
from study.analysis.collect import Collected
from study.analysis.report import template_environment, write_files
from study.analysis.report_data import FigureImage
from study.analysis.stats import CORRECTION_NAMES, ci_reading
from study.analysis.table import Table, latex_text, md_text
from study.analysis.units import NOT_AVAILABLE, fmt_num, format_p, missing
from study.protocol import Protocol

CONDITIONS_FILE = "conditions.csv"


# --------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------


def _against(rep: Across) -> tuple[float, ...]:
    m = rep.analysis.min_effect
    return (0.0, m, -m)


def _diff(rep: Across, x: Any) -> str:
    return rep.units.diff(x, against=_against(rep))


def _interval(rep: Across, ci: Any) -> str:
    return rep.units.interval(ci, against=_against(rep))


def _name(c: Contrast) -> str:
    return f"{c.a} - {c.b}"


def _percent(x: Any) -> str:
    return NOT_AVAILABLE if missing(x) else f"{100 * x:.0f}%"


def conditions_table(rep: Across) -> Table:
    """One row per condition: its teacher, students, data, recipe, seeds, runs."""
    finished = {str(p.condition): c for p, c in rep.collected}

    def runs(p: Protocol) -> str:
        c = finished.get(str(p.condition))
        if c is None:
            return "no results"
        return f"{int((c.runs['status'] == 'FINISHED').sum())} of {len(c.runs)}"

    return Table.of(
        rep.study.protocols,
        ("condition", "l", lambda p: str(p.condition)),
        ("teacher", "l", lambda p: _network(p.teacher.arch, p.teacher.kwargs)),
        ("students", "l", _students),
        ("data", "l", lambda p: p.data.dataset),
        ("recipe", "l", _recipe),
        ("seeds", "r", lambda p: str(len(p.seeds))),
        ("finished runs", "r", runs),
    ).factored(["data", "recipe", "seeds", "students"])


def _network(arch: str, kwargs: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{arch}({inner})" if inner else arch


def _students(p: Protocol) -> str:
    own = [f"{a.name}: {_network(a.arch, a.kwargs or {})}" for a in p.arms if a.arch]
    return "; ".join(own) or "the teacher's architecture"


def _recipe(p: Protocol) -> str:
    t = p.train
    return (
        f"{t.epochs} epochs, batch {t.batch_size}, {t.optimizer} lr {t.lr:g}, wd {t.weight_decay:g}"
    )


def pooled_table(rep: Across) -> Table:
    u = rep.units
    return Table.of(
        rep.contrasts,
        ("contrast", "l", _name),
        ("family", "l", lambda c: c.family),
        ("C", "r", lambda c: str(len(c.pooled))),
        (f"pooled ({u.difference})", "r", lambda c: _diff(rep, c.meta.mean if c.meta else None)),
        ("95% CI (HKSJ)", "r", lambda c: _interval(rep, c.meta.ci95 if c.meta else None)),
        ("p", "r", lambda c: format_p(c.meta.p if c.meta else None, rep.analysis.alpha)),
        ("p adj.", "r", lambda c: format_p(c.p_adj, rep.analysis.alpha)),
        (f"tau ({u.difference})", "r", lambda c: u.value(c.meta.tau if c.meta else None)),
        ("I²", "r", lambda c: _percent(c.meta.i2 if c.meta else None)),
        ("Q (p)", "r", lambda c: _q(c, rep)),
        ("95% prediction", "r", lambda c: _interval(rep, c.meta.prediction if c.meta else None)),
        ("verdict", "l", lambda c: verdict_short(rep, c)),
    )


def _q(c: Contrast, rep: Across) -> str:
    if c.meta is None:
        return NOT_AVAILABLE
    return f"{c.meta.q:.2f} ({format_p(c.meta.q_p)})"


def sensitivity_table(rep: Across) -> Table:
    u = rep.units
    alpha = rep.analysis.alpha

    def ew(c: Contrast) -> str:
        t = c.equal_weight
        if t is None:
            return NOT_AVAILABLE
        return f"{_diff(rep, t.mean)} {_interval(rep, t.ci95)}, p = {format_p(t.p, alpha)}"

    def votes(c: Contrast) -> str:
        up, down, n = c.significant_in(alpha)
        return f"{up} up, {down} down of {n}" if n else NOT_AVAILABLE

    return Table.of(
        [c for c in rep.contrasts if c.testable],
        ("contrast", "l", _name),
        (f"equal-weight mean [95% t CI] ({u.difference})", "r", ew),
        ("sign-flip p (exact)", "r", lambda c: _sign_flip(c, alpha)),
        ("significant in", "r", votes),
        ("P(< -m / within / > +m)", "r", lambda c: _probabilities(c, new=False)),
        ("new condition", "r", lambda c: _probabilities(c, new=True)),
    )


def _sign_flip(c: Contrast, alpha: float) -> str:
    return format_p(c.sign_flip.p, alpha) if c.sign_flip else NOT_AVAILABLE


def _probabilities(c: Contrast, *, new: bool) -> str:
    b = c.posterior
    if b is None:
        return NOT_AVAILABLE
    values = (b.new_below, b.new_within, b.new_above) if new else (b.p_below, b.p_within, b.p_above)
    return " / ".join(f"{v:.2f}" for v in values)


def effects_table(rep: Across) -> Table:
    """Every condition's estimate of every contrast (the forest plots' rows)."""
    rows = [(c, e) for c in rep.contrasts for e in c.effects]
    alpha = rep.analysis.alpha
    return Table.of(
        rows,
        ("contrast", "l", lambda ce: _name(ce[0])),
        ("condition", "l", lambda ce: ce[1].condition),
        ("n", "r", lambda ce: str(ce[1].n)),
        (f"mean difference ({rep.units.difference})", "r", lambda ce: _diff(rep, ce[1].mean)),
        ("95% t CI", "r", lambda ce: _interval(rep, ce[1].ci95)),
        (f"{rep.analysis.test} p (unadj.)", "r", lambda ce: format_p(ce[1].p, alpha)),
        ("weight", "r", lambda ce: _weight(ce[0], ce[1].condition)),
        ("note", "l", lambda ce: ce[1].reason or ""),
    )


def _weight(c: Contrast, condition: str) -> str:
    if c.meta is None:
        return NOT_AVAILABLE
    names = [e.condition for e in c.pooled]
    return _percent(c.meta.weights[names.index(condition)]) if condition in names else NOT_AVAILABLE


def power_table(rep: Across) -> Table:
    u = rep.units

    def power(key: str):
        return lambda c: fmt_num(c.power.get(key), 2)

    def count(key: str):
        def cell(c: Contrast) -> str:
            x = c.power.get(key)
            return "none suffices" if x is not None and math.isnan(x) else _int(x)

        return cell

    return Table.of(
        rep.tested,
        ("contrast", "l", _name),
        ("C", "r", lambda c: _int(c.power.get("conditions"))),
        ("n", "r", lambda c: _int(c.power.get("seeds"))),
        (f"sigma ({u.difference})", "r", lambda c: u.value(c.power.get("sigma"))),
        (f"tau ({u.difference})", "r", lambda c: u.value(c.power.get("tau"))),
        ("power now", "r", power("power")),
        ("2n seeds", "r", power("power_2n")),
        ("all seeds", "r", power("power_all_seeds")),
        ("2C conditions", "r", power("power_2c")),
        ("conditions needed (n seeds)", "r", count("conditions_needed")),
        ("seeds needed (C conditions)", "r", count("seeds_needed")),
    )


def _int(x: Any) -> str:
    return NOT_AVAILABLE if missing(x) else f"{int(x)}"


def ranking_tables(rep: Across) -> dict[str, Table]:
    r = rep.ranking
    if r is None:
        return {}
    u = rep.units
    means = rep.means.groupby("role")["mean"].mean()
    ranked = sorted(r.mean_ranks.items(), key=lambda kv: -kv[1])
    return {
        "ranks": Table.of(
            ranked,
            ("role", "l", lambda kv: kv[0]),
            ("mean rank", "r", lambda kv: fmt_num(kv[1])),
            (f"mean {u.name} over conditions ({u.symbol})", "r", lambda kv: u.value(means[kv[0]])),
        ),
        "pairwise": Table.of(
            r.pairwise,
            ("A", "l", lambda d: d["a"]),
            ("B", "l", lambda d: d["b"]),
            ("conditions", "r", lambda d: str(d["n"])),
            ("Wilcoxon p", "r", lambda d: format_p(d["p"], rep.analysis.alpha)),
            ("Holm p", "r", lambda d: format_p(d["p_adj"], rep.analysis.alpha)),
        ),
    }


# --------------------------------------------------------------------------------------
# the paper table: condition x role, mean ± CI (n)
# --------------------------------------------------------------------------------------


@dataclass
class ConditionTable:
    caption: str
    roles: list[str]
    rows: list[tuple[str, list[str]]]  # condition, one cell per role
    source: str
    label: str

    def table(self) -> Table:
        rows = [[c, *cells] for c, cells in self.rows]
        return Table(["condition", *self.roles], rows, "l" + "r" * len(self.roles))

    def markdown(self) -> str:
        return f"**Table.** {md_text(self.caption)}\n\n{self.table().markdown()}\n"

    def latex(self) -> str:
        head = " & ".join(latex_text(h) for h in ["condition", *self.roles]) + r" \\"
        body = [
            " & ".join([latex_text(c), *(_tex_cell(x) for x in cells)]) + r" \\"
            for c, cells in self.rows
        ]
        return "\n".join(
            [
                f"% Generated by study {__version__} from {latex_text(self.source)}.",
                r"% Needs \usepackage{booktabs}. study report rewrites this file.",
                r"\begin{table}[tbp]",
                r"  \centering",
                r"  \small",
                f"  \\caption{{{latex_text(self.caption)}}}",
                f"  \\label{{tab:{self.label}}}",
                f"  \\begin{{tabular}}{{l{'r' * len(self.roles)}}}",
                r"    \toprule",
                f"    {head}",
                r"    \midrule",
                *(f"    {line}" for line in body),
                r"    \bottomrule",
                r"  \end{tabular}",
                r"\end{table}",
                "",
            ]
        )


def _tex_cell(text: str) -> str:
    if text == NOT_AVAILABLE:
        return "--"
    match = re.fullmatch(r"(\S+) ± (\S+) \((\d+)\)", text)
    if not match:
        return latex_text(text)
    mean, half, n = match.groups()
    return f"${mean} \\pm {half}$ ({n})"


def condition_table(rep: Across) -> ConditionTable:
    u = rep.units
    roles = list(dict.fromkeys(rep.means["role"]))
    rows = []
    for condition in rep.conditions:
        mine = rep.means[rep.means["condition"] == condition].set_index("role")
        cells = []
        for role in roles:
            r = mine.loc[role]
            if not r["n"]:
                cells.append(NOT_AVAILABLE)
            elif r["n"] == 1:
                cells.append(f"{u.value(r['mean'])} (1)")
            else:
                cells.append(f"{u.value(r['mean'])} ± {u.value(r['half'])} ({int(r['n'])})")
        rows.append((condition, cells))
    caption = (
        f"{rep.study.name}: {u.name} ({u.symbol}) per condition and role: mean ± the "
        "half-width of its 95% t interval over n seeds (n in parentheses; final epoch, no "
        "selection on test). The pooled differences between roles, with their intervals "
        "across conditions, are in the report's Contrasts section."
    )
    label = "".join(ch if ch.isalnum() or ch in "-:." else "-" for ch in rep.study.name)
    source = f"{rep.study.source} (sha256 {rep.header['protocol_sha'][:16]})"
    return ConditionTable(caption, roles, rows, source, f"{label}-conditions")


# --------------------------------------------------------------------------------------
# sentences
# --------------------------------------------------------------------------------------


def verdict_short(rep: Across, c: Contrast) -> str:
    if not c.testable:
        return "not testable"
    if c.meta is None:
        return "no pooled test possible"
    if c.reject:
        return "higher" if c.meta.mean > 0 else "lower"
    reading = ci_reading(c.meta.ci95, rep.analysis.min_effect)
    if reading.startswith("the CI lies within"):
        return "not significant (CI within ±min_effect)"
    return "not significant (inconclusive)"


def verdict_sentence(rep: Across, c: Contrast) -> str:
    u = rep.units
    a = rep.analysis
    if not c.testable:
        return f"{_name(c)}: not testable: {c.reason}."
    if c.meta is None:
        return f"{_name(c)}: {c.reason}."
    m = c.meta
    numbers = (
        f"pooled {_diff(rep, m.mean)} {u.difference} (HKSJ 95% CI {_diff(rep, m.ci95[0])} to "
        f"{_diff(rep, m.ci95[1])}) over {m.k} conditions, {CORRECTION_NAMES[a.correction]}-"
        f"adjusted p = {format_p(c.p_adj, a.alpha)}; tau = {u.value(m.tau)} {u.difference}, "
        f"I² = {_percent(m.i2)}"
    )
    if c.reject:
        head = f"{c.a} is {'higher' if m.mean > 0 else 'lower'} than {c.b} across conditions"
    else:
        reading = ci_reading(m.ci95, a.min_effect, lambda x: f"{u.value(x)} {u.difference}")
        head = f"{c.a} vs {c.b}: not significant across conditions"
        numbers += f"; {reading}" if reading else ""
    if m.prediction is not None:
        lo, hi = m.prediction
        numbers += (
            f". A new condition's effect lies between {_diff(rep, lo)} and {_diff(rep, hi)} "
            f"{u.difference} (95% prediction interval)"
        )
        if lo < 0 < hi:
            numbers += ": the next condition may see no gain, or a loss"
    return f"{head}: {numbers}."


def cannot_claim(rep: Across) -> list[str]:
    """What a study of few conditions cannot claim (empty from rank_claim_min on)."""
    k = len(rep.conditions)
    need = rep.rank_claim_min
    if k >= need:
        return []
    floor = 2 / 2**k
    ks = f"{k} condition{'s' * (k != 1)}"
    return [
        f"With {ks} no rank-based claim can be made: an exact Wilcoxon signed-rank "
        f"or sign-flip test over {ks} cannot go below p = 2 / 2^{k} = {floor:.3g}, "
        f"above alpha = {rep.analysis.alpha:g} (it takes {need} conditions), so the "
        "ranking below is descriptive and the sign-flip column can never be significant.",
        f"tau² is estimated from {k} values: the HKSJ interval has {k - 1} degrees of "
        f"freedom, the prediction interval {max(k - 2, 0)}, and Cochran's Q and I² have "
        "little power to detect heterogeneity: a Q that is not significant does not show "
        "that the effect is the same in every condition.",
        "The pooled effect is an average over these conditions, not over architectures in "
        "general: it generalises to conditions like these as far as these are a sample of them.",
    ]


def ranking_text(rep: Across) -> str:
    r = rep.ranking
    if r is None:
        return rep.ranking_note or ""
    return (
        f"Mean ranks of {len(r.roles)} roles over {len(r.conditions)} conditions (rank 1 = the "
        f"lowest {rep.units.name} in a condition). Descriptive: the bars join roles that "
        "pairwise Wilcoxon signed-rank tests on the per-condition means, Holm-corrected over "
        f"the {len(r.pairwise)} pairs, do not separate at alpha = {rep.analysis.alpha:g}. "
        "Not Friedman-Nemenyi: mean-rank post-hoc tests depend on which other roles are in "
        f"the pool (Benavoli et al. 2016); for reference, the Nemenyi critical difference "
        f"would be {r.nemenyi_cd:.2f} rank units here."
    )


WHY = (
    "Each contrast is measured in each condition as the mean of its seed-wise paired "
    "differences, and the conditions are pooled by a random-effects meta-analysis: the "
    "effect may differ between conditions (architectures, datasets), and a reader asks "
    "both whether it helps on average over conditions like these and whether it will help "
    "on the next one. Pooling every seed of every condition into one paired test ignores "
    "the between-condition variance (its 95% intervals covered 0.65 in a simulation with "
    "4 to 12 conditions); the Paule-Mandel tau² with the Hartung-Knapp (HKSJ) interval "
    "covered 0.95 (docs/statistics.md). The prediction interval is where a new "
    "condition's effect is expected to lie. The equal-weight t test, the exact sign-flip "
    "test on the per-condition means, the count of conditions where the contrast is "
    "significant on its own (a count of bold cells is not a test) and the Bayesian "
    "posterior are sensitivity analyses."
)


def report_text(rep: Across) -> dict[str, Any]:
    a = rep.analysis
    k = len(rep.tested)
    family = (
        f"{CORRECTION_NAMES[a.correction]} over the {k} contrast{'s' * (k != 1)} with at least "
        "2 conditions"
    )
    b = next((c.posterior for c in rep.contrasts if c.posterior is not None), None)
    return {
        "why": WHY,
        "family": family,
        "verdicts": [verdict_sentence(rep, c) for c in rep.contrasts],
        "cannot_claim": cannot_claim(rep),
        "ranking": ranking_text(rep),
        "bayes": (
            f"Bayesian normal-normal hierarchical model, {b.prior}, with m = min_effect = "
            f"{rep.units.value(a.min_effect)} {rep.units.difference}: posterior probabilities "
            "that the pooled effect (and a new condition's effect) lies below -m, within ±m, "
            "above +m. The prior on tau matters with few conditions."
            if b
            else ""
        ),
        "power": _power_words(rep),
        "power_warnings": [
            f"{_name(c)}: {c.power['warning']}" for c in rep.tested if c.power.get("warning")
        ],
    }


def _power_words(rep: Across) -> str:
    a = rep.analysis
    return (
        f"Power of the pooled HKSJ test for a true effect of min_effect = "
        f"{rep.units.value(a.min_effect)} {rep.units.difference}, at alpha / "
        f"{max(len(rep.tested), 1)} = {rep.header['alpha_planned']:.4g} (the Holm family), "
        "from Var ~ tau²/C + sigma²/(nC): sigma is the seed-to-seed sd of one paired "
        "difference within a condition (pooled), tau the between-condition sd (Paule-Mandel). "
        "More seeds shrink only sigma²/(nC): 'all seeds' is the power with infinitely many, "
        "the ceiling that only more conditions raise."
    )


# --------------------------------------------------------------------------------------
# figures, rendering, files
# --------------------------------------------------------------------------------------


def across_figures(rep: Across) -> list[FigureImage]:
    u = rep.units
    out = []
    band = rep.analysis.min_effect * u.factor
    for i, c in enumerate(rep.contrasts, 1):
        if not c.pooled:
            continue
        f = u.factor
        rows = [
            figures.ForestRow(e.condition, e.mean * f, e.ci95[0] * f, e.ci95[1] * f)
            for e in c.pooled
        ]
        pooled = None
        prediction = None
        if c.meta is not None:
            m = c.meta
            pooled = figures.ForestRow(
                "pooled (HKSJ)", m.mean * u.factor, m.ci95[0] * u.factor, m.ci95[1] * u.factor
            )
            if m.prediction is not None:
                prediction = (m.prediction[0] * u.factor, m.prediction[1] * u.factor)
        png = figures.forest(
            rows, pooled, prediction, band, f"{_name(c)} ({u.difference})", _name(c)
        )
        out.append(
            FigureImage(
                f"forest_{i}",
                f"{_name(c)}: each condition's mean difference and its 95% t interval "
                f"({u.difference}); the pooled random-effects estimate as a diamond (its "
                "width: the HKSJ 95% CI), the 95% prediction interval for a new condition as "
                f"the bar under it, and ±min_effect = ±{band:g} {u.difference} shaded.",
                png,
            )
        )
    r = rep.ranking
    if r is not None:
        png = figures.critical_difference(
            r.mean_ranks, math.nan, f"mean rank of {u.name} over conditions (1 = lowest)", r.cliques
        )
        out.append(FigureImage("ranks", ranking_text(rep), png))
    return out


def _context(rep: Across, figs: list[FigureImage]) -> dict[str, Any]:
    return {
        "rep": rep,
        "h": rep.header,
        "a": rep.analysis,
        "u": rep.units,
        "text": report_text(rep),
        "t": {
            "conditions": conditions_table(rep),
            "pooled": pooled_table(rep),
            "sensitivity": sensitivity_table(rep),
            "effects": effects_table(rep),
            "power": power_table(rep),
            **ranking_tables(rep),
        },
        "paper": condition_table(rep),
        "figures": {f.name: f for f in figs},
        "forests": [f.name for f in figs if f.name.startswith("forest_")],
    }


def render(rep: Across, figs: list[FigureImage], template: str) -> str:
    text = template_environment().get_template(template).render(**_context(rep, figs))
    return re.sub(r"\n{3,}", "\n\n", text) if template.endswith(".md.j2") else text


def write_across(rep: Across, out_dir: Path) -> list[Path]:
    """reports/<study>/: report.md (+ figures/*.png), report.html, table.md, table.tex."""
    figs = across_figures(rep)
    table = condition_table(rep)
    documents = {
        "report.md": render(rep, figs, "across.md.j2"),
        "report.html": render(rep, figs, "across.html.j2"),
        "table.md": table.markdown(),
        "table.tex": table.latex(),
    }
    return write_files(out_dir, documents, figs)


def write_conditions_table(collected: list[tuple[Protocol, Collected]], out_dir: Path) -> Path:
    """results/<study>/conditions.csv: every condition's runs.csv rows in one table (a
    condition column first), the input of `study plan-seeds --condition-col condition`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.concat([c.runs for _, c in collected], ignore_index=True)
    path = out_dir / CONDITIONS_FILE
    frame.to_csv(path, index=False)
    return path
