"""Shared fixtures: a real MLflow sqlite store in a temporary directory, small protocols."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _process_settings() -> None:
    """Every test runs in the process settings a training makes (``train_role`` makes them
    on its first call): the same state whatever order the tests run in."""
    from study.determinism import configure_cuda_process

    configure_cuda_process()


_process_settings()

TINY_PROTOCOL = """
[study]
name = "tiny"
seeds = 3

[data]
dataset = "digits"
val_size = 0.15
augmentation = "none"

[train]
epochs = 2
batch_size = 128
lr = 0.05
nesterov = true
schedule = "cosine"
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [32] }

[[arms]]
name = "ban"
loss = "ban"
generations = 2
ensemble = true

[[arms]]
name = "kd"
arch = "mlp"
kwargs = { hidden = [16] }
loss = { name = "kd", temperature = 4.0, alpha = 0.9 }
"""


@pytest.fixture
def tiny_protocol_text() -> str:
    return textwrap.dedent(TINY_PROTOCOL)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, as a user's: MLflow's default store lands here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def tiny_protocol(workdir: Path, tiny_protocol_text: str) -> Path:
    path = workdir / "tiny.toml"
    path.write_text(tiny_protocol_text)
    return path


def interruptible() -> None:
    """In the child, before exec: SIGINT back to its default. A shell's background job
    (`pytest &`, CI scripts) inherits SIGINT ignored, and then Python installs no Ctrl-C
    handler and the interrupt tests would see no interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def digits():
    """The bundled digits, split as the default study splits them (read once per session)."""
    from study.data import load_data

    return load_data("digits", root="data", val_size=0.15, data_seed=0)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny study (TINY_PROTOCOL as tiny.toml, 15 runs) with its report, run
    once per session in a directory of its own; its store is sqlite:///<dir>/mlflow.db.
    Tests that read it must not change it."""
    from typer.testing import CliRunner

    from study.cli import app

    work = tmp_path_factory.mktemp("tiny_study")
    (work / "tiny.toml").write_text(textwrap.dedent(TINY_PROTOCOL))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        res = CliRunner().invoke(app, ["run", "tiny.toml"], env={"COLUMNS": "300"})
        assert res.exit_code == 0, res.output
    return work
