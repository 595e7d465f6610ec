"""The plain data of a study report, as ``report.build_report`` gathers it and the
rendering modules (tables, text, setup, figures, paper table) read it."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from study.analysis.collect import Collected
from study.analysis.units import UNITS, Units
from study.plan import Plan
from study.protocol import Protocol


@dataclass
class FigureImage:
    name: str  # file stem: figures/<name>.png
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Report:
    protocol: Protocol
    plan: Plan
    collected: Collected
    summary: pd.DataFrame  # one row per role, raw units
    comparisons: list[dict[str, Any]]  # every planned comparison, testable or not
    header: dict[str, Any] = field(default_factory=dict)
    omnibus: dict[str, Any] | None = None
    omnibus_note: str | None = None
    power: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)  # warnings about the data as a whole

    @property
    def units(self) -> Units:
        return UNITS[self.protocol.analysis.metric]

    @property
    def tested(self) -> list[dict[str, Any]]:
        return [c for c in self.comparisons if c["testable"]]

    @property
    def family_size(self) -> int:
        """Comparisons in the correction family: every tested comparison (at least 2 paired
        seeds), those whose p is undefined too (they count in m, conservatively)."""
        return len(self.tested)

    def against(self) -> tuple[float, ...]:
        """The raw thresholds a difference is read against: 0 and ±min_effect."""
        m = self.protocol.analysis.min_effect
        return (0.0, m, -m)
