"""The command line: parses arguments, calls the library, draws progress. Nothing else."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from study.errors import TrackerUnavailable, UserInputError
from study.paths import within

app = typer.Typer(
    help="A statistical study harness for knowledge distillation and Born-Again Networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name "[train] device": text, not rich markup
)
console = Console()
err_console = Console(stderr=True)

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
    ),
]
ProtocolArg = Annotated[Path, typer.Argument(help="The study's protocol file (TOML).")]


@app.callback()
def process_settings() -> None:
    """Before any command touches CUDA: cuBLAS reads its workspace setting once, at the
    first GEMM (``determinism.configure_cuda_process``, which resolving a training device also
    calls, sets the rest; importing torch here would slow every command by a second)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # A scheduler's timeout or preemption (Slurm), `kill`, a CI runner: the same clean stop
    # as Ctrl-C (runs KILLED, metrics flushed, the last checkpoint kept), exit status 143.
    if threading.current_thread() is threading.main_thread():  # (not so in a library call)
        signal.signal(signal.SIGTERM, _terminated)


PIPED_WIDTH = 200
"""Columns of a table printed into a pipe or a file: rich's 80 cut p-values to '5.0e…'."""


def _print_table(table: Table) -> None:
    """A table on stdout: the terminal's width, or at least ``PIPED_WIDTH`` when piped."""
    if console.is_terminal:
        console.print(table)
    else:  # print's own width can only narrow the console's
        Console(width=max(console.width, PIPED_WIDTH)).print(table)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, and handled as Ctrl-C is."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _interrupted_status(e: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130


_REFUSED_BY_THE_SYSTEM = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
"""A file the system will not let us read or write (permissions, a read-only or full
disk): said plainly with the path, exit 2, no traceback."""


def check_can_write(directory: Path, what: str) -> None:
    """Fail before any work when ``directory`` cannot take files: a read-only working
    directory used to stop `study run` after the training, with a traceback, when the run
    index or the report was written. The nearest existing folder on the way is probed
    (nothing is created)."""
    import tempfile

    probe = directory.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder must go")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".study-write-check-"):
            pass
    except OSError as e:
        raise UserInputError(
            f"cannot write {what} to {directory.absolute()} ({probe}: "
            f"{e.strerror or e}); run from a writable directory",
            source=str(directory),
        ) from None


def user_errors(fn):
    """Bad input: a clear message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as e:
            message = escape(e.message)  # "[tune]" in a message is text, not rich markup
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in _REFUSED_BY_THE_SYSTEM:
                raise
            where = f": {e.filename}" if e.filename else ""
            err_console.print(
                f"[bold red]error:[/] {escape((e.strerror or str(e)) + where)}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except TrackerUnavailable as e:
            err_console.print(
                f"[bold red]error:[/] the tracking store {escape(e.uri)} is lost: "
                f"{escape(e.reason)}. Stopped (exit {TrackerUnavailable.EXIT_STATUS}); local "
                "checkpoints are kept, and runs may be left RUNNING in the store. Run the "
                "command again once the store answers: runs resume from their checkpoints",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(TrackerUnavailable.EXIT_STATUS) from None
        except Terminated:  # `run` and `tune` say more; any other command just stops
            err_console.print("[yellow]terminated[/] (SIGTERM)", highlight=False)
            raise typer.Exit(_interrupted_status(Terminated())) from None

    return wrapper


@app.command()
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
    _print_table(table)
    console.print(
        f"{len(plan.roles)} roles x {len(plan.seeds)} seeds = {plan.n_runs} runs, "
        f"{plan.n_epochs} epochs in total"
    )


@app.command()
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
        from study.device import check_device

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

            _write_report(p, collect(plan, tracker, data.identity))
        return
    try:
        with _ProgressView() as view:
            summary = run_study(
                p, tracker, progress=view.update, device=device, data=data, plan=plan
            )
    except KeyboardInterrupt as e:
        _interrupted_run(protocol, p, e)
    _ran(p, summary, tracker)
    if report:
        from study.analysis.collect import collect

        _write_report(p, collect(plan, tracker, data.identity))
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
    raise typer.Exit(_interrupted_status(e)) from None


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
            from study.device import check_device

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
            with _ProgressView() as view:
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
        _write_reports(study, tracker, identities)
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


@app.command()
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
    _print_table(out)


@app.command()
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


@app.command()
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
    from study.device import check_device
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
        raise typer.Exit(_interrupted_status(e)) from None
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


ExportDir = Annotated[
    Path | None,
    typer.Option("--export", help="Tidy export directory (default: results/<study>)."),
]


@app.command()
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
    p, collected = _collect(protocol, tracking_uri)
    root = out or within("results", p.study.name)
    check_can_write(root, "the export")
    paths = write_export(collected, root)
    console.print("export: " + ", ".join(str(x) for x in paths))


@app.command("report")
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
    across conditions in reports/<study>/."""
    from study.analysis.collect import read_export
    from study.conditions import load_study

    study = load_study(protocol)
    if study.has_conditions:
        if from_export or export_dir is not None:
            root = export_dir or Path("results") / study.name
            collected = _exported_conditions(study, root, protocol)
        else:
            collected = _collect_conditions(study, protocol, tracking_uri)
        _write_condition_reports(study, collected)
    elif from_export or export_dir is not None:
        p = study.protocols[0]
        where = export_dir or Path("results") / p.study.name
        if not (where / "runs.csv").exists():
            raise UserInputError(
                f"no tidy export at {where}/runs.csv; run 'study export {protocol}' first",
                source=str(protocol),
            )
        collected = _export_for(p, read_export(where), where, protocol)
        _write_report(p, collected)
    else:
        _write_report(*_collect(protocol, tracking_uri))


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


