"""Crash, interrupt and resume: a resumed study ends bit for bit like an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.checkpoint import CheckpointSlot
from tests.conftest import interruptible
from tests.faults import command

PROTOCOL = """
[study]
name = "resume"
seeds = 2

[data]
dataset = "digits"
val_size = 0.15

[train]
epochs = 4
batch_size = 128
lr = 0.05
schedule = "multistep"
milestones = [2]
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [32], dropout = 0.2 }

[[arms]]
name = "ban"
loss = "dkpp"

[execution]
pack = 1                # seed by seed: the step counts below are one seed's
checkpoint_every_s = 0  # a checkpoint every epoch, so that a crash resumes mid-study
log_every_s = 3600      # per-epoch metrics wait for the run's end (or Ctrl-C): no race
"""
# digits: 1222 training images at batch 128 = 10 steps per epoch
STEPS_PER_EPOCH = 10


def study(cwd: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        command(*args, signal_after_steps=fault)
        if fault
        else [sys.executable, "-m", "study.cli", *args],
        cwd=cwd,
        env=env,
        preexec_fn=interruptible,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _runs(cwd: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id], "tags.fingerprint != ''", max_results=100)
    return {(r.data.tags["role"], r.data.tags["seed"]): r for r in runs}


def _final(runs: dict) -> dict:
    return {k: dict(r.data.metrics) for k, r in runs.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("clean")
    (cwd / "p.toml").write_text(PROTOCOL)
    proc = study(cwd, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    return cwd


def test_sigkill_mid_epoch_resumes_and_ends_bit_identical(tmp_path: Path, uninterrupted) -> None:
    (tmp_path / "p.toml").write_text(PROTOCOL)
    kill_step = 2 * STEPS_PER_EPOCH + 4  # teacher seed 0, in the middle of epoch 3
    proc = study(tmp_path, "run", "p.toml", "--no-report", fault=f"{kill_step}:KILL")
    assert proc.returncode == -signal.SIGKILL
    [killed] = _runs(tmp_path).values()
    assert killed.info.status == "RUNNING"  # a crash leaves no chance to say otherwise
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # per-epoch metrics are buffered (`log_every_s`): the crash came before a flush
    assert client.get_metric_history(killed.info.run_id, "val_acc") == []

    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "resumed after epoch 2" in proc.stdout
    runs = _runs(tmp_path)
    resumed = runs[("teacher", "0")]
    assert resumed.info.run_id == killed.info.run_id  # the same run, continued
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_epoch"] == "2"
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val_acc")]
    # epochs 1-2 come from the checkpoint's history (not trained again), 3-4 from training
    assert sorted(steps) == [1, 2, 3, 4]
    # bit for bit: every final metric of every run equals the uninterrupted study's
    assert _final(runs) == _final(_runs(uninterrupted))
    assert not any((tmp_path / "checkpoints").iterdir())  # finished runs clear checkpoints


def test_an_interrupted_run_with_no_checkpoint_to_resume_is_superseded_by_a_new_run(
    tmp_path: Path, uninterrupted
) -> None:
    """Its checkpoints came from a GPU (random streams a CPU cannot take): the training
    starts over in a new run, and the interrupted run, with the epochs it logged, is left
    KILLED and points to it. A run's epochs are one training's."""
    from tests.test_device_resume import _as_if_from_cuda, _rewrite

    (tmp_path / "p.toml").write_text(PROTOCOL)
    step = 2 * STEPS_PER_EPOCH + 4  # teacher seed 0, in the middle of epoch 3
    proc = study(tmp_path, "run", "p.toml", "--no-report", fault=f"{step}:INT")
    assert proc.returncode == 130, proc.stderr
    [interrupted] = _runs(tmp_path).values()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(interrupted.info.run_id, "val_acc")] == [
        1,
        2,
    ]
    [slot_dir] = (tmp_path / "checkpoints").iterdir()
    _rewrite(CheckpointSlot(slot_dir), _as_if_from_cuda)

    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "from cuda and cannot resume on cpu" in " ".join(proc.stderr.split())
    old = client.get_run(interrupted.info.run_id)
    assert old.info.status == "KILLED"
    new = client.get_run(old.data.tags["superseded_by"])
    assert new.info.status == "FINISHED" and "resumed_from_epoch" not in new.data.tags
    steps = [m.step for m in client.get_metric_history(new.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4]  # all four from the new training
    clean = _runs(uninterrupted)
    assert dict(new.data.metrics) == dict(clean[("teacher", "0")].data.metrics)


def test_ctrl_c_marks_the_run_killed_and_says_how_to_continue(
    tmp_path: Path, uninterrupted
) -> None:
    (tmp_path / "p.toml").write_text(PROTOCOL)
    step = 4 * STEPS_PER_EPOCH * 2 + STEPS_PER_EPOCH + 3  # student seed 0, epoch 2
    proc = study(tmp_path, "run", "p.toml", "--no-report", fault=f"{step}:INT")
    assert proc.returncode == 130, proc.stderr
    assert "again: a run resumes from its last checkpoint" in proc.stderr
    runs = _runs(tmp_path)
    assert runs[("ban/gen1", "0")].info.status == "KILLED"
    # Ctrl-C flushes the buffered per-epoch metrics: epoch 1 of the interrupted run is there
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed = runs[("ban/gen1", "0")].info.run_id
    assert [m.step for m in client.get_metric_history(killed, "val_acc")] == [1]
    assert runs[("teacher", "1")].info.status == "FINISHED"
    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "resumed after epoch 1" in proc.stdout
    assert _final(_runs(tmp_path)) == _final(_runs(uninterrupted))


def test_a_slot_is_due_every_epoch_or_once_its_interval_has_passed(tmp_path: Path) -> None:
    every_epoch = CheckpointSlot(tmp_path / "a")
    assert every_epoch.due()
    every_epoch.save({"epoch": 1})
    assert every_epoch.due()
    cadenced = CheckpointSlot(tmp_path / "b", interval_s=3600)
    assert not cadenced.due()  # the interval counts from when the slot was opened
    cadenced._last_save -= 3600
    assert cadenced.due()
    cadenced.save({"epoch": 1})
    assert not cadenced.due() and cadenced.load()["epoch"] == 1


def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    slot = CheckpointSlot(tmp_path / "fp")
    for epoch in (1, 2, 3):
        slot.save({"epoch": epoch, "payload": list(range(epoch))})
    assert sorted(p.name for p in slot.directory.glob("*.pt")) == [
        "epoch-00002.pt",
        "epoch-00003.pt",
    ]
    newest = slot.directory / "epoch-00003.pt"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    state = slot.load()
    assert state is not None and state["epoch"] == 2
    assert any("epoch-00003.pt is corrupt" in n for n in slot.notes)
    (slot.directory / "epoch-00002.pt").write_bytes(b"garbage")
    assert slot.load() is None
    assert any("starts over" in n for n in slot.notes)


def test_same_seed_in_two_processes_gives_identical_metrics(tmp_path: Path, uninterrupted) -> None:
    (tmp_path / "p.toml").write_text(PROTOCOL)
    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    again = _runs(tmp_path)
    assert _final(again) == _final(_runs(uninterrupted))
    assert all(r.data.tags["deterministic"] == "True" for r in again.values())


def test_reproduce_a_finished_run_reports_identical_metrics(uninterrupted: Path) -> None:
    run = _runs(uninterrupted)[("ban/gen1", "1")]
    proc = study(uninterrupted, "reproduce", run.info.run_id)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "identical: every final metric is bit-for-bit the same" in proc.stdout
    assert "test_acc" in proc.stdout and "teacher_kl" in proc.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{uninterrupted / 'mlflow.db'}")
    scratch = client.get_experiment_by_name("resume-reproduce")
    [again] = client.search_runs([scratch.experiment_id])
    assert again.data.tags["reproduces"] == run.info.run_id
    assert again.data.metrics["test_acc"] == run.data.metrics["test_acc"]


def test_env_prints_the_provenance_snapshot(tmp_path: Path) -> None:
    import json

    proc = study(tmp_path, "env", "--json")
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    for key in ("python", "torch", "cuda", "cudnn", "gpu", "cpu", "git_commit", "git_dirty"):
        assert key in snap
    assert snap["cuda_available"] is __import__("torch").cuda.is_available()
    assert any(line.startswith("torch==") for line in snap["pip_freeze"])


@pytest.mark.parametrize("pack", [1, 2])  # the loop, and a pack
def test_a_resumed_run_logs_the_epochs_its_checkpoint_had_and_mlflow_lacked_once(
    workdir: Path, monkeypatch, pack: int
) -> None:
    """Killed after a checkpoint was saved and before its epoch reached MLflow, a run
    resumes with that epoch missing from MLflow while later epochs are logged as they
    come: the epoch is logged from the checkpoint's history, and every epoch is there once."""
    from study.execute import run_study
    from study.plan import Plan, expand
    from study.protocol import parse_protocol
    from study.track import Tracker

    text = PROTOCOL.replace("pack = 1 ", f"pack = {pack} ")
    text = text.replace("log_every_s = 3600", "log_every_s = 0")  # an epoch is logged at once
    protocol = parse_protocol(text)
    full = expand(protocol)
    plan = Plan(protocol=protocol, roles=(full.role("teacher"),), seeds=full.seeds)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    real_save = CheckpointSlot.save

    def save_then_interrupt(self, state):
        real_save(self, state)
        if state["epoch"] == 2:  # the checkpoint is on disk; epoch 2 is not yet logged
            signal.raise_signal(signal.SIGINT)  # (a pack's commit holds it until it ends)

    monkeypatch.setattr(CheckpointSlot, "save", save_then_interrupt)
    # Python's Ctrl-C handler: a background job (CI's) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(protocol, Tracker(uri), plan=plan)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(CheckpointSlot, "save", real_save)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("resume")
    seen = []

    def progress(event) -> None:  # what MLflow holds while seed 0 trains on
        if event.kind == "epoch" and event.seed == 0 and event.epoch == 3:
            [run] = client.search_runs([exp.experiment_id], "tags.seed = '0'")
            seen.extend(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))

    summary = run_study(protocol, Tracker(uri), plan=plan, progress=progress)
    assert summary.trained == 2 and not summary.failed
    # epoch 2 was logged from the checkpoint before epoch 3 was trained, not at the end
    assert sorted(seen) == [1, 2, 3]
    runs = client.search_runs([exp.experiment_id], "tags.fingerprint != ''")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["seed"]: r.data.tags.get("resumed_from_epoch") for r in runs}["0"] == "2"
    for r in runs:
        for key in ("train_loss", "train_acc", "lr", "val_acc", "val_nll", "test_acc"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == [1, 2, 3, 4], (r.data.tags["seed"], key, steps)


def test_a_claim_of_a_process_gone_from_this_machine_is_not_waited_for() -> None:
    """After a crash (SIGKILL, the OOM killer) the rerun took the dead worker's claims only
    once their heartbeat was stale_after_s (5 min) old. A worker of this process space
    (host, boot, PID namespace) whose process is gone is dead now; anything it cannot tell
    (another host or namespace, a live PID) stays alive until its heartbeat goes stale."""
    import subprocess
    import sys

    from study.claims import dead_here as _dead_here
    from study.claims import process_space as _process_space

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    here = _process_space()
    assert _dead_here(f"{here}:{gone.stdout.strip()}:abcd1234")
    assert not _dead_here(f"{here}:{os.getpid()}:abcd1234")  # alive
    assert not _dead_here(f"other-host/{here.split('/', 1)[1]}:{gone.stdout.strip()}:x")
    assert not _dead_here(f"{here}:not-a-pid:x") and not _dead_here("old-style-worker")


CONV_PACK = (
    PROTOCOL.replace("seeds = 2", "seeds = 3")
    .replace(
        'arch = "mlp"\nkwargs = { hidden = [32], dropout = 0.2 }',
        'arch = "small_cnn"\nkwargs = { channels = [4, 8], hidden = 8 }',
    )  # fmt: skip
    .replace("pack = 1 ", "pack = 3 ")
    .replace('name = "resume"', 'name = "packed"')
)


def test_a_study_killed_between_a_packs_checkpoint_writes_resumes_bit_identical(
    tmp_path: Path,
) -> None:
    """SIGKILL in epoch 3 of the teacher pack, after seed 0's checkpoint was written and
    before seeds 1 and 2's: the rerun resumes all three from epoch 2, as one pack of three,
    and every run ends bit for bit as in an uninterrupted study (grouped convolutions round
    otherwise in a pack of another size, so a pack split by epochs would not)."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for cwd in (clean, killed):
        cwd.mkdir()
        (cwd / "p.toml").write_text(CONV_PACK)
    assert study(clean, "run", "p.toml", "--no-report").returncode == 0
    proc = subprocess.run(
        command("run", "p.toml", "--no-report", signal_between_pack_writes="3:KILL"),
        cwd=killed, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    slots = [d for d in (killed / "checkpoints").iterdir() if d.name != "_packs"]
    assert sorted(len(list(d.glob("epoch-00003.pt"))) for d in slots) == [0, 0, 1]
    proc = study(killed, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("resumed after epoch 2") == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packed")
    runs = client.search_runs([exp.experiment_id], "tags.fingerprint != ''", max_results=100)
    resumed = {(r.data.tags["role"], r.data.tags["seed"]): dict(r.data.metrics) for r in runs}
    client = MlflowClient(tracking_uri=f"sqlite:///{clean / 'mlflow.db'}")
    exp = client.get_experiment_by_name("packed")
    runs = client.search_runs([exp.experiment_id], "tags.fingerprint != ''", max_results=100)
    assert resumed == {(r.data.tags["role"], r.data.tags["seed"]): dict(r.data.metrics)
                       for r in runs}  # fmt: skip
