"""Commands that train: validate, run, status, server and tune."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from study.cli.progress import ProgressView
from study.cli.reporting import write_report, write_reports
from study.cli.terminal import (
    ProtocolArg,
    TrackingUri,
    check_can_write,
    check_device,
    console,
    err_console,
    interrupted_status,
    print_table,
    user_errors,
)
from study.errors import UserInputError
from study.paths import within


@user_errors
def validate(protocol: ProtocolArg) -> None:
    """Validate a protocol and print its plan (roles x seeds = runs) without training; a
    protocol of several conditions, each condition's."""
    from study.conditions import load_study
    from study.plan import expand

    study = load_study(protocol)
    for p in study.protocols:
        _print_plan(p)
    if study.has_conditions:
        runs = sum(expand(p).n_runs for p in study.protocols)
        console.print(
            f"{len(study.conditions)} conditions ({', '.join(study.names)}): {runs} runs in total",
            highlight=False,
            soft_wrap=True,
        )


def _print_plan(p) -> None:
    from study.plan import expand, tuned_values

    plan = expand(p, tuned=tuned_values(p))
    title = f"study '{p.study.name}'" + (f", condition '{p.condition}'" if p.condition else "")
    table = Table(title=f"{title}: {p.data.dataset}, {len(plan.seeds)} seeds")
    for col in ("role", "kind", "arch", "loss", "teacher", "epochs"):
        table.add_column(col)
    for r in plan.roles:
        params = ", ".join(f"{k}={v}" for k, v in r.loss_params.items())
        table.add_row(
            r.key,
            r.kind,
            r.arch or "-",
            f"{r.loss}({params})" if r.kind != "ensemble" else "mean softmax",
            r.teacher or (", ".join(r.members) if r.members else "-"),
            str(r.train.epochs) if r.train else "-",
        )
    print_table(table)
    console.print(
        f"{len(plan.roles)} roles x {len(plan.seeds)} seeds = {plan.n_runs} runs, "
        f"{plan.n_epochs} epochs in total"
    )


@user_errors
def run(
    protocol: ProtocolArg,
    tracking_uri: TrackingUri = None,
    device: Annotated[
        str | None, typer.Option(help="Override [train] device: auto, cpu, cuda, cuda:N.")
    ] = None,
    report: Annotated[bool, typer.Option(help="Write the report when done.")] = True,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (this process), slurm (submitit jobs, one per seed pack) or "
            "slurm-local (the same jobs as local subprocesses). Default: [execution] executor."
        ),
    ] = None,
) -> None:
    """Train every role of the protocol for every seed, logging to MLflow.

    Several `study run` processes on one protocol and tracking store share the work.
    """
    from study.conditions import load_study
    from study.execute import check_models, run_study
    from study.track import Tracker, check_writable

    study = load_study(protocol)
    if study.has_conditions:
        _run_conditions(study, protocol, tracking_uri, device, report, executor)
        return
    p = study.protocols[0]
    from study.execute import load_study_data
    from study.plan import expand, tuned_values

    plan = expand(p, tuned=tuned_values(p))
    plan.require_trainable()
    executor = _executor(executor, p)
    if executor == "local":  # a job's device is the node's, checked there
        check_device(device, p)
    data = load_study_data(p)
    check_models(plan, data)
    index = within("results", p.study.name, "run.json")
    check_can_write(index.parent, "the run index")
    if report:
        check_can_write(within("reports", p.study.name), "the report")
    check_writable(tracking_uri)
    tracker = Tracker(tracking_uri)
    if executor != "local":
        _run_jobs(p, tracker, executor, device)
        if report:
            from study.analysis.collect import collect

            write_report(p, collect(plan, tracker, data.identity), tracker)
        return
    try:
        with ProgressView() as view:
            summary = run_study(
                p, tracker, progress=view.update, device=device, data=data, plan=plan
            )
    except KeyboardInterrupt as e:
        _interrupted_run(protocol, p, e)
    _ran(p, summary, tracker)
    if report:
        from study.analysis.collect import collect

        write_report(p, collect(plan, tracker, data.identity), tracker)
    if summary.failed:
        raise typer.Exit(1)


def _executor(executor: str | None, p) -> str:
    executor = executor or p.execution.executor
    if executor not in ("local", "slurm", "slurm-local"):
        raise UserInputError(
            f"unknown executor '{executor}'; allowed: local, slurm, slurm-local",
            source="command line",
            field="--executor",
        )
    return executor


def _interrupted_run(protocol: Path, p, e: KeyboardInterrupt) -> None:
    err_console.print(
        "[yellow]interrupted:[/] the runs in progress are marked KILLED; run "
        f"'study run {protocol}' again: a run resumes from its last checkpoint "
        f"(written {_cadence(p.execution.checkpoint_every_s)}), one that has none yet "
        "starts over",
        highlight=False,
    )
    raise typer.Exit(interrupted_status(e)) from None


