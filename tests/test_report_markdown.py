"""report.md carries user text as the HTML report does: as inert text (issue 14, point 7).

A hostile protocol (a description with a <script>, a '# heading', a fake table, links,
emphasis; an arm named to make emphasis; a file name with a backtick and a newline) is
rendered and parsed back with a CommonMark parser (markdown-it-py, with GitHub's tables
and strikethrough): the only structure in the document must be the report's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from study.analysis.report import build_report, render_html, render_markdown
from study.analysis.table import md_code, md_text, plain_line
from study.protocol import load_protocol
from tests.test_report import fixed_environment, synthetic  # noqa: F401 - autouse fixture

DESCRIPTION = """<script>alert("owned")</script> & &amp; entity
# Owned heading
> quoted
- listed
1. numbered
| fake | row |
|------|-----|
| x    | y   |
[link](http://evil.example) ![img](http://evil.example/x.png) <http://evil.example>
*em* _em_ **strong** `code` ~~struck~~ $x$ back\\slash end"""

HOSTILE = """
[study]
name = "hostile"
description = '''{description}'''
seeds = 4

[teacher]
arch = "mlp"
kwargs = {{ hidden = [16] }}

[[arms]]
name = "{arm}"
loss = "ban"
generations = 2
ensemble = true

[[arms]]
name = "kd"
loss = {{ name = "kd", temperature = 4.0, alpha = 0.9 }}
"""
HEADINGS = {
    "Results at a glance",
    "Setup",
    "Per role",
    "Comparisons",
    "Verdicts",
    "Test details",
    "Omnibus",
    "Learning curves",
    "Where the signal comes from",  # the report's own section (issue 20)
    "Power and seeds",
    "Missing or failed runs",
    "Runs",
}


def parse(markdown: str) -> list:
    """Every token of the document, inline children included."""
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(markdown)
    out = []
    for t in tokens:
        out.append(t)
        out.extend(t.children or [])
    return out


def rendered(tmp_path: Path, file_name: str, description: str, arm: str) -> tuple[str, str]:
    path = tmp_path / file_name
    path.write_text(HOSTILE.format(description=description, arm=arm))
    p = load_protocol(path)
    c = synthetic_for(p)
    rep = build_report(p, c)
    return render_markdown(rep, []), render_html(rep, [])


def synthetic_for(p):
    from tests import test_report

    offsets = {"teacher": 0.0, "kd/gen1": 0.004}
    for role in ("gen1", "gen2", "ens2"):
        offsets[f"{p.arms[0].name}/{role}"] = test_report.OFFSET[f"ban/{role}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_report, "OFFSET", offsets)
        return synthetic(p)


@pytest.mark.parametrize("file_name", ["evil`name.toml", "two``ticks\n# owned.toml"])
def test_hostile_protocol_text_comes_out_of_the_markdown_as_inert_text(
    tmp_path: Path, file_name: str
) -> None:
    md, html = rendered(tmp_path, file_name, DESCRIPTION, arm="_x_")
    tokens = parse(md)
    kinds = {t.type for t in tokens}
    forbidden = {"html_block", "html_inline", "link_open", "image", "em_open", "s_open"}
    assert not kinds & (forbidden | {"blockquote_open", "ordered_list_open"})
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[0] == "Study report: hostile" and set(headings[1:]) <= HEADINGS
    # the description is one paragraph whose text is the description, verbatim
    paragraph = next(tokens[i + 1] for i, t in enumerate(tokens) if t.type == "paragraph_open")
    assert [c.type for c in paragraph.children] == ["text"]
    assert paragraph.children[0].content == plain_line(DESCRIPTION)
    # the file name is one code span holding exactly the file name (newline shown as \n)
    spans = [t.content for t in tokens if t.type == "code_inline"]
    source = str(tmp_path / file_name).replace("\n", "\\n")
    assert source in spans
    # no table but the report's own: the same count as a benign description's report
    benign, _ = rendered(tmp_path, "plain.toml", "A plain description.", arm="ban")
    assert sum(t.type == "table_open" for t in tokens) == sum(
        t.type == "table_open" for t in parse(benign)
    )
    # the arm name is text everywhere, as the HTML shows it
    assert "_x_/gen1" in "".join(t.content for t in tokens if t.type == "text")
    assert "&lt;script&gt;" in html and "<script>" not in html


def test_markdown_helpers_escape_what_would_be_markup() -> None:
    assert md_text("ban_digits kd-v2.1 teacher") == "ban_digits kd-v2.1 teacher"
    assert md_text("# x", block=True) == "\\# x" and md_text("# x") == "# x"
    assert md_text("1. x", block=True) == "1\\. x"
    assert md_text("< 1% and > 99%") == "< 1% and > 99%"  # not tags: left readable
    assert md_text("<b>") == "\\<b>"
    assert md_code("a`b") == "``a`b``" and md_code("`x") == "`` `x ``"
    assert md_code("a\nb") == "`a\\nb`"
