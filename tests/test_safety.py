"""Hostile files, a dead tracking server, unsafe names, interrupts and kills at any point,
a full disk, an oversized plan (issue 14): each as an attacker or a crash tester would try it,
against real subprocesses, a real MLflow store and a real `mlflow server`."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study.cli import app
from study.plan import expand
from study.protocol import parse_protocol
from tests.conftest import TINY_PROTOCOL, interruptible
from tests.faults import command
from tests.test_scale import _free_port

runner = CliRunner()

SMALL = """
[study]
name = "safe"
seeds = 2

[data]
dataset = "digits"
val_size = 0.15
augmentation = "none"

[train]
epochs = 2
batch_size = 128
lr = 0.05
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [16] }

[[arms]]
name = "ban"
loss = "ban"

[execution]
checkpoint_every_s = 0
log_every_s = 3600
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def study(
    cwd: Path, *args: str, timeout: float = 600, faults: dict | None = None, **env: str
) -> subprocess.CompletedProcess:
    """`study *args` in a subprocess; ``faults`` (tests/faults.py) installed in the child."""
    argv = command(*args, **faults) if faults else [sys.executable, "-m", "study.cli", *args]
    return subprocess.run(
        argv,
        cwd=cwd,
        env=_env(**env),
        preexec_fn=interruptible,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ignore_ctrl_c() -> None:
    """In the child, before exec: SIGINT ignored, as in a shell's background job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _popen(cwd: Path, *args: str, preexec=interruptible, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", *args],
        cwd=cwd,
        env=_env(**env),
        preexec_fn=preexec,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _runs(uri: str, name: str = "safe") -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=5000)


def _one_finished_run_per_role_and_seed(uri: str, name: str, keys: set) -> None:
    runs = [r for r in _runs(uri, name) if "fingerprint" in r.data.tags]
    finished = [(r.data.tags["role"], int(r.data.tags["seed"])) for r in runs
                if r.info.status == "FINISHED"]  # fmt: skip
    assert sorted(finished) == sorted(keys)


def _no_running_run(uri: str, name: str) -> None:
    running = [(r.data.tags.get("role", "parent"), r.data.tags.get("seed"))
               for r in _runs(uri, name) if r.info.status == "RUNNING"]  # fmt: skip
    assert running == []


class _Planted:
    """What an attacker pickles: unpickling it runs a shell command (it touches a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted_torch_file(marker: Path, **extra) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "history": [{}], "payload": _Planted(marker), **extra}, buffer)
    return buffer.getvalue()


def _fingerprints(text: str) -> dict:
    from study.execute import load_study_data

    protocol = parse_protocol(text)
    return expand(protocol).fingerprints(load_study_data(protocol).identity)


def _plant(slot: Path, epochs: list[int], marker: Path) -> None:
    import hashlib

    slot.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        blob = _planted_torch_file(marker, epoch=epoch, history=[{}] * epoch)
        (slot / f"epoch-{epoch:05d}.pt").write_bytes(blob)
        (slot / f"epoch-{epoch:05d}.sha256").write_text(hashlib.sha256(blob).hexdigest())


# --- 1. untrusted files ------------------------------------------------------------------