def _ran(p, summary, tracker) -> None:
    """The run index (results/<study>[/<condition>]/run.json) and what the run did."""
    from study.conditions import study_dir

    index = study_dir(Path("results"), p) / "run.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(summary.index(), indent=2, sort_keys=True) + "\n")
    name = p.study.name + (f"' condition '{p.condition}" if p.condition else "")
    if summary.trained == 0 and not summary.failed and not summary.skipped:
        console.print(
            f"nothing to train: all {summary.reused} runs of '{name}' are already "
            f"FINISHED in {tracker.uri} ({summary.seconds:.1f} s)"
        )
    else:
        console.print(
            f"trained {summary.trained} runs, reused {summary.reused}, "
            f"failed {len(summary.failed)}, skipped {len(summary.skipped)} "
            f"in {summary.seconds:.1f} s; tracking: {tracker.uri}, "
            f"experiment {summary.experiment_id}, parent run {summary.parent_run_id}"
        )
    for line in summary.failed:
        err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False)
    for line in summary.skipped:
        err_console.print(f"[yellow]skipped:[/] {escape(line)}", highlight=False)


def _run_conditions(study, protocol: Path, tracking_uri, device, report: bool, executor) -> None:
    """`study run` of a protocol of several conditions: every condition is checked (plan,
    device, data, networks) before any trains; then they train one after another, each
    as a protocol of one condition, and the reports follow (one per condition and the
    one across conditions)."""
    from study.execute import check_models, load_study_data, run_study
    from study.plan import expand
    from study.track import Tracker, check_writable

    executor = _executor(executor, study.protocols[0])
    plans = [expand(p) for p in study.protocols]
    for plan in plans:
        plan.require_trainable()
        if executor == "local":
            check_device(device, plan.protocol)
    data, loaded = {}, {}  # each distinct [data] loaded once
    for p in study.protocols:
        key = p.data.model_dump_json()
        data[p.condition] = loaded[key] = loaded.get(key) or load_study_data(p)
    for plan in plans:
        check_models(plan, data[plan.protocol.condition])
    check_can_write(within("results", study.name), "the run index")
    if report:
        check_can_write(within("reports", study.name), "the report")
    check_writable(tracking_uri)
    tracker = Tracker(tracking_uri)
    failed = False
    for i, (p, plan) in enumerate(zip(study.protocols, plans, strict=True)):
        console.print(f"condition '{p.condition}' ({i + 1} of {len(plans)})", highlight=False)
        if executor != "local":
            failed |= _run_jobs(p, tracker, executor, device, stop=False)
            continue
        try:
            with ProgressView() as view:
                summary = run_study(
                    p,
                    tracker,
                    progress=view.update,
                    device=device,
                    data=data[p.condition],
                    plan=plan,
                )
        except KeyboardInterrupt as e:
            _interrupted_run(protocol, p, e)
        _ran(p, summary, tracker)
        failed |= bool(summary.failed)
    if failed and executor != "local":
        raise typer.Exit(1)
    if report:
        identities = {c: d.identity for c, d in data.items()}
        write_reports(study, tracker, identities)
    if failed:
        raise typer.Exit(1)


def _cadence(every_s: float) -> str:
    if every_s == 0:
        return "after every epoch"
    return f"after an epoch once {every_s:g} s have passed since the last"


def _run_jobs(p, tracker, executor: str, device: str | None, *, stop: bool = True) -> bool:
    """Submit the protocol's jobs; whether one failed (with ``stop``: exit 1 then)."""
    from study.submit import submit_study

    console.print(f"submitting '{p.study.name}' through submitit ({executor})")
    results = submit_study(p, tracker.uri, local=executor == "slurm-local", device=device)
    failed = False
    for r in results:
        console.print(
            f"job {r['job_id']} seeds {r['seeds']}: trained {r['trained']}, reused "
            f"{r['reused']}, failed {len(r['failed'])}, skipped {len(r['skipped'])}",
            highlight=False,
        )
        for line in r["failed"]:
            err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False)
            failed = True
    if failed and stop:
        raise typer.Exit(1)
    return failed


@user_errors
def status(protocol: ProtocolArg, tracking_uri: TrackingUri = None) -> None:
    """Per role: how many seeds are done, running, failed or waiting (per condition)."""
    from study.conditions import load_study
    from study.track import check_has_store, check_writable

    study = load_study(protocol)
    check_has_store(tracking_uri)
    check_writable(tracking_uri)
    for p in study.protocols:
        _print_status(p, tracking_uri)


