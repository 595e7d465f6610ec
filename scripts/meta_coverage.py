"""The coverage of the intervals across conditions, by simulation: the table in
docs/statistics.md ("Many conditions").

    python scripts/meta_coverage.py                 # the published table (about a minute)
    python scripts/meta_coverage.py --reps 300      # a quick look

Runs ``study.analysis.stats.meta_simulation.meta_coverage`` for each setting (conditions C,
between-condition sd tau; 10 seeds per condition, seed sd 0.4, true pooled effect 0.2) and
prints the Markdown table with the command line, the seed and the library versions.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import scipy
import statsmodels

from study.analysis.stats.meta_simulation import meta_coverage

CONDITIONS = (3, 4, 6, 8, 12)
TAUS = (0.0, 0.1, 0.3)
COLUMNS = {
    "pm_hksj": "PM + HKSJ (the report)",
    "pm_hksj_modified": "PM + modified HKSJ",
    "dl_z": "DL + z",
    "pooled_seeds": "all seeds, one paired t",
    "equal_weight_t": "equal-weight t",
    "prediction": "prediction interval",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated studies per setting")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per condition")
    parser.add_argument("--sigma", type=float, default=0.4, help="seed sd of one difference")
    args = parser.parse_args()
    start = time.time()
    lines = [
        "| C | tau | " + " | ".join(COLUMNS.values()) + " |",
        "|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for tau in TAUS:
        for c in CONDITIONS:
            r = meta_coverage(c, args.seeds, tau=tau, sigma=args.sigma, reps=args.reps, mu=0.2)
            cells = ["–" if r[key] is None else f"{r[key]['coverage']:.3f}" for key in COLUMNS]
            lines.append(f"| {c} | {tau:g} | " + " | ".join(cells) + " |")
            print(f"C = {c}, tau = {tau:g} done ({time.time() - start:.0f} s)", file=sys.stderr)
    command = "python " + shlex.join(["scripts/meta_coverage.py", *sys.argv[1:]])
    print("\n".join(lines))
    print(
        f"\n`{command}`: {args.reps} simulated studies per row ({args.seeds} seeds per "
        f"condition, seed sd {args.sigma:g}, pooled effect 0.2; binomial standard error about "
        f"{np.sqrt(0.95 * 0.05 / args.reps):.3f} at 0.95), numpy {np.__version__}, scipy "
        f"{scipy.__version__}, statsmodels {statsmodels.__version__}; "
        f"{time.time() - start:.0f} s."
    )


if __name__ == "__main__":
    main()
