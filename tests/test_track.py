"""What a study leaves in MLflow for its UI: the experiment marked as a training
experiment, and each report as the artifacts of a run of its own."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from study.cli import app
from study.track import EXPERIMENT_KIND, TRAINING_KIND, Tracker

runner = CliRunner()
REPORT_FILES = {"report.md", "report.html", "table.md", "table.tex", "role_summary.csv"}


def _client(work: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def _report_runs(client: MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], "tags.kind = 'report'", order_by=["start_time"])


def test_the_study_experiment_opens_on_its_training_runs(tiny_study: Path) -> None:
    exp = _client(tiny_study).get_experiment_by_name("tiny")
    assert exp.tags[EXPERIMENT_KIND] == "custom_model_development" == TRAINING_KIND


def test_the_report_and_a_per_role_summary_are_artifacts_of_a_report_run(
    tiny_study: Path,
) -> None:
    client = _client(tiny_study)
    exp = client.get_experiment_by_name("tiny")
    [run] = _report_runs(client, exp.experiment_id)  # `study run` wrote one report
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    assert run.data.tags["study"] == "tiny"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert REPORT_FILES <= logged and "figures" in logged
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    on_disk = {f"figures/{p.name}" for p in (tiny_study / "reports/tiny/figures").glob("*.png")}
    assert figures == on_disk and figures
    text = Path(client.download_artifacts(run.info.run_id, "report.md", str(tiny_study / "dl")))
    assert text.read_text() == (tiny_study / "reports/tiny/report.md").read_text()
    summary_file = client.download_artifacts(run.info.run_id, "role_summary.csv")
    rows = list(csv.DictReader(io.StringIO(Path(summary_file).read_text())))
    assert [r["role"] for r in rows] == ["teacher", "ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1"]
    assert {r["metric"] for r in rows} == {"test_acc"} and {r["n"] for r in rows} == {"3"}
    teacher = [
        r.data.metrics["test_acc"]
        for r in client.search_runs([exp.experiment_id], "tags.role = 'teacher'")
    ]
    assert float(rows[0]["mean"]) == pytest.approx(sum(teacher) / 3)


def test_study_report_logs_a_report_run_each_time(
    tiny_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    work = tmp_path / "copy"  # the session's study stays as it is
    shutil.copytree(tiny_study, work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["report", "tiny.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    client = _client(work)
    runs = _report_runs(client, client.get_experiment_by_name("tiny").experiment_id)
    assert len(runs) == 2 and runs[-1].info.run_id in res.output


def test_an_experiment_made_before_the_kind_tag_gets_it(workdir: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    tracker = Tracker(uri)
    MlflowClient(tracking_uri=uri).create_experiment("old")  # as an older version made it
    exp_id = tracker.experiment_id("old", create=False)
    assert EXPERIMENT_KIND not in MlflowClient(uri).get_experiment(exp_id).tags  # reads: no
    assert tracker.experiment_id("old") == exp_id
    assert MlflowClient(uri).get_experiment(exp_id).tags[EXPERIMENT_KIND] == TRAINING_KIND


# --- a server that stops answering ------------------------------------------------------


@pytest.fixture
def silent_server():
    """A real TCP server on loopback that accepts connections and never answers (a hung
    tracking server), and a 20 s tracker deadline."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def _lose_and_interrupt_after(tracker: Tracker, seconds: float) -> None:
    """What the claims' heartbeat does, in its thread, when its own call goes unanswered:
    mark the tracker lost (``lose`` raises so), then interrupt the main thread."""
    import _thread
    import threading

    from study.errors import TrackerUnavailable

    def beat() -> None:
        time.sleep(seconds)
        try:
            tracker.lose("the heartbeat went unanswered")
        except TrackerUnavailable:
            pass
        _thread.interrupt_main()

    threading.Thread(target=beat, daemon=True).start()


def test_a_call_in_flight_ends_when_the_heartbeat_finds_the_tracker_lost(
    silent_server, monkeypatch
) -> None:
    """The main thread's call waits on a server that never answers (deadline 20 s) when the
    heartbeat's thread finds the tracker lost after 0.5 s and interrupts it: the call ends
    then, not a deadline later (it did: `study run` stopped 21 s after its server died
    with an 8 s deadline, the interrupted call waited out its own deadline)."""
    from study.errors import TrackerUnavailable

    monkeypatch.setenv("STUDY_TRACKER_TIMEOUT_S", "20")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import signal

    tracker = Tracker(silent_server)
    # Python's own Ctrl-C handler: a background job (CI's) inherits SIGINT ignored, and
    # then `interrupt_main` does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _lose_and_interrupt_after(tracker, 0.5)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            tracker.experiment_id("silent", create=False)
        assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGINT, previous)
    assert tracker.lost is not None
    with pytest.raises(TrackerUnavailable, match="heartbeat went unanswered"):
        tracker.experiment_id("silent", create=False)  # every later call fails at once
