"""Commands that read results: export and report (and the report after `study run`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from study.cli.terminal import (
    ProtocolArg,
    TrackingUri,
    check_can_write,
    console,
    err_console,
    user_errors,
)
from study.errors import UserInputError
from study.paths import within

ExportDir = Annotated[
    Path | None,
    typer.Option("--export", help="Tidy export directory (default: results/<study>)."),
]


@user_errors
def export(protocol: ProtocolArg, tracking_uri: TrackingUri = None, out: ExportDir = None) -> None:
    """Write the tidy results (runs.csv, curves.csv, meta.json) from the tracker; for a
    protocol of several conditions, one folder per condition and conditions.csv."""
    from study.analysis.collect import write_export
    from study.analysis.conditions_report import write_conditions_table
    from study.conditions import load_study

    study = load_study(protocol)
    if study.has_conditions:
        root = out or within("results", study.name)
        collected = _collect_conditions(study, protocol, tracking_uri)
        check_can_write(root, "the export")
        paths = [x for p, c in collected for x in write_export(c, within(root, str(p.condition)))]
        paths.append(write_conditions_table(collected, root))
        console.print("export: " + ", ".join(str(x) for x in paths))
        return
    p, collected = collect_study(protocol, tracking_uri)
    root = out or within("results", p.study.name)
    check_can_write(root, "the export")
    paths = write_export(collected, root)
    console.print("export: " + ", ".join(str(x) for x in paths))


@user_errors
def report_cmd(
    protocol: ProtocolArg,
    tracking_uri: TrackingUri = None,
    from_export: Annotated[
        bool, typer.Option("--from-export", help="Read the tidy export, not the tracker.")
    ] = False,
    export_dir: ExportDir = None,
) -> None:
    """Write reports/<study>/report.md from the tracker (or from the tidy export); for a
    protocol of several conditions, reports/<study>/<condition>/ for each and the report
    across conditions in reports/<study>/. A report from the tracker is also logged there,
    as the artifacts of a run named 'report' in the study's experiment."""
    from study.analysis.collect import read_export
    from study.conditions import load_study
    from study.track import Tracker

    study = load_study(protocol)
    if study.has_conditions:
        if from_export or export_dir is not None:
            root = export_dir or Path("results") / study.name
            collected, tracker = _exported_conditions(study, root, protocol), None
        else:
            collected = _collect_conditions(study, protocol, tracking_uri)
            tracker = Tracker(tracking_uri)
        _write_condition_reports(study, collected, tracker)
    elif from_export or export_dir is not None:
        p = study.protocols[0]
        where = export_dir or Path("results") / p.study.name
        if not (where / "runs.csv").exists():
            raise UserInputError(
                f"no tidy export at {where}/runs.csv; run 'study export {protocol}' first",
                source=str(protocol),
            )
        collected = _export_for(p, read_export(where), where, protocol)
        write_report(p, collected)
    else:
        p, collected = collect_study(protocol, tracking_uri)
        write_report(p, collected, Tracker(tracking_uri))


def _export_for(p, collected, where: Path, protocol: Path):
    """The export's rows for this protocol's plan. An export answers for the protocol it
    was made from: the (role, seed) fingerprints of the protocol as it is now, over the
    export's data identity, must be the export's; rows of (role, seed)s the protocol does
    not plan (an export of 5 seeds, a protocol of 3) are left out, with a note, as the
    tracker's collect leaves them out."""
    from study.analysis.stats import format_seeds
    from study.plan import expand, tuned_values

    identity = collected.meta.get("data_identity")
    if not identity:
        return collected  # an export written by hand: nothing to match it against
    plan = expand(p, tuned=tuned_values(p))
    plan.require_trainable()  # a "tuned" value without a (current) result says so itself
    expected = plan.fingerprints(identity)
    runs = collected.runs
    keys = [(str(r), int(s)) for r, s in zip(runs["role"], runs["seed"], strict=True)]
    exported = dict(zip(keys, runs["fingerprint"], strict=True))
    differ = sorted(k for k, fp in expected.items() if exported.get(k) != fp)
    if differ:
        role, seed = differ[0]
        raise UserInputError(
            f"the export at {where} does not match this protocol: {len(differ)} of "
            f"{len(expected)} (role, seed) fingerprints differ (first: {role} seed {seed}; the "
            "protocol, its tuning result or the package version changed since the export); "
            f"run 'study export {protocol}' again",
            source=str(protocol),
        )
    planned = [key in expected for key in keys]
    if all(planned):
        return collected
    extra = runs[[not x for x in planned]]
    which = "; ".join(
        f"{role} seed{'s' * (len(group) > 1)} {format_seeds(list(group['seed']))}"
        for role, group in extra.groupby("role", sort=True)
    )
    err_console.print(
        f"[yellow]note:[/] the export at {escape(str(where))} holds {len(extra)} run(s) this "
        f"protocol does not plan ({escape(which)}); the report leaves them out",
        highlight=False,
        soft_wrap=True,
    )
    curves = collected.curves
    if len(curves):
        keys = zip(curves["role"].astype(str), curves["seed"].astype(int), strict=True)
        curves = curves[[k in expected for k in keys]].reset_index(drop=True)
    runs = runs[planned].reset_index(drop=True)
    return dataclasses.replace(collected, runs=runs, curves=curves)


