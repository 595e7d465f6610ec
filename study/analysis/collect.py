"""From the tracker to tidy tables: one row per (role, seed) of the current plan.

Only runs whose fingerprint matches the protocol as it is now are taken: a run trained
under an older recipe (other epochs, another loss parameter) is not silently mixed into
today's numbers. Roles and seeds the plan expects but the tracker lacks (failed, killed,
never run) are kept as rows with their status and reason, never dropped without a word.

Collecting needs the tracker alone, not the data: the data identity that enters the
fingerprints is the one the study's runs were tagged with (``resolve_identity``), and the
split sizes and input shape come from their ``data_facts`` tag.

The same tables can be written to and read back from ``results/<study>/`` (the tidy
export), so that a report can be regenerated without MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.diagnostics import DIAGNOSTIC_METRICS
from study.losses import TUNED
from study.plan import Plan
from study.track import FINAL_METRICS, Tracker

CURVE_METRICS = (
    "train_loss",
    "val_acc",
    "val_nll",
    "test_acc",
    "test_nll",
    *DIAGNOSTIC_METRICS,  # [diagnostics] the dark-knowledge curves (report_signal)
)
KEY_COLUMNS = ["role", "kind", "arm", "generation", "seed", "status", "run_id", "fingerprint"]
RUN_COLUMNS = ["start_time", "end_time", "device", "pack_size", "deterministic"]
"""How each run ran: start and end (ms since the epoch), device, seeds in its pack."""
DATA_SETTINGS_IGNORED = ("root", "download")  # where the files are, not what they hold


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


def collect(
    plan: Plan, tracker: Tracker, data_identity: str | None = None, *, curves: bool = True
) -> Collected:
    """The latest FINISHED run of each planned (role, seed) whose fingerprint matches.

    Without ``data_identity`` (the data as loaded now), the identity is the one the
    tracker's runs of this plan were trained on: a report needs no data files."""
    study = plan.protocol.study.name
    found = tracker.runs_frame(study)
    notes: list[str] = []
    if data_identity is None:
        data_identity, notes = resolve_identity(plan, found, tracker)
    runs = _match(plan, found, data_identity)
    finished = runs[runs["status"] == "FINISHED"]
    condition = plan.protocol.condition
    meta = {
        "study": study,
        **({"condition": condition} if condition is not None else {}),
        "protocol_sha": plan.protocol.sha256,
        "data_identity": data_identity,
        **tracker.experiment_info(study),
        "data_facts": _data_facts(found, finished),
        "environment": _environment(tracker, finished),
        "tuned": tuned_in(plan),
        "notes": notes,
    }
    trained = finished[finished["kind"] != "ensemble"]
    return Collected(
        runs=runs,
        curves=_curves(tracker, trained) if curves else _curves(None, trained.iloc[:0]),
        meta=meta,
    )


def _match(plan: Plan, found: pd.DataFrame, data_identity: str | None) -> pd.DataFrame:
    """One row per planned (role, seed): its latest FINISHED run with the planned
    fingerprint, else its latest run of that fingerprint, else ABSENT."""
    wanted = plan.fingerprints(data_identity) if data_identity else {}
    ordered = found.sort_values("start_time", kind="stable")
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    latest_done: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ordered.to_dict("records"):  # later runs overwrite earlier ones
        latest[(r["role"], r["fingerprint"])] = r
        if r["status"] == "FINISHED":
            latest_done[(r["role"], r["fingerprint"])] = r
    rows = []
    for role in plan.roles:
        for seed in plan.seeds:
            fp = wanted.get((role.key, seed), "")
            row: dict[str, Any] = {
                "role": role.key,
                "kind": role.kind,
                "arm": role.arm,
                "generation": role.generation,
                "seed": seed,
                "fingerprint": fp,
            }
            run = latest_done.get((role.key, fp)) or latest.get((role.key, fp))
            if run is None:
                row.update(status="ABSENT", run_id="", reason="no run with this fingerprint")
            else:
                failure = run["failure"] if isinstance(run["failure"], str) else ""
                row.update(status=run["status"], run_id=run["run_id"])
                row.update(reason="" if run["status"] == "FINISHED" else failure)
                row.update({k: run.get(k) for k in RUN_COLUMNS})
                if run["status"] == "FINISHED":
                    row.update({m: run[m] for m in FINAL_METRICS})
            rows.append(row)
    frame = pd.DataFrame(rows, columns=[*KEY_COLUMNS, "reason", *FINAL_METRICS, *RUN_COLUMNS])
    if plan.protocol.condition is not None:  # a protocol of several conditions: its rows say which
        frame.insert(0, "condition", plan.protocol.condition)
    return frame