def _collect(protocol: Path, tracking_uri: str | None):
    """The study's results from the tracker alone: no data files are read (the data
    identity is the one its runs were tagged with)."""
    from study.analysis.collect import collect
    from study.plan import expand, tuned_values
    from study.protocol import load_protocol
    from study.track import Tracker, check_has_store, check_writable

    p = load_protocol(protocol)
    plan = expand(p, tuned=tuned_values(p))
    plan.require_trainable()
    check_has_store(tracking_uri)
    check_writable(tracking_uri)
    tracker = Tracker(tracking_uri)
    collected = collect(plan, tracker)
    if (collected.runs["status"] == "ABSENT").all():  # failed runs still make a report
        raise UserInputError(
            f"no run in {tracker.uri} matches this protocol's {plan.n_runs} (role, seed) "
            f"fingerprints: run 'study run {protocol}' first (a changed protocol, tuning "
            "result, [data] setting or package version gives new fingerprints)",
            source=str(protocol),
        )
    return p, collected


def _write_report(p, collected) -> None:
    from study.analysis.report import build_report, write_report
    from study.conditions import study_dir
    from study.tuned import TUNED_FILE

    if collected.meta.get("tuned"):
        collected.meta.setdefault("tuned_file", str(Path("results") / p.study.name / TUNED_FILE))
    out = study_dir(Path("reports"), p)
    check_can_write(out, "the report")
    paths = write_report(build_report(p, collected), out)
    console.print("report: " + ", ".join(str(x) for x in paths))


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


def _write_reports(study, tracker, identities) -> None:
    """After `study run`: the reports of every condition and the one across them."""
    collected = _collect_conditions(study, Path(study.source), tracker.uri, identities)
    _write_condition_reports(study, collected)


def _write_condition_reports(study, collected) -> None:
    from study.analysis.across import build_across
    from study.analysis.conditions_report import write_across

    for p, c in collected:
        _write_report(p, c)
    out = within("reports", study.name)
    check_can_write(out, "the report")
    paths = write_across(build_across(study, collected), out)
    console.print("across conditions: " + ", ".join(str(x) for x in paths))


