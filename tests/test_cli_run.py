"""The training commands' edges: devices and executors refused before the tracker is
touched, SIGTERM handled as Ctrl-C, help text that shows what it names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from study.cli import app
from tests.conftest import TINY_PROTOCOL
from tests.test_resume import PROTOCOL, STEPS_PER_EPOCH, _runs, study

runner = CliRunner()


@pytest.mark.parametrize(
    "args,protocol_change,field,words",
    [
        (["--device", "tpu"], None, "--device", "allowed: auto, cpu, cuda, cuda:N"),
        (["--executor", "foo"], None, "--executor", "allowed: local, slurm, slurm-local"),
        (["--device", "cuda:99"], None, "--device", "cuda"),
        ([], ('device = "cpu"', 'device = "cuda:99"'), "train.device", "cuda"),
    ],
)
def test_a_device_or_executor_this_machine_lacks_exits_2_before_the_tracker(
    workdir: Path, args, protocol_change, field, words
) -> None:
    text = TINY_PROTOCOL if protocol_change is None else TINY_PROTOCOL.replace(*protocol_change)
    (workdir / "tiny.toml").write_text(text)
    res = runner.invoke(app, ["run", "tiny.toml", *args], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert f"field '{field}'" in res.output and words in res.output
    assert not (workdir / "mlflow.db").exists()  # nothing half-written in the tracker


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_machine_without_one_is_refused_for_tune_too(workdir: Path) -> None:
    tune = '\n[tune]\narm = "kd"\ntemperature = { low = 1.0, high = 8.0 }\ntrials = 2\nseeds = 1\n'
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL + tune)
    res = runner.invoke(app, ["tune", "tiny.toml", "--device", "cuda"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert "no usable CUDA device" in res.output
    assert not (workdir / "mlflow.db").exists() and not list(workdir.glob("optuna*"))


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_rerun_resumes(tmp_path: Path) -> None:
    """What Slurm sends at a time limit or a preemption: runs KILLED, not left RUNNING."""
    (tmp_path / "p.toml").write_text(PROTOCOL)
    step = 4 * STEPS_PER_EPOCH * 2 + STEPS_PER_EPOCH + 3  # student seed 0, epoch 2
    proc = study(tmp_path, "run", "p.toml", "--no-report", fault=f"{step}:TERM")
    assert proc.returncode == 143, proc.stderr
    assert "again: a run resumes from its last checkpoint" in proc.stderr
    runs = _runs(tmp_path)
    assert runs[("ban/gen1", "0")].info.status == "KILLED"
    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "resumed after epoch 1" in proc.stdout
    assert {r.info.status for r in _runs(tmp_path).values()} == {"FINISHED"}


def test_help_shows_section_names_in_brackets() -> None:
    res = runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "Search the [tune] ranges" in res.output


def test_without_a_terminal_each_finished_run_says_epochs_done_and_eta(
    workdir: Path, monkeypatch
) -> None:
    """Under DVC, Slurm or CI the output is a log file: it still says how far and how long,
    at each finished run and on a clock (here every 50 ms instead of every minute)."""
    import study.cli.progress

    monkeypatch.setattr(study.cli.progress, "PROGRESS_EVERY_S", 0.05)
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    res = runner.invoke(app, ["run", "tiny.toml", "--no-report"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    done = [line for line in res.output.splitlines() if line.startswith("[")]
    assert len(done) == 15  # 5 roles x 3 seeds, ensembles included
    assert all("ETA" in line and "elapsed" in line for line in done)
    assert "epochs 24/24" in done[-1] and "ETA 0:00:00" in done[-1]  # 4 trained roles x 2 x 3
    ticks = [line for line in res.output.splitlines() if line.startswith("progress: epochs ")]
    assert ticks and all("/24, " in line and "ETA" in line for line in ticks)


def test_reading_commands_refuse_a_missing_store_and_create_none(workdir: Path) -> None:
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    for verb in ("report", "export", "status"):
        res = runner.invoke(app, [verb, "tiny.toml"], env={"COLUMNS": "300"})
        assert res.exit_code == 2, res.output
        assert "no MLflow store at" in res.output and "run 'study run' here first" in res.output
    assert not (workdir / "mlflow.db").exists()


def test_a_foreign_sqlite_file_is_not_taken_over_as_the_store(workdir: Path) -> None:
    import sqlite3

    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    with sqlite3.connect(workdir / "mlflow.db") as db:
        db.execute("CREATE TABLE notes (x)")
    for verb in ("run", "status", "report"):
        res = runner.invoke(app, [verb, "tiny.toml"], env={"COLUMNS": "300"})
        assert res.exit_code == 2, res.output
        assert "is an SQLite database but not an MLflow store (its tables: notes)" in res.output
    with sqlite3.connect(workdir / "mlflow.db") as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("notes",)]


@pytest.mark.parametrize("blocked", ["results", "reports"])
def test_outputs_that_cannot_be_written_stop_the_run_before_it_trains(
    workdir: Path, blocked: str
) -> None:
    """A read-only working directory stopped `study run` with a traceback after training
    (the run index and the report come last). A file where the folder must go stands in
    for it here: the tests run as root, whom permissions do not stop."""
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    (workdir / blocked).write_text("not a folder")
    res = runner.invoke(app, ["run", "tiny.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert f"cannot write the {'report' if blocked == 'reports' else 'run index'}" in res.output
    assert f"{workdir / blocked / 'tiny'}" in res.output
    assert not (workdir / "mlflow.db").exists()  # nothing trained, nothing tracked
    if blocked == "results":
        return
    (workdir / blocked).unlink()
    assert runner.invoke(app, ["run", "tiny.toml", "--no-report"]).exit_code == 0
    (workdir / blocked).write_text("not a folder")
    res = runner.invoke(app, ["report", "tiny.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "cannot write the report" in res.output, res.output


def test_a_report_needs_runs_of_this_protocol_and_an_export_made_from_it(workdir: Path) -> None:
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    assert runner.invoke(app, ["run", "tiny.toml", "--no-report"]).exit_code == 0
    assert runner.invoke(app, ["export", "tiny.toml"]).exit_code == 0
    # the same study with another learning rate: every fingerprint differs
    (workdir / "changed.toml").write_text(TINY_PROTOCOL.replace("lr = 0.05", "lr = 0.04"))
    res = runner.invoke(
        app, ["report", "changed.toml", "--export", "results/tiny"], env={"COLUMNS": "300"}
    )
    assert res.exit_code == 2, res.output
    assert "does not match this protocol: 15 of 15" in res.output
    res = runner.invoke(app, ["report", "changed.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "no run in" in res.output, res.output
    assert not (workdir / "reports").exists()
    res = runner.invoke(app, ["report", "tiny.toml", "--from-export"])
    assert res.exit_code == 0, res.output
    full = (workdir / "reports" / "tiny" / "report.md").read_text()
    # The same study planned with two of its three seeds: the export's third seed is left
    # out, as collecting from the tracker leaves it out, and the note says so.
    (workdir / "two.toml").write_text(TINY_PROTOCOL.replace("seeds = 3", "seeds = [0, 1]"))
    res = runner.invoke(
        app, ["report", "two.toml", "--export", "results/tiny"], env={"COLUMNS": "300"}
    )
    assert res.exit_code == 0, res.output
    assert (
        "holds 5 run(s) this protocol does not plan (ban/ens2 seed 2; ban/gen1 seed 2;"
        in res.output
    )
    from_export = (workdir / "reports" / "tiny" / "report.md").read_text()
    assert runner.invoke(app, ["report", "two.toml"]).exit_code == 0
    from_tracker = (workdir / "reports" / "tiny" / "report.md").read_text()
    assert _numbers(from_export) == _numbers(from_tracker) != _numbers(full)


def _numbers(report: str) -> list[str]:
    """The report's figures, without the lines naming where they came from."""
    import re

    lines = [line for line in report.splitlines() if "export" not in line and "MLflow" not in line]
    return re.findall(r"-?\d+\.\d+", "\n".join(lines))