def _print_status(p, tracking_uri: str | None) -> None:
    from study.execute import load_study_data, study_status
    from study.plan import expand, tuned_values
    from study.track import Tracker

    plan = expand(p, tuned=tuned_values(p))
    data = load_study_data(p)
    rows = study_status(plan, Tracker(tracking_uri), data.identity, p.execution.stale_after_s)
    name = p.study.name + (f"', condition '{p.condition}" if p.condition else "")
    out = Table(title=f"study '{name}': {len(plan.seeds)} seeds per role")
    for col in ("role", "done", "running", "failed", "waiting", "failed seeds", "jobs"):
        out.add_column(col)
    for r in rows:
        out.add_row(
            r["role"],
            *(str(len(r[k])) for k in ("done", "running", "failed", "waiting")),
            ",".join(map(str, r["failed"])) or "-",
            ",".join(r["jobs"]) or "-",
        )
    print_table(out)


def server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    backend_store_uri: Annotated[
        str, typer.Option(help="The database behind the server.")
    ] = "sqlite:///mlflow-server.db",
    artifacts: Annotated[
        str, typer.Option(help="Where the server keeps artifacts (checkpoints).")
    ] = "./mlartifacts-server",
) -> None:
    """Start an MLflow tracking server for a team (a database backend, served artifacts).

    Workers then use `--tracking-uri http://HOST:PORT`; checkpoints travel through the
    server, so workers on other machines can load their teachers.
    """
    import os

    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    console.print("starting: " + " ".join(command[2:]), highlight=False)
    os.execv(sys.executable, command)


@user_errors
def tune(
    protocol: ProtocolArg,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1, help="Finished trials the study should hold in total (default: [tune] trials)."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage: a journal file ending in .log, or a database URL "
            "(default: optuna-journal.log beside the MLflow database)."
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Start no new trial after this many seconds.")
    ] = None,
    tracking_uri: TrackingUri = None,
    device: Annotated[
        str | None, typer.Option(help="Override [train] device: auto, cpu, cuda, cuda:N.")
    ] = None,
) -> None:
    """Search the [tune] ranges on the validation split; write results/<study>/tuned.json."""
    from study.execute import check_models, load_study_data
    from study.plan import expand
    from study.protocol import load_protocol
    from study.tune import TuningError, plan_tuning
    from study.tune import tune as run_tuning

    p = load_protocol(protocol)
    check_device(device, p)
    data = load_study_data(p)
    check_models(expand(p), data)
    tuning = plan_tuning(p, trials=trials, storage=storage, tracking_uri=tracking_uri)
    check_can_write(within("results", p.study.name), "the tuning result")
    spec = tuning.spec
    console.print(
        f"tuning {', '.join(tuning.space)} of arm '{spec.arm}' generation {spec.generation} "
        f"on seeds {tuning.seeds}: {spec.direction} {spec.metric}, {tuning.trials} trials, "
        f"pruner {spec.pruner}; Optuna study '{tuning.study_name}' in {tuning.storage.url}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        summary = run_tuning(
            tuning, data=data, progress=_print_tuning, timeout=timeout, device=device
        )
    except KeyboardInterrupt as e:
        err_console.print(
            "[yellow]interrupted:[/] a trial in progress is marked failed; run "
            f"'study tune {protocol}' again to continue the same study",
            highlight=False,
        )
        raise typer.Exit(interrupted_status(e)) from None
    except TuningError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    r = summary.result
    counts = ", ".join(f"{n} {state}" for state, n in r["n_trials_by_state"].items() if n)
    if r["best_params"]:
        values = ", ".join(f"{k}={v:.4g}" for k, v in r["best_params"].items())
        console.print(
            f"best {r['metric']} {r['best_value']:.4f} (trial {r['best_trial']}): {values}",
            highlight=False,
        )
    else:
        err_console.print("[yellow]no trial completed:[/] there are no tuned values yet")
    console.print(
        f"{r['n_trials']} trials ({counts}); this run: {summary.ran} trials in "
        f"{summary.seconds:.1f} s; result: {summary.path}; MLflow parent run "
        f"{summary.parent_run_id}",
        highlight=False,
        soft_wrap=True,
    )


def _print_tuning(event) -> None:
    if event.kind == "start" and event.finished:
        console.print(f"{event.finished}/{event.total} trials already finished", highlight=False)
    elif event.kind == "teacher":
        console.print(event.message, highlight=False)
    elif event.kind == "trial":
        value = "-" if event.value is None else f"{event.value:.4f}"
        best = "-" if event.best_value is None else f"{event.best_value:.4f}"
        eta = "-" if event.eta_s is None else _minutes(event.eta_s)
        console.print(
            f"trial {event.number}: {event.state} (value {value} at step {event.step}); "
            f"best {best} (trial {event.best_number}); {event.finished}/{event.total} "
            f"finished; ETA {eta}",
            highlight=False,
            soft_wrap=True,
        )


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"
