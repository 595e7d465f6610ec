"""Scale out: concurrent workers, a real MLflow server, the Slurm path, failing seeds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import TINY_PROTOCOL
from tests.faults import command

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def study(cwd: Path, *args: str, faults: dict | None = None) -> subprocess.CompletedProcess:
    """`study *args` in a subprocess, with ``faults`` installed in it (tests/faults.py)."""
    return subprocess.run(
        command(*args, **faults) if faults else [sys.executable, "-m", "study.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _seed_runs(uri: str, study_name: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study_name)
    return client.search_runs([exp.experiment_id], "tags.fingerprint != ''", max_results=5000)


def test_two_workers_share_the_default_study_without_duplicates(tmp_path: Path) -> None:
    protocol = (ROOT / "protocols" / "ban_digits.toml").read_text()
    (tmp_path / "p.toml").write_text(protocol)
    command = [sys.executable, "-m", "study.cli", "run", "p.toml", "--no-report"]
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=900) for w in workers]
    for w, (_out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
    runs = _seed_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ban_digits")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = [(r.data.tags["role"], r.data.tags["seed"]) for r in finished]
    assert len(keys) == len(set(keys)) == 10 * 20  # one FINISHED run per (role, seed)
    fps = [r.data.tags["fingerprint"] for r in runs]
    assert len(fps) == len(set(fps))  # no fingerprint trained twice, not even partly
    trained = [int(out.split("trained ")[1].split()[0]) for out, _ in outputs]
    assert sum(trained) == 200 and min(trained) > 0  # both workers did part of the work


def _status_row(output: str, role: str) -> list[str]:
    """The cells of one role's row in `study status`'s table."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if len(cells) > 2 and cells[1] == role:
            return cells[1:-1]
    raise AssertionError(f"no row for {role} in:\n{output}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_study_against_a_real_mlflow_server(tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, "mlflow server did not start"
            assert server.poll() is None, "mlflow server exited"
            time.sleep(0.5)
        work = tmp_path / "work"
        work.mkdir()
        (work / "tiny.toml").write_text(TINY_PROTOCOL)
        proc = study(work, "run", "tiny.toml", "--tracking-uri", uri)
        assert proc.returncode == 0, proc.stderr
        runs = _seed_runs(uri, "tiny")
        assert len(runs) == 15 and all(r.info.status == "FINISHED" for r in runs)
        client = MlflowClient(tracking_uri=uri)
        student = next(r for r in runs if r.data.tags["role"] == "ban/gen2")
        ckpt = client.list_artifacts(student.info.run_id, "checkpoint")
        assert [a.path for a in ckpt] == ["checkpoint/model.pt"]  # served, not local
        assert not (work / "mlflow.db").exists() and not (work / "mlartifacts").exists()
        assert (work / "reports" / "tiny" / "report.md").exists()
        again = study(work, "run", "tiny.toml", "--tracking-uri", uri, "--no-report")
        assert again.returncode == 0 and "nothing to train" in again.stdout
        status = study(work, "status", "tiny.toml", "--tracking-uri", uri)
        assert status.returncode == 0, status.stderr
        # role, done, running, failed, waiting, failed seeds, jobs
        assert _status_row(status.stdout, "ban/gen2")[1:5] == ["3", "0", "0", "0"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_unreachable_tracking_server_fails_fast_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_PROTOCOL)
    start = time.time()
    proc = study(tmp_path, "run", "tiny.toml", "--tracking-uri", f"http://127.0.0.1:{_free_port()}")
    assert proc.returncode == 2
    assert time.time() - start < 30
    assert "not reachable" in proc.stderr and "tracking-uri" in proc.stderr
    assert "runs to train" not in proc.stdout


def test_slurm_executor_through_submitits_local_executor(tmp_path: Path) -> None:
    text = TINY_PROTOCOL.replace("[[arms]]", "[execution]\npack = 2\n\n[[arms]]", 1)
    (tmp_path / "tiny.toml").write_text(text)
    proc = study(tmp_path, "run", "tiny.toml", "--executor", "slurm-local")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.count("job ") == 2  # seeds [0, 1] and [2]: one job per seed pack
    runs = _seed_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    assert len(runs) == 15 and all(r.info.status == "FINISHED" for r in runs)
    jobs = {r.data.tags["seed"]: r.data.tags["job_id"] for r in runs}
    assert len(set(jobs.values())) == 2 and jobs["0"] == jobs["1"] != jobs["2"]
    assert (tmp_path / "reports" / "tiny" / "report.md").exists()
    assert any((tmp_path / "slurm-logs" / "tiny").iterdir())


def test_a_diverging_seed_fails_alone_and_is_reported_missing(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_PROTOCOL)
    proc = study(tmp_path, "run", "tiny.toml", faults={"diverge_seeds": [1]})
    assert proc.returncode == 1
    assert "failed:" in proc.stderr and "seed 1" in proc.stderr
    runs = _seed_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    by = {(r.data.tags["role"], r.data.tags["seed"]): r for r in runs}
    teacher = by[("teacher", "1")]
    assert teacher.info.status == "FAILED"
    assert "loss is" in teacher.data.tags["failure"] and "epoch" in teacher.data.tags["failure"]
    assert all(by[(role, s)].info.status == "FINISHED"
               for role in ("teacher", "ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1")
               for s in ("0", "2"))  # fmt: skip
    assert "skipped:" in proc.stderr and "ban/gen1 seed 1" in proc.stderr
    report = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "FAILED" in report and "ABSENT" in report  # the teacher and its dependents
    status = study(tmp_path, "status", "tiny.toml")
    assert status.returncode == 0, status.stderr
    assert _status_row(status.stdout, "teacher")[1:6] == ["2", "0", "1", "0", "1"]
    assert _status_row(status.stdout, "ban/gen1")[1:5] == ["2", "0", "0", "1"]  # waits


def test_a_dead_workers_claim_is_taken_over_and_resumed(tmp_path: Path) -> None:
    text = TINY_PROTOCOL.replace(
        "[[arms]]",
        "[execution]\npack = 1\nheartbeat_s = 0.5\nstale_after_s = 4.0\n"
        "checkpoint_every_s = 0\n\n[[arms]]",
        1,
    )
    (tmp_path / "tiny.toml").write_text(text)
    # digits at batch 128: 10 steps per epoch, 2 epochs per seed; step 35 is in epoch 2 of
    # the teacher's seed 1, whose epoch 1 is checkpointed: the worker dies holding its claim
    dead = study(
        tmp_path, "run", "tiny.toml", "--no-report", faults={"signal_after_steps": "35:KILL"}
    )
    assert dead.returncode == -signal.SIGKILL
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    [orphan] = [r for r in _seed_runs(uri, "tiny") if r.info.status == "RUNNING"]
    assert (orphan.data.tags["role"], orphan.data.tags["seed"]) == ("teacher", "1")
    start = time.time()
    proc = study(tmp_path, "run", "tiny.toml", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "teacher seed 1: resumed after epoch 1" in proc.stdout
    runs = _seed_runs(uri, "tiny")
    assert len(runs) == 15 and all(r.info.status == "FINISHED" for r in runs)
    taken = next(r for r in runs if r.info.run_id == orphan.info.run_id)
    assert taken.data.tags["resumed_from_epoch"] == "1"
    # the dead worker held claim 1 on that fingerprint; the takeover is claim 2
    from mlflow.entities import ViewType

    claims = MlflowClient(tracking_uri=uri).search_experiments(
        view_type=ViewType.ALL, filter_string="name LIKE 'tiny/_claims/%'"
    )
    fp = orphan.data.tags["fingerprint"]
    assert {e.name for e in claims if fp in e.name} == {
        f"tiny/_claims/{fp}/1",
        f"tiny/_claims/{fp}/2",
    }
    assert time.time() - start >= 2  # it waited for the dead worker's heartbeat to go stale


def test_auto_packs_are_sized_for_the_jobs_device_not_the_submitting_host(
    tiny_protocol_text,
) -> None:
    """A Slurm login node without a GPU plans GPU packs for jobs that ask for GPUs."""
    from study.device import job_device
    from study.protocol import parse_protocol

    text = tiny_protocol_text.replace('device = "cpu"', 'device = "auto"')
    gpu_jobs = parse_protocol(text)
    cpu_jobs = parse_protocol(text + "\n[execution.slurm]\ngpus_per_job = 0\n")
    assert job_device(gpu_jobs, None, local=False).type == "cuda"
    assert job_device(cpu_jobs, None, local=False).type == "cpu"
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert job_device(gpu_jobs, None, local=True).type == here  # local jobs run here
    assert job_device(gpu_jobs, "cpu", local=False).type == "cpu"  # --device decides
    pinned = parse_protocol(tiny_protocol_text)  # [train] device = "cpu"
    assert job_device(pinned, None, local=False).type == "cpu"


def test_workers_that_all_find_the_experiment_absent_share_one(tmp_path: Path) -> None:
    """The jobs of one submission start together: each may look before any has created
    the study's experiment. One creation wins; the others use it instead of failing."""
    from study.track import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first, second = Tracker(uri), Tracker(uri)
    look = second.client.get_experiment_by_name
    looks = []

    def before_the_first_created_it(name):
        looks.append(name)
        return None if len(looks) == 1 else look(name)

    second.client.get_experiment_by_name = before_the_first_created_it
    created = first.experiment_id("tiny")
    assert second.experiment_id("tiny") == created and len(looks) == 2


def test_claims_of_a_study_ignore_a_study_whose_name_differs_by_an_underscore(
    tmp_path: Path,
) -> None:
    """SQL's LIKE reads `_` as any character: `ban_digits` must not see `ban-digits`'s."""
    from study.track import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    assert tracker.try_claim("ban-digits", "f" * 32, 1, "worker-a") is not None
    assert tracker.claims("ban_digits") == {}
    assert list(tracker.claims("ban-digits")) == ["f" * 32]
