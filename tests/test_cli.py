"""The statistics commands on tidy tables: `study compare` and `study plan-seeds`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli import app

# R's `sleep` data: extra sleep of 10 patients under two drugs (paired by ID).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

runner = CliRunner()


def _write(path: Path, rows: list[tuple]) -> Path:
    path.write_text("seed,group,value\n" + "".join(f"{s},{g},{v}\n" for s, g, v in rows))
    return path


@pytest.fixture
def sleep_csv(tmp_path: Path) -> Path:
    rows = [(i + 1, "drug1", v) for i, v in enumerate(SLEEP_1)]
    rows += [(i + 1, "drug2", v) for i, v in enumerate(SLEEP_2)]
    return _write(tmp_path / "sleep.csv", rows)


def test_compare_json_reproduces_r_sleep_reference(sleep_csv: Path) -> None:
    # R: t.test(extra ~ group, data = sleep, paired = TRUE)
    # t = -4.0621, df = 9, p-value = 0.002833, 95% CI -2.4598858 -0.7001142
    res = runner.invoke(app, ["compare", str(sleep_csv), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    [c] = data["comparisons"]
    assert (c["a"], c["b"], c["n"], c["df"]) == ("drug1", "drug2", 10, 9)
    assert c["t"] == pytest.approx(-4.062127683382037, abs=1e-9)
    assert c["p_t"] == pytest.approx(0.002832890, abs=1e-9)
    assert c["ci95"] == pytest.approx([-2.4598857633, -0.7001142367], abs=1e-9)
    assert c["mean_diff"] == pytest.approx(-1.58, abs=1e-12)
    assert data["omnibus"] is None


def test_compare_prints_a_table_and_a_verdict(sleep_csv: Path) -> None:
    res = runner.invoke(
        app, ["compare", str(sleep_csv), "--baseline", "drug2"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "drug1" in res.output and "0.0028" in res.output and "significant" in res.output


def test_compare_three_groups_has_omnibus_and_corrects_the_family(tmp_path: Path) -> None:
    rows = [
        (s, g, v + off + 0.01 * ((s * 7 + k) % 5))
        for k, (g, off) in enumerate([("a", 0.0), ("b", 0.5), ("c", 1.0)])
        for s, v in enumerate(SLEEP_1)
    ]
    path = _write(tmp_path / "three.csv", rows)
    res = runner.invoke(app, ["compare", str(path), "--json", "--correction", "bonferroni"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [(c["a"], c["b"]) for c in data["comparisons"]] == [("a", "b"), ("a", "c"), ("b", "c")]
    for c in data["comparisons"]:
        assert c["p_adj"] == pytest.approx(min(1.0, 3 * c["p"]))
    assert data["omnibus"]["k"] == 3 and data["omnibus"]["p_friedman"] < 0.05


def test_compare_pairs_option(sleep_csv: Path) -> None:
    res = runner.invoke(app, ["compare", str(sleep_csv), "--pairs", "drug2:drug1", "--json"])
    [c] = json.loads(res.output)["comparisons"]
    assert (c["a"], c["b"]) == ("drug2", "drug1") and c["mean_diff"] == pytest.approx(1.58)


@pytest.mark.parametrize(
    "content,args,words",
    [
        ("seed,grp,value\n1,a,1\n", [], "group"),
        ("seed,group,value\n1,a,x\n2,a,y\n1,b,1\n2,b,2\n", [], "numeric"),
        ("seed,group,value\n1,a,1\n2,a,2\n1,b,1\n2,b,2\n", ["--baseline", "zz"], "zz"),
        ("seed,group,value\n1,a,1\n2,a,2\n1,b,1\n3,b,2\n", [], "paired"),
        ("seed,group,value\n1,a,1\n", ["--pairs", "a-b"], "A:B"),
    ],
    ids=["missing-column", "non-numeric", "absent-baseline", "one-paired-seed", "bad-pairs"],
)
def test_bad_tables_exit_2_naming_the_problem(tmp_path: Path, content, args, words) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    res = runner.invoke(app, ["compare", str(path), *args])
    assert res.exit_code == 2, res.output
    assert words in res.output


def test_missing_table_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["compare", str(tmp_path / "absent.csv")])
    assert res.exit_code == 2 and "not found" in res.output


def test_plan_seeds_from_observed_differences(sleep_csv: Path) -> None:
    res = runner.invoke(app, ["plan-seeds", str(sleep_csv), "--effect", "1.0", "--json"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(res.output)
    # sd of the sleep differences is 1.22999..., d = 1/1.23 = 0.813; by the noncentral t,
    # the power of the two-sided paired t is 0.768 with 13 pairs and 0.803 with 14.
    assert row["sd_diff"] == pytest.approx(1.229995483, abs=1e-8)
    assert row["n_required"] == 14
    assert row["n"] == 10


def test_plan_seeds_warns_when_the_test_cannot_reach_alpha(tmp_path: Path) -> None:
    rows = [(s, "a", v) for s, v in enumerate([1.0, 2.0, 3.0, 4.5, 5.0])]
    rows += [(s, "b", v) for s, v in enumerate([1.5, 2.1, 3.3, 4.0, 5.6])]
    path = _write(tmp_path / "five.csv", rows)
    res = runner.invoke(
        app,
        ["plan-seeds", str(path), "--effect", "0.3", "--test", "wilcoxon"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "0.0625" in res.output


def test_compare_names_the_flags_of_every_missing_column(tmp_path: Path) -> None:
    """The export's columns (role, test_acc) with the defaults (group, value): both are
    named, each with the option that sets it."""
    table = tmp_path / "runs.csv"
    table.write_text("role,seed,test_acc\nteacher,0,0.9\nteacher,1,0.91\nkd,0,0.92\nkd,1,0.93\n")
    res = runner.invoke(app, ["compare", str(table), "--baseline", "teacher"])
    assert res.exit_code == 2
    message = " ".join(res.output.split())
    assert "'value' (set by --value-col)" in message
    assert "'group' (set by --group-col)" in message
    assert "role, seed, test_acc" in message and "value_col" not in message
    res = runner.invoke(app, ["plan-seeds", str(table), "--effect", "0.01", "--group-col", "role"])
    assert res.exit_code == 2 and "--value-col" in res.output and "--group-col" not in res.output


@pytest.mark.parametrize(
    "x,digits,text",
    [
        (2.8e200, 4, "2.800e+200"),
        (2.8e-310, 4, "2.800e-310"),
        (-3.5e-7, 4, "-3.500e-07"),
        (123456789.0, 2, "1.2e+08"),
        (0.5, 4, "0.5000"),
        (0.0, 4, "0.0000"),
        (-12.25, 2, "-12.25"),
        (float("nan"), 4, "-"),
        (None, 4, "-"),
        (float("inf"), 4, "inf"),
    ],
)
def test_numbers_stay_readable_at_any_magnitude(x, digits, text) -> None:
    from study.cli.terminal import fmt_number

    assert fmt_number(x, digits) == text
