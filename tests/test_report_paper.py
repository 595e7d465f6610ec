"""The paper table: reports/<study>/table.md and table.tex, embedded near the top of
report.md (issue 16)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from study.analysis.report import build_report, write_report
from tests.test_report import (  # noqa: F401 - fixed_environment is an autouse fixture
    cells,
    fixed_environment,
    paired,
    protocol,
    row_of,
    synthetic,
)

ROLES = ["teacher", "ban/gen1", "ban/gen2", "ban/ens2", "kd/gen1"]
FAMILY = [  # the report's comparisons, in its order: the Holm family
    ("ban/gen1", "teacher"),
    ("ban/gen2", "teacher"),
    ("ban/ens2", "teacher"),
    ("kd/gen1", "teacher"),
    ("ban/gen2", "ban/gen1"),
    ("ban/ens2", "ban/gen2"),
    ("ban/gen1", "kd/gen1"),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    p = protocol(8)
    c = synthetic(p, noise=0.003)
    runs = c.runs.copy()
    kd = runs["role"] == "kd/gen1"
    runs.loc[kd, "test_acc"] -= 0.009  # kd/gen1 close to the teacher: not significant
    c.runs = runs
    out = tmp_path_factory.mktemp("paper")
    with pytest.MonkeyPatch.context() as mp:
        from study.analysis import report

        mp.setattr(report, "environment", lambda: {"packages": {}})
        paths = write_report(build_report(p, c), out)
    return c, out, paths


def test_paper_table_has_a_row_per_role_with_mean_sd_n_and_the_corrected_difference(
    written,
) -> None:
    c, out, paths = written
    assert {out / "table.md", out / "table.tex"} <= set(paths)
    md = (out / "table.md").read_text()
    raw = [stats.ttest_rel(*paired(c, a, b)).pvalue for a, b in FAMILY]
    holm = dict(zip(FAMILY, multipletests(raw, method="holm")[1], strict=True))
    markers = []
    for role in ROLES:
        row = cells(row_of(md, role))
        v = c.table.loc[c.table["role"] == role, "test_acc"].to_numpy() * 100
        assert row[2] == f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({len(v)})"
        if role == "teacher":
            assert row[3] == "reference"
            continue
        a, b = paired(c, role, "teacher")
        lo, hi = stats.ttest_rel(a, b).confidence_interval(0.95)
        d = 100 * np.mean(a - b)
        significant = holm[(role, "teacher")] < 0.05
        mark = "\\*" if significant else ""
        assert row[3] == f"{d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]{mark}", row
        markers.append(significant)
    assert any(markers) and not all(markers)  # both kinds of row are checked
    assert "significant at alpha = 0.05 by the paired t-test, Holm-corrected over the " in md
    assert "report's 7 comparisons" in md
    assert cells(row_of(md, "ban/ens2"))[1] == "2 x mlp (1.2k)"  # 1,210 weights each


def test_report_md_embeds_the_paper_table_before_the_details(written) -> None:
    _, out, _ = written
    report = (out / "report.md").read_text()
    table = (out / "table.md").read_text()
    glance = report.index("## Results at a glance")
    assert glance < report.index("## Setup") < report.index("## Comparisons")
    assert table.strip() in report[glance:]
    html = (out / "report.html").read_text()
    assert html.index("Results at a glance") < html.index("<h2>Setup</h2>")


def _unescaped(text: str, char: str) -> int:
    return len(re.findall(r"(?<!\\)" + re.escape(char), text))


def test_latex_table_is_a_balanced_booktabs_table(written) -> None:
    _, out, _ = written
    tex = (out / "table.tex").read_text()
    body = tex[tex.index(r"\begin{table}") : tex.index(r"\end{table}") + len(r"\end{table}")]
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:"):
        assert body.count(command) == 1, command
    assert body.count(r"\begin{tabular}{llrr}") == 1 and body.count(r"\end{tabular}") == 1
    assert _unescaped(body, "{") == _unescaped(body, "}")
    rows = body.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(rows) == len(ROLES)
    for line in rows:
        assert line.rstrip().endswith(r"\\") and _unescaped(line, "&") == 3, line
        assert _unescaped(line, "%") == 0 and _unescaped(line, "_") == 0
        assert _unescaped(line, "$") % 2 == 0  # math closes where it opens
    caption = re.search(r"\\caption\{(.*)\}\n", body).group(1)
    assert "paired t-test" in caption and "Holm-corrected" in caption
    assert "alpha = 0.05" in caption and _unescaped(caption, "%") == 0
    assert r"$-$" not in body and "–" not in body  # no text dash where a number goes


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX installed")
def test_latex_table_compiles_in_a_plain_article(written, tmp_path: Path) -> None:
    _, out, _ = written
    shutil.copy(out / "table.tex", tmp_path / "table.tex")
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
        "\\begin{document}\n\\input{table.tex}\n\\end{document}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log  # fits an article's text width
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


def test_a_role_without_a_comparison_to_the_teacher_says_why(tmp_path: Path) -> None:
    p = protocol(1)  # one seed: nothing is testable
    c = synthetic(p)
    with pytest.MonkeyPatch.context() as mp:
        from study.analysis import report

        mp.setattr(report, "environment", lambda: {"packages": {}})
        write_report(build_report(p, c), tmp_path)
    md = (tmp_path / "table.md").read_text()
    assert cells(row_of(md, "teacher"))[2:] == ["90.02 ± – (1) [1]", "reference"]
    assert cells(row_of(md, "ban/gen1"))[3] == "– [2]"
    assert "[1] one seed: no sd (n - 1 = 0)" in md
    assert "[2] not testable: fewer than 2 seeds paired with the teacher" in md
    assert md.count("not testable") == 1  # one note for the four rows
    tex = (tmp_path / "table.tex").read_text()
    assert r"ban/gen1 & mlp (1.2k) & $" in tex and r"(1)$^{1}$ & --$^{2}$ \\" in tex
