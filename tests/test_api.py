"""The notebook API (`from study import load_results, compare`) on a real tiny study: the
same table as `study export`, the statistics engine's result as a DataFrame, and the
example in docs/notebook.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from study.cli import app
from study.errors import UserInputError

runner = CliRunner()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "notebook.md"


@pytest.fixture
def in_tiny_study(tiny_study: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tiny_study)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tiny_study


def test_load_results_is_the_table_study_export_writes(in_tiny_study: Path, tmp_path) -> None:
    from study import load_results

    res = runner.invoke(app, ["export", "tiny.toml", "--export", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output
    runs = load_results("tiny.toml")
    assert isinstance(runs, pd.DataFrame) and len(runs) == 15  # 5 roles x 3 seeds
    exported = (tmp_path / "export" / "runs.csv").read_text()
    assert runs.to_csv(index=False) == exported
    uri = f"sqlite:///{in_tiny_study / 'mlflow.db'}"
    assert load_results(in_tiny_study / "tiny.toml", tracking_uri=uri).equals(runs)


def test_compare_runs_the_engine_on_a_dataframe(in_tiny_study: Path) -> None:
    from study import compare, load_results
    from study.analysis.stats import compare as engine

    runs = load_results("tiny.toml")
    frame = compare(runs, baseline="teacher", value_col="test_acc").to_frame()
    assert list(frame["b"].unique()) == ["teacher"]
    assert set(frame["a"]) == {"ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1"}
    assert (frame["n"] == 3).all()
    direct = engine(
        runs, value_col="test_acc", group_col="role", seed_col="seed", baseline="teacher"
    )
    assert list(frame["p_adj"]) == [c.p_adj for c in direct.comparisons]


def test_compare_leaves_out_rows_that_did_not_finish() -> None:
    from study import compare

    rows = [("a", s, 0.5 + s / 10, "FINISHED") for s in range(4)]
    rows += [("b", s, 0.4 + s / 9, "FINISHED") for s in range(4)]
    rows += [("b", 4, float("nan"), "FAILED")]
    table = pd.DataFrame(rows, columns=["role", "seed", "test_acc", "status"])
    [c] = compare(table, baseline="a").comparisons
    assert (c.a, c.b, c.n) == ("b", "a", 4)


def test_load_results_of_a_store_without_the_study_says_so(workdir: Path, tiny_protocol) -> None:
    from study import load_results

    with pytest.raises(UserInputError, match="no MLflow store"):
        load_results(tiny_protocol)


def test_the_notebook_example_in_the_docs_runs(in_tiny_study: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace("protocols/ban_digits.toml", "tiny.toml")
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    table = namespace["table"]
    assert len(table) == 4 and {"a", "b", "mean_diff", "p_adj"} <= set(table.columns)
    assert len(namespace["ax"].collections) >= 1  # the strip plot drew its points
