"""The report's tables, formatted once for the Markdown and the HTML renderings, and the
notes on its comparisons: one note per distinct rule, referenced by the rows it applies to.

A column whose cell is the same in every row is left out of its table and said once
beside it (``Table.factored``); the power table's smallest possible p is left out for the
t-test, whose p has no floor.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.analysis.report_data import Report
from study.analysis.report_setup import architecture_of
from study.analysis.stats import PAIRED, as_note
from study.analysis.table import Table
from study.analysis.units import NOT_AVAILABLE, UNITS, fmt_num, format_p, missing

POWER = 0.8


def split_notes(c: dict[str, Any], test: str) -> tuple[list[str], list[str]]:
    """A comparison's notes on its primary test and pairing, and those on the other tests."""
    notes = [as_note(n) for n in c["notes"]]
    secondary = [n for n in notes if n.about_another_test(test)]
    primary = [n for n in notes if not n.about_another_test(test)]
    # Seeds present in one group only are in the notes already ("seeds of X without a
    # pair, left out: ..."), written by stats.compare.
    return primary, secondary


def comparison_notes(rep: Report) -> tuple[list[str], dict[int, list[int]]]:
    """The distinct notes on the tested comparisons (numbered from 1, in order of first
    use) and, per comparison (by ``id``), the numbers of the notes that apply to it."""
    texts: list[str] = []
    marks: dict[int, list[int]] = {}
    for c in rep.tested:
        notes = split_notes(c, rep.protocol.analysis.test)[0]
        if architecture_of(rep.plan, c["a"]) != architecture_of(rep.plan, c["b"]):
            notes = [*notes, ARCHITECTURES_DIFFER]
        for note in notes:
            if note not in texts:
                texts.append(note)
            marks.setdefault(id(c), []).append(texts.index(note) + 1)
    return texts, marks


ARCHITECTURES_DIFFER = (
    "A and B have different architectures (see Setup): the difference is the training "
    "method's and the capacity's together"
)


def note_lines(rep: Report) -> list[str]:
    """'[k] note (where it applies)' for each distinct note on the comparisons."""
    texts, marks = comparison_notes(rep)
    n = len(rep.tested)
    lines = []
    for k, text in enumerate(texts, 1):
        rows = sum(k in v for v in marks.values())
        where = f"all {n} tested comparisons" if rows == n else f"{rows} of {n} comparisons"
        lines.append(f"[{k}] {text} ({where}, marked [{k}]).")
    return lines


def report_tables(rep: Report) -> dict[str, Table]:
    """Every table of the report, formatted once for both renderings."""
    tables: dict[str, Table] = {
        "summary": _summary(rep),
        "comparisons": _comparisons(rep),
        "details": _details(rep),
        "power": _power_table(rep),
        "missing": Table.of(
            rep.collected.missing,
            ("role", "l", lambda m: m["role"]),
            ("seed", "r", lambda m: str(m["seed"])),
            ("status", "l", lambda m: m["status"]),
            ("reason", "l", lambda m: _one_line(m["reason"])),
        ),
    }
    if rep.omnibus is not None:
        u = rep.units
        means = dict(zip(rep.summary["role"], rep.summary["mean"], strict=True))
        ranked = sorted(rep.omnibus["mean_ranks"].items(), key=lambda kv: -kv[1])
        tables["ranks"] = Table.of(
            ranked,
            ("role", "l", lambda kv: kv[0]),
            ("mean rank", "r", lambda kv: fmt_num(kv[1])),
            (f"mean {u.name} ({u.symbol})", "r", lambda kv: u.value(means.get(kv[0]))),
        )
    metric = rep.protocol.analysis.metric
    u = rep.units
    tables["runs"] = Table.of(
        rep.collected.runs.to_dict("records"),
        ("role", "l", lambda r: r["role"]),
        ("seed", "r", lambda r: str(r["seed"])),
        ("status", "l", lambda r: r["status"]),
        ("MLflow run id", "l", lambda r: r["run_id"] or NOT_AVAILABLE),
        (u.label, "r", lambda r: u.value(pd.to_numeric(r[metric], errors="coerce"))),
    )
    return tables


def _summary(rep: Report) -> Table:
    u = rep.units
    pct, nll = UNITS["test_ece"], UNITS["test_nll"]
    return Table.of(
        rep.summary.to_dict("records"),
        ("role", "l", lambda r: r["role"]),
        ("kind", "l", lambda r: r["kind"]),
        ("n", "r", lambda r: str(r["n"])),
        ("mean", "r", lambda r: u.value(r["mean"])),
        ("sd", "r", lambda r: u.value(r["sd"])),
        ("median", "r", lambda r: u.value(r["median"])),
        ("95% CI of the mean", "l", lambda r: u.interval((r["ci_low"], r["ci_high"]), sign=False)),
        ("min", "r", lambda r: u.value(r["min"])),
        ("max", "r", lambda r: u.value(r["max"])),
        ("NLL", "r", lambda r: nll.value(r["mean_test_nll"])),
        ("ECE (%)", "r", lambda r: pct.value(r["mean_test_ece"])),
        ("agreement (%)", "r", lambda r: pct.value(r["mean_teacher_agreement"])),
    ).factored(["n"])


