"""The study report: setup, per-role summaries, paired comparisons, omnibus, power, from
the tracker.

``build_report`` gathers plain data (``report_data.Report``: tables, comparison results,
the omnibus, the power table); ``write_report`` renders it as ``report.md`` (with its
figures as PNG files next to it), a self-contained ``report.html`` (figures embedded, no
external resource) and the paper table (``table.md``, ``table.tex``). Every rendering is
made from the same formatted tables (``report_tables``, ``report_setup``, ``paper``) and
sentences (``report_text``), so they carry the same numbers. Every number is computed here
from the tracked runs (or their tidy export), never typed.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from scipy import stats as sps

from study.analysis import paper
from study.analysis.collect import Collected
from study.analysis.power import PLAN_COLUMNS, plan_seeds
from study.analysis.report_data import FigureImage, Report
from study.analysis.report_figures import report_figures
from study.analysis.report_setup import setup_tables, setup_text
from study.analysis.report_signal import signal_section
from study.analysis.report_tables import POWER, report_tables, split_notes
from study.analysis.report_text import report_text
from study.analysis.stats import (
    CI_NAME,
    CORRECTION_NAMES,
    PAIRED,
    NoteKind,
    ci_reading,
    compare,
    format_seeds,
    omnibus,
)
from study.analysis.table import md_code, md_text
from study.analysis.units import NOT_AVAILABLE, UNITS, Units, fmt_num, format_p, missing
from study.determinism import environment
from study.paths import within
from study.plan import TEACHER, Plan, expand
from study.protocol import AnalysisSection, Protocol
from study.version import __version__

__all__ = [
    "NOT_AVAILABLE",
    "UNITS",
    "FigureImage",
    "Report",
    "Units",
    "build_report",
    "comparison_pairs",
    "format_p",
    "planned_comparisons",
    "render_html",
    "render_markdown",
    "verdict_words",
    "write_report",
]
FAMILIES = {
    "vs_teacher": "vs teacher",
    "vs_previous": "vs previous generation",
    "ensembles": "ensemble vs its last member",
    "ensemble_teacher": "ensemble vs teacher",
    "pairs": "declared pair",
    "arms": "arms at equal generation",
}


# --------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------


def comparison_pairs(plan: Plan, analysis: AnalysisSection) -> list[tuple[str, str, str]]:
    """(A, B, family) pairs the analysis plan asks for, in a stable order, each pair once:
    vs teacher, vs previous generation, each ensemble vs its last member (and vs the
    teacher, when vs_teacher is off), the declared ``pairs``, arms at equal generation. A
    pair an earlier family already asks (as A - B or B - A) is not asked again."""
    families = analysis.comparisons
    students = [r for r in plan.roles if r.kind != "teacher"]
    asked: list[tuple[str, str, str]] = []
    if "vs_teacher" in families:
        asked += [(r.key, TEACHER, FAMILIES["vs_teacher"]) for r in students]
    if "vs_previous" in families:
        asked += [
            (r.key, r.teacher, FAMILIES["vs_previous"])
            for r in students
            if r.kind == "student" and r.teacher != TEACHER
        ]
    if "ensembles" in families:
        for r in (r for r in students if r.kind == "ensemble"):
            asked += [(r.key, r.members[-1], FAMILIES["ensembles"])]
            asked += [(r.key, TEACHER, FAMILIES["ensemble_teacher"])]
    asked += [(a, b, FAMILIES["pairs"]) for a, b in analysis.pairs]
    if "arms" in families:
        arms = [a.name for a in plan.protocol.arms]
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                shared = min(plan.protocol.arm(a).generations, plan.protocol.arm(b).generations)
                for k in range(1, shared + 1):
                    asked.append((f"{a}/gen{k}", f"{b}/gen{k}", FAMILIES["arms"]))
    seen: set[frozenset[str]] = set()
    pairs = []
    for a, b, family in asked:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            pairs.append((a, b, family))
    return pairs


def planned_comparisons(protocol: Protocol, long: pd.DataFrame) -> list[dict[str, Any]]:
    """Every comparison the protocol asks for, with its pairing on the data (``long``:
    group, seed, value): ``testable`` ones (2 paired seeds or more) form the correction
    family. `study compare --protocol` tests the same family."""
    out = []
    for a, b, family in comparison_pairs(expand(protocol), protocol.analysis):
        n_paired, reason = _pairing(long, a, b)
        out.append(
            {
                "a": a,
                "b": b,
                "family": family,
                "n_paired": n_paired,
                "testable": reason is None,
                "reason": reason,
            }
        )
    return out


def summarise(table: pd.DataFrame, plan: Plan, metric: str) -> pd.DataFrame:
    """Per role, in plan order: n, mean, sd, median, 95% t interval of the mean, min, max of
    the metric, and the mean NLL, ECE and agreement with the teacher (raw units)."""
    rows = []
    for role in plan.roles:
        mine = table[table["role"] == role.key]
        v = mine[metric].dropna().astype(float).to_numpy()
        n = len(v)
        mean = float(np.mean(v)) if n else math.nan
        sd = float(np.std(v, ddof=1)) if n > 1 else math.nan
        half = float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
        rows.append(
            {
                "role": role.key,
                "kind": role.kind,
                "n": n,
                "mean": mean,
                "sd": sd,
                "median": float(np.median(v)) if n else math.nan,
                "ci_low": mean - half,
                "ci_high": mean + half,
                "min": float(np.min(v)) if n else math.nan,
                "max": float(np.max(v)) if n else math.nan,
                **{
                    f"mean_{m}": _mean(mine[m]) if m in mine else math.nan
                    for m in ("test_nll", "test_ece", "teacher_agreement")
                },
            }
        )
    return pd.DataFrame(rows)


def _mean(s: pd.Series) -> float:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return float(v.mean()) if len(v) else math.nan


def build_report(protocol: Protocol, collected: Collected) -> Report:
    """Every table of the report, from the tidy results (tracker or export) alone."""
    plan = expand(protocol, tuned=collected.meta.get("tuned") or None)
    analysis = protocol.analysis
    metric = analysis.metric
    long = long_values(collected.table, metric)
    comparisons = planned_comparisons(protocol, long)
    tested = [c for c in comparisons if c["testable"]]
    result: dict[str, Any] = {}
    if tested:
        # One call, one correction family: every testable comparison of the report.
        result = compare(
            long,
            pairs=[(c["a"], c["b"]) for c in tested],
            alpha=analysis.alpha,
            correction=analysis.correction,
            test=analysis.test,
            seed=0,
            min_effect=analysis.min_effect,
        ).to_dict()
        for c, r in zip(tested, result["comparisons"], strict=True):
            c.update(r)
    for c in comparisons:
        c["verdict_short"], c["sentence"] = verdict_words(
            c,
            UNITS[metric],
            alpha=analysis.alpha,
            correction=analysis.correction,
            test=analysis.test,
            min_effect=analysis.min_effect,
        )

    omni, omni_note = _omnibus(long, plan, analysis.alpha, result.get("omnibus"))
    return Report(
        protocol=protocol,
        plan=plan,
        collected=collected,
        summary=summarise(collected.table, plan, metric),
        comparisons=comparisons,
        header=_header(protocol, plan, collected),
        omnibus=omni,
        omnibus_note=omni_note,
        power=_power(long, tested, protocol, family=len(tested)),
        notes=_data_notes(protocol, plan, collected),
    )


def _header(protocol: Protocol, plan: Plan, collected: Collected) -> dict[str, Any]:
    env = environment()
    return {
        "study": protocol.study.name,
        "condition": protocol.condition,  # one of several: reports/<study>/<condition>/
        "description": protocol.study.description,
        "protocol_file": protocol.source,
        "protocol_sha": protocol.sha256,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "python": env.get("python"),
        "torch": env.get("torch"),
        "platform": env.get("platform"),
        "packages": {
            k: env["packages"].get(k) for k in ("numpy", "scipy", "statsmodels", "pandas")
        },
        "metric": protocol.analysis.metric,
        "seeds": len(plan.seeds),
        "seed_list": format_seeds(plan.seeds),
        "roles": len(plan.roles),
        "runs_planned": plan.n_runs,
        "runs_finished": int((collected.runs["status"] == "FINISHED").sum()),
        "tracking_uri": collected.meta.get("tracking_uri"),
        "experiment_id": collected.meta.get("experiment_id"),
        "data_identity": collected.meta.get("data_identity"),
    }


def _data_notes(protocol: Protocol, plan: Plan, collected: Collected) -> list[str]:
    """Warnings about the results as a whole: another protocol version, unplanned roles."""
    notes = list(collected.meta.get("notes") or [])
    results_sha = collected.meta.get("protocol_sha")
    if results_sha and protocol.sha256 and results_sha != protocol.sha256:
        notes.append(
            f"the results were collected under protocol sha256 {results_sha[:16]}, this report "
            f"reads {protocol.sha256[:16]}: runs are matched to roles by fingerprint, but the "
            "analysis settings may have changed since"
        )
    unknown = sorted(set(collected.runs["role"]) - {r.key for r in plan.roles})
    if unknown:
        notes.append(f"results for roles this protocol does not plan are ignored: {unknown}")
    return notes


def long_values(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """group, seed, value: the finished runs' metric, the layout stats and power read."""
    long = table[["role", "seed", metric]].rename(columns={"role": "group", metric: "value"})
    long = long.assign(value=pd.to_numeric(long["value"], errors="coerce")).dropna()
    return long.astype({"seed": int}).reset_index(drop=True)