TableArg = Annotated[Path, typer.Argument(help="A tidy CSV table: one row per (group, seed).")]
ValueCol = Annotated[str, typer.Option("--value-col", help="Column of the values.")]
GroupCol = Annotated[str, typer.Option("--group-col", help="Column naming the group.")]
SeedCol = Annotated[str, typer.Option("--seed-col", help="Column of the seeds (pairing key).")]
Baseline = Annotated[
    str | None, typer.Option("--baseline", help="Compare every other group against this one.")
]
Pairs = Annotated[
    str | None, typer.Option("--pairs", help="Explicit comparisons A:B,C:D (differences A - B).")
]
Alpha = Annotated[float, typer.Option("--alpha", help="Significance level, in (0, 1).")]
TestName = Annotated[str, typer.Option("--test", help="Primary test: t, wilcoxon or permutation.")]


def _read_table(path: Path, *, group_col: str = "group", seed_col: str = "seed"):
    """The CSV table; with a ``status`` column (the export's runs.csv) only its FINISHED
    rows, the others named on stderr."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserInputError("table file not found", source=str(path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserInputError(f"not a readable CSV table: {e}", source=str(path)) from None
    if "status" in table.columns:
        finished = table["status"].astype(str).str.strip().str.upper() == "FINISHED"
        if not finished.all():
            left = table[~finished]
            what = [
                f"{r.get(group_col, '?')} seed {r.get(seed_col, '?')} ({r['status']})"
                for r in left.to_dict("records")
            ]
            err_console.print(
                f"{path}: left out {len(left)} rows whose status is not FINISHED: "
                + ", ".join(what),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        table = table[finished].reset_index(drop=True)
    return table


def _pairs(text: str | None) -> list[tuple[str, str]] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep or not a or not b:
            raise UserInputError(
                f"'{item}' is not of the form A:B", source="command line", field="--pairs"
            )
        out.append((a, b))
    return out


ReportProtocol = Annotated[
    Path | None,
    typer.Option(
        "--protocol",
        help="Test the comparisons the report of this protocol tests, as it tests them: its "
        "[analysis] metric, test, correction, alpha, min_effect, families and pairs, on the "
        "export's role column; p adj. is then the report's. Options given as well win.",
    ),
]


@app.command()
@user_errors
def compare(
    table: TableArg,
    value_col: ValueCol = "value",
    group_col: GroupCol = "group",
    seed_col: SeedCol = "seed",
    baseline: Baseline = None,
    pairs: Pairs = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Significance level, in (0, 1). [0.05]")
    ] = None,
    correction: Annotated[
        str | None, typer.Option("--correction", help="holm, bh, bonferroni or none. [holm]")
    ] = None,
    test: Annotated[
        str | None, typer.Option("--test", help="Primary test: t, wilcoxon or permutation. [t]")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every resampling.")] = 0,
    aso: Annotated[
        bool, typer.Option("--aso", help="Also Almost Stochastic Order (epsilon_min).")
    ] = False,
    min_effect: Annotated[
        float | None,
        typer.Option(
            "--min-effect",
            help="Smallest difference of interest (value units): a non-significant verdict "
            "says whether the CI rules it out.",
        ),
    ] = None,
    protocol: ReportProtocol = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Paired comparisons across seeds of any tidy table (seed, group, value); a table with
    a status column (the export's runs.csv) is reduced to its FINISHED rows. A value column
    named after a metric (test_acc, test_nll, ...) is shown in the report's units."""
    from study.analysis.stats import compare as run_compare

    frame = _read_table(table, group_col=group_col, seed_col=seed_col)
    families = None
    if protocol is not None:
        frame, families, settings = _report_family(frame, protocol, group_col, value_col)
        pairs, value_col, group_col, seed_col = None, "value", "group", "seed"
        if baseline is not None:
            raise UserInputError(
                "--protocol tests the report's comparisons; --baseline asks for others",
                source="command line",
                field="--baseline",
            )
        alpha = settings.alpha if alpha is None else alpha
        correction = correction or settings.correction
        test = test or settings.test
        min_effect = settings.min_effect if min_effect is None else min_effect
        metric = settings.metric
    else:
        metric = value_col
    alpha, correction, test = alpha or 0.05, correction or "holm", test or "t"
    result = run_compare(
        frame,
        value_col=value_col,
        group_col=group_col,
        seed_col=seed_col,
        baseline=baseline,
        pairs=[(c["a"], c["b"]) for c in families] if families is not None else _pairs(pairs),
        alpha=alpha,
        correction=correction,
        test=test,
        seed=seed,
        aso=aso,
        min_effect=min_effect,
        source=str(table),
    )
    data = result.to_dict()
    if as_json:
        print(json.dumps(data, indent=2, allow_nan=False))
        return
    _print_comparisons(
        data,
        f"{table}: {metric} by {group_col if protocol is None else 'role'}",
        metric,
        families,
        alpha=alpha,
        correction=correction,
        test=test,
        min_effect=min_effect,
    )


