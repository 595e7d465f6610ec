"""The shipped offline grid (protocols/ban_grid_digits.toml: BAN across three teachers on
the digits data) end to end: `study run` trains every condition, tags its runs, writes a
report per condition and the report across conditions; `study export`, `study report
--from-export`, `study status` and `study plan-seeds --condition-col` read them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from study.analysis.stats.meta import random_effects
from study.cli import app
from study.conditions import load_study
from study.track import Tracker

PROTOCOL = Path("protocols/ban_grid_digits.toml").resolve()
CONDITIONS = ["mlp-32", "mlp-128", "mlp-64x64"]
runner = CliRunner()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    where = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        out = runner.invoke(app, ["run", str(PROTOCOL)])
        assert out.exit_code == 0, out.output
        yield where, out.output


def test_every_condition_trains_as_its_own_tagged_runs(ran) -> None:
    where, output = ran
    for i, name in enumerate(CONDITIONS, 1):
        assert f"condition '{name}' ({i} of 3)" in output
    tracker = Tracker(f"sqlite:///{where / 'mlflow.db'}")
    exp = tracker.experiment_id("ban_grid_digits", create=False)
    study = load_study(PROTOCOL)
    for p in study.protocols:
        runs = tracker.client.search_runs(
            [exp], f"tags.condition = '{p.condition}' and tags.role != ''", max_results=1000
        )
        assert len(runs) == 6 * 5  # 6 roles x 5 seeds
        assert {r.data.params["condition"] for r in runs} == {p.condition}
        index = where / "results" / "ban_grid_digits" / str(p.condition) / "run.json"
        assert len(json.loads(index.read_text())["runs"]) == 30
    fingerprints = {
        r.data.tags["fingerprint"]
        for r in tracker.client.search_runs([exp], "tags.role = 'teacher'", max_results=100)
    }
    assert len(fingerprints) == 15  # 3 conditions x 5 seeds: no run shared across conditions


def test_a_report_per_condition_and_one_across_conditions(ran) -> None:
    where, _ = ran
    root = where / "reports" / "ban_grid_digits"
    for name in CONDITIONS:
        md = (root / name / "report.md").read_text()
        assert md.startswith(f"# Study report: ban_grid_digits, condition {name}\n\nBAN across")
        assert "the report across conditions is [../report.md](../report.md)" in md
    md = (root / "report.md").read_text()
    assert md.startswith("# Study report across conditions: ban_grid_digits\n\nBAN across")
    assert "3 of 3 conditions with results, 90 of 90 planned runs finished" in md
    assert "**What 3 conditions cannot show.**" in md
    assert "With 3 conditions no rank-based claim can be made" in md
    for figure in [*(f"forest_{i}" for i in range(1, 9)), "ranks"]:
        assert (root / "figures" / f"{figure}.png").exists(), figure
        assert f"![{figure}](figures/{figure}.png)" in md
    assert (root / "table.tex").read_text().count("$ (5)") == 3 * 6  # mean $\\pm$ CI (n)


def test_the_pooled_effect_is_recomputed_from_the_export(ran) -> None:
    where, _ = ran
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        out = runner.invoke(app, ["export", str(PROTOCOL)])
        assert out.exit_code == 0, out.output
    table = pd.read_csv(where / "results" / "ban_grid_digits" / "conditions.csv")
    assert sorted(set(table["condition"])) == sorted(CONDITIONS) and len(table) == 90
    for name in CONDITIONS:
        runs = pd.read_csv(where / "results" / "ban_grid_digits" / name / "runs.csv")
        assert set(runs["condition"]) == {name}
    y, v = [], []
    for name in CONDITIONS:
        wide = table[table["condition"] == name].pivot(
            index="seed", columns="role", values="test_acc"
        )
        d = (wide["ban/gen1"] - wide["teacher"]).to_numpy()
        y.append(d.mean())
        v.append(d.var(ddof=1) / len(d))
    m = random_effects(y, v)
    md = (where / "reports" / "ban_grid_digits" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ban/gen1 - teacher "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3" and float(cells[3]) == pytest.approx(100 * m.mean, abs=0.0051)
    lo, hi = (float(x) for x in re.findall(r"[-+][\d.]+", cells[4]))
    assert (lo, hi) == pytest.approx((100 * m.ci95[0], 100 * m.ci95[1]), abs=0.0051)


def test_report_from_the_export_is_the_report_from_the_tracker(ran) -> None:
    where, _ = ran
    root = where / "reports" / "ban_grid_digits"

    def body(text: str) -> str:  # without the date
        return re.sub(r"generated\*\*: [^,]+,", "", text)

    before = body((root / "report.md").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        out = runner.invoke(app, ["export", str(PROTOCOL)])
        assert out.exit_code == 0, out.output
        out = runner.invoke(app, ["report", str(PROTOCOL), "--from-export"])
        assert out.exit_code == 0, out.output
    assert body((root / "report.md").read_text()) == before


def test_a_second_run_trains_nothing_and_status_shows_every_condition(ran) -> None:
    where, _ = ran
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        out = runner.invoke(app, ["run", str(PROTOCOL), "--no-report"])
        assert out.exit_code == 0, out.output
        assert out.output.count("nothing to train: all 30 runs") == 3
        out = runner.invoke(app, ["status", str(PROTOCOL)])
        assert out.exit_code == 0, out.output
        for name in CONDITIONS:
            assert f"condition '{name}'" in out.output


def test_plan_seeds_over_conditions_reads_the_export(ran) -> None:
    where, _ = ran
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        runner.invoke(app, ["export", str(PROTOCOL)])
        out = runner.invoke(
            app,
            [
                "plan-seeds", "results/ban_grid_digits/conditions.csv", "--effect", "0.005",
                "--condition-col", "condition", "--group-col", "role", "--value-col",
                "test_acc", "--pairs", "ban/gen1:teacher", "--json",
            ],
        )  # fmt: skip
    assert out.exit_code == 0, out.output
    (row,) = json.loads(out.stdout)
    assert (row["a"], row["b"], row["conditions"], row["seeds"]) == ("ban/gen1", "teacher", 3, 5)
    assert 0 <= row["power"] <= row["power_2n"] <= row["power_all_seeds"] <= 1
    assert np.isfinite(row["sigma"]) and row["conditions_needed"] >= 3


def test_a_scheduled_job_trains_only_its_condition_and_seeds(tmp_path, monkeypatch) -> None:
    """`--executor slurm` submits each condition's jobs; a job's worker loads its own
    condition of the protocol (run_worker's condition argument)."""
    from study.submit import run_worker

    grid = tmp_path / "grid.toml"
    grid.write_text(
        PROTOCOL.read_text().replace("seeds = 5", "seeds = 2").replace("epochs = 5", "epochs = 1")
    )
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_worker(str(grid), uri, [1], str(tmp_path), "cpu", "mlp-128")
    assert done["trained"] == 6 and not done["failed"]  # 5 trained roles and an ensemble
    tracker = Tracker(uri)
    runs = tracker.runs_frame("ban_grid_digits")
    assert set(runs["seed"]) == {1} and len(runs) == 6
    exp = tracker.experiment_id("ban_grid_digits", create=False)
    tagged = tracker.client.search_runs([exp], "tags.condition = 'mlp-128'", max_results=100)
    assert len([r for r in tagged if "role" in r.data.tags]) == 6
