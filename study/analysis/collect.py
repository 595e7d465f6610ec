"""From the tracker to a tidy table: one row per (role, seed) of the current plan.

Only runs whose fingerprint matches the protocol as it is now are taken: a run trained
under an older recipe (other epochs, another loss parameter) is not silently mixed into
today's numbers. Roles and seeds the plan expects but the tracker lacks (failed, killed,
never run) are listed, never dropped without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from study.plan import Plan
from study.track import FINAL_METRICS, Tracker


@dataclass
class Collected:
    """The tidy results of a study and what is missing from them."""

    table: pd.DataFrame  # one row per (role, seed): role, kind, arm, generation, seed, metrics
    missing: list[dict] = field(default_factory=list)  # {role, seed, status, reason}


def collect(plan: Plan, tracker: Tracker, data_identity: str) -> Collected:
    """The FINISHED run of each (role, seed) whose fingerprint matches the plan."""
    wanted = plan.fingerprints(data_identity)
    runs = tracker.runs_frame(plan.protocol.study.name)
    rows, missing = [], []
    for role in plan.roles:
        for seed in plan.seeds:
            fp = wanted[(role.key, seed)]
            mine = runs[(runs["role"] == role.key) & (runs["fingerprint"] == fp)]
            done = mine[mine["status"] == "FINISHED"]
            if len(done):
                run = done.sort_values("start_time").iloc[-1]
                row = {
                    "role": role.key,
                    "kind": role.kind,
                    "arm": role.arm,
                    "generation": role.generation,
                    "seed": seed,
                    "run_id": run["run_id"],
                    "fingerprint": fp,
                }
                row.update({m: run[m] for m in FINAL_METRICS})
                rows.append(row)
                continue
            if len(mine):
                last = mine.sort_values("start_time").iloc[-1]
                status, reason = last["status"], last.get("failure") or ""
            else:
                status, reason = "ABSENT", "no run with this fingerprint"
            missing.append({"role": role.key, "seed": seed, "status": status, "reason": reason})
    columns = ["role", "kind", "arm", "generation", "seed", "run_id", "fingerprint"]
    table = pd.DataFrame(rows, columns=[*columns, *FINAL_METRICS])
    return Collected(table=table, missing=missing)
