"""Commands about runs and this machine: reproduce, env and bench."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from study.cli.terminal import (
    TrackingUri,
    check_device,
    console,
    err_console,
    print_table,
    user_errors,
)
from study.errors import UserInputError


@user_errors
def reproduce(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN_ID", help="The MLflow run id of a (role, seed) run.")
    ],
    tracking_uri: TrackingUri = None,
    device: Annotated[str | None, typer.Option(help="Override the run's device.")] = None,
) -> None:
    """Re-train a run from its logged config and teacher; compare final metrics."""
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
    print_table(out)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if result.identical:
        console.print("identical: every final metric is bit-for-bit the same")
    else:
        console.print("NOT identical: see the differences above")
        raise typer.Exit(1)


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
    print_table(out)


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
    diagnostics: Annotated[
        bool,
        typer.Option(
            "--diagnostics/--no-diagnostics",
            help="The KD students' dark-knowledge diagnostics, on as in a study; "
            "--no-diagnostics times the students without them.",
        ),
    ] = True,
    diagnostics_cost: Annotated[
        bool,
        typer.Option(
            "--diagnostics-cost",
            help="Instead of the variants: the distillation student's step with the "
            "diagnostics off and on in adjacent epochs (four trainings of 30 pairs of "
            "epochs per loss, kd and dkpp, and pack size; every second one times the "
            "diagnostics' calls), and their share of the step.",
        ),
    ] = False,
    control: Annotated[
        bool,
        typer.Option(
            "--control",
            help="With --diagnostics-cost: the diagnostics off in both epochs of each "
            "pair, the measurement's noise floor on this machine (shares around 0).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine output.")] = False,
) -> None:
    """Time the plain PyTorch loop, the harness's loop and seed packs side by side."""
    from study import bench as harness
    from study.bench import BenchConfig, format_report, parse_arch_kwargs, parse_packs, run_bench

    if control and not diagnostics_cost:
        raise UserInputError("--control goes with --diagnostics-cost (it sets how that runs)")
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
        diagnostics=diagnostics,
    )
    say = (lambda text: None) if as_json else (lambda text: err_console.print(text))
    if diagnostics_cost:
        costs = harness.diagnostics_cost(config, progress=say, control=control)
        for line in harness.format_diagnostics_cost(costs):
            console.print(line, highlight=False, soft_wrap=True)
        return
    report = run_bench(config, progress=say)
    if as_json:
        print(report.to_json())
        return
    for line in format_report(report):
        console.print(line, highlight=False, soft_wrap=True)