def test_reproduce_trains_where_the_run_trained_and_tags_what_it_did(workdir: Path) -> None:
    """Without --device the run's own device; one this machine lacks falls back with a
    note. The new run's tags describe the new run, the original's values kept beside."""
    from mlflow.tracking import MlflowClient

    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    assert runner.invoke(app, ["run", "tiny.toml", "--no-report"]).exit_code == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    [run] = client.search_runs(
        [exp.experiment_id], "tags.role = 'ban/gen1' and tags.seed = '1'", max_results=5
    )
    assert run.data.tags["pack_size"] == "3"  # auto: the three MLP seeds in one pack
    client.set_tag(run.info.run_id, "device", "cuda:7")  # as if trained on a GPU host
    res = runner.invoke(app, ["reproduce", run.info.run_id], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "trained on cuda:7, which this machine lacks" in res.output
    scratch = client.get_experiment_by_name("tiny-reproduce")
    [again] = client.search_runs([scratch.experiment_id])
    tags = again.data.tags
    assert (tags["device"], tags["original_device"]) == ("cpu", "cuda:7")
    assert tags["pack_size"] == "3" and "original_pack_size" not in tags  # as it trained
    assert "re-trained in a pack of 3 as the run was (seed 1 and filler seeds 0, 2" in res.output
    assert tags["data_identity"] == run.data.tags["data_identity"]
    assert "original_data_identity" not in tags and tags["reproduces"] == run.info.run_id


def test_a_study_whose_runs_all_failed_still_gets_its_report(workdir: Path, monkeypatch) -> None:
    """The report of a diverged study is where the failure reasons are: not refused."""
    from study import hooks
    from tests.faults import diverge_seeds

    monkeypatch.setattr(hooks, "seed_losses", [diverge_seeds([0, 1, 2])])
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    res = runner.invoke(app, ["run", "tiny.toml", "--no-report"])
    assert res.exit_code == 1, res.output  # every teacher failed, the rest skipped
    res = runner.invoke(app, ["report", "tiny.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "FAILED" in (workdir / "reports" / "tiny" / "report.md").read_text()


def test_sigterm_stops_any_command_with_143(workdir: Path) -> None:
    import os
    import signal

    import typer

    import study.cli

    @study.cli.user_errors
    def slow() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    study.cli.process_settings()  # what the CLI does before any command
    with pytest.raises(typer.Exit) as stopped:
        slow()
    assert stopped.value.exit_code == 143


def test_a_network_the_data_cannot_feed_exits_2_before_the_tracker(workdir: Path) -> None:
    """densenet121 needs 8x8 images at least: the digits are 8x8, so image_size = 4 is
    refused when the data is known, naming the arm, before anything trains or is tracked."""
    text = TINY_PROTOCOL.replace(
        'name = "kd"\narch = "mlp"\nkwargs = { hidden = [16] }',
        'name = "kd"\narch = "densenet121"\nkwargs = {}',
    ).replace('augmentation = "none"', 'augmentation = "none"\nimage_size = 4')
    (workdir / "tiny.toml").write_text(text)
    res = runner.invoke(app, ["run", "tiny.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert "field 'arms[1] ('kd').image_size'" in res.output and ">= 8" in res.output
    assert not (workdir / "mlflow.db").exists()


def test_a_file_the_system_refuses_is_a_message_and_exit_2_not_a_traceback(capsys) -> None:
    import errno

    import typer

    from study.cli import user_errors

    @user_errors
    def writes() -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", "results/tiny/run.json")

    @user_errors
    def breaks() -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")  # a bug: not hidden

    with pytest.raises(typer.Exit) as stop:
        writes()
    assert stop.value.exit_code == 2
    assert "error: Read-only file system: results/tiny/run.json" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        breaks()


def test_a_table_printed_into_a_pipe_is_not_cut_to_80_columns(tmp_path: Path) -> None:
    """Rich renders 80 columns into a pipe or file: p-values came out as '5.0e…'."""
    import os
    import subprocess
    import sys

    rows = ["group,seed,value"] + [
        f"{g},{s},{0.9 + 0.01 * s + (0.02 if g == 'distilled_student' else 0)}"
        for g in ("baseline_teacher", "distilled_student")
        for s in range(6)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli", "compare", "t.csv", "--test", "wilcoxon"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[: proc.stdout.index("\n\n")] if "\n\n" in proc.stdout else proc.stdout
    assert "…" not in table and "distilled_student" in table and "baseline_teacher" in table
    assert "0.031" in table  # the exact Wilcoxon p of 6 seeds all one way, 2/64, in full


def test_progress_lines_into_a_pipe_are_one_line_each(workdir: Path) -> None:
    """`study run | tee log`: each progress line whole, not wrapped at 80 columns into
    '... ETA' and '0:00:35)' (rich's width without a terminal)."""
    import os
    import subprocess
    import sys

    (workdir / "tiny.toml").write_text(TINY_PROTOCOL)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli", "run", "tiny.toml", "--no-report"],
        cwd=workdir,
        env=env,
        capture_output=True,  # pipes, not a terminal
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    done = [line for line in lines if line.startswith("[")]
    assert len(done) == 15
    assert all(line.endswith(")") and "ETA 0:" in line for line in done)
    assert max(len(line) for line in done) > 80  # long enough that rich would have wrapped
    summary = [line for line in lines if line.startswith("trained 15 runs")]
    assert len(summary) == 1 and summary[0].rstrip().split()[-2:-1] == ["run"]
    assert not any(line.startswith(("0:", "ETA")) for line in lines)  # no broken tails


def test_help_names_arguments_plainly_and_summarises_commands_in_full() -> None:
    from study.cli import COMMANDS, summary

    res = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    listing = " ".join(res.output.split("Commands:")[1].split())
    assert "..." not in listing.replace("test_nll, ...)", "")  # the one "..." of the text
    for name, command in COMMANDS.items():
        assert f"{name} {summary(command)}" in listing
    for command, metavar in (("compare", "TABLE"), ("run", "PROTOCOL"), ("reproduce", "RUN_ID")):
        text = runner.invoke(app, [command, "--help"], prog_name="study").output
        assert f"Usage: study {command} [OPTIONS] {metavar}\n" in text and "{" not in text