def _report_family(frame, protocol: Path, group_col: str, value_col: str):
    """The export's table as the report reads it (group, seed, value of the protocol's
    metric), the report's testable comparisons, and the protocol's [analysis]."""
    from study.analysis.report import long_values, planned_comparisons
    from study.protocol import load_protocol

    p = load_protocol(protocol)
    metric = p.analysis.metric if value_col == "value" else value_col
    role = "role" if group_col == "group" else group_col
    for col, option in ((role, "--group-col"), (metric, "--value-col")):
        if col not in frame.columns:
            raise UserInputError(
                f"column '{col}' is missing (the export's runs.csv has it); the table has "
                f"columns {[str(c) for c in frame.columns]}",
                source="command line",
                field=option,
            )
    long = long_values(frame.rename(columns={role: "role"}), metric)
    families = [c for c in planned_comparisons(p, long) if c["testable"]]
    if not families:
        raise UserInputError(
            "no comparison of this protocol's report has 2 paired seeds in the table",
            source=str(protocol),
        )
    return long, families, p.analysis.model_copy(update={"metric": metric})


def _print_comparisons(data, title, metric, families, *, alpha, correction, test, min_effect):
    """The comparisons as a table and verdict lines, in the report's units where the value
    column is one of its metrics (accuracies in percent, differences in points)."""
    from study.analysis.report import verdict_words
    from study.analysis.stats import format_p_value, format_seeds
    from study.analysis.units import RAW, units_of

    units = units_of(metric)
    shown = units if units is not RAW else None

    def p_text(p) -> str:  # never rounded onto or across alpha
        return "-" if p is None else format_p_value(p, alpha=alpha, digits=3)

    against = (0.0,) if min_effect is None else (0.0, min_effect, -min_effect)

    def num(x) -> str:  # read against 0 and min_effect as the verdict is
        return shown.diff(x, against=against) if shown else _fmt(x)

    unit = f" ({units.difference})" if shown else ""
    out = Table(
        title=f"{title}, {correction} correction"
        + (f", differences in {units.difference}" if shown else "")
    )
    columns = ["A", "B", *(["family"] if families else []), "pairing", "n"]
    for col in (*columns, f"mean diff{unit}", "unadj. 95% t CI", "effect", "p", "p adj", ""):
        out.add_column(col)
    for i, c in enumerate(data["comparisons"]):
        lo, hi = c["ci95"] or (None, None)
        family = [families[i]["family"]] if families else []
        out.add_row(
            c["a"],
            c["b"],
            *family,
            c["pairing"],
            str(c["n"]),
            num(c["mean_diff"]),
            f"[{num(lo)}, {num(hi)}]",
            f"{(c['effect_size_name'] or '').split(' ')[0]} {_fmt(c['effect_size'], 2)}",
            p_text(c["p"]),
            p_text(c["p_adj"]),
            "reject" if c["reject"] else "",
        )
    _print_table(out)
    notes: dict[str, list[str]] = {}  # one line per distinct note, not one per comparison
    for c in data["comparisons"]:
        verdict = c["verdict"]
        if shown:
            full = {**c, "testable": True}
            verdict = verdict_words(
                full, shown, alpha=alpha, correction=correction, test=test, min_effect=min_effect
            )[1]
        console.print(f"- {verdict}", highlight=False, markup=False, soft_wrap=True)
        for note in c["notes"]:
            other_test = (note.startswith("Wilcoxon") and test != "wilcoxon") or (
                note.startswith("permutation") and test != "permutation"
            )
            if not other_test:
                notes.setdefault(note, []).append(f"{c['a']} vs {c['b']}")
    for note, where in notes.items():
        which = "all comparisons" if len(where) == len(data["comparisons"]) else "; ".join(where)
        console.print(f"note: {note} ({which})", highlight=False, markup=False, soft_wrap=True)
    if data["unpaired_seeds"]:
        console.print(
            "seeds not present in every compared group (left out of the pairs that lack "
            "them and of the omnibus): "
            + "; ".join(f"{g}: {format_seeds(s)}" for g, s in data["unpaired_seeds"].items()),
            highlight=False,
            markup=False,
        )
    om = data.get("omnibus")
    if om:
        console.print(
            f"omnibus over {om['k']} groups, {om['n_seeds_common']} common seeds: Friedman "
            f"Q = {_fmt(om['q'], 3)}, p = {p_text(om['p_friedman'])}, Kendall's W = "
            f"{_fmt(om['w_kendall'], 3)}, Nemenyi CD = {_fmt(om['cd'], 3)}",
            highlight=False,
        )


