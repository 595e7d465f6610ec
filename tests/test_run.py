"""`study run` end to end, in real subprocesses, against a real MLflow sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROLES = ["teacher", "ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1"]
SEEDS = [0, 1, 2]


def study(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "study.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_protocol_text_module):
    cwd = tmp_path_factory.mktemp("study")
    (cwd / "tiny.toml").write_text(tiny_protocol_text_module)
    proc = study("run", "tiny.toml", cwd=cwd)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return cwd, proc


@pytest.fixture(scope="module")
def tiny_protocol_text_module() -> str:
    from tests.conftest import TINY_PROTOCOL

    return TINY_PROTOCOL


def _runs(cwd: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_run_leaves_one_finished_run_per_role_and_seed_with_tags(finished_study) -> None:
    cwd, _ = finished_study
    client, runs = _runs(cwd)
    seed_runs = [r for r in runs if "fingerprint" in r.data.tags]
    assert sorted((r.data.tags["role"], int(r.data.tags["seed"])) for r in seed_runs) == sorted(
        (role, s) for role in ROLES for s in SEEDS
    )
    for r in seed_runs:
        assert r.info.status == "FINISHED"
        tags = r.data.tags
        for key in ("study", "arm", "generation", "role", "seed", "fingerprint", "protocol_sha"):
            assert tags.get(key), (key, tags)
        assert tags["study"] == "tiny"
        assert "mlflow.parentRunId" in tags
        assert tags["kind"] == "ensemble" or r.data.params["loss"] in ("ce", "ban", "kd")
    assert len({r.data.tags["fingerprint"] for r in seed_runs}) == len(seed_runs)
    parents = [r for r in runs if r.data.tags.get("kind") == "invocation"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_generation_k_of_seed_s_distils_from_generation_k_minus_1_of_seed_s(finished_study) -> None:
    cwd, _ = finished_study
    _, runs = _runs(cwd)
    by = {(r.data.tags["role"], r.data.tags["seed"]): r for r in runs if "role" in r.data.tags}
    for s in map(str, SEEDS):
        assert by[("ban/gen1", s)].data.tags["teacher_run_id"] == by[("teacher", s)].info.run_id
        assert by[("ban/gen2", s)].data.tags["teacher_run_id"] == by[("ban/gen1", s)].info.run_id
        assert by[("kd/gen1", s)].data.tags["teacher_run_id"] == by[("teacher", s)].info.run_id
        members = by[("ban/ens2", s)].data.tags["members_run_ids"].split(",")
        assert members == [by[("ban/gen1", s)].info.run_id, by[("ban/gen2", s)].info.run_id]


def test_runs_log_metrics_params_and_artifacts(finished_study) -> None:
    cwd, _ = finished_study
    client, runs = _runs(cwd)
    student = next(r for r in runs if r.data.tags.get("role") == "ban/gen2")
    m = student.data.metrics
    for key in (
        "test_acc",
        "test_nll",
        "test_ece",
        "val_acc",
        "val_nll",
        "teacher_agreement",
        "teacher_kl",
    ):
        assert key in m, key
    assert 0 <= m["test_acc"] <= 1 and m["teacher_kl"] >= 0
    history = client.get_metric_history(student.info.run_id, "val_acc")
    assert sorted(h.step for h in history) == [1, 2]
    assert student.data.params["train.epochs"] == "2"
    assert student.data.params["loss"] == "ban"
    arts = {a.path for a in client.list_artifacts(student.info.run_id)}
    assert {"checkpoint", "protocol", "environment"} <= arts
    ckpt = client.list_artifacts(student.info.run_id, "checkpoint")
    assert [a.path for a in ckpt] == ["checkpoint/model.pt"] and ckpt[0].file_size > 0
    env = client.download_artifacts(student.info.run_id, "environment/environment.json", str(cwd))
    text = Path(env).read_text()
    assert '"torch"' in text and '"git_commit"' in text and '"python"' in text


def test_run_writes_the_first_report(finished_study) -> None:
    cwd, _ = finished_study
    report = (cwd / "reports" / "tiny" / "report.md").read_text()
    lines = [x for x in report.splitlines() if x.startswith("|")]  # table rows, padded
    rows = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    assert ["teacher", "teacher"] in [r[:2] for r in rows]  # role, kind
    assert ["ban/gen2", "teacher", "vs teacher"] in [r[:3] for r in rows]  # A, B, family
    assert "In every row: n = 3." in report  # every role and comparison has the 3 seeds
    assert "paired" in report.lower()


def test_second_run_trains_nothing(finished_study) -> None:
    cwd, _ = finished_study
    _, before = _runs(cwd)
    proc = study("run", "tiny.toml", "--no-report", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to train" in proc.stdout
    _, after = _runs(cwd)
    assert len(after) == len(before)


def test_changed_recipe_trains_only_what_changed(finished_study) -> None:
    cwd, _ = finished_study
    text = (cwd / "tiny.toml").read_text().replace("alpha = 0.9", "alpha = 0.5")
    (cwd / "tiny2.toml").write_text(text)
    proc = study("run", "tiny2.toml", "--no-report", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "trained 3 runs, reused 12" in " ".join(proc.stdout.split())


def test_bad_protocol_exits_2_and_creates_no_run(tmp_path: Path, tiny_protocol_text) -> None:
    (tmp_path / "bad.toml").write_text(tiny_protocol_text.replace("alpha = 0.9", "alpha = 1.5"))
    proc = study("run", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr and "alpha" in proc.stderr and "[0, 1]" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_absent_dataset_exits_2_naming_where_and_how(tmp_path: Path, tiny_protocol_text) -> None:
    text = tiny_protocol_text.replace('dataset = "digits"', 'dataset = "cifar100"\nroot = "nodata"')
    (tmp_path / "cifar.toml").write_text(text)
    proc = study("run", "cifar.toml", cwd=tmp_path)
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert "cifar.toml" in message and "nodata" in message and "download" in message
    assert not (tmp_path / "mlflow.db").exists()


def test_validate_prints_the_plan(tmp_path: Path, tiny_protocol_text) -> None:
    (tmp_path / "tiny.toml").write_text(tiny_protocol_text)
    proc = study("validate", "tiny.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "5 roles x 3 seeds = 15 runs, 24 epochs in total" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_export_then_report_from_the_export_alone(finished_study) -> None:
    cwd, _ = finished_study
    proc = study("export", "tiny.toml", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    runs = pd.read_csv(cwd / "results" / "tiny" / "runs.csv")
    assert len(runs) == len(ROLES) * len(SEEDS)
    assert set(runs["status"]) == {"FINISHED"}
    assert {"role", "seed", "arm", "generation", "fingerprint", "test_acc", "teacher_kl"} <= set(
        runs.columns
    )
    curves = pd.read_csv(cwd / "results" / "tiny" / "curves.csv")
    assert set(curves["epoch"]) == {1, 2} and "val_acc" in set(curves["metric"])
    # the tracker is gone: the report comes from the export alone
    (cwd / "mlflow.db").rename(cwd / "mlflow.db.away")
    try:
        (cwd / "reports" / "tiny" / "report.md").unlink()
        proc = study("report", "tiny.toml", "--from-export", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert (cwd / "reports" / "tiny" / "report.md").exists()
        assert not (cwd / "mlflow.db").exists()
    finally:
        (cwd / "mlflow.db.away").rename(cwd / "mlflow.db")


@pytest.mark.parametrize("layout", [None, "false"])
def test_execution_channels_last_reaches_the_convnets_training(
    workdir: Path, tiny_protocol_text, layout, monkeypatch
) -> None:
    from study import engine, execute, pack, train
    from study.protocol import parse_protocol
    from study.track import Tracker

    text = tiny_protocol_text.replace("seeds = 3", "seeds = 2").replace(
        'arch = "mlp"\nkwargs = { hidden = [32] }',
        'arch = "small_cnn"\nkwargs = { channels = [4, 8] }',
    )
    text = text.replace("epochs = 2", "epochs = 1")
    if layout is not None:
        text += f"\n[execution]\nchannels_last = {layout}\n"
    protocol = parse_protocol(text)
    seen = []
    real_to_device = train.to_device

    def spy(model, device):
        seen.append(engine.channels_last.on)
        return real_to_device(model, device)

    monkeypatch.setattr(train, "to_device", spy)
    monkeypatch.setattr(pack, "to_device", spy)
    tracker = Tracker(f"sqlite:///{workdir}/mlflow.db")
    summary = execute.run_study(protocol, tracker)
    assert not summary.failed and summary.trained == 10  # 2 seeds x (teacher, 2 gens, ens, kd)
    assert seen and set(seen) == {layout is None}
    assert engine.channels_last.on  # as it was before the study
    teacher_run = summary.runs["teacher@0"]["run_id"]
    state = tracker.load_checkpoint(teacher_run)
    assert all(v.is_contiguous() for v in state.values())  # logged in the plain format


@pytest.mark.parametrize(
    ("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_the_invocation_run_ends_failed_when_an_error_escapes_and_killed_on_ctrl_c(
    workdir: Path, tiny_protocol_text, monkeypatch, error, status
) -> None:
    from study import execute
    from study.protocol import parse_protocol
    from study.track import Tracker

    def crash(self, role, seeds, summary):
        raise error

    monkeypatch.setattr(execute._Session, "train_pack", crash)
    tracker = Tracker(f"sqlite:///{workdir}/mlflow.db")
    with pytest.raises(type(error)):
        execute.run_study(parse_protocol(tiny_protocol_text), tracker)
    exp_id = tracker.experiment_id("tiny", create=False)
    parents = tracker.client.search_runs([exp_id], "tags.kind = 'invocation'")
    assert [r.info.status for r in parents] == [status]
