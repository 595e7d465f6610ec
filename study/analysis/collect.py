"""From the tracker to tidy tables: one row per (role, seed) of the current plan.

Only runs whose fingerprint matches the protocol as it is now are taken: a run trained
under an older recipe (other epochs, another loss parameter) is not silently mixed into
today's numbers. Roles and seeds the plan expects but the tracker lacks (failed, killed,
never run) are kept as rows with their status and reason, never dropped without a word.

The same tables can be written to and read back from ``results/<study>/`` (the tidy
export), so that a report can be regenerated without MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.plan import Plan
from study.track import FINAL_METRICS, Tracker

CURVE_METRICS = ("train_loss", "train_acc", "val_acc", "val_nll", "test_acc", "test_nll")
KEY_COLUMNS = ["role", "kind", "arm", "generation", "seed", "status", "run_id", "fingerprint"]


@dataclass
class Collected:
    """The tidy results of a study."""

    runs: pd.DataFrame  # one row per planned (role, seed): KEY_COLUMNS, reason, FINAL_METRICS
    curves: pd.DataFrame  # role, seed, epoch, metric, value (finished runs only)
    meta: dict[str, Any] = field(default_factory=dict)  # tracking URI, experiment, protocol

    @property
    def table(self) -> pd.DataFrame:
        """Finished runs only: what the statistics use."""
        return self.runs[self.runs["status"] == "FINISHED"].reset_index(drop=True)

    @property
    def missing(self) -> list[dict[str, Any]]:
        rows = self.runs[self.runs["status"] != "FINISHED"]
        return rows[["role", "seed", "status", "reason"]].to_dict("records")


def collect(plan: Plan, tracker: Tracker, data_identity: str, *, curves: bool = True) -> Collected:
    """The latest FINISHED run of each planned (role, seed) whose fingerprint matches."""
    wanted = plan.fingerprints(data_identity)
    found = tracker.runs_frame(plan.protocol.study.name)
    rows = []
    for role in plan.roles:
        for seed in plan.seeds:
            fp = wanted[(role.key, seed)]
            row: dict[str, Any] = {
                "role": role.key,
                "kind": role.kind,
                "arm": role.arm,
                "generation": role.generation,
                "seed": seed,
                "fingerprint": fp,
            }
            mine = found[(found["role"] == role.key) & (found["fingerprint"] == fp)]
            done = mine[mine["status"] == "FINISHED"]
            if len(done):
                run = done.sort_values("start_time").iloc[-1]
                row.update(status="FINISHED", run_id=run["run_id"], reason="")
                row.update({m: run[m] for m in FINAL_METRICS})
            elif len(mine):
                last = mine.sort_values("start_time").iloc[-1]
                reason = last["failure"] if isinstance(last["failure"], str) else ""
                row.update(status=last["status"], run_id=last["run_id"], reason=reason)
            else:
                row.update(status="ABSENT", run_id="", reason="no run with this fingerprint")
            rows.append(row)
    runs = pd.DataFrame(rows, columns=[*KEY_COLUMNS, "reason", *FINAL_METRICS])
    curve_rows = []
    if curves:
        for r in runs[runs["status"] == "FINISHED"].itertuples():
            if r.kind == "ensemble":
                continue
            for metric in CURVE_METRICS:
                for step, value in tracker.metric_history(r.run_id, metric):
                    curve_rows.append((r.role, r.seed, step, metric, value))
    meta = {
        "study": plan.protocol.study.name,
        "protocol_sha": plan.protocol.sha256,
        "data_identity": data_identity,
        **tracker.experiment_info(plan.protocol.study.name),
    }
    return Collected(
        runs=runs,
        curves=pd.DataFrame(curve_rows, columns=["role", "seed", "epoch", "metric", "value"]),
        meta=meta,
    )


def write_export(collected: Collected, out_dir: Path) -> list[Path]:
    """results/<study>/: runs.csv, curves.csv and meta.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "runs.csv", out_dir / "curves.csv", out_dir / "meta.json"]
    collected.runs.to_csv(paths[0], index=False)
    collected.curves.to_csv(paths[1], index=False)
    paths[2].write_text(json.dumps(collected.meta, indent=2, default=str) + "\n")
    return paths


def read_export(out_dir: Path) -> Collected:
    """The tidy export written by ``write_export``."""
    runs = pd.read_csv(out_dir / "runs.csv", dtype={"run_id": str, "reason": str})
    runs["reason"] = runs["reason"].fillna("")
    runs["run_id"] = runs["run_id"].fillna("")
    curves_path = out_dir / "curves.csv"
    curves = pd.read_csv(curves_path) if curves_path.exists() else pd.DataFrame()
    meta_path = out_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Collected(runs=runs, curves=curves, meta=meta)