@app.command("plan-seeds")
@user_errors
def plan_seeds(
    table: TableArg,
    effect: Annotated[
        float, typer.Option("--effect", help="Smallest difference worth detecting (value units).")
    ],
    value_col: ValueCol = "value",
    group_col: GroupCol = "group",
    seed_col: SeedCol = "seed",
    baseline: Baseline = None,
    pairs: Pairs = None,
    alpha: Alpha = 0.05,
    power: Annotated[float, typer.Option("--power", help="Target power, in (0, 1).")] = 0.8,
    test: TestName = "t",
    comparisons: Annotated[
        int,
        typer.Option(
            "--comparisons",
            min=1,
            help="Size m of the correction family the results will be corrected over (at "
            "least the comparisons in this table are counted).",
        ),
    ] = 1,
    correction: Annotated[
        str,
        typer.Option(
            "--correction",
            help="holm, bh, bonferroni or none; holm, bonferroni and (conservatively) bh are "
            "planned at alpha / m.",
        ),
    ] = "holm",
    sd_confidence: Annotated[
        float | None,
        typer.Option(
            "--sd-confidence",
            help="Plan for this one-sided upper confidence bound of the pilot's sd (e.g. 0.8: "
            "the plan reaches the power in about 80% of pilots, not about half).",
        ),
    ] = None,
    condition_col: Annotated[
        str | None,
        typer.Option(
            "--condition-col",
            help="Plan over conditions and seeds: the column naming each row's condition "
            "(the export's conditions.csv: condition). Pooled by the report's random-effects "
            "test, Var ~ tau^2/C + sigma^2/(nC).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Seeds needed to detect an effect with the chosen test's own power, from the observed
    sd of paired differences, at alpha / m for a family of m corrected comparisons; a table
    with a status column (the export's runs.csv) is reduced to its FINISHED rows. With
    --condition-col: what more seeds and more conditions buy for the pooled effect."""
    from study.analysis.power import plan_seeds as run_plan

    if effect <= 0:
        raise UserInputError(f"must be > 0, got {effect}", source="command line", field="--effect")
    common = {
        "effect": effect,
        "alpha": alpha,
        "power": power,
        "comparisons": comparisons,
        "correction": correction,
        "value_col": value_col,
        "group_col": group_col,
        "seed_col": seed_col,
        "baseline": baseline,
        "pairs": _pairs(pairs),
        "source": str(table),
    }
    rows = _read_table(table, group_col=group_col, seed_col=seed_col)
    if condition_col is not None:
        _plan_conditions(rows, condition_col=condition_col, as_json=as_json, **common)
        return
    frame = run_plan(rows, test=test, sd_confidence=sd_confidence, **common)
    if as_json:
        records = json.loads(frame.to_json(orient="records"))
        for i, record in enumerate(records):
            record.update({key: frame.attrs[key][i] for key in ("sd_planned", "pilot_warning")})
        print(json.dumps(records, indent=2))
        return
    family = frame.attrs.get("family") or "one comparison, no correction needed"
    if correction == "none" and frame.attrs.get("comparisons", 1) > 1:
        family = f"{frame.attrs['comparisons']} comparisons, no correction"
    out = Table(title=f"seeds for effect {effect} at alpha {alpha}, power {power} ({test})")
    for col in (
        "A",
        "B",
        "n",
        "sd diff",
        "seeds needed",
        "alone, at alpha",
        "MDE at n",
        "power at n",
    ):
        out.add_column(col)

    def seeds(x, pairing) -> str:
        if x is None or x != x:
            return "-"
        return f"{int(x)}" + (" per group" if pairing != "paired by seed" else "")

    for r, sd_planned in zip(frame.itertuples(), frame.attrs["sd_planned"], strict=True):
        out.add_row(
            r.a,
            r.b,
            str(r.n) + (" (A + B)" if r.pairing != "paired by seed" else ""),
            _fmt(r.sd_diff) + (f" (planned: {_fmt(sd_planned)})" if sd_confidence else ""),
            seeds(r.n_required, r.pairing),
            seeds(r.n_required_unadjusted, r.pairing),
            _fmt(r.mde),
            _fmt(r.power_at_n, 3),
        )
    _print_table(out)
    console.print(
        f"family: {family}; 'seeds needed', 'MDE at n' and 'power at n' are at the planned "
        f"level, 'alone, at alpha' plans the comparison as if it were the only one; power "
        f"of the {test} test from {frame.attrs['power_method']}"
        + (
            f"; planned for the sd's {sd_confidence:.0%} upper confidence bound"
            if sd_confidence
            else ""
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for r, pilot in zip(frame.itertuples(), frame.attrs["pilot_warning"], strict=True):
        for text in (r.warning, pilot):
            if isinstance(text, str) and text:
                err_console.print(
                    f"[yellow]warning:[/] {r.a} vs {r.b}: {text}", highlight=False, soft_wrap=True
                )


def _plan_conditions(frame, *, as_json: bool, **options) -> None:
    """`study plan-seeds --condition-col`: the power of the pooled test over conditions."""
    from study.analysis.condition_power import plan_conditions

    plan = plan_conditions(frame, **options)
    if as_json:
        print(plan.to_json(orient="records", indent=2))
        return
    m = plan.attrs["comparisons"]
    out = Table(
        title=f"power over conditions and seeds for effect {options['effect']} at alpha / "
        f"{m} = {plan.attrs['alpha_planned']:.4g}, target {options['power']}"
    )
    columns = {
        "A": "a", "B": "b", "C": "conditions", "n": "seeds", "sigma": "sigma", "tau": "tau",
        "power now": "power", "2n seeds": "power_2n", "all seeds": "power_all_seeds",
        "2C conditions": "power_2c", "conditions needed": "conditions_needed",
        "seeds needed": "seeds_needed",
    }  # fmt: skip
    for col in columns:
        out.add_column(col)
    for r in plan.to_dict("records"):
        out.add_row(*(_plan_cell(key, r[key]) for key in columns.values()))
    _print_table(out)
    console.print(
        "Var(pooled) ~ tau^2/C + sigma^2/(nC): sigma is the seed-to-seed sd of one paired "
        "difference within a condition, tau the between-condition sd (Paule-Mandel); the "
        "pooled test is HKSJ's t with C - 1 df. 'all seeds': infinitely many seeds per "
        "condition, the ceiling only more conditions raise.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for r in plan.to_dict("records"):
        if isinstance(r["warning"], str):
            err_console.print(
                f"[yellow]warning:[/] {escape(r['a'])} vs {escape(r['b'])}: {escape(r['warning'])}",
                highlight=False,
                soft_wrap=True,
            )


def _plan_cell(key: str, x) -> str:
    if isinstance(x, str):
        return x
    if key in ("conditions_needed", "seeds_needed"):
        return "none suffices" if x != x else str(int(x))
    if key in ("conditions", "seeds"):
        return "-" if x is None or x != x else f"{x:g}"
    return _fmt(x, 2 if key.startswith("power") else 4)


def _fmt(x, digits: int = 4) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or p != p:
        return "-"
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


@app.command()
@user_errors
def reproduce(
    run_id: Annotated[str, typer.Argument(help="The MLflow run id of a (role, seed) run.")],
    tracking_uri: TrackingUri = None,
    device: Annotated[str | None, typer.Option(help="Override the run's device.")] = None,
) -> None:
    """Re-train a run from its logged config and teacher; compare final metrics."""
    from study.device import check_device
    from study.reproduce import reproduce_run
    from study.track import Tracker, check_writable

    check_device(device)
    check_writable(tracking_uri)
    result = reproduce_run(run_id, Tracker(tracking_uri), device=device)
    out = Table(title=f"{result.role} seed {result.seed}: run {run_id} vs {result.new_run_id}")
    for col in ("metric", "original", "reproduced", "difference"):
        out.add_column(col)
    for r in result.rows:
        a, b = r["original"], r["reproduced"]
        diff = "-" if a is None or b is None else f"{b - a:+.3g}"
        out.add_row(r["metric"], repr(a), repr(b), diff)
    _print_table(out)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if result.identical:
        console.print("identical: every final metric is bit-for-bit the same")
    else:
        console.print("NOT identical: see the differences above")
        raise typer.Exit(1)


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False) -> None:
    """The environment snapshot every run records, for this machine."""
    from study.determinism import environment, pip_freeze

    snapshot = {**environment(), "pip_freeze": pip_freeze()}
    if as_json:
        print(json.dumps(snapshot, indent=2))
        return
    out = Table(title="environment")
    out.add_column("what")
    out.add_column("value")
    for key, value in snapshot.items():
        if key == "packages":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key == "pip_freeze":
            value = f"{len(value)} distributions (--json lists them)"
        out.add_row(key, str(value))
    _print_table(out)


@app.command()
@user_errors
def bench(
    arch: Annotated[str, typer.Option(help="Architecture (default: the digits study's MLP).")] = (
        "mlp"
    ),
    arch_kwargs: Annotated[
        str | None, typer.Option("--arch-kwargs", help="JSON, e.g. '{\"depth\":28}'.")
    ] = None,
    dataset_shape: Annotated[
        str, typer.Option("--dataset-shape", help="digits, mnist, cifar10 or cifar100.")
    ] = "digits",
    batch: Annotated[int, typer.Option(help="Images per seed and step.")] = 64,
    steps: Annotated[int, typer.Option(help="Steps per timed epoch.")] = 30,
    repeats: Annotated[int, typer.Option(help="Timed epochs (after one warm-up).")] = 2,
    packs: Annotated[str, typer.Option(help="Pack sizes; 1 is train.py's loop.")] = "1,4,16",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    kd: Annotated[bool, typer.Option("--kd", help="Also time KD students.")] = False,
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    workers: Annotated[int, typer.Option(help="DataLoader workers of the reference.")] = 0,
    teacher_cache: Annotated[
        bool,
        typer.Option(
            "--teacher-cache/--no-teacher-cache",
            help="KD students on unaugmented shapes read cached teacher outputs; "
            "--no-teacher-cache times the teacher's forward pass in every step.",
        ),
    ] = True,
    deterministic: Annotated[
        bool | None,
        typer.Option(
            "--deterministic/--no-deterministic",
            help="Deterministic mode for the harness and packs (default: a study's default "
            "for the device: on for the CPU, off for a GPU); compare both to see its cost.",
        ),
    ] = None,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="Convolutional networks of the harness and packs in the channels-last "
            "memory format ([execution] channels_last); compare both to see what it pays.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
) -> None:
    """Time the plain PyTorch loop, the harness's loop and seed packs side by side."""
    from study.bench import BenchConfig, format_report, parse_arch_kwargs, parse_packs, run_bench

    kwargs = parse_arch_kwargs(arch_kwargs)
    if kwargs is None:
        kwargs = BenchConfig().arch_kwargs if arch == BenchConfig.arch else {}
    config = BenchConfig(
        arch=arch,
        arch_kwargs=kwargs,
        dataset_shape=dataset_shape,
        batch=batch,
        steps=steps,
        repeats=repeats,
        packs=parse_packs(packs),
        device=device,
        kd=kd,
        precision=precision,
        workers=workers,
        teacher_cache=teacher_cache,
        deterministic=deterministic,
        channels_last=channels_last,
    )
    say = (lambda text: None) if as_json else (lambda text: err_console.print(text))
    report = run_bench(config, progress=say)
    if as_json:
        print(report.to_json())
        return
    for line in format_report(report):
        console.print(line, highlight=False, soft_wrap=True)


PROGRESS_EVERY_S = 60.0
"""Without a terminal, a progress line this often while the study runs."""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _ProgressView:
    """Runs, epochs and an ETA, drawn with rich."""

    def __enter__(self) -> _ProgressView:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=not sys.stdout.isatty(),
            disable=not console.is_terminal,
        )
        self.progress.__enter__()
        self.runs = self.progress.add_task("runs", total=None)
        self.epochs = self.progress.add_task("epochs", total=None)
        self.done = 0
        # without a terminal (a log file: DVC, Slurm, CI) progress is a line now and then
        self.total_epochs, self.epochs_done, self.epochs_timed = 0, 0, 0
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.ticker = None
        if not console.is_terminal:
            self.ticker = threading.Thread(target=self._tick, daemon=True)
            self.ticker.start()
        return self

    def _tick(self) -> None:
        """Without a terminal: a progress line every PROGRESS_EVERY_S, epochs or not (a
        CIFAR epoch on a CPU, a teacher cache being filled, can take longer)."""
        while not self.stop.wait(PROGRESS_EVERY_S):
            if self.total_epochs:
                console.print(f"progress: {self._eta()}", highlight=False)

    def _eta(self) -> str:
        """Epochs done and the time left, from this process's pace (resumed epochs are
        done but took no time here)."""
        elapsed = time.monotonic() - self.started
        left = max(self.total_epochs - self.epochs_done, 0)
        eta = elapsed / self.epochs_timed * left if self.epochs_timed else None
        clock = "unknown" if eta is None else _clock(eta)
        done = f"epochs {self.epochs_done}/{self.total_epochs}"
        return f"{done}, {_clock(elapsed)} elapsed, ETA {clock}"

    def update(self, event) -> None:
        if event.kind == "start":
            self.progress.update(self.runs, total=event.total_runs)
            self.progress.update(self.epochs, total=event.total_epochs)
            self.total_epochs = event.total_epochs or 0
            if not console.is_terminal:
                console.print(
                    f"{event.total_runs} runs to train, {event.total_epochs} epochs in total"
                )
        elif event.kind == "epoch":
            self.progress.advance(self.epochs)
            self.epochs_done += 1
            self.epochs_timed += 1
        elif event.kind == "resumed":
            self.progress.advance(self.epochs, event.epoch or 0)
            self.epochs_done += event.epoch or 0
            console.print(f"{event.role} seed {event.seed}: resumed after epoch {event.epoch}")
        elif event.kind == "note":
            err_console.print(f"[yellow]{event.role} seed {event.seed}:[/] {escape(event.message)}")
        elif event.kind in ("done", "fail", "skip"):
            self.progress.advance(self.runs)
            self.done += 1
            desc = f"runs ({event.role} seed {event.seed})"
            self.progress.update(self.runs, description=desc)
            if not console.is_terminal and event.kind == "done":
                acc = event.metrics.get("test_acc")
                result = f": test_acc {acc:.4f}" if acc is not None else ""
                console.print(
                    f"[{self.done}] {event.role} seed {event.seed}{result} ({self._eta()})",
                    highlight=False,
                )

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        self.progress.__exit__(*exc)


if __name__ == "__main__":  # pragma: no cover
    app()