def resolve_identity(
    plan: Plan, found: pd.DataFrame, tracker: Tracker
) -> tuple[str | None, list[str]]:
    """The data identity of the tracker's runs of this plan, and notes about the choice.

    Candidates are the identities the study's runs are tagged with under which some run's
    fingerprint is the plan's; of those, the ones whose runs were trained with this
    protocol's ``[data]`` settings (its logged protocol; ``root`` and ``download`` aside),
    and of those the one of the latest run. None when no run fits."""
    if not len(found) or "data_identity" not in found:
        return None, []
    tagged = found.dropna(subset=["data_identity"]).sort_values("start_time", ascending=False)
    fitting = []
    for identity, runs in tagged.groupby("data_identity", sort=False):
        planned = {(role, fp) for (role, _), fp in plan.fingerprints(str(identity)).items()}
        keys = zip(runs["role"], runs["fingerprint"], strict=True)
        mine = runs[[key in planned for key in keys]]
        if len(mine):  # the latest run of the plan trained on this identity
            fitting.append((str(identity), mine.iloc[0]["run_id"]))
    wanted = _data_settings(plan.protocol.data.model_dump())
    agreeing = [(i, run) for i, run in fitting if _logged_data(tracker, run) in (wanted, None)]
    if not agreeing:
        return None, []
    notes = []
    if len(agreeing) > 1:
        notes.append(
            f"the tracker holds runs of this protocol on {len(agreeing)} data identities "
            f"(the data files changed between runs); this report uses the latest run's, "
            f"{agreeing[0][0][:16]}"
        )
    return agreeing[0][0], notes


def _data_settings(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in DATA_SETTINGS_IGNORED}


def _logged_data(tracker: Tracker, run_id: str) -> dict[str, Any] | None:
    """The ``[data]`` settings a run was trained with (its logged protocol); None when the
    run has no readable protocol."""
    try:
        logged = json.loads(tracker.read_artifact_text(run_id, "protocol/protocol.json"))
        return _data_settings(logged["data"])
    except Exception:  # noqa: BLE001 - a missing or foreign artifact: nothing to compare
        return None


def _data_facts(found: pd.DataFrame, finished: pd.DataFrame) -> dict[str, Any]:
    """Split sizes and input shape from the finished runs' ``data_facts`` tag."""
    if "data_facts" not in found or not len(finished):
        return {}
    tags = found.loc[found["run_id"].isin(finished["run_id"]), "data_facts"].dropna()
    return json.loads(tags.iloc[0]) if len(tags) else {}


def _environment(tracker: Tracker, finished: pd.DataFrame) -> dict[str, Any]:
    """The environment snapshot of one finished run (every run records its own)."""
    trained = finished[finished["kind"] != "ensemble"]
    if not len(trained):
        return {}
    run_id = trained.iloc[0]["run_id"]
    try:
        snapshot = json.loads(tracker.read_artifact_text(run_id, "environment/environment.json"))
    except Exception:  # noqa: BLE001 - an artifact store that is gone: the Setup says so
        return {}
    keep = ("cpu", "cpu_count", "gpu", "torch", "cuda", "cudnn", "torch_threads", "python")
    return {"run_id": run_id, **{k: snapshot.get(k) for k in keep}}


def tuned_in(plan: Plan) -> dict[str, float]:
    """The loss parameters the protocol leaves to tuning, as the plan resolved them."""
    out: dict[str, float] = {}
    for arm in plan.protocol.arms:
        pending = [k for k, v in arm.loss.params.items() if v == TUNED]
        role = next(r for r in plan.roles if r.arm == arm.name)
        out.update({k: role.loss_params[k] for k in pending if role.loss_params[k] != TUNED})
    return out


def _curves(tracker: Tracker | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch metrics of the given runs: role, seed, epoch, metric, value."""
    columns = ["role", "seed", "epoch", "metric", "value"]
    if tracker is None or not len(runs):
        return pd.DataFrame(columns=columns)
    history = tracker.metric_histories(list(runs["run_id"]), CURVE_METRICS)
    keys = runs.set_index("run_id")[["role", "seed"]]
    out = history.join(keys, on="run_id", how="inner")
    out = out.rename(columns={"key": "metric", "step": "epoch"})
    return out[columns].sort_values(["role", "seed", "metric", "epoch"]).reset_index(drop=True)


def write_export(collected: Collected, out_dir: Path) -> list[Path]:
    """results/<study>/: runs.csv, curves.csv and meta.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "runs.csv", out_dir / "curves.csv", out_dir / "meta.json"]
    collected.runs.to_csv(paths[0], index=False)
    collected.curves.to_csv(paths[1], index=False)
    paths[2].write_text(json.dumps(collected.meta, indent=2, default=_plain) + "\n")
    return paths


def _plain(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else str(x)


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
