"""Calibrate the statistics engine by simulation and write the record.

    python scripts/calibrate.py                     # the published record (about 10 minutes)
    python scripts/calibrate.py --replicates 400 --dry-run   # a quick look, nothing written

Runs ``study.analysis.stats.simulation.calibrate`` (null studies through the code
``compare`` runs) and writes:

- study/analysis/stats/calibration.json: the record the report reads to label intervals
  whose coverage falls short (``study.analysis.stats.calibration``);
- docs/statistics.md: the tables between the calibration markers, with this command line,
  the seed and the library versions, so that anyone can rerun it and get the same numbers.

Progress and an estimate of the time left go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import statsmodels

from study.analysis.stats.simulation import NOISES, calibrate

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "study" / "analysis" / "stats" / "calibration.json"
DOC = ROOT / "docs" / "statistics.md"
START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"
SIZES, COVERAGE_SIZES, HOLM_SIZES = (5, 10, 20, 50), (3, 5, 10, 20, 50), (5, 10, 20)
TEST_NAMES = {"t": "paired t", "wilcoxon": "Wilcoxon signed-rank", "permutation": "sign-flip"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4000, help="null studies per type-I cell")
    parser.add_argument(
        "--coverage-replicates", type=int, default=2000, help="studies per coverage and Holm cell"
    )
    parser.add_argument("--seed", type=int, default=20240615, help="seed of every draw")
    parser.add_argument("--dry-run", action="store_true", help="print the tables, write nothing")
    args = parser.parse_args(argv)
    command = " ".join(
        ["python scripts/calibrate.py", shlex.join(sys.argv[1:] if argv is None else argv)]
    ).strip()

    # Cost of each block, roughly replicates x (tests per study) x (1 + n / 10), for the ETA.
    weights = [args.replicates * (1 + n / 10) for _ in NOISES for n in SIZES]
    weights += [args.coverage_replicates * (1 + n / 10) for _ in range(2) for n in COVERAGE_SIZES]
    weights += [args.coverage_replicates * 8 * (1 + n / 10) for n in HOLM_SIZES]
    started, done = time.monotonic(), [0]
    # statsmodels' multipletests calls gc.collect() on every call, which scans every object
    # numpy, scipy and pandas hold: 0.1 s a call here. Frozen, they are not scanned again.
    gc.freeze()

    def progress(what: str) -> None:
        done[0] += 1
        spent = time.monotonic() - started
        share = sum(weights[: done[0]]) / sum(weights)
        left = spent / share - spent
        print(
            f"[{done[0]}/{len(weights)}] {what}: {spent:.0f} s so far, about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )

    record = calibrate(
        args.replicates,
        args.coverage_replicates,
        args.seed,
        sizes=SIZES,
        coverage_sizes=COVERAGE_SIZES,
        holm_sizes=HOLM_SIZES,
        progress=progress,
    )
    record["provenance"] = {
        "command": command,
        "seed": args.seed,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "seconds": round(time.monotonic() - started),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__,
    }
    tables = render(record)
    if args.dry_run:
        print(tables)
        return 0
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    text = DOC.read_text()
    if START not in text or END not in text:
        print(f"{DOC}: the markers {START} and {END} are missing", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    DOC.write_text(head + START + "\n" + tables + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote {RECORD.relative_to(ROOT)} and the tables of {DOC.relative_to(ROOT)}")
    return 0


def _cell(c: dict) -> str:
    return f"{c['rate']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"


def render(record: dict) -> str:
    """The calibration tables in Markdown."""
    p = record["provenance"]
    lines = [
        f"Produced by `{p['command']}` (seed {p['seed']}, {p['date']}, {p['seconds']} s; "
        f"numpy {p['numpy']}, scipy {p['scipy']}, statsmodels {p['statsmodels']}). Each cell: "
        "the rate and its 95% Clopper-Pearson interval.",
        "",
        f"**Type-I error at alpha = {record['alpha']}** (paired, "
        f"{record['type1']['t']['normal']['5']['trials']} null studies per cell):",
        "",
        "| noise | n | " + " | ".join(TEST_NAMES.values()) + " |",
        "|---|---:|" + "---|" * len(TEST_NAMES),
    ]
    for noise in NOISES:
        for n in record["type1"]["t"][noise]:
            cells = [_cell(record["type1"][key][noise][n]) for key in TEST_NAMES]
            lines.append(f"| {noise} | {n} | " + " | ".join(cells) + " |")
    coverage = record["coverage"]
    lines += [
        "",
        "**Coverage of the 95% intervals of the mean difference** (paired, "
        f"{coverage['t']['normal']['5']['trials']} studies per cell):",
        "",
        "| noise | n | t interval | BCa bootstrap interval |",
        "|---|---:|---|---|",
    ]
    for noise in coverage["t"]:
        for n in coverage["t"][noise]:
            cells = [_cell(coverage["t"][noise][n]), _cell(coverage["bca"][noise][n])]
            lines.append(f"| {noise} | {n} | " + " | ".join(cells) + " |")
    holm = record["holm"]
    lines += [
        "",
        "**Family-wise error of Holm's correction, 8 comparisons against one baseline** "
        f"(normal noise, {holm['t']['5']['trials']} null studies per cell; alpha = "
        f"{record['alpha']}):",
        "",
        "| n | " + " | ".join(TEST_NAMES.values()) + " |",
        "|---:|" + "---|" * len(TEST_NAMES),
    ]
    for n in holm["t"]:
        lines.append(f"| {n} | " + " | ".join(_cell(holm[k][n]) for k in TEST_NAMES) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
