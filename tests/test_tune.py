"""`study tune`: trials on the validation split, pruning, resuming, several workers, and
`study run` using the tuned values. End to end in real subprocesses where the behaviour
is about processes (interruption, concurrency); in-process where it is about input."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from study.claims import process_space
from study.cli import app
from study.errors import UserInputError
from study.execute import load_study_data
from study.plan import expand, load_tuned, tuned_values, tuning_hash
from study.protocol import parse_protocol
from study.track import Tracker
from study.trials import fail_orphaned_trials, resolve_storage
from study.trials import settle_trial_runs as _settle_trial_runs
from study.tune import optuna_study_name, plan_tuning, trial_role
from tests.conftest import interruptible

STUDY = "tiny"

# A wide lr range makes bad trials obvious early: with the median pruner (2 start-up
# trials for a budget of 6) and sampler seed 0, trial 5 is pruned in its first epoch.
TUNE_PROTOCOL = """
[study]
name = "tiny"
seeds = 2

[data]
dataset = "digits"
val_size = 0.15
augmentation = "none"

[train]
epochs = 3
batch_size = 256
lr = 0.05
nesterov = true
schedule = "cosine"
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [16] }

[[arms]]
name = "kd"
arch = "mlp"
kwargs = { hidden = [16] }
loss = { name = "kd", temperature = 4.0, alpha = "tuned" }