def collect_study(protocol: Path, tracking_uri: str | None):
    """The study's results from the tracker alone (``study.api.collect_results``, the
    notebook API's reader too)."""
    from study.api import collect_results

    return collect_results(protocol, tracking_uri)


def write_report(p, collected, tracker=None) -> None:
    """The report in reports/<study>[/<condition>]; with the ``tracker`` it was collected
    from, also as the artifacts of a ``report`` run in the study's experiment."""
    from study.analysis.report import build_report, write_report
    from study.conditions import study_dir
    from study.tuned import TUNED_FILE

    if collected.meta.get("tuned"):
        collected.meta.setdefault("tuned_file", str(Path("results") / p.study.name / TUNED_FILE))
    out = study_dir(Path("reports"), p)
    check_can_write(out, "the report")
    paths = write_report(build_report(p, collected), out)
    console.print("report: " + ", ".join(str(x) for x in paths))
    if tracker is not None:
        files: dict[str, Path | str] = {x.relative_to(out).as_posix(): x for x in paths}
        files[ROLE_SUMMARY] = role_summary(collected.runs, p.analysis.metric).to_csv(index=False)
        condition = {"condition": p.condition} if p.condition is not None else {}
        name = "report" + (f" {p.condition}" if p.condition is not None else "")
        run_id = tracker.log_report(p.study.name, files, tags=condition, name=name)
        console.print(f"report logged to {tracker.uri}: run {run_id} ('{name}')", highlight=False)


ROLE_SUMMARY = "role_summary.csv"
"""The report run's table of the primary metric per role: role, n, mean, sd."""


def role_summary(runs, metric: str):
    """Per role, in the plan's order: the FINISHED seeds' count, mean and sd (n - 1) of
    ``metric``."""
    import pandas as pd

    done = runs[runs["status"] == "FINISHED"]
    values = pd.to_numeric(done[metric], errors="coerce")
    grouped = values.groupby(done["role"].astype(str), sort=False)
    table = pd.DataFrame(
        {"n": grouped.count(), "mean": grouped.mean(), "sd": grouped.std(ddof=1)}
    ).rename_axis("role")
    table.insert(0, "metric", metric)
    return table.reset_index()


def _collect_conditions(study, protocol: Path, tracking_uri, identities=None):
    """(protocol, results) of each condition with results in the tracker; the conditions
    without any are named on stderr (and are an error when no condition has results)."""
    from study.analysis.across import collect_conditions
    from study.track import Tracker, check_has_store, check_writable

    check_has_store(tracking_uri)
    check_writable(tracking_uri)
    tracker = Tracker(tracking_uri)
    collected = collect_conditions(study, tracker, identities)
    return _with_results(collected, study, protocol, f"no run in {tracker.uri} matches")


def _exported_conditions(study, root: Path, protocol: Path):
    """(protocol, results) of each condition from its export folder, root/<condition>/."""
    from study.analysis.collect import read_export

    out = []
    for p in study.protocols:
        where = root / str(p.condition)
        if (where / "runs.csv").exists():
            out.append((p, _export_for(p, read_export(where), where, protocol)))
    if not out:
        raise UserInputError(
            f"no tidy export of any condition under {root}/<condition>/runs.csv; run "
            f"'study export {protocol}' first",
            source=str(protocol),
        )
    return _with_results(out, study, protocol, f"the export under {root} holds no run of")


def _with_results(collected, study, protocol: Path, nothing: str):
    from study.analysis.across import with_results

    kept, left = with_results(study, collected)
    if not kept:
        raise UserInputError(
            f"{nothing} any condition of this protocol: run 'study run {protocol}' first",
            source=str(protocol),
        )
    if left:
        err_console.print(
            f"[yellow]note:[/] no results for condition(s) {escape(', '.join(left))}: no "
            "report for them, and the report across conditions leaves them out",
            highlight=False,
            soft_wrap=True,
        )
    return kept


def write_reports(study, tracker, identities) -> None:
    """After `study run`: the reports of every condition and the one across them."""
    collected = _collect_conditions(study, Path(study.source), tracker.uri, identities)
    _write_condition_reports(study, collected, tracker)


def _write_condition_reports(study, collected, tracker=None) -> None:
    from study.analysis.across import build_across
    from study.analysis.conditions_report import write_across

    for p, c in collected:
        write_report(p, c, tracker)
    out = within("reports", study.name)
    check_can_write(out, "the report")
    paths = write_across(build_across(study, collected), out)
    console.print("across conditions: " + ", ".join(str(x) for x in paths))
    if tracker is not None:
        files = {x.relative_to(out).as_posix(): x for x in paths if x.is_relative_to(out)}
        run_id = tracker.log_report(study.name, files, name="report across conditions")
        console.print(f"report logged to {tracker.uri}: run {run_id}", highlight=False)
