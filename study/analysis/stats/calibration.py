"""What the project's own calibration found, for labelling the intervals it reports.

``simulation`` runs null studies through the same code ``compare`` runs; scripts/
calibrate.py runs it at full size and writes the tables of docs/statistics.md and
``calibration.json`` beside this module, which ``calibration`` reads. The BCa bootstrap
interval covers less than 95% at small n (about 0.8 at n = 5 for normal differences), and
``bca_coverage`` gives the paired driver the coverage found at its n, so the report labels
the interval rather than let "95%" stand. Numbers are computed, never typed: rerun the
script to change them (docs/statistics.md has the command and its seed).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

NOMINAL = 0.95


@functools.cache
def calibration() -> dict[str, Any]:
    """The calibration record written by scripts/calibrate.py (empty when there is none)."""
    path = resources.files(__package__).joinpath("calibration.json")
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def bca_coverage(n: int) -> float | None:
    """The coverage the paired 95% BCa interval had in the calibration (normal
    differences) at the largest calibrated n not above ``n`` (the smallest calibrated n
    when ``n`` is below all of them: fewer seeds cover less), where that coverage is
    known to fall short of 95% (its binomial interval lies below 0.95); None otherwise."""
    rows = calibration().get("coverage", {}).get("bca", {}).get("normal", {})
    if not rows:
        return None
    sizes = sorted(int(k) for k in rows)
    below = [m for m in sizes if m <= n]
    row = rows[str(below[-1] if below else sizes[0])]
    return float(row["rate"]) if row["ci"][1] < NOMINAL else None
