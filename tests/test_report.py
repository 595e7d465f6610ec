"""The study report, from hand-built tidy results with a known structure (no training)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from study.analysis import figures, report, report_tables
from study.analysis.collect import Collected, read_export, write_export
from study.analysis.report import build_report, format_p, render_markdown, write_report
from study.plan import expand
from study.protocol import Protocol, parse_protocol
from study.track import FINAL_METRICS

PROTOCOL = """
[study]
name = "synthetic"
description = "Hand-built results: gen1 = teacher + 1 point, gen2 = gen1 - 0.2 points."
seeds = {seeds}

[teacher]
arch = "mlp"
kwargs = {{ hidden = [16] }}

[[arms]]
name = "ban"
loss = "ban"
generations = 2
ensemble = {ensemble}

[[arms]]
name = "kd"
loss = {{ name = "kd", temperature = 4.0, alpha = 0.9 }}

[analysis]
test = "{test}"
min_effect = 0.005
"""
# The known structure: a seed effect shared by every role, a role offset, small noise.
OFFSET = {"teacher": 0.0, "ban/gen1": 0.01, "ban/gen2": 0.008, "ban/ens2": 0.012, "kd/gen1": 0.004}


def protocol(seeds: int = 10, *, ensemble: bool = True, test: str = "t") -> Protocol:
    text = PROTOCOL.format(seeds=seeds, ensemble=str(ensemble).lower(), test=test)
    return parse_protocol(text, source="synthetic.toml")


def synthetic(
    p: Protocol,
    *,
    noise: float = 0.002,
    status: dict[tuple[str, int], tuple[str, str]] | None = None,
    epochs: int = 3,
) -> Collected:
    """One row per planned (role, seed): value = 0.9 + seed effect + role offset + noise."""
    plan = expand(p)
    rng = np.random.default_rng(0)
    seed_effect = {s: rng.normal(0, 0.004) for s in plan.seeds}
    status = status or {}
    rows, curves = [], []
    for role in plan.roles:
        for seed in plan.seeds:
            acc = 0.9 + seed_effect[seed] + OFFSET[role.key] + rng.normal(0, noise)
            st, reason = status.get((role.key, seed), ("FINISHED", ""))
            done = st == "FINISHED"
            row = {
                "role": role.key,
                "kind": role.kind,
                "arm": role.arm,
                "generation": role.generation,
                "seed": seed,
                "status": st,
                "run_id": f"run{role.key.replace('/', '')}{seed}" if st != "ABSENT" else "",
                "fingerprint": f"fp-{role.key}-{seed}",
                "reason": reason,
                **{m: np.nan for m in FINAL_METRICS},
            }
            if done:
                row.update(test_acc=acc, test_nll=1.2 - acc, test_ece=0.02, val_acc=acc + 0.01)
                row.update(val_nll=1.1 - acc)
                if role.kind != "teacher":
                    row.update(teacher_agreement=0.97, teacher_kl=0.05)
            rows.append(row)
            if done and role.kind != "ensemble":
                for epoch in range(1, epochs + 1):
                    curves.append((role.key, seed, epoch, "val_acc", acc - 0.1 / epoch))
                    curves.append((role.key, seed, epoch, "test_acc", acc - 0.12 / epoch))
                    curves.append((role.key, seed, epoch, "val_nll", 0.3 + 0.5 / epoch))
                    curves.append((role.key, seed, epoch, "test_nll", 0.32 + 0.5 / epoch))
                    curves.append((role.key, seed, epoch, "train_loss", 1.0 / epoch))
    return Collected(
        runs=pd.DataFrame(rows),
        curves=pd.DataFrame(curves, columns=["role", "seed", "epoch", "metric", "value"]),
        meta={
            "study": p.study.name,
            "protocol_sha": p.sha256,
            "data_identity": "synthetic-data",
            "tracking_uri": "sqlite:///synthetic.db",
            "experiment_id": "7",
        },
    )


def row_of(markdown: str, *cells: str) -> str:
    """The Markdown table line whose first cells are ``cells`` (padding ignored)."""
    pattern = r"^\|\s*" + r"\s*\|\s*".join(re.escape(c) for c in cells) + r"\s*\|.*$"
    found = re.findall(pattern, markdown, flags=re.MULTILINE)
    assert len(found) == 1, (cells, found)
    return found[0]


def section(markdown: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of any level."""
    after = markdown.split(f"\n{heading}\n", 1)[1]
    return re.split(r"^#+ ", after, maxsplit=1, flags=re.MULTILINE)[0]