def test_a_planted_checkpoint_is_never_read_by_a_seed_that_starts_a_new_run(workdir: Path) -> None:
    """Fingerprints are in the run tags: a checkpoint planted (with its checksum) where a
    seed will train ran its code on a plain `study run`, and then failed the pack."""
    (workdir / "safe.toml").write_text(SMALL)
    marker = workdir / "pwned"
    for seed in (0, 1):
        fp = _fingerprints(SMALL)[("teacher", seed)]
        _plant(workdir / "checkpoints" / fp, [1], marker)
    res = runner.invoke(app, ["run", "safe.toml", "--no-report"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    _one_finished_run_per_role_and_seed(
        f"sqlite:///{workdir / 'mlflow.db'}",
        "safe",
        {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)},  # fmt: skip
    )


def test_a_resuming_seed_refuses_a_checkpoint_that_is_not_weights_only_and_starts_over(
    workdir: Path, monkeypatch
) -> None:
    from study.checkpoint import CheckpointSlot
    from study.execute import run_study
    from study.track import Tracker

    (workdir / "safe.toml").write_text(SMALL)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    real_save = CheckpointSlot.save

    def save_then_interrupt(self, state):
        real_save(self, state)
        raise KeyboardInterrupt  # Ctrl-C after the first epoch's checkpoints

    monkeypatch.setattr(CheckpointSlot, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(parse_protocol(SMALL, source="safe.toml"), Tracker(uri))
    monkeypatch.setattr(CheckpointSlot, "save", real_save)
    [killed] = [r for r in _runs(uri) if r.data.tags.get("seed") == "0"]
    assert killed.info.status == "KILLED"
    marker = workdir / "pwned"
    slot = workdir / "checkpoints" / _fingerprints(SMALL)[("teacher", 0)]
    assert (slot / "epoch-00001.pt").exists()
    _plant(slot, [1], marker)  # replaces the real one, with a matching checksum
    res = runner.invoke(app, ["run", "safe.toml", "--no-report"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    words = " ".join(res.output.split())
    assert f"checkpoint {slot / 'epoch-00001.pt'} does not load weights-only" in words
    assert "training starts over" in words
    client = MlflowClient(tracking_uri=uri)
    old = client.get_run(killed.info.run_id)
    assert old.info.status == "KILLED"
    new = client.get_run(old.data.tags["superseded_by"])
    assert (
        new.info.status == "FINISHED"
        and "does not load weights-only" in (new.data.tags["checkpoint_notes"])
    )


def test_a_crafted_model_pt_in_the_store_is_exit_2_naming_the_run_and_the_file(
    workdir: Path,
) -> None:
    text = SMALL.replace("seeds = 2", "seeds = 1")
    (workdir / "safe.toml").write_text(text)
    assert runner.invoke(app, ["run", "safe.toml", "--no-report"]).exit_code == 0
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    by_role = {r.data.tags["role"]: r for r in _runs(uri) if "role" in r.data.tags}
    teacher = by_role["teacher"].info.run_id
    artifact = next(workdir.glob(f"mlartifacts/safe/{teacher}/artifacts/checkpoint/model.pt"))
    marker = workdir / "pwned"
    artifact.write_bytes(_planted_torch_file(marker))
    # the student with another learning rate: a new fingerprint, whose teacher is loaded
    (workdir / "lr.toml").write_text(
        text.replace('loss = "ban"', 'loss = "ban"\ntrain = { lr = 0.04 }')
    )
    for args in (["run", "lr.toml", "--no-report"], ["reproduce", by_role["ban/gen1"].info.run_id]):
        res = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert res.exit_code == 2, res.output
        words = " ".join(res.output.split())
        assert f"run {teacher}: its artifact checkpoint/model.pt" in words
        assert "does not load weights-only" in words and "Traceback" not in res.output
        assert not marker.exists()
    # tensors, but not the teacher's network
    torch.save({"weight": torch.zeros(3)}, artifact)
    res = runner.invoke(app, ["run", "lr.toml", "--no-report"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert "is not a state dict of role teacher's network" in " ".join(res.output.split())


def test_a_cifar_file_that_is_not_the_published_one_stops_study_run_before_it_is_read(
    workdir: Path,
) -> None:
    from tests.test_data import write_cifar10

    write_cifar10(workdir / "data")
    marker = workdir / "pwned"
    batch = Path("data") / "cifar-10-batches-py" / "data_batch_1"  # as the protocol says
    (workdir / batch).write_bytes(pickle.dumps({"data": _Planted(marker)}, protocol=2))
    text = SMALL.replace('dataset = "digits"', 'dataset = "cifar10"\nroot = "data"')
    (workdir / "c.toml").write_text(text)
    res = runner.invoke(app, ["run", "c.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    words = " ".join(res.output.split())
    assert f"{batch} is not the published file" in words and "verify_checksums" in words
    assert not marker.exists() and not (workdir / "mlflow.db").exists()
    (workdir / "c.toml").write_text(
        text.replace('root = "data"', 'root = "data"\nverify_checksums = false')
    )
    res = runner.invoke(app, ["run", "c.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2, res.output
    assert f"{batch} is not a CIFAR data file: it names posix.system" in " ".join(
        res.output.split()
    )
    assert not marker.exists()


# --- 9. a plan larger than its bound -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("seeds = 3", "seeds = 1000000"), "study.seeds", "at most 10000 seeds"),
        (("seeds = 3", "seeds = 9999"), "study.seeds", "21 roles x 9999 seeds = 209979 runs"),
        (("generations = 2", "generations = 200000"), "arms[0] ('ban').generations", "runs"),
    ],
)
def test_a_plan_larger_than_its_bound_is_refused_at_validation(workdir, change, field, words):
    text = TINY_PROTOCOL.replace(*change)
    if "9999" in change[1]:  # 5 roles x 9999 seeds fit; 21 roles (10 generations) do not
        text = text.replace("generations = 2", "generations = 10")
    (workdir / "big.toml").write_text(text)
    start = time.time()
    for verb in ("validate", "run"):
        res = runner.invoke(app, [verb, "big.toml"], env={"COLUMNS": "300"})
        assert res.exit_code == 2, res.output
        assert f"field '{field}'" in res.output and words in " ".join(res.output.split())
    assert time.time() - start < 60 and not (workdir / "mlflow.db").exists()


# --- 3. names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('name = "tiny"', 'name = ".."', "study.name"),
        ('name = "tiny"', 'name = "."', "study.name"),
        ('name = "tiny"', f'name = "{"x" * 300}"', "study.name"),
        ('name = "ban"', 'name = ".."', "arms[0] ('..').name"),
    ],
)
def test_names_that_are_not_plain_folder_names_are_refused(workdir: Path, old, new, field):
    (workdir / "report.md").write_text("the user's own")
    (workdir / "figures").mkdir()
    (workdir / "figures" / "mine.png").write_bytes(b"png")
    (workdir / "n.toml").write_text(TINY_PROTOCOL.replace(old, new))
    res = runner.invoke(app, ["run", "n.toml"], env={"COLUMNS": "400"})
    assert res.exit_code == 2, res.output
    assert f"field '{field}'" in res.output
    assert (workdir / "report.md").read_text() == "the user's own"
    assert (workdir / "figures" / "mine.png").exists() and not (workdir / "mlflow.db").exists()


def test_every_path_built_from_the_longest_name_can_be_written(workdir: Path, recwarn) -> None:
    from study.analysis.figures import LABEL_CHARS, shorten
    from study.protocol import NAME_MAX_LENGTH

    name = "s" * NAME_MAX_LENGTH
    text = TINY_PROTOCOL.replace('name = "tiny"', f'name = "{name}"').replace(
        "seeds = 3", "seeds = 1"
    )
    text = text.replace('name = "ban"', f'name = "{"a" * NAME_MAX_LENGTH}"')
    (workdir / "long.toml").write_text(text)
    res = runner.invoke(app, ["run", "long.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert (workdir / "reports" / name / "report.md").exists()
    assert (workdir / "results" / name / "run.json").exists()
    _no_running_run(f"sqlite:///{workdir / 'mlflow.db'}", name)
    # the figures draw long names shortened: drawn whole, one label took the figure
    # (matplotlib: "axes sizes collapsed to zero")
    assert not [w for w in recwarn if "collapsed" in str(w.message)]
    role = f"{'a' * NAME_MAX_LENGTH}/gen1"
    assert len(shorten(role)) == LABEL_CHARS and shorten(role).endswith("a/gen1")
    assert shorten("kd/gen1") == "kd/gen1"


def test_an_output_folder_that_resolves_elsewhere_is_refused(workdir: Path, tmp_path_factory):
    from study.errors import UserInputError
    from study.paths import within

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (workdir / "reports").mkdir()
    (workdir / "reports" / "tiny").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserInputError, match="not inside"):
        within("reports", "tiny")
    with pytest.raises(UserInputError, match="not inside"):
        within("reports", "..")
    assert within("reports", "other") == Path("reports") / "other"


def test_the_report_deletes_only_the_files_a_report_wrote(workdir: Path) -> None:
    (workdir / "tiny.toml").write_text(TINY_PROTOCOL.replace("seeds = 3", "seeds = 2"))
    assert runner.invoke(app, ["run", "tiny.toml"]).exit_code == 0
    figures = workdir / "reports" / "tiny" / "figures"
    written = sorted(p.name for p in figures.iterdir())
    assert "distributions.png" in written
    (figures / "mine.png").write_bytes(b"the user's own figure")
    (figures / "old_figure.png").write_bytes(b"what an earlier report wrote")
    manifest = workdir / "reports" / "tiny" / ".report-files"
    manifest.write_text(manifest.read_text() + "figures/old_figure.png\n")
    assert runner.invoke(app, ["report", "tiny.toml"]).exit_code == 0
    assert (figures / "mine.png").read_bytes() == b"the user's own figure"
    assert not (figures / "old_figure.png").exists()
    assert sorted(p.name for p in figures.iterdir()) == sorted([*written, "mine.png"])


# --- 5. an interrupt at any point leaves no RUNNING run ----------------------------------


def _store_runs(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ctrl_c_while_the_runs_are_being_created_leaves_none_running(tmp_path: Path) -> None:
    """40 seeds in one pack: `study run` creates 40 child runs before it trains. SIGINT
    0.3 s after the first child run left 33 RUNNING while the message said KILLED."""
    text = SMALL.replace("seeds = 2", "seeds = 40").replace("epochs = 2", "epochs = 1")
    (tmp_path / "p.toml").write_text(text)
    proc = _popen(tmp_path, "run", "p.toml", "--no-report")
    deadline = time.time() + 300
    while _store_runs(tmp_path / "mlflow.db") < 2:  # the parent and a first child
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    children = [r for r in runs if "fingerprint" in r.data.tags]
    assert 0 < len(children) and {r.info.status for r in runs} == {"KILLED"}
    assert "Traceback" not in err


@pytest.mark.parametrize("calls", [2, 5, 9, 14, 20, 27, 35, 44])
def test_an_interrupt_after_any_tracker_call_leaves_no_running_run(tmp_path: Path, calls) -> None:
    """SIGINT right after the N-th call to the tracker returns: the moment a run exists in
    the store and the invocation has not yet recorded it. Whatever N, no run is RUNNING."""
    (tmp_path / "p.toml").write_text(SMALL)
    proc = study(tmp_path, "run", "p.toml", "--no-report",
                 faults={"signal_after_tracker_calls": f"{calls}:INT"})  # fmt: skip
    assert proc.returncode in (0, 130), proc.stderr
    assert "Traceback" not in proc.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _no_running_run(uri, "safe")
    again = study(tmp_path, "run", "p.toml", "--no-report")
    assert again.returncode == 0, again.stderr
    _one_finished_run_per_role_and_seed(
        uri, "safe", {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)}
    )
    _no_running_run(uri, "safe")


@pytest.mark.parametrize(
    ("commit", "sent", "status"),
    [(85, "INT", 130), (100, "INT", 130), (115, "INT", 130), (100, "TERM", 143)],
)
def test_an_interrupt_inside_a_store_transaction_leaves_the_store_usable(
    tmp_path, commit, sent, status
):
    """SIGINT (or SIGTERM) inside the N-th database transaction, its writes made and not
    yet committed (N: while the first runs are created, trained and ended). A
    KeyboardInterrupt raised there left the transaction open: every later write of the
    process waited sqlite's busy timeout and failed with "database is locked" (exit 1, the
    parent run FAILED); and in `study run` with 40 seeds, five minutes of such waits (CI
    saw that hang)."""
    (tmp_path / "p.toml").write_text(SMALL)
    proc = study(tmp_path, "run", "p.toml", "--no-report", timeout=300,
                 faults={"signal_inside_commits": f"{commit}:{sent}"})  # fmt: skip
    assert proc.returncode == status, proc.stderr
    assert "locked" not in proc.stderr and "Traceback" not in proc.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = _runs(uri)
    assert runs and {r.info.status for r in runs} <= {"KILLED", "FINISHED"}
    again = study(tmp_path, "run", "p.toml", "--no-report")
    assert again.returncode == 0, again.stderr
    _one_finished_run_per_role_and_seed(
        uri, "safe", {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)}
    )
    _no_running_run(uri, "safe")


# --- 8. a kill at any point leaves a store the next `study run` uses ---------------------


@pytest.fixture(scope="module")
def clean_small(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("clean")
    (cwd / "p.toml").write_text(SMALL)
    proc = study(cwd, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    runs = _runs(f"sqlite:///{cwd / 'mlflow.db'}")
    return {(r.data.tags["role"], r.data.tags["seed"]): dict(r.data.metrics)
            for r in runs if "fingerprint" in r.data.tags}  # fmt: skip


def test_sigkill_after_any_tracker_call_leaves_a_store_the_next_run_finishes(
    tmp_path: Path, clean_small
) -> None:
    """A chain of `study run`s, each SIGKILLed right after its N-th tracker call (N from
    a few to past the run's creation, training and logging), each resuming what the one
    before left; then one to the end: one FINISHED run per (role, seed), none RUNNING, and
    the final metrics bit for bit an uninterrupted study's."""
    (tmp_path / "p.toml").write_text(SMALL)
    for calls in (1, 3, 6, 10, 15, 21, 28, 36):
        proc = study(tmp_path, "run", "p.toml", "--no-report",
                     faults={"signal_after_tracker_calls": f"{calls}:KILL"})  # fmt: skip
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
        assert "Traceback" not in proc.stderr
    proc = study(tmp_path, "run", "p.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    keys = {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)}
    _one_finished_run_per_role_and_seed(uri, "safe", keys)
    _no_running_run(uri, "safe")
    finished = {
        (r.data.tags["role"], r.data.tags["seed"]): dict(r.data.metrics)
        for r in _runs(uri)
        if r.info.status == "FINISHED" and "role" in r.data.tags
    }
    assert finished == clean_small


@pytest.mark.parametrize("delay_s", [0.0, 0.15, 0.4, 0.8])
def test_sigkill_while_the_store_is_created_leaves_one_the_next_run_uses(
    tmp_path: Path, delay_s: float
) -> None:
    """Killed while MLflow created its tables, `study run` left a half-migrated mlflow.db
    that every later run refused ("table ... already exists") until it was deleted by hand.
    The store is now built in a temporary file and renamed into place."""
    (tmp_path / "p.toml").write_text(SMALL.replace("seeds = 2", "seeds = 1"))
    proc = _popen(tmp_path, "run", "p.toml", "--no-report")
    deadline = time.time() + 300
    while not any(tmp_path.glob("mlflow.db*")) or not any(
        p.suffix != ".lock" for p in tmp_path.glob("mlflow.db*")
    ):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(delay_s)
    proc.kill()
    proc.communicate(timeout=60)
    again = study(tmp_path, "run", "p.toml", "--no-report")
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob("mlflow.db.creating-*"))


def test_a_store_whose_creation_never_finished_is_rebuilt(workdir: Path) -> None:
    """What a kill during MLflow's migration left behind (before creation was atomic): the
    tables, no schema version, no run. MLflow cannot open it; `study run` moves it aside."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{workdir / 'mlflow.db'}", "./mlruns")
    store.engine.dispose()
    with sqlite3.connect(workdir / "mlflow.db") as con:
        con.execute("DELETE FROM alembic_version")
    (workdir / "safe.toml").write_text(SMALL.replace("seeds = 2", "seeds = 1"))
    res = runner.invoke(app, ["run", "safe.toml", "--no-report"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert len(list(workdir.glob("mlflow.db.unfinished-*"))) == 1
    _one_finished_run_per_role_and_seed(
        f"sqlite:///{workdir / 'mlflow.db'}", "safe", {("teacher", 0), ("ban/gen1", 0)}
    )


# --- 2. a tracking server lost mid-training ----------------------------------------------


def _server(where: Path, port: int) -> subprocess.Popen:
    """A real tracking server on a loopback port (one worker), in its own process group."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{where / 'server.db'}",
         "--artifacts-destination", str(where / "server-artifacts")],
        cwd=where, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
        time.sleep(0.3)


def _served(tmp_path: Path, text: str) -> tuple[int, str, subprocess.Popen, Path]:
    """A tracking server on a free loopback port, and a working folder holding ``text`` as
    p.toml: the port, the URI, the server and the folder."""
    port = _free_port()
    server = _server(tmp_path, port)
    work = tmp_path / "work"
    work.mkdir()
    (work / "p.toml").write_text(text)
    return port, f"http://127.0.0.1:{port}", server, work


def _kill_the_server_when(
    ready: Callable[[], bool], server: subprocess.Popen, proc: subprocess.Popen, uri: str
) -> str:
    """SIGKILL ``server`` once ``ready()``; ``proc`` (a study command with an 8 s tracker
    deadline) must then stop within the deadline, a heartbeat and some slack, exit 3,
    naming the URI, without a traceback. Its standard output."""
    what = f"study {proc.args[3]}"  # type: ignore[index]
    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        killed = time.time()
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"`{what}` went on after its tracking server was killed")
        stopped = time.time() - killed
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out + err
    words = " ".join(err.split())
    assert f"the tracking store {uri} is lost" in words and "Traceback" not in err
    print(f"`{what}` stopped {stopped:.1f} s after its server was killed")  # for -s
    # one deadline, a heartbeat and slack for a loaded machine; two deadlines (the call in
    # flight waited out after the heartbeat had found the store lost) took 21 s
    assert stopped < 8 + 1 + 8, stopped
    return out


@pytest.mark.parametrize("preexec", [interruptible, _ignore_ctrl_c], ids=["ctrl-c", "no-ctrl-c"])
def test_a_server_killed_mid_training_stops_the_run_within_the_deadline_and_the_rerun_resumes(
    tmp_path: Path, preexec
) -> None:
    """The server is SIGKILLed while the study trains and logs nothing (metrics buffered):
    the claim heartbeat's call goes unanswered, and `study run` stops within the deadline
    (8 s here), exit 3, naming the URI, its checkpoints kept. With the server back, the
    rerun resumes and ends with one FINISHED run per (role, seed). Also where SIGINT is
    ignored (a background job): the heartbeat's interrupt of the main thread did nothing
    there, and the study trained on until its next call to the tracker."""
    text = SMALL.replace("epochs = 2", "epochs = 300")  # the teacher's: trains on meanwhile
    text = text.replace('loss = "ban"', 'loss = "ban"\ntrain = { epochs = 2 }')
    text = text.replace("log_every_s = 3600", "log_every_s = 3600\nheartbeat_s = 1")
    port, uri, server, work = _served(tmp_path, text)
    run = _popen(work, "run", "p.toml", "--no-report", "--tracking-uri", uri,
                 preexec=preexec, STUDY_TRACKER_TIMEOUT_S="8")  # fmt: skip
    _kill_the_server_when(
        lambda: bool(list(work.glob(".study/checkpoints/*/epoch-*.pt"))), server, run, uri
    )
    assert list(work.glob(".study/checkpoints/*/epoch-*.pt"))  # kept for the rerun
    server = _server(tmp_path, port)
    try:
        again = study(work, "run", "p.toml", "--no-report", "--tracking-uri", uri)
        assert again.returncode == 0, again.stderr
        assert "resumed after epoch" in again.stdout
        _one_finished_run_per_role_and_seed(
            uri, "safe", {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)}
        )
        _no_running_run(uri, "safe")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


TUNE = """
[tune]
arm = "kd"
generation = 1
temperature = { low = 1.0, high = 20.0, log = true }
alpha = { low = 0.1, high = 1.0 }
trials = 20
seeds = 2
sampler_seed = 0
epochs = 40
"""


def test_a_server_killed_while_tuning_stops_the_tuner_within_the_deadline_and_the_rerun_finishes(
    tmp_path: Path,
) -> None:
    """`study tune` logs each trial to the server as a nested run; the server is SIGKILLed
    after a few trials: the tuner stops within the deadline (8 s here), exit 3, naming the
    URI, without a traceback. With the server back, the rerun goes on from the Optuna
    journal, writes tuned.json and leaves no run RUNNING."""
    text = SMALL.replace('name = "ban"\nloss = "ban"', 'name = "kd"\nloss = "kd"')
    text = text.replace("log_every_s = 3600", "log_every_s = 3600\nheartbeat_s = 1") + TUNE
    port, uri, server, work = _served(tmp_path, text)
    journal = work / "optuna-journal.log"
    tune = _popen(work, "tune", "p.toml", "--tracking-uri", uri, STUDY_TRACKER_TIMEOUT_S="8")
    # a few trials in the journal (about 60 lines a trial), then the server goes
    out = _kill_the_server_when(
        lambda: journal.exists() and journal.read_text().count("\n") >= 150, server, tune, uri
    )
    assert "20/20 finished" not in out  # it stopped mid-tuning
    server = _server(tmp_path, port)
    try:
        again = study(work, "tune", "p.toml", "--tracking-uri", uri)
        assert again.returncode == 0, again.stderr
        assert "20 trials" in again.stdout and (work / "results/safe/tuned.json").exists()
        _no_running_run(uri, "safe")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_sigterm_after_the_server_died_does_not_claim_the_runs_were_killed(tmp_path: Path):
    """SIGTERM right after the server was killed: Ctrl-C's path (flush the metrics, end the
    runs KILLED) meets the dead server. It said the runs were marked KILLED while they stayed
    RUNNING there; now it stops within the deadline saying the store is lost, exit 3."""
    text = SMALL.replace("epochs = 2", "epochs = 300")
    text = text.replace('loss = "ban"', 'loss = "ban"\ntrain = { epochs = 2 }')
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _server(tmp_path, port)
    work = tmp_path / "work"
    work.mkdir()
    (work / "p.toml").write_text(text)
    run = _popen(work, "run", "p.toml", "--no-report", "--tracking-uri", uri,
                 STUDY_TRACKER_TIMEOUT_S="8")  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list(work.glob(".study/checkpoints/*/epoch-*.pt")):
            assert run.poll() is None and time.time() < deadline, run.communicate()
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
    assert run.returncode == 3, err
    words = " ".join(err.split())
    assert f"the tracking store {uri} is lost" in words and "marked KILLED" not in words


def test_the_tracker_deadline_is_a_documented_setting(monkeypatch) -> None:
    from study.errors import UserInputError
    from study.track import DEFAULT_TIMEOUT_S, TIMEOUT_VARIABLE, tracker_timeout

    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert tracker_timeout() == DEFAULT_TIMEOUT_S == 120
    monkeypatch.setenv(TIMEOUT_VARIABLE, "30")
    assert tracker_timeout() == 30
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        with pytest.raises(UserInputError, match=TIMEOUT_VARIABLE):
            tracker_timeout()
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert f"`{TIMEOUT_VARIABLE}` seconds (default 120" in readme and "exit status 3" in readme


# --- 6. a full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB tmpfs: a disk that can be filled (mounting needs root)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


def _after_a_full_disk(disk: Path, proc: subprocess.CompletedProcess | tuple) -> None:
    returncode, err = proc if isinstance(proc, tuple) else (proc.returncode, proc.stderr)
    assert returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in err, err
    assert f"error: {disk}" in errors[0] and "Traceback" not in err
    leftovers = [p for p in disk.rglob("*") if p.name.endswith((".tmp", "-journal"))
                 or ".creating-" in p.name]  # fmt: skip
    assert leftovers == []
    for checksum in disk.rglob("*.sha256"):
        assert checksum.with_suffix(".pt").is_file()


def test_a_disk_full_while_the_store_is_created_is_one_message(small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=300k", str(small_disk)], check=True)
    (small_disk / "p.toml").write_text(SMALL)
    _after_a_full_disk(small_disk, study(small_disk, "run", "p.toml", "--no-report"))
    assert not (small_disk / "mlflow.db").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = study(small_disk, "run", "p.toml", "--no-report")
    assert again.returncode == 0, again.stderr


def test_a_disk_full_during_training_is_one_message_and_the_rerun_resumes(
    small_disk: Path,
) -> None:
    """The disk fills while the study trains (a checkpoint every epoch, then MLflow): one
    message naming the folder, exit 2, no traceback, no temporary file, no checksum without
    its file; once space is freed the rerun finishes the study."""
    text = SMALL.replace("epochs = 2", "epochs = 60")
    (small_disk / "p.toml").write_text(text)
    proc = _popen(small_disk, "run", "p.toml", "--no-report")
    deadline = time.time() + 300
    while not list(small_disk.glob("checkpoints/*/epoch-*.pt")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    filler = _fill(small_disk)
    _, err = proc.communicate(timeout=300)
    _after_a_full_disk(small_disk, (proc.returncode, err))
    filler.unlink()
    again = study(small_disk, "run", "p.toml", "--no-report")
    assert again.returncode == 0, again.stderr
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    _one_finished_run_per_role_and_seed(
        uri, "safe", {(r, s) for r in ("teacher", "ban/gen1") for s in (0, 1)}
    )
    _no_running_run(uri, "safe")