def _comparisons(rep: Report) -> Table:
    u = rep.units
    alpha = rep.protocol.analysis.alpha
    against = rep.against()
    _, marks = comparison_notes(rep)

    def tested(fn):
        return lambda c: fn(c) if c["testable"] else NOT_AVAILABLE

    def verdict(c: dict[str, Any]) -> str:
        mine = marks.get(id(c))
        return c["verdict_short"] + (f" [{', '.join(map(str, mine))}]" if mine else "")

    return Table.of(
        rep.comparisons,
        ("A", "l", lambda c: c["a"]),
        ("B", "l", lambda c: c["b"]),
        ("family", "l", lambda c: c["family"]),
        ("n", "r", lambda c: str(c["n"] if c["testable"] else c["n_paired"])),
        ("mean A", "r", tested(lambda c: u.value(c["mean_a"]))),
        ("mean B", "r", tested(lambda c: u.value(c["mean_b"]))),
        (f"A - B ({u.difference})", "r", tested(lambda c: u.diff(c["mean_diff"], against=against))),
        ("95% CI", "l", tested(lambda c: u.interval(c["ci95"], against=against))),
        ("g_z", "r", tested(lambda c: fmt_num(c["effect_size"]))),
        ("p", "r", tested(lambda c: format_p(c["p"], alpha))),
        ("p adj.", "r", tested(lambda c: format_p(c["p_adj"], alpha))),
        ("verdict", "l", verdict),
    ).factored(["n", "family"])


def _details(rep: Report) -> Table:
    u = rep.units
    alpha = rep.protocol.analysis.alpha
    return Table.of(
        rep.tested,
        ("A", "l", lambda c: c["a"]),
        ("B", "l", lambda c: c["b"]),
        ("t", "r", lambda c: fmt_num(c["t"])),
        ("df", "r", lambda c: fmt_num(c["df"], 0)),
        ("p (t)", "r", lambda c: format_p(c["p_t"], alpha)),
        ("W", "r", lambda c: fmt_num(c["w"], 1)),
        (
            "p (Wilcoxon)",
            "r",
            lambda c: p_with_method(c["p_wilcoxon"], c["wilcoxon_method"], alpha),
        ),
        (
            "p (permutation)",
            "r",
            lambda c: p_with_method(
                c["p_permutation"], c["permutation_method"], alpha, c.get("permutation_mc_se")
            ),
        ),
        (
            f"BCa 95% CI ({u.difference})",
            "l",
            lambda c: (
                u.interval(c["ci95_bca"], against=rep.against())
                + coverage_label(c.get("ci95_bca_coverage"))
            ),
        ),
        ("d_z", "r", lambda c: fmt_num(c["d_z"])),
        ("seeds A > B", "r", lambda c: percent(c["p_greater"])),
        ("Shapiro p", "r", lambda c: format_p(c["shapiro_p"])),
    ).factored(["df"])


def coverage_label(coverage: float | None) -> str:
    """The coverage an interval had at its n in the project's calibration, where it falls
    short of its nominal 95% (docs/statistics.md); empty otherwise."""
    return "" if missing(coverage) else f" (calibrated coverage {coverage:.0%})"


SMALLEST_P = "smallest p possible"


def _power_table(rep: Report) -> Table:
    u = rep.units
    table = Table.of(
        rep.power.to_dict("records"),
        ("A", "l", lambda r: r["a"]),
        ("B", "l", lambda r: r["b"]),
        ("n", "r", lambda r: str(r["n"])),
        (f"sd of A - B ({u.difference})", "r", lambda r: u.value(r["sd_diff"])),
        ("alpha planned", "r", lambda r: fmt_num(r["alpha_planned"], 4)),
        (f"seeds for {POWER:.0%} power", "r", lambda r: seeds_needed(r, "n_required")),
        ("(alone, at alpha)", "r", lambda r: seeds_needed(r, "n_required_unadjusted")),
        (f"MDE at n ({u.difference})", "r", lambda r: u.value(r["mde"])),
        ("power at n", "r", lambda r: percent(r["power_at_n"])),
        (SMALLEST_P, "r", lambda r: format_p(r["min_p_possible"])),
    )
    if rep.protocol.analysis.test == "t":  # 0 in every row: the t-test's p has no floor
        table = Table(table.columns[:-1], [row[:-1] for row in table.rows], table.align[:-1])
    return table.factored(["n", "alpha planned", SMALLEST_P])


def percent(x: Any) -> str:
    """0-100%, with > 99% and < 1% where rounding would claim certainty."""
    if missing(x):
        return NOT_AVAILABLE
    if 0.995 <= x < 1:
        return "> 99%"
    if 0 < x < 0.005:
        return "< 1%"
    return f"{100 * float(x):.0f}%"


def p_with_method(p: Any, method: str | None, alpha: float | None = None, se: Any = None) -> str:
    """A p-value with how it was computed: exact, approx (normal), MC (Monte Carlo, with
    the standard error ``se`` of p where given)."""
    if missing(p) or not method:
        return format_p(p, alpha)
    if method == "monte carlo":
        return f"{format_p(p, alpha)} (MC{'' if missing(se) else f', standard error {se:.2g}'})"
    return f"{format_p(p, alpha)} ({method})"


def _int(x: Any) -> str:
    return NOT_AVAILABLE if missing(x) else str(int(x))


def seeds_needed(r: dict[str, Any], key: str) -> str:
    """Seeds needed; 'per group' for unpaired rows (their n counts both groups)."""
    text = _int(r.get(key))
    if text != NOT_AVAILABLE and r.get("pairing") not in (None, PAIRED):
        text += " per group"
    return text


def _one_line(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
