"""The study report: per-role summaries, paired comparisons, omnibus, power, from the tracker.

``build_report`` gathers plain data (tables, comparison results, the omnibus, the power
table); ``write_report`` renders it as ``report.md`` (with its figures as PNG files next to
it) and a self-contained ``report.html`` (figures embedded, no external resource). Both are
rendered from the same formatted tables, so they carry the same numbers. Every number is
computed here from the tracked runs (or their tidy export), never typed.

Accuracies (and ECE) are shown in percent with 2 decimals, their differences in percentage
points; NLL in nats with 4 decimals. The statistics are computed on the raw values.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from scipy import stats as sps

from study import __version__
from study.analysis import figures
from study.analysis.collect import Collected
from study.analysis.power import PLAN_COLUMNS, plan_seeds
from study.analysis.stats import (
    CI_NAME,
    CORRECTION_NAMES,
    PAIRED,
    ci_reading,
    compare,
    format_seeds,
    kept_off_alpha,
    omnibus,
)
from study.paths import within
from study.plan import TEACHER, Plan, expand
from study.protocol import Protocol
from study.repro import environment

NOT_AVAILABLE = "–"
POWER = 0.8
TEST_WORDS = {
    "t": "paired t-test",
    "wilcoxon": "Wilcoxon signed-rank test",
    "permutation": "sign-flip permutation test",
}


# --------------------------------------------------------------------------------------
# Units: how each metric is shown
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """How a metric is shown: ``factor`` times the raw value, with ``digits`` decimals."""

    name: str  # "test accuracy"
    symbol: str  # "%" or "nats"
    factor: float
    digits: int
    difference: str  # unit of a difference: "points" (percentage points) or "nats"

    def value(self, x: Any) -> str:
        return NOT_AVAILABLE if _missing(x) else f"{float(x) * self.factor:.{self.digits}f}"

    def diff(self, x: Any) -> str:
        return NOT_AVAILABLE if _missing(x) else f"{float(x) * self.factor:+.{self.digits}f}"

    def interval(self, ci: Any, *, sign: bool = True) -> str:
        """[low, high]; signed (a difference) unless ``sign`` is False (a value)."""
        if ci is None or any(_missing(v) for v in ci):
            return NOT_AVAILABLE
        show = self.diff if sign else self.value
        return f"[{show(ci[0])}, {show(ci[1])}]"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.symbol})"

    @property
    def title(self) -> str:
        """The name at the start of a sentence (capitalize() would lower 'NLL')."""
        return self.name[:1].upper() + self.name[1:]


_PERCENT = {"symbol": "%", "factor": 100.0, "digits": 2, "difference": "points"}
_NATS = {"symbol": "nats", "factor": 1.0, "digits": 4, "difference": "nats"}
UNITS = {
    "test_acc": Units("test accuracy", **_PERCENT),
    "val_acc": Units("validation accuracy", **_PERCENT),
    "test_ece": Units("test ECE", **_PERCENT),
    "test_nll": Units("test NLL", **_NATS),
    "val_nll": Units("validation NLL", **_NATS),
    "teacher_agreement": Units("agreement with the teacher", **_PERCENT),
    "train_loss": Units("training loss", **_NATS),
}


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float | np.floating) and not math.isfinite(x))


def format_p(p: Any, alpha: float | None = None) -> str:
    """A p-value as the report prints it: 4 decimals, scientific below 0.001. With
    ``alpha``, never rounded onto or across alpha: more decimals where 4 would print alpha
    itself or a value on the other side of it (0.04996 is '0.04996', not '0.0500')."""
    if _missing(p):
        return NOT_AVAILABLE
    if p == 0:
        return "0"
    if p < 1e-3:
        return f"{p:.2e}"
    return kept_off_alpha(p, alpha, lambda k: f"{p:.{k}f}", 4)


def _num(x: Any, digits: int = 2) -> str:
    return NOT_AVAILABLE if _missing(x) else f"{float(x):.{digits}f}"


# --------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------


@dataclass
class Table:
    """A formatted table: the single source of both the Markdown and the HTML tables."""

    columns: list[str]
    rows: list[list[str]]
    align: str  # one letter per column: "l" or "r"

    @classmethod
    def of(cls, records: Any, *columns: tuple[str, str, Any]) -> Table:
        """A table from records and (header, "l"/"r", record -> cell text) columns."""
        return cls(
            [h for h, _, _ in columns],
            [[fn(r) for _, _, fn in columns] for r in records],
            "".join(a for _, a, _ in columns),
        )

    def markdown(self) -> str:
        """A pipe table with padded columns, readable as plain text."""
        cells = [self.columns, *self.rows]
        widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(self.columns))]

        def line(row: list[str]) -> str:
            padded = (
                c.rjust(w) if a == "r" else c.ljust(w)
                for c, w, a in zip(row, widths, self.align, strict=True)
            )
            return "| " + " | ".join(padded) + " |"

        rule = (
            "|"
            + "|".join(
                "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
                for w, a in zip(widths, self.align, strict=True)
            )
            + "|"
        )
        return "\n".join([line(self.columns), rule, *(line(r) for r in self.rows)])


@dataclass
class FigureImage:
    name: str  # file stem: figures/<name>.png
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Report:
    protocol: Protocol
    plan: Plan
    collected: Collected
    summary: pd.DataFrame  # one row per role, raw units
    comparisons: list[dict[str, Any]]  # every planned comparison, testable or not
    header: dict[str, Any] = field(default_factory=dict)
    omnibus: dict[str, Any] | None = None
    omnibus_note: str | None = None
    power: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)  # warnings about the data as a whole

    @property
    def units(self) -> Units:
        return UNITS[self.protocol.analysis.metric]

    @property
    def tested(self) -> list[dict[str, Any]]:
        return [c for c in self.comparisons if c["testable"]]

    @property
    def family_size(self) -> int:
        """Comparisons in the correction family: every tested comparison (at least 2 paired
        seeds), those whose p is undefined too (they count in m, conservatively)."""
        return len(self.tested)


# --------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------


def comparison_pairs(plan: Plan, families: list[str]) -> list[tuple[str, str, str]]:
    """(A, B, family) pairs the analysis plan asks for, in a stable order."""
    pairs: list[tuple[str, str, str]] = []
    students = [r for r in plan.roles if r.kind != "teacher"]
    if "vs_teacher" in families:
        pairs += [(r.key, TEACHER, "vs teacher") for r in students]
    if "vs_previous" in families:
        pairs += [
            (r.key, r.teacher, "vs previous generation")
            for r in students
            if r.kind == "student" and r.teacher != TEACHER
        ]
    if "arms" in families:
        arms = [a.name for a in plan.protocol.arms]
        for i, a in enumerate(arms):
            for b in arms[i + 1 :]:
                shared = min(plan.protocol.arm(a).generations, plan.protocol.arm(b).generations)
                for k in range(1, shared + 1):
                    pairs.append((f"{a}/gen{k}", f"{b}/gen{k}", "arms at equal generation"))
    return pairs


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
    plan = expand(protocol)
    analysis = protocol.analysis
    metric = analysis.metric
    table = collected.table
    summary = summarise(table, plan, metric)
    long = _long(table, metric)

    comparisons = []
    for a, b, family in comparison_pairs(plan, analysis.comparisons):
        n_paired, reason = _pairing(long, a, b)
        comparisons.append(
            {
                "a": a,
                "b": b,
                "family": family,
                "n_paired": n_paired,
                "testable": reason is None,
                "reason": reason,
            }
        )
    tested = [c for c in comparisons if c["testable"]]
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
        c["verdict_short"], c["sentence"] = _verdict_words(c, protocol)

    omni, omni_note = _omnibus(long, plan, analysis.alpha)
    power = _power(long, tested, protocol, family=len(tested))

    env = environment()
    header = {
        "study": protocol.study.name,
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
        "metric": metric,
        "seeds": len(plan.seeds),
        "seed_list": format_seeds(plan.seeds),
        "roles": len(plan.roles),
        "runs_planned": plan.n_runs,
        "runs_finished": int((collected.runs["status"] == "FINISHED").sum()),
        "tracking_uri": collected.meta.get("tracking_uri"),
        "experiment_id": collected.meta.get("experiment_id"),
        "data_identity": collected.meta.get("data_identity"),
    }
    notes = []
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
    return Report(
        protocol=protocol,
        plan=plan,
        collected=collected,
        summary=summary,
        comparisons=comparisons,
        header=header,
        omnibus=omni,
        omnibus_note=omni_note,
        power=power,
        notes=notes,
    )


def _long(table: pd.DataFrame, metric: str) -> pd.DataFrame:
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
    long: pd.DataFrame, plan: Plan, alpha: float
) -> tuple[dict[str, Any] | None, str | None]:
    """Friedman, Kendall's W, Nemenyi CD and RM-ANOVA over every role with results, on the
    seeds all of them have."""
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
    return omnibus(wide, alpha=alpha).to_dict(), None


def _power(
    long: pd.DataFrame, tested: list[dict[str, Any]], protocol: Protocol, *, family: int
) -> pd.DataFrame:
    """power.plan_seeds for each tested comparison, planned for the correction family the
    report corrects over (``family`` comparisons, the protocol's correction); one that
    cannot be planned says why in its warning instead of taking the report down."""
    a = protocol.analysis
    rows = []
    for c in tested:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # statsmodels' root finder is noisy
                row = plan_seeds(
                    long,
                    effect=a.min_effect,
                    alpha=a.alpha,
                    power=POWER,
                    test=a.test,
                    comparisons=max(family, 1),
                    correction=a.correction,
                    pairs=[(c["a"], c["b"])],
                )
            rows.append(row.iloc[0].to_dict())
        except (ValueError, ArithmeticError) as e:
            why = f"the power analysis failed ({type(e).__name__}: {e})"
            rows.append({"a": c["a"], "b": c["b"], "n": c["n_paired"], "warning": why})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def _verdict_words(c: dict[str, Any], protocol: Protocol) -> tuple[str, str]:
    """A short verdict for the table and a sentence for the text, in the report's units."""
    a, b = c["a"], c["b"]
    if not c["testable"]:
        return "not testable", f"{a} vs {b}: not testable: {c['reason']}."
    units = UNITS[protocol.analysis.metric]
    analysis = protocol.analysis
    alpha = analysis.alpha
    correction = CORRECTION_NAMES[analysis.correction]
    if _missing(c["p_adj"]):
        reasons = [n for n in _split_notes(c, analysis.test)[0] if not n.startswith("seeds of ")]
        why = "; ".join(reasons) or "the data are degenerate"
        return "no test possible", (
            f"{a} vs {b}: no test possible: the {c['test']} gives no p-value because {why}; "
            f"the comparison still counts in the {correction} family (conservative)."
        )
    over = f"{c['n']} paired seeds" if c["pairing"] == PAIRED else f"{c['n']} unpaired seeds"
    numbers = (
        f"{a} - {b} = {units.diff(c['mean_diff'])} {units.difference} ({CI_NAME[c['pairing']]} "
        f"{units.diff(c['ci95'][0])} to {units.diff(c['ci95'][1])}) over {over}, "
        f"{c['test']} p = {format_p(c['p'], alpha)}, "
        f"{correction}-adjusted p = {format_p(c['p_adj'], alpha)}"
    )
    if c["effect_size_name"]:
        numbers += f", {c['effect_size_name'].split(' ')[0]} = {_num(c['effect_size'])}"
    if c["reject"]:
        direction = "higher than" if c["mean_diff"] > 0 else "lower than"
        if c["mean_diff"] == 0:
            direction = "different from"
        short = f"significantly {direction.split(' ')[0]}"
        return short, f"{a} is {direction} {b}: {numbers}; significant at alpha = {alpha:g}."
    reading = ci_reading(
        c["ci95"], analysis.min_effect, lambda x: f"{units.value(x)} {units.difference}"
    )
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
# formatted tables (shared by Markdown and HTML)
# --------------------------------------------------------------------------------------


def report_tables(rep: Report) -> dict[str, Table]:
    """Every table of the report, formatted once for both renderings."""
    u = rep.units
    pct, nll = UNITS["test_ece"], UNITS["test_nll"]
    tables: dict[str, Table] = {}

    tables["summary"] = Table.of(
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
    )

    marks = {id(c): f" [{i}]" for i, (c, _) in enumerate(_footnotes(rep), 1)}

    def tested(fn):
        return lambda c: fn(c) if c["testable"] else NOT_AVAILABLE

    tables["comparisons"] = Table.of(
        rep.comparisons,
        ("A", "l", lambda c: c["a"]),
        ("B", "l", lambda c: c["b"]),
        ("family", "l", lambda c: c["family"]),
        ("n", "r", lambda c: str(c["n"] if c["testable"] else c["n_paired"])),
        ("mean A", "r", tested(lambda c: u.value(c["mean_a"]))),
        ("mean B", "r", tested(lambda c: u.value(c["mean_b"]))),
        (f"A - B ({u.difference})", "r", tested(lambda c: u.diff(c["mean_diff"]))),
        ("95% CI", "l", tested(lambda c: u.interval(c["ci95"]))),
        ("g_z", "r", tested(lambda c: _num(c["effect_size"]))),
        ("p", "r", tested(lambda c: format_p(c["p"], rep.protocol.analysis.alpha))),
        ("p adj.", "r", tested(lambda c: format_p(c["p_adj"], rep.protocol.analysis.alpha))),
        ("verdict", "l", lambda c: c["verdict_short"] + marks.get(id(c), "")),
    )

    alpha = rep.protocol.analysis.alpha
    tables["details"] = Table.of(
        rep.tested,
        ("A", "l", lambda c: c["a"]),
        ("B", "l", lambda c: c["b"]),
        ("t", "r", lambda c: _num(c["t"])),
        ("df", "r", lambda c: _num(c["df"], 0)),
        ("p (t)", "r", lambda c: format_p(c["p_t"], alpha)),
        ("W", "r", lambda c: _num(c["w"], 1)),
        ("p (Wilcoxon)", "r", lambda c: _method(c["p_wilcoxon"], c["wilcoxon_method"], alpha)),
        (
            "p (permutation)",
            "r",
            lambda c: _method(c["p_permutation"], c["permutation_method"], alpha),
        ),
        (f"BCa 95% CI ({u.difference})", "l", lambda c: u.interval(c["ci95_bca"])),
        ("d_z", "r", lambda c: _num(c["d_z"])),
        ("seeds A > B", "r", lambda c: _percent(c["p_greater"])),
        ("Shapiro p", "r", lambda c: format_p(c["shapiro_p"])),
    )

    if rep.omnibus is not None:
        means = dict(zip(rep.summary["role"], rep.summary["mean"], strict=True))
        ranked = sorted(rep.omnibus["mean_ranks"].items(), key=lambda kv: -kv[1])
        tables["ranks"] = Table.of(
            ranked,
            ("role", "l", lambda kv: kv[0]),
            ("mean rank", "r", lambda kv: _num(kv[1])),
            (f"mean {u.name} ({u.symbol})", "r", lambda kv: u.value(means.get(kv[0]))),
        )

    tables["power"] = Table.of(
        rep.power.to_dict("records"),
        ("A", "l", lambda r: r["a"]),
        ("B", "l", lambda r: r["b"]),
        ("n", "r", lambda r: str(r["n"])),
        (f"sd of A - B ({u.difference})", "r", lambda r: u.value(r["sd_diff"])),
        ("alpha planned", "r", lambda r: _num(r["alpha_planned"], 4)),
        (f"seeds for {POWER:.0%} power", "r", lambda r: _seeds_needed(r, "n_required")),
        ("(alone, at alpha)", "r", lambda r: _seeds_needed(r, "n_required_unadjusted")),
        (f"MDE at n ({u.difference})", "r", lambda r: u.value(r["mde"])),
        ("power at n", "r", lambda r: _percent(r["power_at_n"])),
        ("smallest p possible", "r", lambda r: format_p(r["min_p_possible"])),
    )

    tables["missing"] = Table.of(
        rep.collected.missing,
        ("role", "l", lambda m: m["role"]),
        ("seed", "r", lambda m: str(m["seed"])),
        ("status", "l", lambda m: m["status"]),
        ("reason", "l", lambda m: _one_line(m["reason"])),
    )
    metric = rep.protocol.analysis.metric
    tables["runs"] = Table.of(
        rep.collected.runs.to_dict("records"),
        ("role", "l", lambda r: r["role"]),
        ("seed", "r", lambda r: str(r["seed"])),
        ("status", "l", lambda r: r["status"]),
        ("MLflow run id", "l", lambda r: r["run_id"] or NOT_AVAILABLE),
        (u.label, "r", lambda r: u.value(pd.to_numeric(r[metric], errors="coerce"))),
    )
    return tables


def _split_notes(c: dict[str, Any], test: str) -> tuple[list[str], list[str]]:
    """A comparison's notes on its primary test and pairing, and those on the other tests."""
    others = [w for t, w in (("wilcoxon", "Wilcoxon"), ("permutation", "permutation")) if t != test]
    secondary = [n for n in c["notes"] if any(w in n for w in others)]
    primary = [n for n in c["notes"] if n not in secondary]
    # Seeds present in one group only are in the notes already ("seeds of X without a
    # pair, left out: ..."), written by stats.compare.
    return primary, secondary


def _footnotes(rep: Report) -> list[tuple[dict[str, Any], str]]:
    """(comparison, note) for the tested comparisons with something to say about them."""
    out = []
    for c in rep.tested:
        primary, _ = _split_notes(c, rep.protocol.analysis.test)
        if primary:
            out.append((c, f"{c['a']} vs {c['b']}: {'; '.join(primary)}."))
    return out


def _percent(x: Any) -> str:
    """0-100%, with > 99% and < 1% where rounding would claim certainty."""
    if _missing(x):
        return NOT_AVAILABLE
    if 0.995 <= x < 1:
        return "> 99%"
    if 0 < x < 0.005:
        return "< 1%"
    return f"{100 * float(x):.0f}%"


def _method(p: Any, method: str | None, alpha: float | None = None) -> str:
    """A p-value with how it was computed: exact, approx (normal), MC (Monte Carlo)."""
    if _missing(p) or not method:
        return format_p(p, alpha)
    return f"{format_p(p, alpha)} ({'MC' if method == 'monte carlo' else method})"


def _int(x: Any) -> str:
    return NOT_AVAILABLE if _missing(x) else str(int(x))


def _seeds_needed(r: dict[str, Any], key: str) -> str:
    """Seeds needed; 'per group' for unpaired rows (their n counts both groups)."""
    text = _int(r.get(key))
    if text != NOT_AVAILABLE and r.get("pairing") not in (None, PAIRED):
        text += " per group"
    return text


def _one_line(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --------------------------------------------------------------------------------------
# text blocks (shared by Markdown and HTML)
# --------------------------------------------------------------------------------------


def report_text(rep: Report) -> dict[str, Any]:
    """The sentences with numbers in them, written once for both renderings."""
    a = rep.protocol.analysis
    u = rep.units
    text: dict[str, Any] = {}
    n_planned = len(rep.comparisons)
    n_tested = len(rep.tested)
    m = rep.family_size
    text["comparisons"] = (
        f"Each comparison is paired by seed (seed s of A against seed s of B) and tested with "
        f"the {TEST_WORDS[a.test]}; A - B and its 95% CI (the unadjusted 95% t interval of "
        f"the mean difference, whatever the test; it is not corrected for the "
        f"{m} comparison{'s' * (m != 1)}) are in {u.difference} of {u.name}; g_z is the "
        f"Hedges-corrected mean difference divided by the sd of the differences (undefined, "
        f"–, with 2 seeds). p is the raw p-value, p adj. the "
        f"{CORRECTION_NAMES[a.correction]}-corrected p-value; the correction family is the "
        f"{m} comparison{'s' * (m != 1)} below with at least 2 paired seeds ({n_planned} "
        f"planned), including any whose p is undefined (counted, conservatively). "
        f"Significant: p adj. < alpha = {a.alpha:g}. A comparison that is not significant is "
        f"inconclusive when its CI includes differences of min_effect "
        f"({u.value(a.min_effect)} {u.difference}) or more, and its CI lies within "
        f"±min_effect otherwise; not significant is not evidence of no difference."
    )
    text["comparison_notes"] = [f"[{i}] {note}" for i, (_, note) in enumerate(_footnotes(rep), 1)]
    others: dict[str, list[str]] = {}
    for c in rep.tested:
        for note in _split_notes(c, a.test)[1]:
            others.setdefault(note, []).append(f"{c['a']} vs {c['b']}")
    text["detail_notes"] = [
        f"{note}: {'all comparisons' if len(who) == n_tested else ', '.join(who)}."
        for note, who in others.items()
    ]

    om = rep.omnibus
    if om is not None:
        k, n = om["k"], om["n_seeds_common"]
        sig = (not _missing(om["p_friedman"])) and om["p_friedman"] < a.alpha
        lines = [
            f"Over all {k} roles with results, on the {n} seed{'s' * (n != 1)} every one of "
            f"them has: Friedman chi-square = {_num(om['q'])} (df = {k - 1}), "
            f"p = {format_p(om['p_friedman'], a.alpha)} "
            f"({'' if sig else 'not '}significant at alpha = {a.alpha:g}); "
            f"Kendall's W = {_num(om['w_kendall'], 3)} (0: no agreement of the seeds on the "
            "ranking, 1: every seed ranks the roles alike).",
            f"Nemenyi critical difference of mean ranks at alpha = {a.alpha:g}: "
            f"CD = {_num(om['cd'], 3)} (q_alpha = {_num(om['q_alpha'], 3)}); two roles whose "
            f"mean ranks differ by more than CD differ significantly. Rank 1 = lowest "
            f"{u.name} on a seed. The Nemenyi post-hoc test applies only when the Friedman "
            f"test rejects (Demšar 2006)"
            + (
                "; it does here."
                if sig
                else "; Friedman does not reject here, so the CD and its diagram are "
                "descriptive only: no pair of roles is shown to differ."
            ),
            f"Repeated-measures ANOVA: F({_num(om['df1'], 0)}, {_num(om['df2'], 0)}) = "
            f"{_num(om['F'])}, p = {format_p(om['p_anova'], a.alpha)}; "
            f"Greenhouse-Geisser epsilon = {_num(om['gg_epsilon'], 3)}, "
            f"corrected p = {format_p(om['p_anova_gg'], a.alpha)} ("
            + (
                "normality of the differences not rejected: applicable"
                if om["anova_applicable"]
                else "not applicable here: rely on Friedman"
            )
            + ").",
        ]
        lines += [f"Note: {x}." for x in om["notes"]]
        text["omnibus"] = lines
    else:
        note = rep.omnibus_note or "no omnibus test"
        text["omnibus"] = [note[0].upper() + note[1:] + "."]

    m = max(rep.family_size, 1)
    planned = a.alpha / m if a.correction != "none" and m > 1 else a.alpha
    level = (
        f"alpha / {m} = {planned:.4g} (the {CORRECTION_NAMES[a.correction]} correction over "
        f"the {m} comparisons of the family; "
        + (
            "conservative for Holm's later steps)"
            if a.correction == "holm"
            else "conservative for Benjamini-Hochberg)"
            if a.correction == "bh"
            else "Bonferroni's level)"
        )
        if planned != a.alpha
        else f"alpha = {a.alpha:g}"
    )
    text["power"] = (
        f"For each tested comparison: the sd of the seed-wise differences at the current n, "
        f"the seeds a paired t-test needs to detect the protocol's smallest effect of interest "
        f"(min_effect = {u.value(a.min_effect)} {u.difference}) with {POWER:.0%} power at "
        f"{level}, the same for the comparison alone at alpha = {a.alpha:g}, the minimal "
        f"detectable effect (MDE) with {POWER:.0%} power at the current n and the power the "
        f"current n has for min_effect (both at the planned level), and the smallest p-value "
        f"the {TEST_WORDS[a.test]} can reach with n seeds (raw; the corrected one is at "
        f"least {m} times larger under Holm and Bonferroni). For rank and permutation tests "
        f"the seeds needed are raised until that smallest p falls below the planned level."
    )
    warnings: dict[str, list[str]] = {}
    for r in rep.power.itertuples() if len(rep.power) else []:
        if isinstance(r.warning, str) and r.warning:
            warnings.setdefault(r.warning, []).append(f"{r.a} vs {r.b}")
    text["power_warnings"] = [
        f"{'all tested comparisons' if len(who) == n_tested else ', '.join(who)}: {w}."
        for w, who in warnings.items()
    ]
    missing = rep.collected.missing
    text["missing"] = (
        f"{len(missing)} of {rep.header['runs_planned']} planned runs have no finished result; "
        "they are left out of every statistic above (a comparison uses the seeds both roles "
        "have)."
        if missing
        else "None: every (role, seed) of the plan has a finished run."
    )
    return text


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def report_figures(rep: Report) -> list[FigureImage]:
    """The report's figures as PNG bytes (drawn at dpi 100)."""
    u = rep.units
    metric = rep.protocol.analysis.metric
    table = rep.collected.table
    values = _long(table, metric).rename(columns={"group": "role"})
    values["value"] = values["value"] * u.factor
    kinds = {r.key: r.kind for r in rep.plan.roles}
    order = [r.key for r in rep.plan.roles]
    out: list[FigureImage] = []
    if len(values):
        out.append(
            FigureImage(
                "distributions",
                f"{u.title} per role: box (quartiles, whiskers to 1.5 IQR) and "
                "one point per seed. Blue: teacher, orange: students, green: ensembles.",
                figures.distributions(values, order, kinds, u.label),
            )
        )
        chains = _chains(rep.plan)
        out.append(
            FigureImage(
                "paired_seeds",
                f"{u.title} of each seed across "
                + ("the generations of each arm" if chains[0][0] != "all roles" else "roles")
                + ": one grey line per seed, the red line is the mean. Comparisons are paired "
                "along these lines.",
                figures.paired_lines(values, chains, u.label),
            )
        )
    curves = rep.collected.curves
    if len(curves):
        students = [r.key for r in rep.plan.roles if r.kind != "ensemble"]
        png = figures.learning_curves(
            curves,
            students,
            [
                ("val_acc", UNITS["val_acc"].label, 100.0, False),
                ("train_loss", "training loss (log scale)", 1.0, True),
            ],
        )
        if png is not None:
            out.append(
                FigureImage(
                    "learning_curves",
                    "Learning curves: mean over seeds per epoch and its 95% t interval (band), "
                    "validation accuracy and training loss (ensembles are not trained).",
                    png,
                )
            )
    om = rep.omnibus
    alpha = rep.protocol.analysis.alpha
    if om is not None:
        out.append(
            FigureImage(
                "critical_difference",
                f"Critical-difference diagram: mean ranks of {u.name} over "
                f"{om['n_seeds_common']} seeds (rank 1 = the lowest {u.name} on a seed). "
                f"Bars join roles whose mean ranks differ by less than the Nemenyi "
                f"CD = {_num(om['cd'], 2)} (not significantly different). The post-hoc test "
                f"applies only when the Friedman test rejects"
                + (
                    "."
                    if not _missing(om["p_friedman"]) and om["p_friedman"] < alpha
                    else "; it does not here, so the diagram is descriptive only."
                ),
                figures.critical_difference(
                    om["mean_ranks"],
                    om["cd"] if om["cd"] is not None else math.nan,
                    f"mean rank of {u.name} (1 = lowest)",
                ),
            )
        )
    return out


def _chains(plan: Plan) -> list[tuple[str, list[str]]]:
    """teacher -> gen1 -> gen2 ... for each arm with more than one generation; else all
    roles in plan order."""
    chains = [
        (f"arm {arm.name}", [TEACHER, *(f"{arm.name}/gen{k}" for k in range(1, g + 1))])
        for arm in plan.protocol.arms
        if (g := arm.generations) > 1
    ]
    return chains or [("all roles", [r.key for r in plan.roles])]


# --------------------------------------------------------------------------------------
# render and write
# --------------------------------------------------------------------------------------


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("study.analysis", "templates"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env


def _context(rep: Report, figs: list[FigureImage]) -> dict[str, Any]:
    return {
        "rep": rep,
        "h": rep.header,
        "a": rep.protocol.analysis,
        "u": rep.units,
        "t": report_tables(rep),
        "text": report_text(rep),
        "figures": {f.name: f for f in figs},
        "correction": CORRECTION_NAMES[rep.protocol.analysis.correction],
    }


def render_markdown(rep: Report, figs: list[FigureImage] | None = None) -> str:
    """report.md; figures are linked as figures/<name>.png."""
    figs = report_figures(rep) if figs is None else figs
    md = _env().get_template("report.md.j2").render(**_context(rep, figs))
    return re.sub(r"\n{3,}", "\n\n", md)  # sections left empty leave no gaps


def render_html(rep: Report, figs: list[FigureImage] | None = None) -> str:
    """report.html: self-contained, figures embedded as base64 PNG, inline stylesheet."""
    figs = report_figures(rep) if figs is None else figs
    return _env().get_template("report.html.j2").render(**_context(rep, figs))


REPORT_FILES = ".report-files"
"""The manifest of the figures a report wrote into its folder: the next report deletes those
it no longer has, and nothing else (a user's own files there stay)."""


def write_report(rep: Report, out_dir: Path) -> list[Path]:
    """Write report.md (+ figures/*.png) and report.html into out_dir; returns the paths."""
    figs = report_figures(rep)
    names = [f"figures/{f.name}.png" for f in figs]
    paths = {name: within(out_dir, name) for name in ["report.md", "report.html", *names]}
    manifest = within(out_dir, REPORT_FILES)
    try:
        before = set(manifest.read_text().split())
    except OSError:
        before = set()
    for stale in sorted(before - set(names)):  # a figure this report no longer has
        if re.fullmatch(r"figures/[A-Za-z0-9_]+\.png", stale):
            within(out_dir, stale).unlink(missing_ok=True)
    within(out_dir, "figures").mkdir(parents=True, exist_ok=True)
    paths["report.md"].write_text(render_markdown(rep, figs))
    paths["report.html"].write_text(render_html(rep, figs))
    for f, name in zip(figs, names, strict=True):
        paths[name].write_bytes(f.png)
    manifest.write_text("".join(f"{name}\n" for name in names))
    return list(paths.values())
