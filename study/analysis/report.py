"""The study report: per-role summaries and paired comparisons, from the tracker alone.

``build_report`` gathers plain data (tables and comparison results); ``write_report``
renders it. Every number in a report is computed here from the tracked runs, never typed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from study import __version__
from study.analysis.collect import Collected
from study.analysis.stats import compare
from study.plan import TEACHER, Plan, expand
from study.protocol import Protocol
from study.repro import git_state


@dataclass
class Report:
    protocol: Protocol
    plan: Plan
    collected: Collected
    summary: pd.DataFrame
    comparisons: list[dict[str, Any]]
    header: dict[str, Any] = field(default_factory=dict)


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
    """Per role: n, mean, sd, median, min, max of the metric, in plan order."""
    rows = []
    for role in plan.roles:
        v = table.loc[table["role"] == role.key, metric].dropna().astype(float)
        rows.append(
            {
                "role": role.key,
                "kind": role.kind,
                "n": len(v),
                "mean": v.mean() if len(v) else float("nan"),
                "sd": v.std(ddof=1) if len(v) > 1 else float("nan"),
                "median": v.median() if len(v) else float("nan"),
                "min": v.min() if len(v) else float("nan"),
                "max": v.max() if len(v) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def build_report(protocol: Protocol, collected: Collected) -> Report:
    """Every table of the report, from the tidy results (tracker or export) alone."""
    plan = expand(protocol)
    analysis = protocol.analysis
    metric = analysis.metric
    summary = summarise(collected.table, plan, metric)
    long = collected.table.rename(columns={"role": "group", metric: "value"})
    long = long[["seed", "group", "value"]].dropna()
    pairs = comparison_pairs(plan, analysis.comparisons)
    present = set(long["group"])
    testable = [
        (a, b, fam)
        for a, b, fam in pairs
        if a in present and b in present and _n_paired(long, a, b) >= 2
    ]
    comparisons: list[dict[str, Any]] = []
    if testable:
        result = compare(
            long,
            pairs=[(a, b) for a, b, _ in testable],
            alpha=analysis.alpha,
            correction=analysis.correction,
            test=analysis.test,
            seed=0,
        ).to_dict()
        for (_, _, fam), c in zip(testable, result["comparisons"], strict=True):
            comparisons.append({**c, "family": fam})
    header = {
        "study": protocol.study.name,
        "description": protocol.study.description,
        "protocol_file": protocol.source,
        "protocol_sha": protocol.sha256,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        **git_state(),
        "metric": metric,
        "seeds": len(plan.seeds),
        "tracking_uri": collected.meta.get("tracking_uri"),
        "experiment_id": collected.meta.get("experiment_id"),
    }
    return Report(protocol, plan, collected, summary, comparisons, header)


def _n_paired(long: pd.DataFrame, a: str, b: str) -> int:
    sa = set(long.loc[long["group"] == a, "seed"])
    sb = set(long.loc[long["group"] == b, "seed"])
    return len(sa & sb)


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("study.analysis", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["pval"] = _pval
    return env


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{digits}f}"


def _pval(p: Any) -> str:
    if p is None or p != p:
        return "–"
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def render_markdown(rep: Report) -> str:
    return _env().get_template("report.md.j2").render(rep=rep, h=rep.header)


def write_report(rep: Report, out_dir: Path) -> list[Path]:
    """Write report.md into out_dir; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(render_markdown(rep))
    return [md]