[tune]
arm = "kd"
alpha = { low = 0.0, high = 1.0 }
lr = { low = 0.001, high = 1.0, log = true }
metric = "val_acc"
trials = 6
seeds = 2
sampler_seed = 0
pruner = "median"
"""


OPTUNA_STUDY = optuna_study_name(parse_protocol(textwrap.dedent(TUNE_PROTOCOL)))


def _write_protocol(where: Path, text: str = TUNE_PROTOCOL) -> Path:
    path = where / "tiny.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _tune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.cli", "tune", "tiny.toml", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _popen(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", "tune", "tiny.toml", *args],
        cwd=cwd,
        env=_env(),
        preexec_fn=interruptible,  # Ctrl-C works even when pytest runs as a background job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _journal(cwd: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cwd / "optuna-journal.log"))
    )


def _trials(cwd: Path, name: str = OPTUNA_STUDY) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=_journal(cwd)).get_trials()


def _mlflow_runs(cwd: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _tuning_runs(cwd: Path):
    runs = _mlflow_runs(cwd)
    parents = [r for r in runs if r.data.tags.get("kind") == "tuning"]
    trials = [r for r in runs if r.data.tags.get("kind") == "trial"]
    return parents, trials


# -- one finished tuning study, shared by the tests that read it ---------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("tune")
    _write_protocol(cwd)
    proc = _tune(cwd, "--trials", "6")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return cwd, proc


def test_tune_runs_the_requested_trials_and_prunes_bad_ones(tuned) -> None:
    cwd, proc = tuned
    trials = _trials(cwd)
    assert sorted(t.number for t in trials) == list(range(6))
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states
    assert re.search(r"trial 5: pruned .*6/6 finished; ETA", proc.stdout), proc.stdout
    assert "best val_acc" in proc.stdout


def test_each_trial_is_a_nested_mlflow_run_without_test_metrics(tuned) -> None:
    cwd, _ = tuned
    parents, trial_runs = _tuning_runs(cwd)
    assert len(parents) == 1
    parent = parents[0]
    tags = parent.data.tags
    assert tags["study"] == STUDY and tags["arm"] == "kd" and tags["generation"] == "1"
    assert tags["optuna_study"] == OPTUNA_STUDY
    assert tags["storage"] == str(cwd / "optuna-journal.log")
    assert parent.info.status == "FINISHED"
    assert len(trial_runs) == 6
    by_number = {t.number: t for t in _trials(cwd)}
    status = {"complete": "FINISHED", "pruned": "KILLED", "fail": "FAILED"}
    for run in trial_runs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "fingerprint" not in run.data.tags  # never taken for a (role, seed) run
        trial = by_number[int(run.data.tags["trial_number"])]
        assert run.data.tags["trial_state"] == trial.state.name.lower()
        assert run.info.status == status[run.data.tags["trial_state"]]
        assert float(run.data.params["alpha"]) == pytest.approx(trial.params["alpha"])
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert "val_acc" in run.data.metrics and "objective" in run.data.metrics
        assert not [k for k in run.data.metrics if k.startswith("test_")]
    # per-epoch validation metrics at steps (seed index x epochs + epoch)
    complete = next(r for r in trial_runs if r.data.tags["trial_state"] == "complete")
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(complete.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]


def test_tuned_json_holds_the_best_values_and_the_history(tuned) -> None:
    cwd, _ = tuned
    result = json.loads((cwd / "results" / STUDY / "tuned.json").read_text())
    trials = _trials(cwd)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    assert result["arm"] == "kd" and result["generation"] == 1
    assert result["metric"] == "val_acc" and result["direction"] == "maximize"
    assert result["split"] == "validation"
    assert result["best_params"] == best.params and result["best_value"] == best.value
    assert result["n_trials"] == 6
    by_state = result["n_trials_by_state"]
    assert by_state["complete"] == len(complete) and by_state["pruned"] >= 1
    assert result["storage"] == str(cwd / "optuna-journal.log")
    assert result["optuna_study"] == OPTUNA_STUDY
    assert result["sampler_seed"] == 0 and result["seeds"] == [1000, 1001]
    assert result["date"].endswith("+00:00")
    assert [h["number"] for h in result["history"]] == list(range(6))
    assert {h["state"] for h in result["history"]} >= {"complete", "pruned"}
    assert set(result["importances"]) == {"alpha", "lr"}
    assert result["config_hash"] == tuning_hash(parse_protocol(TUNE_PROTOCOL))
    assert result["optuna_study"].endswith("-" + result["config_hash"][:12])
    assert result["data_identity"] == load_study_data(parse_protocol(TUNE_PROTOCOL)).identity
    assert load_tuned(parse_protocol(TUNE_PROTOCOL), cwd / "results") == result


def test_study_run_uses_the_tuned_value(tuned, monkeypatch) -> None:
    cwd, _ = tuned
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    best = json.loads((cwd / "results" / STUDY / "tuned.json").read_text())["best_params"]
    shown = CliRunner().invoke(app, ["validate", "tiny.toml"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and f"alpha={best['alpha']}" in shown.output
    done = CliRunner().invoke(app, ["run", "tiny.toml", "--no-report"])
    assert done.exit_code == 0, done.output
    kd = [r for r in _mlflow_runs(cwd) if r.data.tags.get("role") == "kd/gen1"]
    assert sorted(int(r.data.tags["seed"]) for r in kd) == [0, 1]
    assert {float(r.data.params["loss_params.alpha"]) for r in kd} == {best["alpha"]}
    protocol = parse_protocol(TUNE_PROTOCOL)
    identity = load_study_data(protocol).identity
    wanted = expand(protocol, tuned=best).fingerprints(identity)
    assert {r.data.tags["fingerprint"] for r in kd} == {wanted[("kd/gen1", s)] for s in (0, 1)}


# -- interruption and concurrency ----------------------------------------------------------


def test_interrupted_tune_continues_the_same_study(tmp_path) -> None:
    _write_protocol(tmp_path)
    first = _popen(tmp_path, "--trials", "3")
    for line in first.stdout:
        if "1/3 finished" in line:
            break
    first.send_signal(signal.SIGINT)  # Ctrl-C, during trial 1 (or between trials)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "run 'study tune tiny.toml' again" in err
    assert "Traceback" not in err and "locked" not in err, err
    before = _trials(tmp_path)
    assert len(before) in (1, 2)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in before)
    parents, trial_runs = _tuning_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(trial_runs) == len(before)
    assert "RUNNING" not in {r.info.status for r in trial_runs}

    second = _tune(tmp_path, "--trials", "3")
    assert second.returncode == 0, second.stderr
    assert f"{len(before)}/3 trials already finished" in second.stdout
    after = _trials(tmp_path)
    assert sorted(t.number for t in after) == [0, 1, 2]  # numbers continue, total = 3
    assert [t.params for t in after[: len(before)]] == [t.params for t in before]
    parents, trial_runs = _tuning_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs) == [0, 1, 2]


@pytest.mark.parametrize("calls", [34, 35, 41])
def test_an_interrupt_after_any_tracker_call_leaves_each_trial_one_ended_run(tmp_path, calls):
    """SIGINT right after the N-th call to the tracker returns (N: as the parent run is
    created, as trial 0 is reserved, as trial 1 is): the parent run was left RUNNING when
    the interrupt came right after its creation, and a trial reserved in Optuna could have
    no MLflow run, or one left RUNNING. Now every trial has one run, ended, and nothing is
    RUNNING."""
    from tests.faults import command

    _write_protocol(tmp_path)
    proc = subprocess.run(
        command("tune", "tiny.toml", "--trials", "3", signal_after_tracker_calls=f"{calls}:INT"),
        cwd=tmp_path, env=_env(), preexec_fn=interruptible, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "locked" not in proc.stderr
    parents, trial_runs = _tuning_runs(tmp_path)
    numbers = sorted(int(r.data.tags["trial_number"]) for r in trial_runs)
    assert numbers == sorted(t.number for t in _trials(tmp_path))
    assert "RUNNING" not in {r.info.status for r in _mlflow_runs(tmp_path)}


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path) -> None:
    _write_protocol(tmp_path)
    workers = [_popen(tmp_path, "--trials", "4") for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        assert "Traceback" not in err and "locked" not in err
    trials = _trials(tmp_path)
    assert sorted(t.number for t in trials) == list(range(4))
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both took part
    assert len({tuple(t.params.values()) for t in trials}) == 4  # no draw repeated
    parents, trial_runs = _tuning_runs(tmp_path)
    assert len(parents) == 1
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs) == list(range(4))
    teachers = [r for r in _mlflow_runs(tmp_path) if r.data.tags.get("role") == "teacher"]
    assert sorted(int(r.data.tags["seed"]) for r in teachers) == [1000, 1001]  # trained once


def _interrupting_script(where: Path, signal_name: str = "SIGINT") -> Path:
    """`python script.py tune tiny.toml`: `study tune` that sends itself Ctrl-C while a
    write to the MLflow store is open: the second metrics INSERT after the first trial has
    ended (with log_every_s = 0, the first epoch of trial 1). A signal arriving there is
    what a user's Ctrl-C hits most of the time when epochs are short."""
    script = where / "interrupt_in_a_write.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, sys
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            state = {"armed": False, "inserts": 0}

            @event.listens_for(Engine, "after_cursor_execute")
            def interrupt(conn, cursor, statement, parameters, context, executemany):
                if statement.startswith("INSERT INTO tags") and "trial_state" in repr(parameters):
                    state["armed"] = True  # a trial has ended
                elif state["armed"] and statement.startswith("INSERT INTO metrics"):
                    state["inserts"] += 1
                    if state["inserts"] == 2:
                        os.kill(os.getpid(), signal.SIGNAL)  # inside this write's transaction

            from study.cli import app
            sys.argv = ["study", *sys.argv[1:]]
            app()
            """
        ).replace("SIGNAL", signal_name)
    )
    return script


@pytest.mark.parametrize("signal_name,status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_in_a_tracker_write_ends_the_trial_and_parent_runs_killed(
    tmp_path, signal_name, status
) -> None:
    """Ctrl-C, or SIGTERM (a scheduler's time limit), inside a write to the store."""
    text = textwrap.dedent(TUNE_PROTOCOL).replace('pruner = "median"', 'pruner = "none"')
    _write_protocol(tmp_path, text + "\n[execution]\nlog_every_s = 0\n")
    script = _interrupting_script(tmp_path, signal_name)
    proc = subprocess.run(
        [sys.executable, str(script), "tune", "tiny.toml", "--trials", "3"],
        cwd=tmp_path,
        env=_env(),
        preexec_fn=interruptible,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == status, proc.stderr
    assert "run 'study tune tiny.toml' again" in proc.stderr
    assert "locked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "trial 0: complete" in proc.stdout
    name = optuna_study_name(parse_protocol(text))
    states = {t.number: t.state for t in _trials(tmp_path, name)}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.FAIL}
    parents, trial_runs = _tuning_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    by_number = {int(r.data.tags["trial_number"]): r for r in trial_runs}
    assert by_number[0].info.status == "FINISHED"
    assert by_number[1].info.status == "KILLED"
    assert by_number[1].data.tags["trial_state"] == "fail"
    assert by_number[1].data.tags["failure"] == "interrupted"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.get_metric_history(by_number[1].info.run_id, "val_acc")
    assert [m.step for m in logged] == [1]  # the epoch it trained is kept


def test_a_rerun_ends_the_trial_runs_a_dead_worker_left_running(tmp_path) -> None:
    protocol = parse_protocol(TUNE_PROTOCOL)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tuning = plan_tuning(protocol, storage=str(tmp_path / "j.log"), tracking_uri=uri)
    study = optuna.create_study(study_name=tuning.study_name, storage=tuning.storage.open())
    for state in (TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL):
        trial = study.ask()
        if state != TrialState.RUNNING:
            study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(STUDY)
    workers = [f"{process_space()}:{dead}"] * 3 + [f"{process_space()}:{os.getpid()}"]
    runs = [
        tracker.start_run(
            exp_id,
            parent_id=None,
            name=f"trial {n}",
            tags={"kind": "trial", "optuna_study": tuning.study_name, "trial_number": n,
                  "worker": worker},
        )
        for n, worker in enumerate(workers)
    ]  # fmt: skip
    ended = _settle_trial_runs(tuning, tracker, exp_id, study)
    assert ended == [runs[0], runs[1]] or sorted(ended) == sorted(runs[:2])
    status = [tracker.run_record(r)["status"] for r in runs]
    # failed -> KILLED, complete -> FINISHED; Optuna's RUNNING trial is left to
    # fail_orphaned_trials, and a live worker's run to that worker
    assert status == ["KILLED", "FINISHED", "RUNNING", "RUNNING"]
    assert tracker.run_record(runs[0])["tags"]["trial_state"] == "fail"


# -- a tuning study is tied to what determines its trials ----------------------------------


def test_a_changed_tune_section_starts_a_new_study_and_an_unchanged_one_resumes(
    tmp_path,
) -> None:
    text = textwrap.dedent(TUNE_PROTOCOL).replace('pruner = "median"', 'pruner = "none"')
    _write_protocol(tmp_path, text)
    first = _tune(tmp_path, "--trials", "2")
    assert first.returncode == 0, first.stderr
    result = tmp_path / "results" / STUDY / "tuned.json"
    old = json.loads(result.read_text())

    narrow = text.replace("alpha = { low = 0.0, high = 1.0 }", "alpha = { low = 0.9, high = 0.95 }")
    _write_protocol(tmp_path, narrow)
    stale = subprocess.run(
        [sys.executable, "-m", "study.cli", "run", "tiny.toml", "--no-report"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stale.returncode == 2  # the old result does not answer for the new ranges
    assert "tuned.json is for another tuning config" in stale.stderr
    second = _tune(tmp_path, "--trials", "2")
    assert second.returncode == 0, second.stderr
    assert "already finished" not in second.stdout
    assert "this run: 2 trials" in second.stdout
    new = json.loads(result.read_text())
    assert new["config_hash"] != old["config_hash"]
    assert new["optuna_study"] == optuna_study_name(parse_protocol(narrow)) != old["optuna_study"]
    assert new["n_trials"] == 2
    assert 0.9 <= new["best_params"]["alpha"] <= 0.95
    assert all(0.9 <= h["params"]["alpha"] <= 0.95 for h in new["history"])
    assert len(_trials(tmp_path, old["optuna_study"])) == 2  # the old study is kept as it was

    before = result.read_bytes()
    again = _tune(tmp_path, "--trials", "2")
    assert again.returncode == 0, again.stderr
    assert "2/2 trials already finished" in again.stdout
    assert "this run: 0 trials" in again.stdout
    assert result.read_bytes() == before  # byte for byte: DVC sees no new result


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("alpha = { low = 0.0, high = 1.0 }", "alpha = { low = 0.0, high = 0.5 }"),
        ("seeds = 2\nsampler_seed = 0", "seeds = 3\nsampler_seed = 0"),
        ("sampler_seed = 0", "sampler_seed = 1"),
        ('pruner = "median"', 'pruner = "none"'),
        ('metric = "val_acc"', 'metric = "val_acc"\nepochs = 2'),
        ("[teacher]\narch = \"mlp\"\nkwargs = { hidden = [16] }",
         "[teacher]\narch = \"mlp\"\nkwargs = { hidden = [8] }"),
        ("batch_size = 256", "batch_size = 128"),
        ("val_size = 0.15", "val_size = 0.2"),
        ('loss = { name = "kd", temperature = 4.0,', 'loss = { name = "kd", temperature = 2.0,'),
    ],
    ids=["range", "seeds", "sampler-seed", "pruner", "epochs", "teacher", "recipe", "data",
         "loss"],
)  # fmt: skip
def test_a_tuning_result_of_another_config_is_not_used(
    tuned, workdir: Path, old: str, new: str
) -> None:
    cwd, _ = tuned
    (workdir / "results" / STUDY).mkdir(parents=True)
    (workdir / "results" / STUDY / "tuned.json").write_bytes(
        (cwd / "results" / STUDY / "tuned.json").read_bytes()
    )
    text = textwrap.dedent(TUNE_PROTOCOL)
    assert text.count(old) == 1, old
    changed = parse_protocol(text.replace(old, new))
    assert load_tuned(parse_protocol(text), workdir / "results") is not None
    assert load_tuned(changed, workdir / "results") is None
    assert tuned_values(changed, workdir / "results") is None
    _write_protocol(workdir, text.replace(old, new))
    result = CliRunner().invoke(app, ["run", "tiny.toml", "--no-report"])
    assert result.exit_code == 2, result.output
    assert "study tune tiny.toml" in " ".join(result.output.split())
    assert not (workdir / "mlflow.db").exists()


def test_a_tuning_result_holds_through_changes_that_do_not_touch_the_trials(tuned) -> None:
    cwd, _ = tuned
    text = textwrap.dedent(TUNE_PROTOCOL)
    best = json.loads((cwd / "results" / STUDY / "tuned.json").read_text())["best_params"]
    for old, new in [
        ("seeds = 2\n\n[data]", "seeds = 3\ndescription = 'more seeds'\n\n[data]"),
        ("trials = 6", "trials = 12"),  # the budget: a larger one tops the study up
        ('device = "cpu"', 'device = "auto"'),
    ]:
        assert text.count(old) == 1, old
        assert tuned_values(parse_protocol(text.replace(old, new)), cwd / "results") == best
    without = parse_protocol(text[: text.index("[tune]")].replace('alpha = "tuned"', "alpha = 0.5"))
    assert load_tuned(without, cwd / "results") is None  # nothing ties the file to it


# -- refusals: exit 2 before anything is created -------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[: t.index("[tune]")], "no [tune] section"),
        (lambda t: t.replace("seeds = 2\nsampler", "seeds = [1, 1000]\nsampler"), "overlap"),
        (lambda t: t.replace("low = 0.0, high = 1.0", "low = 0.5, high = 0.5"), "empty"),
    ],
    ids=["no-tune-section", "overlapping-seeds", "empty-range"],
)
def test_tune_refuses_a_bad_tune_section_before_anything_is_created(
    workdir: Path, change, message: str
) -> None:
    _write_protocol(workdir, change(textwrap.dedent(TUNE_PROTOCOL)))
    result = CliRunner().invoke(app, ["tune", "tiny.toml"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "tiny.toml" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


def test_tune_refuses_a_storage_that_is_neither_url_nor_journal(workdir: Path) -> None:
    _write_protocol(workdir)
    result = CliRunner().invoke(app, ["tune", "tiny.toml", "--storage", "optuna.txt"])
    assert result.exit_code == 2 and "--storage" in result.output
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


def test_study_run_refuses_a_tuned_value_without_a_tuning_result(workdir: Path) -> None:
    _write_protocol(workdir)
    result = CliRunner().invoke(app, ["run", "tiny.toml"])
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "tiny.toml" in flat and "arms[0] ('kd').loss.alpha" in flat
    assert "study tune tiny.toml" in flat
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.toml"]


# -- the pieces ----------------------------------------------------------------------------


def test_expand_puts_tuned_numbers_into_fingerprints() -> None:
    protocol = parse_protocol(TUNE_PROTOCOL)
    pending = expand(protocol)
    assert pending.role("kd/gen1").loss_params["alpha"] == "tuned"
    with pytest.raises(UserInputError, match="study tune"):
        pending.require_trainable()
    a, b = expand(protocol, tuned={"alpha": 0.3}), expand(protocol, tuned={"alpha": 0.4})
    assert a.role("kd/gen1").loss_params == {"temperature": 4.0, "alpha": 0.3}
    a.require_trainable()
    assert a.fingerprints("d")[("kd/gen1", 0)] != b.fingerprints("d")[("kd/gen1", 0)]
    assert a.fingerprints("d")[("teacher", 0)] == b.fingerprints("d")[("teacher", 0)]
    with pytest.raises(UserInputError, match=r"loss\.alpha"):
        expand(protocol, tuned={"alpha": 1.5})  # outside the loss's range


def test_a_protocol_without_tuned_values_expands_as_before(tiny_protocol_text: str) -> None:
    protocol = parse_protocol(tiny_protocol_text)
    assert expand(protocol, tuned={"alpha": 0.1}).fingerprints("d") == expand(
        protocol
    ).fingerprints("d")


def test_default_storage_is_a_journal_file_beside_the_mlflow_database(tmp_path) -> None:
    journal = resolve_storage(None, f"sqlite:///{tmp_path}/mlflow.db")
    assert journal.journal and journal.url == str(tmp_path / "optuna-journal.log")
    database = resolve_storage(f"sqlite:///{tmp_path}/optuna.db", "http://mlflow:5000")
    assert not database.journal and database.url == f"sqlite:///{tmp_path}/optuna.db"
    remote = resolve_storage("postgresql://u@h/db", "http://mlflow:5000")
    assert remote.url == "postgresql://u@h/db" and remote.lock is None
    with pytest.raises(UserInputError, match="--storage"):
        resolve_storage("optuna.db", "sqlite:///mlflow.db")


def test_trial_role_applies_values_and_shortens_the_schedule() -> None:
    text = TUNE_PROTOCOL.replace('schedule = "cosine"', 'schedule = "multistep"\nmilestones = [2]')
    text = text.replace("epochs = 3", "epochs = 4")
    tuning = plan_tuning(parse_protocol(text), storage="x.log")
    role = trial_role(tuning.student, {"alpha": 0.25, "lr": 0.5}, epochs=2)
    assert role.loss_params == {"temperature": 4.0, "alpha": 0.25}
    assert role.train.lr == 0.5 and role.train.epochs == 2 and role.train.milestones == [1]
    assert [r.key for r in tuning.teachers.roles] == ["teacher"]
    assert list(tuning.teachers.seeds) == [1000, 1001]


def test_a_trial_left_running_by_a_dead_worker_is_failed() -> None:
    study = optuna.create_study()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    orphan, alive = study.ask(), study.ask()
    # a worker is recorded by its process space (host, boot id, PID namespace) and pid
    orphan.set_user_attr("worker", f"{process_space()}:{dead}")
    alive.set_user_attr("worker", f"{process_space()}:{os.getppid()}")
    assert fail_orphaned_trials(study) == [orphan.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.RUNNING}


def test_a_trial_of_another_container_with_our_host_name_is_not_failed() -> None:
    """Containers may share a host name; only host, boot id and PID namespace together say
    that a worker's pid is one of this machine's processes (the bug of a hostname-only
    check: another container's live trial, whose pid is free here, was failed)."""
    study = optuna.create_study()
    free_here = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    host, boot, namespace = process_space().split("/")
    other_namespace = f"{host}/{boot}/pid_[4026500000]"
    other_boot = f"{host}/0000dead/{namespace}"
    elsewhere = [study.ask() for _ in range(3)]
    elsewhere[0].set_user_attr("worker", f"{other_namespace}:{free_here}")
    elsewhere[1].set_user_attr("worker", f"{other_boot}:{free_here}")
    elsewhere[2].set_user_attr("worker", f"{socket.gethostname()}:{free_here}")  # host only
    dead_here = study.ask()
    dead_here.set_user_attr("worker", f"{process_space()}:{free_here}:tag")
    assert fail_orphaned_trials(study) == [dead_here.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert [states[t.number] for t in elsewhere] == [optuna.trial.TrialState.RUNNING] * 3


def test_a_tuned_value_without_a_result_says_why_the_file_gave_none(tmp_path, monkeypatch):
    from study.tuned import TUNED_FILE

    monkeypatch.chdir(tmp_path)
    protocol = parse_protocol(textwrap.dedent(TUNE_PROTOCOL))
    plan = expand(protocol)
    with pytest.raises(UserInputError) as none_yet:
        plan.require_trainable()
    assert (
        "no tuning result" in none_yet.value.message and "tuned.json" not in none_yet.value.message
    )
    path = tmp_path / "results" / protocol.study.name / TUNED_FILE
    path.parent.mkdir(parents=True)
    for written, words in [
        ({"config_hash": "another", "best_params": {"alpha": 0.5}}, "is for another tuning config"),
        ({"config_hash": tuning_hash(protocol), "best_params": {}}, "no trial of it completed"),
    ]:
        path.write_text(json.dumps(written))
        with pytest.raises(UserInputError) as stale:
            plan.require_trainable()
        assert words in stale.value.message, stale.value.message


def test_the_tuning_result_path_never_leaves_the_results_folder(tmp_path) -> None:
    from study.errors import UserInputError
    from study.tuned import tuned_path

    assert tuned_path("s", tmp_path) == tmp_path / "s" / "tuned.json"
    for name in ("..", "../elsewhere", "/etc"):
        with pytest.raises(UserInputError, match="not inside"):
            tuned_path(name, tmp_path)