def cells(row: str) -> list[str]:
    return [x.strip() for x in row.strip().strip("|").split("|")]


def paired(c: Collected, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    t = c.table.pivot(index="seed", columns="role", values="test_acc")[[a, b]].dropna()
    return t[a].to_numpy(), t[b].to_numpy()


# The report machine's environment, fixed: the git commit may move while tests run.
ENVIRONMENT = {
    "git_commit": "0123456789abcdef",
    "git_dirty": False,
    "python": "3.x",
    "torch": "2.x",
    "platform": "test-platform",
    "packages": {"numpy": "1", "scipy": "1", "statsmodels": "0", "pandas": "2"},
}


@pytest.fixture(autouse=True)
def fixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "environment", lambda: ENVIRONMENT)


def markdown_of(p: Protocol, c: Collected) -> str:
    """report.md's text without drawing the figures (the figures have tests of their own)."""
    return render_markdown(build_report(p, c), [])


@pytest.fixture(scope="module")
def ten_seeds(tmp_path_factory) -> tuple[Collected, Path, list[Path]]:
    p = protocol(10)
    c = synthetic(p)
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "environment", lambda: ENVIRONMENT)
        return c, out, write_report(build_report(p, c), out)


def test_report_writes_markdown_html_and_figures(ten_seeds) -> None:
    _, out, paths = ten_seeds
    names = {p.relative_to(out).as_posix() for p in paths}
    assert {"report.md", "report.html"} <= names
    for fig in ("distributions", "paired_seeds", "learning_curves", "critical_difference"):
        assert f"figures/{fig}.png" in names
        assert (out / "figures" / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{fig}.png)" in (out / "report.md").read_text()


def test_comparison_row_carries_the_paired_t_test_of_the_data(ten_seeds) -> None:
    c, out, _ = ten_seeds
    md = (out / "report.md").read_text()
    a, b = paired(c, "ban/gen1", "teacher")
    res = stats.ttest_rel(a, b)
    row = row_of(md, "ban/gen1", "teacher", "vs teacher")
    assert "In every row: n = 10." in section(md, "## Comparisons")  # one n: said once
    assert format_p(res.pvalue) in cells(row)
    assert f"{100 * np.mean(a - b):+.2f}" in row  # the difference, in points
    lo, hi = res.confidence_interval(0.95)
    assert f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" in row
    assert "significantly higher" in row  # +1 point over sd ~0.3: unmistakable


def test_p_values_are_holm_corrected_across_all_comparisons(ten_seeds) -> None:
    c, out, _ = ten_seeds
    md = (out / "report.md").read_text()
    pairs = [
        ("ban/gen1", "teacher"),
        ("ban/gen2", "teacher"),
        ("ban/ens2", "teacher"),
        ("kd/gen1", "teacher"),
        ("ban/gen2", "ban/gen1"),
        ("ban/ens2", "ban/gen2"),  # the ensemble against its last member
        ("ban/gen1", "kd/gen1"),
    ]
    raw = [stats.ttest_rel(*paired(c, a, b)).pvalue for a, b in pairs]
    holm = multipletests(raw, method="holm")[1]
    table = section(md, "## Comparisons")
    header = cells(row_of(table, "A", "B"))
    for (a, b), p, p_adj in zip(pairs, raw, holm, strict=True):
        row = dict(zip(header, cells(row_of(table, a, b)), strict=True))
        assert row["p"] == format_p(p) and row["p adj."] == format_p(p_adj), (a, b, row)
    assert "Holm-corrected" in md and "the 7 comparisons below" in md


