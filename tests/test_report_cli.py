"""The report commands on a real study: a report and an export from the tracker alone
(the data folder deleted), `study compare` reproducing the report's adjusted p-values,
and the bulk read of the learning curves (issue 16)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from study.cli import app

runner = CliRunner()

PROTOCOL = """
[study]
name = "folders"
description = "A tiny image-folder study whose data is deleted after the run."
seeds = 4

[data]
dataset = "imagefolder"
root = "data"
val_size = 0.2
image_size = 8

[train]
epochs = 3
batch_size = 16
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
kwargs = { hidden = [8] }
loss = { name = "kd", temperature = 4.0, alpha = 0.9 }

[[arms]]
name = "small"
arch = "mlp"
kwargs = { hidden = [8] }
loss = "ce"
"""
PAIRS = '\n[analysis]\npairs = [["kd/gen1", "small/gen1"]]\n'  # analysis only: same runs


def write_folders(root: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Class folders of noisy 8x8 RGB images around a class colour (PNG files)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200), "d": (150, 150, 40)}
    for split, n in per_class.items():
        for cls, colour in colours.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                noise = rng.normal(0, 90, size=(8, 8, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A finished study whose data folder is gone."""
    work = tmp_path_factory.mktemp("folders")
    write_folders(work / "data", {"train": 30, "test": 20})
    (work / "plain.toml").write_text(PROTOCOL)
    (work / "p.toml").write_text(PROTOCOL + PAIRS)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        res = runner.invoke(app, ["run", "plain.toml", "--no-report"])
        assert res.exit_code == 0, res.output
    shutil.rmtree(work / "data")
    return work


@pytest.fixture
def in_study(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(study_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return study_dir


def test_report_and_export_need_the_tracker_only_not_the_data(in_study: Path) -> None:
    assert not (in_study / "data").exists()
    res = runner.invoke(app, ["report", "plain.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    md = (in_study / "reports" / "folders" / "report.md").read_text()
    assert "24 runs, 24 finished" in md
    # the split sizes and input shape come from the runs' tags: 4 classes x 30 images, a
    # fifth of them for validation, 4 x 20 test images of 3 x 8 x 8
    assert "96 training, 24 validation (val_size = 0.2" in md
    assert "80 test examples; 4 classes, inputs 3 x 8 x 8" in md
    assert (in_study / "reports" / "folders" / "table.tex").exists()
    # the label-only student of the KD student's architecture learns from no model
    assert re.search(
        r"^\| small/gen1 +\| mlp \(hidden = \[8\]\) +\| +[\d,]+ \| labels only ", md, re.M
    )
    res = runner.invoke(app, ["export", "plain.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    meta = json.loads((in_study / "results" / "folders" / "meta.json").read_text())
    assert meta["data_facts"]["test"] == 80 and len(meta["data_identity"]) == 64


def test_a_changed_data_setting_is_not_reported_from_runs_of_the_old_one(in_study: Path) -> None:
    (in_study / "q.toml").write_text(PROTOCOL.replace("val_size = 0.2", "val_size = 0.25"))
    res = runner.invoke(app, ["report", "q.toml"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "no run in" in res.output, res.output


def test_compare_with_the_protocol_gives_the_reports_adjusted_p_values(in_study: Path) -> None:
    from study.analysis.report import build_report
    from study.cli.reporting import collect_study as _collect

    assert runner.invoke(app, ["export", "p.toml"]).exit_code == 0
    rep = build_report(*_collect(Path("p.toml"), None))
    res = runner.invoke(
        app,
        ["compare", "results/folders/runs.csv", "--protocol", "p.toml", "--json"],
        env={"COLUMNS": "300"},
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output[res.output.index("{") :])
    ours = [(c["a"], c["b"], c["p_adj"]) for c in data["comparisons"]]
    theirs = [(c["a"], c["b"], c["p_adj"]) for c in rep.tested]
    assert len(ours) == rep.family_size == 10 and ours == theirs  # exactly, not approx
    assert data["settings"]["family_size"] == rep.family_size
    # the text output is in the report's units, with the report's verdict sentences
    res = runner.invoke(
        app, ["compare", "results/folders/runs.csv", "--protocol", "p.toml"], env={"COLUMNS": "300"}
    )
    assert res.exit_code == 0, res.output
    assert "differences in points" in " ".join(res.output.split())
    for c in rep.tested:
        assert f"- {c['sentence']}" in res.output


def test_compare_of_an_export_column_prints_points_not_fractions(tmp_path: Path) -> None:
    from study.analysis.collect import write_export
    from tests.test_report import protocol, synthetic

    c = synthetic(protocol(6))
    write_export(c, tmp_path)
    wide = c.table.pivot(index="seed", columns="role", values="test_acc")
    diff = 100 * (wide["kd/gen1"] - wide["teacher"]).mean()
    res = runner.invoke(
        app,
        [
            "compare",
            str(tmp_path / "runs.csv"),
            "--group-col",
            "role",
            "--value-col",
            "test_acc",
            "--pairs",
            "kd/gen1:teacher",
        ],
        env={"COLUMNS": "300"},
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the table's title may wrap
    assert "differences in points" in text
    assert f"kd/gen1 - teacher = {diff:+.2f} points" in text
    assert f"{diff / 100:.4f}" not in text  # no fraction of one


def test_bulk_curves_are_the_per_run_histories(in_study: Path) -> None:
    from study.track import Tracker

    tracker = Tracker()
    runs = tracker.runs_frame("folders")
    trained = list(runs.loc[runs["kind"] != "ensemble", "run_id"])
    bulk = tracker.metric_histories(trained, ["val_acc", "train_loss"])
    one_by_one = sorted(
        (run_id, key, step, value)
        for key in ("val_acc", "train_loss")
        for run_id in trained
        for step, value in tracker.metric_history(run_id, key)
    )
    assert sorted(bulk.itertuples(index=False, name=None)) == one_by_one
    assert len(one_by_one) == len(trained) * 2 * 3  # 3 epochs, every run


def test_runs_read_as_columns_are_the_runs_search_returns(
    in_study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from study.track import Tracker

    tracker = Tracker()
    fast = tracker.runs_frame("folders").sort_values("run_id").reset_index(drop=True)
    monkeypatch.setattr(Tracker, "_database_store", lambda self: None)  # search_runs
    searched = tracker.runs_frame("folders").sort_values("run_id").reset_index(drop=True)
    assert len(fast) == 24 and fast["fingerprint"].str.len().eq(32).all()
    pd.testing.assert_frame_equal(fast, searched, check_dtype=False)
    assert fast["data_facts"].notna().all() and (fast["pack_size"] == "4").any()
