"""Formatted tables and the escaping of text for Markdown and LaTeX.

A ``Table`` is the single source of a table's Markdown, HTML and LaTeX renderings (the HTML
template autoescapes its cells). Text that comes from the user (a protocol's description,
names, file names) must come out of the Markdown as the same inert text the HTML shows: a
``<script>``, a ``# heading`` or a ``| fake | row |`` in a description is text, not markup,
and a backtick in a file name does not end its code span. ``md_text`` and ``md_code`` do
that for CommonMark (with GitHub's tables); ``latex_text`` for LaTeX.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# Inline constructs of CommonMark and GitHub Markdown, made literal by a backslash: code
# spans, emphasis, raw HTML and autolinks, entities, table cells, strikethrough, math.
_MD_INLINE = re.compile(r"[\\`*|~$]|<(?=[A-Za-z/!?])|&(?=#?\w+;)|\](?=[(\[])|!(?=\[)")
# Emphasis by underscores opens or closes only at a word's edge: ban_digits stays as it is.
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# What starts a block at the beginning of a line: a heading, a quote, a list item, a
# setext underline or a thematic break, a link reference definition ("[x]: url"), a
# numbered item ("1." or "1)").
_MD_LINE_START = re.compile(r"^([#>+\-=_\[])")
_MD_NUMBERED = re.compile(r"^(\d+)([.)])")


def plain_line(text: Any) -> str:
    """One line: newlines and other control characters become spaces."""
    s = "".join(" " if unicodedata.category(c) == "Cc" else c for c in str(text))
    return " ".join(s.split())


def md_text(text: Any, *, block: bool = False) -> str:
    """``text`` as literal Markdown inline text, on one line; with ``block``, also as the
    start of a paragraph (where '# ', '> ', '- ' or '1. ' would open a block)."""
    s = plain_line(text)
    s = _MD_INLINE.sub(lambda m: "\\" + m.group(0), s)
    s = _MD_UNDERSCORE.sub(r"\\_", s)
    if block:
        s = _MD_NUMBERED.sub(r"\1\\\2", _MD_LINE_START.sub(r"\\\1", s))
    return s


def md_code(text: Any) -> str:
    """``text`` as a Markdown code span: fenced by more backticks than it has in a row,
    padded where it starts or ends with a backtick; control characters are shown escaped
    (a newline in a file name must not start a new block)."""
    s = "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
        for c in str(text)
    )
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "–": "--",
    "±": r"$\pm$",
}


def latex_text(text: Any) -> str:
    """``text`` as literal LaTeX text, on one line."""
    return "".join(_LATEX.get(c, c) for c in plain_line(text))


@dataclass
class Table:
    """A formatted table: the single source of its Markdown, HTML and LaTeX tables."""

    columns: list[str]
    rows: list[list[str]]
    align: str  # one letter per column: "l" or "r"
    common: dict[str, str] = field(default_factory=dict)  # constant columns left out

    @classmethod
    def of(cls, records: Any, *columns: tuple[str, str, Any]) -> Table:
        """A table from records and (header, "l"/"r", record -> cell text) columns."""
        return cls(
            [h for h, _, _ in columns],
            [[fn(r) for _, _, fn in columns] for r in records],
            "".join(a for _, a, _ in columns),
        )

    def factored(self, candidates: list[str]) -> Table:
        """The table without those of ``candidates`` whose cell is the same in every row
        (of two or more); they are kept in ``common``, {header: cell}, said once beside
        the table: a column of one value tells nothing row by row."""
        constant = {}
        if len(self.rows) >= 2:
            for name in candidates:
                if name in self.columns:
                    values = {row[self.columns.index(name)] for row in self.rows}
                    if len(values) == 1:
                        constant[name] = values.pop()
        keep = [i for i, c in enumerate(self.columns) if c not in constant]
        return Table(
            [self.columns[i] for i in keep],
            [[row[i] for i in keep] for row in self.rows],
            "".join(self.align[i] for i in keep),
            {**self.common, **constant},
        )

    @property
    def common_text(self) -> str:
        """The constant columns left out, as a sentence ('' when none)."""
        if not self.common:
            return ""
        return "In every row: " + "; ".join(f"{k} = {v}" for k, v in self.common.items()) + "."

    def markdown(self) -> str:
        """A pipe table with padded columns, readable as plain text; every cell is
        escaped as Markdown text (names and notes included)."""
        cells = [[md_text(c) for c in row] for row in [self.columns, *self.rows]]
        widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(self.columns))]

        def line(row: list[str]) -> str:
            padded = (
                c.rjust(w) if a == "r" else c.ljust(w)
                for c, w, a in zip(row, widths, self.align, strict=True)
            )
            return "| " + " | ".join(padded) + " |"

        rule = (
            "|"
            + "|".join(
                "-" * (w + 1) + ":" if a == "r" else "-" * (w + 2)
                for w, a in zip(widths, self.align, strict=True)
            )
            + "|"
        )
        return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