def test_summary_has_the_t_interval_of_each_role_in_percent(ten_seeds) -> None:
    c, out, _ = ten_seeds
    md = (out / "report.md").read_text()
    v = c.table.loc[c.table["role"] == "teacher", "test_acc"].to_numpy()
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    row = row_of(md, "teacher", "teacher")
    assert f"{100 * v.mean():.2f}" in row and f"[{100 * lo:.2f}, {100 * hi:.2f}]" in row


def test_omnibus_block_reports_friedman_and_the_critical_difference(ten_seeds) -> None:
    c, out, _ = ten_seeds
    md = (out / "report.md").read_text()
    wide = c.table.pivot(index="seed", columns="role", values="test_acc")
    q, p = stats.friedmanchisquare(*wide.to_numpy().T)
    assert f"Friedman chi-square = {q:.2f} (df = 4), p = {format_p(p)}" in md
    assert "Kendall's W" in md and "CD = " in md


def test_html_is_self_contained(ten_seeds) -> None:
    _, out, _ = ten_seeds
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert not re.search(r"url\(|@import|<link|<script", html)
    md = (out / "report.md").read_text()
    # The same numbers in both renderings.
    for cell in cells(row_of(section(md, "## Comparisons"), "ban/gen1", "teacher"))[3:10]:
        assert f">{cell}<" in html


def test_markdown_tables_are_aligned_for_plain_text(ten_seeds) -> None:
    _, out, _ = ten_seeds
    block: list[str] = []
    for line in [*(out / "report.md").read_text().splitlines(), ""]:
        if line.startswith("|") and not line.startswith("| |"):
            block.append(line)
        elif block:
            assert len({len(x) for x in block}) == 1, block[:3]
            block = []


def test_missing_and_failed_runs_are_listed_and_left_out() -> None:
    p = protocol(6)
    c = synthetic(
        p,
        status={
            ("ban/gen2", 3): ("FAILED", "CUDA out of memory\nTraceback ..."),
            ("ban/gen2", 4): ("ABSENT", "no run with this fingerprint"),
        },
    )
    md = markdown_of(p, c)
    missing = section(md, "## Missing or failed runs")
    assert "CUDA out of memory Traceback ..." in row_of(missing, "ban/gen2", "3", "FAILED")
    assert "no run with this fingerprint" in row_of(missing, "ban/gen2", "4", "ABSENT")
    assert "2 of 30 planned runs have no finished result" in md
    assert row_of(md, "ban/gen2", "student", "4")  # n = 4 finished seeds
    assert row_of(md, "ban/gen2", "teacher", "vs teacher", "4")  # paired on the 4 seeds
    assert "seeds of teacher without a pair, left out: 3-4" in md