def _pairing(long: pd.DataFrame, a: str, b: str) -> tuple[int, str | None]:
    """Seeds A and B share, and why they cannot be tested (fewer than 2), or None."""
    sa = set(long.loc[long["group"] == a, "seed"])
    sb = set(long.loc[long["group"] == b, "seed"])
    absent = [g for g, s in ((a, sa), (b, sb)) if not s]
    common = len(sa & sb)
    if absent:
        verb = "has" if len(absent) == 1 else "have"
        return common, f"{' and '.join(absent)} {verb} no finished run"
    if common >= 2:
        return common, None
    return common, (
        f"{common} paired seed{'s' * (common != 1)} ({a}: {len(sa)}, {b}: {len(sb)}); "
        "a paired test needs at least 2"
    )


def _omnibus(
    long: pd.DataFrame, plan: Plan, alpha: float, computed: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """Friedman, Kendall's W, Nemenyi CD and RM-ANOVA over every role with results, on the
    seeds all of them have; ``computed`` is taken as it is when it is that (compare's own
    omnibus over the compared groups: the RM-ANOVA of 1,000 runs costs a second)."""
    present = set(long["group"])
    roles = [r.key for r in plan.roles if r.key in present]
    if len(roles) < 3:
        return None, (
            f"no omnibus test: {len(roles)} role{'s' * (len(roles) != 1)} with results, "
            "at least 3 are needed"
        )
    wide = long.pivot(index="seed", columns="group", values="value").reindex(columns=roles)
    wide = wide.dropna()
    if len(wide) < 2:
        return None, (
            f"no omnibus test: {len(wide)} seed{'s' * (len(wide) != 1)} with a result for all "
            f"{len(roles)} roles, at least 2 are needed"
        )
    if computed and computed["groups"] == roles and computed["seeds_common"] == list(wide.index):
        return computed, None
    return omnibus(wide, alpha=alpha).to_dict(), None


def _power(
    long: pd.DataFrame, tested: list[dict[str, Any]], protocol: Protocol, *, family: int
) -> pd.DataFrame:
    """power.plan_seeds for each tested comparison, planned for the correction family the
    report corrects over (``family`` comparisons, the protocol's correction), with the
    test's own power; a pilot of fewer than 10 seeds adds its uncertainty warning to the
    row's. One that cannot be planned says why in its warning instead of taking the
    report down."""
    a = protocol.analysis
    rows = []
    for c in tested:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # statsmodels' root finder is noisy
                plan = plan_seeds(
                    long,
                    effect=a.min_effect,
                    alpha=a.alpha,
                    power=POWER,
                    test=a.test,
                    comparisons=max(family, 1),
                    correction=a.correction,
                    pairs=[(c["a"], c["b"])],
                )
            row = plan.iloc[0].to_dict()
            said = [w for w in (row["warning"], plan.attrs["pilot_warning"][0]) if w]
            rows.append({**row, "warning": "; ".join(said) or None})
        except (ValueError, ArithmeticError) as e:
            why = f"the power analysis failed ({type(e).__name__}: {e})"
            rows.append({"a": c["a"], "b": c["b"], "n": c["n_paired"], "warning": why})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def verdict_words(
    c: dict[str, Any],
    units: Units,
    *,
    alpha: float,
    correction: str,
    test: str,
    min_effect: float | None,
) -> tuple[str, str]:
    """A short verdict for the table and a sentence for the text, in the report's units.
    The numbers beside the verdict are printed with the decimals it takes to read them
    against 0 and ±min_effect as the verdict does."""
    a, b = c["a"], c["b"]
    if not c["testable"]:
        return "not testable", f"{a} vs {b}: not testable: {c['reason']}."
    correction = CORRECTION_NAMES[correction]
    if missing(c["p_adj"]):
        reasons = [n for n in split_notes(c, test)[0] if n.kind is not NoteKind.SEEDS_LEFT_OUT]
        why = "; ".join(reasons) or "the data are degenerate"
        return "no test possible", (
            f"{a} vs {b}: no test possible: the {c['test']} gives no p-value because {why}; "
            f"the comparison still counts in the {correction} family (conservative)."
        )
    against = (0.0,) if min_effect is None else (0.0, min_effect, -min_effect)
    over = f"{c['n']} paired seeds" if c["pairing"] == PAIRED else f"{c['n']} unpaired seeds"
    numbers = (
        f"{a} - {b} = {units.diff(c['mean_diff'], against=against)} {units.difference} "
        f"({CI_NAME[c['pairing']]} {units.diff(c['ci95'][0], against=against)} to "
        f"{units.diff(c['ci95'][1], against=against)}) over {over}, "
        f"{c['test']} p = {format_p(c['p'], alpha)}, "
        f"{correction}-adjusted p = {format_p(c['p_adj'], alpha)}"
    )
    if c["effect_size_name"]:
        numbers += f", {c['effect_size_name'].split(' ')[0]} = {fmt_num(c['effect_size'])}"
    if c["reject"]:
        direction = "higher than" if c["mean_diff"] > 0 else "lower than"
        if c["mean_diff"] == 0:
            direction = "different from"
        short = f"significantly {direction.split(' ')[0]}"
        return short, f"{a} is {direction} {b}: {numbers}; significant at alpha = {alpha:g}."
    reading = ci_reading(c["ci95"], min_effect, lambda x: f"{units.value(x)} {units.difference}")
    short = "not significant"
    if reading.startswith("inconclusive"):
        short = "not significant (inconclusive)"
    elif reading.startswith("the CI lies within"):
        short = "not significant (CI within ±min_effect)"
    return (
        short,
        f"{a} vs {b} not significant: {numbers}; not significant at alpha = {alpha:g}"
        + (f"; {reading}" if reading else "")
        + ".",
    )


# --------------------------------------------------------------------------------------
# render and write
# --------------------------------------------------------------------------------------


def template_environment() -> Environment:
    """The reports' Jinja environment: their templates, Markdown escaping filters."""
    env = Environment(
        loader=PackageLoader("study.analysis", "templates"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_text
    env.filters["md_block"] = lambda text: md_text(text, block=True)
    env.filters["code"] = md_code
    return env


def _context(rep: Report, figs: list[FigureImage]) -> dict[str, Any]:
    return {
        "rep": rep,
        "h": rep.header,
        "a": rep.protocol.analysis,
        "u": rep.units,
        "t": report_tables(rep),
        "text": report_text(rep),
        "setup": setup_tables(rep),
        "setup_text": setup_text(rep),
        "paper": paper.paper_table(rep),
        "figures": {f.name: f for f in figs},
        "signal": signal_section(rep),  # [diagnostics] "Where the signal comes from"
        "correction": CORRECTION_NAMES[rep.protocol.analysis.correction],
    }


def render_markdown(rep: Report, figs: list[FigureImage] | None = None) -> str:
    """report.md; figures are linked as figures/<name>.png. User text (the description,
    names, file names) is escaped: it renders as the same text the HTML shows."""
    figs = report_figures(rep) if figs is None else figs
    md = template_environment().get_template("report.md.j2").render(**_context(rep, figs))
    return re.sub(r"\n{3,}", "\n\n", md)  # sections left empty leave no gaps


def render_html(rep: Report, figs: list[FigureImage] | None = None) -> str:
    """report.html: self-contained, figures embedded as base64 PNG, inline stylesheet."""
    figs = report_figures(rep) if figs is None else figs
    return template_environment().get_template("report.html.j2").render(**_context(rep, figs))


REPORT_FILES = ".report-files"
"""The manifest of the figures a report wrote into its folder: the next report deletes those
it no longer has, and nothing else (a user's own files there stay)."""


def write_report(rep: Report, out_dir: Path) -> list[Path]:
    """Write report.md (+ figures/*.png), report.html and the paper table (table.md,
    table.tex) into out_dir; returns the paths."""
    figs = report_figures(rep)
    table = paper.paper_table(rep)
    documents = {
        "report.md": render_markdown(rep, figs),
        "report.html": render_html(rep, figs),
        "table.md": table.markdown(),
        "table.tex": table.latex(),
    }
    return write_files(out_dir, documents, figs)


def write_files(out_dir: Path, documents: dict[str, str], figs: list[FigureImage]) -> list[Path]:
    """Write a report's documents and its figures (figures/<name>.png) into out_dir, every
    path checked to stay inside it; a figure that the last report there wrote (its
    manifest, REPORT_FILES) and this one does not is deleted, nothing else."""
    names = [f"figures/{f.name}.png" for f in figs]
    paths = {name: within(out_dir, name) for name in [*documents, *names]}
    manifest = within(out_dir, REPORT_FILES)
    try:
        before = set(manifest.read_text().split())
    except OSError:
        before = set()
    for stale in sorted(before - set(names)):  # a figure this report no longer has
        if re.fullmatch(r"figures/[A-Za-z0-9_]+\.png", stale):
            within(out_dir, stale).unlink(missing_ok=True)
    within(out_dir, "figures").mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        paths[name].write_text(text)
    for f, name in zip(figs, names, strict=True):
        paths[name].write_bytes(f.png)
    manifest.write_text("".join(f"{name}\n" for name in names))
    return list(paths.values())