def test_single_seed_study_renders_with_not_testable_comparisons(tmp_path: Path) -> None:
    p = protocol(1)
    paths = write_report(build_report(p, synthetic(p)), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "not testable" in row_of(md, "ban/gen1", "teacher", "vs teacher")
    assert "not testable: 1 paired seed (ban/gen1: 1, teacher: 1)" in md
    assert "No omnibus test: 1 seed" in md and "no power analysis" in md
    assert row_of(md, "teacher", "teacher").count("–") >= 2  # no sd, no CI
    assert (tmp_path / "report.html").exists() and len(paths) >= 2


def test_zero_variance_differences_say_no_test_possible(tmp_path: Path) -> None:
    p = protocol(5)
    c = synthetic(p, noise=0.0)  # every difference between roles is the same on every seed
    write_report(build_report(p, c), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "no test possible" in row_of(md, "ban/gen1", "teacher", "vs teacher")
    assert "zero variance" in md


def test_study_without_ensemble_or_curves_renders(tmp_path: Path) -> None:
    p = protocol(4, ensemble=False)
    c = synthetic(p)
    c.curves = c.curves.iloc[0:0]
    paths = write_report(build_report(p, c), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "/ens" not in md
    assert "No per-epoch metrics" in md
    assert not any("learning_curves" in x.name for x in paths)


def test_wilcoxon_with_five_seeds_warns_that_it_cannot_reach_alpha() -> None:
    p = protocol(5, test="wilcoxon")
    md = markdown_of(p, synthetic(p))
    assert "cannot go below p = 0.0625" in md
    assert "Wilcoxon signed-rank" in md


def test_power_table_survives_differences_far_below_min_effect() -> None:
    # sd of the differences ~1e-5 against min_effect 0.005: the seeds-needed solver has no
    # root above 2 seeds; the report must still render the row.
    p = protocol(4)
    md = markdown_of(p, synthetic(p, noise=1e-5))
    assert row_of(section(md, "## Power and seeds"), "ban/gen1", "teacher")


def test_report_from_the_export_is_the_report_from_the_tracker(tmp_path: Path) -> None:
    p = protocol(5)
    c = synthetic(p, status={("kd/gen1", 2): ("FAILED", "boom, with a comma")})
    write_export(c, tmp_path / "export")
    again = read_export(tmp_path / "export")

    def text(collected: Collected) -> list[str]:
        return [x for x in markdown_of(p, collected).splitlines() if "**generated**" not in x]

    assert text(again) == text(c)


def test_cd_cliques_join_roles_closer_than_the_critical_difference() -> None:
    ranks = np.array([1.0, 1.5, 2.4, 3.9, 4.2])
    assert figures.cd_cliques(ranks, 1.0) == [(0, 1), (1, 2), (3, 4)]
    assert figures.cd_cliques(ranks, 1.5) == [(0, 2), (3, 4)]  # (1, 2) lies inside (0, 2)
    assert figures.cd_cliques(ranks, float("nan")) == []


# --------------------------------------------------------------------------------------
# review fixes: header, verdict wording, family in the power table, p rounding, g_z, m
# --------------------------------------------------------------------------------------


def test_header_code_and_machine_lines_are_separate(monkeypatch: pytest.MonkeyPatch) -> None:
    p = protocol(3)
    md = markdown_of(p, synthetic(p))
    assert "git 0123456789abcdef\n- **report machine**: Python 3.x" in md
    monkeypatch.setattr(report, "environment", lambda: {**ENVIRONMENT, "git_dirty": True})
    md = markdown_of(p, synthetic(p))
    assert "(dirty: uncommitted changes)\n- **report machine**:" in md


def test_non_significant_verdicts_are_inconclusive_or_within_min_effect() -> None:
    # Wilcoxon with 6 seeds under Holm over 7 comparisons: nothing can be significant.
    p = protocol(6, test="wilcoxon")
    md = markdown_of(p, synthetic(p, noise=0.0005))
    assert "no significant difference" not in md
    # ban/gen1 - teacher is about +0.96 points, its CI far beyond min_effect = 0.50 points.
    row = cells(row_of(md, "ban/gen1", "teacher", "vs teacher"))
    assert row[-1] == "not significant (inconclusive)"
    assert (
        "- **ban/gen1 vs teacher not significant**: ban/gen1 - teacher = +0.96 points "
        "(unadjusted 95% t CI of the mean difference +0.88 to +1.04) over 6 paired seeds, "
        "Wilcoxon signed-rank p = 0.0312, Holm-adjusted p = 0.2188"
    ) in md
    assert (
        "not significant at alpha = 0.05; inconclusive: the CI includes differences of "
        "min_effect (0.50 points) or more." in md
    )
    # ban/gen2 - ban/gen1 is about -0.14 points, CI inside +-0.50.
    row = cells(row_of(md, "ban/gen2", "ban/gen1", "vs previous generation"))
    assert row[-1] == "not significant (CI within ±min_effect)"
    assert "the CI lies within ±min_effect (±0.50 points)." in md


def test_significant_verdict_names_its_interval(ten_seeds) -> None:
    md = (ten_seeds[1] / "report.md").read_text()
    assert "- **ban/gen1 is higher than teacher**: ban/gen1 - teacher = " in md
    assert "(unadjusted 95% t CI of the mean difference +" in md


def test_power_table_plans_for_the_family_the_report_corrects_over() -> None:
    # Reviewer's rep1.py: wilcoxon, 6 seeds, Holm over 7 comparisons; every raw p is
    # 0.03125 and every adjusted p 7 x 0.03125; the table said "6 seeds" without a warning.
    p = protocol(6, test="wilcoxon")
    rep = build_report(p, synthetic(p, noise=0.0005))
    assert rep.family_size == 7
    assert all(c["p_adj"] == pytest.approx(7 * 0.03125) for c in rep.tested)
    assert list(rep.power["alpha_planned"]) == pytest.approx([0.05 / 7] * 7)
    assert (rep.power["n_required"] >= 9).all()  # 2 / 2^9 < 0.05 / 7 <= 2 / 2^8
    assert (rep.power["n_required_unadjusted"] >= 6).all()
    md = render_markdown(rep, [])
    power = section(md, "## Power and seeds")
    assert "at alpha / 7 = 0.007143 (the Holm correction over the 7 comparisons" in power
    assert "so the Holm-adjusted p is at least 7 x p = 0.2188" in power
    assert "at least 9 seeds are needed" in power


def test_unpaired_rows_of_the_power_table_say_per_group() -> None:
    row = {"pairing": "unpaired", "n_required": 12.0}
    assert report_tables.seeds_needed(row, "n_required") == "12 per group"
    paired_row = {"pairing": "paired by seed", "n_required": 12.0}
    assert report_tables.seeds_needed(paired_row, "n_required") == "12"


@pytest.mark.parametrize(
    "p,text",
    [(0.0497, "0.0497"), (0.04996, "0.04996"), (0.05004, "0.05004"), (0.0312, "0.0312")],
)
def test_report_p_values_are_never_rounded_onto_alpha(p: float, text: str) -> None:
    assert format_p(p, 0.05) == text
    assert format_p(0.04996) == "0.0500"  # without alpha: the plain 4 decimals


def test_g_z_with_two_seeds_is_shown_as_undefined() -> None:
    p = protocol(2)
    md = markdown_of(p, synthetic(p))
    table = section(md, "## Comparisons")
    header = cells(row_of(table, "A", "B"))
    row = dict(zip(header, cells(row_of(table, "ban/gen1", "teacher")), strict=True))
    assert row["g_z"] == "–"
    assert ", g_z = –;" in md or ", g_z = –." in md


def test_constant_difference_counts_in_the_family_and_says_why_no_p() -> None:
    p = protocol(5)
    c = synthetic(p, noise=0.0)  # every difference is constant...
    runs = c.runs.copy()
    jitter = {0: 0.001, 1: -0.002, 2: 0.0, 3: 0.003, 4: -0.001}
    gen1 = runs["role"] == "ban/gen1"
    runs.loc[gen1, "test_acc"] += runs.loc[gen1, "seed"].map(jitter)  # ...but gen1's
    c.runs = runs
    rep = build_report(p, c)
    undefined = [x for x in rep.tested if _is_nan(x["p"])]
    defined = [x for x in rep.tested if not _is_nan(x["p"])]
    assert undefined and defined
    assert rep.family_size == len(rep.tested)  # the undefined ones count in m
    raw = [x["p"] if not _is_nan(x["p"]) else 1.0 for x in rep.tested]
    holm = multipletests(raw, method="holm")[1]
    for x, expected in zip(rep.tested, holm, strict=True):
        if not _is_nan(x["p"]):
            assert x["p_adj"] == pytest.approx(expected, abs=1e-12)
    md = render_markdown(rep, [])
    assert (
        "no test possible: the paired t gives no p-value because every seed gives the "
        "same difference" in md
    )
    assert "still counts in the Holm family (conservative)" in md


def test_nemenyi_is_descriptive_when_friedman_does_not_reject(ten_seeds) -> None:
    p = protocol(10)
    rep = build_report(p, ten_seeds[0])
    assert rep.omnibus["p_friedman"] < 0.05
    assert "applies only when the Friedman test rejects (Demšar 2006); it does here." in " ".join(
        report.report_text(rep)["omnibus"]
    )
    rep.omnibus = {**rep.omnibus, "p_friedman": 0.5}
    text = " ".join(report.report_text(rep)["omnibus"])
    assert "Friedman does not reject here, so the CD and its diagram are descriptive" in text


def _is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def test_paired_lines_mean_is_over_the_seeds_every_role_has(monkeypatch) -> None:
    """Its slopes must be the paired differences the tests use: seed 2 lacks gen1, so the
    mean leaves seed 2 out at the teacher too."""
    import matplotlib.axes

    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(np.asarray(y, dtype=float))))
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    values = pd.DataFrame(
        [("teacher", 0, 0.90), ("teacher", 1, 0.92), ("teacher", 2, 0.50)]
        + [("gen1", 0, 0.91), ("gen1", 1, 0.93)],
        columns=["role", "seed", "value"],
    )
    figures.paired_lines(values, [("ban", ["teacher", "gen1"])], "test accuracy")
    [(label, mean)] = [(lab, y) for lab, y in drawn if lab is not None]
    assert label == "mean over the 2 seeds in every role"
    assert mean == pytest.approx([0.91, 0.92])


def test_every_p_column_keeps_p_off_alpha() -> None:
    assert report_tables.p_with_method(0.04996, "exact", 0.05) == "0.04996 (exact)"
    assert report_tables.p_with_method(0.05004, "monte carlo", 0.05) == "0.05004 (MC)"
    assert (
        report_tables.p_with_method(0.05004, "monte carlo", 0.05, 0.00028)
        == "0.05004 (MC, standard error 0.00028)"
    )
    assert report.format_p(0.04996) == "0.0500"  # what alpha-blind rounding printed


# --------------------------------------------------------------------------------------
# issue 16: notes once, reasons for "not applicable", constant columns, verdicts that
# read as their numbers, comparable learning curves
# --------------------------------------------------------------------------------------

FLOAT_NOTE = "differences equal up to float rounding"


def test_a_note_shared_by_many_comparisons_is_printed_once_and_referenced_by_its_rows() -> None:
    p = protocol(8)
    c = synthetic(p)
    # accuracies of 359 test images in float32, as the trainer logs them: differences of
    # equal image counts differ in the last bits, so every comparison gets the same note
    counts = (c.runs["test_acc"] * 359).round()
    c.runs["test_acc"] = (counts / 359).astype("float32").astype(float)
    rep = build_report(p, c)
    md = render_markdown(rep, [])
    assert md.count(FLOAT_NOTE) == 1
    [(rows, n)] = re.findall(rf"\[1\] [^\n]*{FLOAT_NOTE}.*\((\d+) of (\d+) comparisons, marked", md)
    assert int(n) == rep.family_size and int(rows) > 1
    table = section(md, "## Comparisons")
    marked = [line for line in table.splitlines() if re.search(r"\[1(, \d)*\] *\|$", line)]
    assert len(marked) == int(rows)


def test_rm_anova_that_does_not_apply_says_which_normality_test_rejected() -> None:
    p = protocol(12)
    c = synthetic(p, noise=0.0005)
    runs = c.runs.copy()
    outlier = (runs["role"] == "kd/gen1") & (runs["seed"] == 3)
    runs.loc[outlier, "test_acc"] += 0.05  # one wild seed: kd/gen1 - teacher is not normal
    c.runs = runs
    rep = build_report(p, c)
    assert not rep.omnibus["anova_applicable"]
    shapiro = rep.omnibus["shapiro_p"]["kd/gen1 - teacher"]
    line = " ".join(report.report_text(rep)["omnibus"])
    assert "not applicable here: rely on Friedman" not in line
    assert (
        "not applicable here: Shapiro-Wilk rejects the normality it assumes at 0.05 for "
        f"kd/gen1 - teacher (p = {format_p(shapiro)})"
    ) in line
    assert line.count("not applicable") == 1


def test_the_power_table_of_the_t_test_has_no_column_of_zeros() -> None:
    p = protocol(6)
    md = markdown_of(p, synthetic(p))
    power = section(md, "## Power and seeds")
    assert "smallest p possible" not in cells(row_of(power, "A", "B"))
    assert "The t-test's p has no floor" in power


def test_columns_of_one_value_are_said_once_beside_their_table() -> None:
    p = protocol(6, test="wilcoxon")
    md = markdown_of(p, synthetic(p))
    power = section(md, "## Power and seeds")
    assert "smallest p possible" not in cells(row_of(power, "A", "B"))
    # 2 / 2^6 for every comparison of 6 paired seeds: one value, said once
    assert f"smallest p possible = {format_p(2 / 2**6)}" in power
    assert "In every row: n = 6; alpha planned = " in power
    comparisons = section(md, "## Comparisons")
    assert "n" not in cells(row_of(comparisons, "A", "B"))
    assert "In every row: n = 6." in comparisons
    assert "df" not in cells(row_of(section(md, "### Test details"), "A", "B"))
    assert "In every row: df = 5." in md
    # where the n differ, the column stays
    c = synthetic(p, status={("ban/gen2", 3): ("FAILED", "boom")})
    table = section(markdown_of(p, c), "## Comparisons")
    assert "n" in cells(row_of(table, "A", "B"))


def test_a_ci_bound_beside_min_effect_is_printed_on_its_own_side() -> None:
    """0.4962 points printed as +0.50 beside 'CI within ±min_effect (±0.50)' read as a
    contradiction; it takes three decimals to be read right."""
    p = protocol(10)
    c = synthetic(p)
    runs = c.runs.copy()
    teacher = runs[runs["role"] == "teacher"].set_index("seed")["test_acc"]
    e = np.array([-1.0, 1.0] * 5) / np.sqrt(10 / 9)  # mean 0, sd 1
    half = 0.002962  # the t interval is mean +- half
    sd = half * np.sqrt(10) / stats.t.ppf(0.975, 9)
    kd = runs["role"] == "kd/gen1"
    runs.loc[kd, "test_acc"] = (
        runs.loc[kd, "seed"].map(teacher).to_numpy() + 0.002 + sd * e[runs.loc[kd, "seed"]]
    )
    c.runs = runs
    md = markdown_of(p, c)
    row = cells(row_of(section(md, "## Comparisons"), "kd/gen1", "teacher"))
    assert row[-1].startswith("not significant (CI within ±min_effect)")
    assert "[-0.10, +0.496]" in row, row
    assert "mean difference -0.10 to +0.496) over 10 paired seeds" in md


def test_learning_curves_put_only_comparable_quantities_on_one_axis(monkeypatch) -> None:
    import matplotlib.axes

    drawn: list[tuple[int, str]] = []
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        if kwargs.get("label"):
            drawn.append((id(self), kwargs["label"], self))
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    p = protocol(3)
    rep = build_report(p, synthetic(p))
    from study.analysis.report_figures import report_figures

    names = [f.name for f in report_figures(rep)]
    assert "learning_curves" in names
    axes: dict[int, tuple[object, set[str]]] = {}
    for key, label, ax in drawn:
        axes.setdefault(key, (ax, set()))[1].add(label)
    labels = {ax.get_ylabel(): roles for ax, roles in axes.values()}
    trained = {r.key for r in rep.plan.roles if r.kind != "ensemble"}
    for metric in ("validation accuracy (%)", "test accuracy (%)"):
        assert labels[metric] == trained
    for metric in ("validation NLL (nats)", "test NLL (nats)"):
        assert labels[metric] == trained
    objectives = [(ax, roles) for ax, roles in axes.values() if ax.get_ylabel() == "training loss"]
    assert objectives  # every training objective is drawn, each on an axis of its own
    for ax, roles in objectives:
        losses = {(rep.plan.role(r).loss, str(rep.plan.role(r).loss_params)) for r in roles}
        assert len(losses) == 1, (ax.get_title(), roles)
    assert set().union(*(roles for _, roles in objectives)) == trained
