"""The local executor: runs a plan's (role, seed) jobs in dependency order.

For each role in order, the seeds that are not already FINISHED in the tracker (same
fingerprint) are trained in packs; each seed gets its own MLflow run under one parent run
per invocation. Teachers come from this invocation's memory or, for runs finished earlier,
from their logged checkpoints. A seed that diverges is marked FAILED with its reason and
its dependents are skipped, while the other seeds go on.

Progress is reported through a callback with plain events; the CLI draws them.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from study.checkpoint import CheckpointStore
from study.data import DataSplits, load_data
from study.errors import UserInputError
from study.plan import Plan, Role, expand
from study.protocol import Protocol
from study.repro import environment, pip_freeze, resolve_deterministic
from study.track import Tracker
from study.train import (
    TrainingDiverged,
    evaluate_ensemble,
    load_model,
    resolve_device,
    train_role,
)


@dataclass(frozen=True)
class Progress:
    """One progress event: 'start', 'epoch', 'resumed', 'note', 'done', 'skip' or 'fail'."""

    kind: str
    role: str = ""
    seed: int | None = None
    epoch: int | None = None
    total_runs: int = 0
    total_epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[Progress], None]


@dataclass
class RunSummary:
    study: str
    experiment_id: str | None
    parent_run_id: str | None
    trained: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    runs: dict[str, dict[str, str]] = field(default_factory=dict)  # "role@seed" -> ids

    def index(self) -> dict[str, Any]:
        """What the study's runs are, without timings: the same after a run that reused all."""
        return {"study": self.study, "experiment_id": self.experiment_id, "runs": self.runs}


def load_study_data(protocol: Protocol) -> DataSplits:
    """The protocol's data (raises DataNotFoundError before anything is tracked)."""
    d = protocol.data
    val_size: int | float = int(d.val_size) if d.val_size >= 1 else d.val_size
    try:
        return load_data(
            d.dataset,
            root=d.root,
            download=d.download,
            val_size=val_size,
            data_seed=d.data_seed,
            augmentation=d.augmentation,
            image_size=d.image_size,
        )
    except UserInputError as e:
        field = f"data.{e.field}" if e.field else "data"
        raise type(e)(e.reason, source=protocol.source, field=field) from None


def run_study(
    protocol: Protocol,
    tracker: Tracker,
    *,
    progress: ProgressCallback | None = None,
    pack_size: int = 1,
    device: str | None = None,
    data: DataSplits | None = None,
) -> RunSummary:
    """Train every (role, seed) of the protocol that the tracker does not already hold."""
    emit = progress or (lambda event: None)
    start = time.time()
    plan = expand(protocol)
    data = data or load_study_data(protocol)
    fingerprints = plan.fingerprints(data.identity)
    exp_id = tracker.experiment_id(protocol.study.name)
    assert exp_id is not None
    finished = tracker.finished_runs(exp_id)
    run_ids: dict[tuple[str, int], str] = {}
    for (role_key, seed), fp in fingerprints.items():
        hit = finished.get((role_key, fp))
        if hit is not None:
            run_ids[(role_key, seed)] = hit.run_id
    todo = [k for k in fingerprints if k not in run_ids]
    summary = RunSummary(protocol.study.name, exp_id, None, reused=len(run_ids))

    def index_runs() -> None:
        summary.runs = {
            f"{role}@{seed}": {"run_id": run_ids[(role, seed)], "fingerprint": fp}
            for (role, seed), fp in fingerprints.items()
            if (role, seed) in run_ids
        }

    epochs_todo = sum(plan.role(r).train.epochs for r, _ in todo if plan.role(r).train)
    emit(Progress("start", total_runs=len(todo), total_epochs=epochs_todo))
    if not todo:
        summary.seconds = time.time() - start
        index_runs()
        return summary

    env = environment()
    parent = tracker.start_parent(
        exp_id,
        protocol.study.name,
        {"protocol_sha": protocol.sha256, "protocol_file": protocol.source, "runs": len(todo)},
    )
    summary.parent_run_id = parent
    session = _Session(plan, data, tracker, exp_id, parent, fingerprints, run_ids, env, emit)
    session.device = resolve_device(device or protocol.train.device)
    status = "FINISHED"
    try:
        for role in plan.roles:
            seeds = [s for s in plan.seeds if (role.key, s) in todo]
            if not seeds:
                continue
            if role.kind == "ensemble":
                for seed in seeds:
                    session.evaluate_ensemble(role, seed, summary)
            else:
                for i in range(0, len(seeds), pack_size):
                    session.train_pack(role, seeds[i : i + pack_size], summary)
        if summary.failed:
            status = "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_run(parent, status)
        summary.seconds = time.time() - start
        index_runs()
    return summary


class _Session:
    """State of one invocation: trained models in memory, run ids, what failed."""

    def __init__(self, plan, data, tracker, exp_id, parent, fingerprints, run_ids, env, emit):
        self.plan: Plan = plan
        self.data: DataSplits = data
        self.tracker: Tracker = tracker
        self.exp_id: str = exp_id
        self.parent: str = parent
        self.fingerprints: dict[tuple[str, int], str] = fingerprints
        self.run_ids: dict[tuple[str, int], str] = run_ids
        self.env = env
        self.emit: ProgressCallback = emit
        self.device = torch.device("cpu")
        self.checkpoints = CheckpointStore(tracker.checkpoint_root())
        self.interrupted = tracker.interrupted_runs(exp_id)
        self.states: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self.protocol_files = {
            "protocol/protocol.json": plan.protocol.model_dump_json(indent=2),
            "environment/environment.json": json.dumps(env, indent=2),
            "environment/pip-freeze.txt": "\n".join(pip_freeze()) + "\n",
        }
        try:
            with open(plan.protocol.source) as f:
                self.protocol_files["protocol/protocol.toml"] = f.read()
        except OSError:
            pass

    def model(self, key: str, seed: int) -> nn.Module:
        """A trained model of (role, seed): from memory, else from its logged checkpoint."""
        if (key, seed) not in self.states:
            self.states[(key, seed)] = self.tracker.load_checkpoint(self.run_ids[(key, seed)])
        return load_model(self.plan.role(key), self.data, self.states[(key, seed)], self.device)

    def _tags(self, role: Role, seed: int) -> dict[str, Any]:
        p = self.plan.protocol
        teacher_run = self.run_ids.get((role.teacher, seed)) if role.teacher else None
        return {
            "study": p.study.name,
            "arm": role.arm,
            "generation": role.generation,
            "role": role.key,
            "kind": role.kind,
            "seed": seed,
            "fingerprint": self.fingerprints[(role.key, seed)],
            "protocol_sha": p.sha256,
            "teacher_run_id": teacher_run,
            "data_identity": self.data.identity,
            "device": str(self.device),
            "deterministic": resolve_deterministic(role.train.deterministic, self.device)
            if role.train
            else None,
            "members_run_ids": ",".join(self.run_ids.get((m, seed), "") for m in role.members)
            or None,
        }

    def _missing_dependency(self, role: Role, seed: int, summary: RunSummary) -> bool:
        missing = [d for d in self.plan.dependencies(role.key) if (d, seed) not in self.run_ids]
        if missing:
            summary.skipped.append(f"{role.key} seed {seed} (needs {', '.join(missing)})")
            self.emit(Progress("skip", role.key, seed, message=f"needs {', '.join(missing)}"))
        return bool(missing)

    def _start(self, role: Role, seed: int) -> str:
        run_id = self.tracker.start_run(
            self.exp_id,
            parent_id=self.parent,
            name=f"{role.key}/seed{seed}",
            tags=self._tags(role, seed),
            params={**role.params(), "seed": seed, "dataset": self.plan.protocol.data.dataset},
        )
        self.tracker.log_files(run_id, self.protocol_files)
        return run_id

    def _start_or_resume(self, role: Role, seed: int) -> tuple[str, int]:
        """A new run, or the interrupted run of the same fingerprint reopened.

        Returns the run id and the last epoch already logged to it (0 for a new run).
        """
        hit = self.interrupted.get((role.key, self.fingerprints[(role.key, seed)]))
        if hit is None:
            return self._start(role, seed), 0
        self.tracker.reopen(hit.run_id)
        return hit.run_id, self.tracker.last_step(hit.run_id, "val_acc")

    def train_pack(self, role: Role, seeds: list[int], summary: RunSummary) -> None:
        seeds = [s for s in seeds if not self._missing_dependency(role, s, summary)]
        if not seeds:
            return
        teachers = {s: self.model(role.teacher, s) for s in seeds} if role.teacher else None
        started = {s: self._start_or_resume(role, s) for s in seeds}
        runs = {s: run_id for s, (run_id, _) in started.items()}
        logged = {s: last for s, (_, last) in started.items()}
        slots = {s: self.checkpoints.slot(self.fingerprints[(role.key, s)]) for s in seeds}

        def on_epoch(seed: int, epoch: int, metrics: dict[str, float]) -> None:
            if epoch > logged[seed]:
                self.tracker.log_metrics(runs[seed], metrics, step=epoch)
                logged[seed] = epoch
            self.emit(Progress("epoch", role.key, seed, epoch, metrics=metrics))

        # A pack trains its seeds one after another today; train them one call each so
        # that a seed that diverges fails alone.
        for seed in seeds:
            try:
                [result] = train_role(
                    role,
                    [seed],
                    self.data,
                    teachers=teachers,
                    device=self.device,
                    on_epoch=on_epoch,
                    checkpoints={seed: slots[seed]},
                )
            except TrainingDiverged as e:
                self._fail(role, seed, runs[seed], str(e), summary)
                continue
            except KeyboardInterrupt:
                for s in seeds:
                    if (role.key, s) not in self.run_ids:
                        self.tracker.end_run(runs[s], "KILLED")
                raise
            except Exception as e:  # noqa: BLE001 - one seed's crash must not sink the study
                reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
                self._fail(role, seed, runs[seed], reason, summary)
                continue
            finally:
                for note in slots[seed].notes:
                    self.emit(Progress("note", role.key, seed, message=note))
                slots[seed].notes.clear()
            run_id = runs[seed]
            if result.resumed_from:
                self.tracker.set_tags(run_id, {"resumed_from_epoch": result.resumed_from})
                self.emit(Progress("resumed", role.key, seed, epoch=result.resumed_from))
            # epochs restored from the checkpoint that the killed process had not yet logged
            for epoch in range(logged[seed] + 1, result.resumed_from + 1):
                self.tracker.log_metrics(run_id, result.history[epoch - 1], step=epoch)
            # the last epoch's metrics are already logged at this step; add the rest
            last = result.history[-1] if result.history else {}
            extra = {k: v for k, v in result.final.items() if k not in last}
            self.tracker.log_metrics(run_id, extra, step=role.train.epochs)
            self.tracker.log_checkpoint(run_id, result.state_dict)
            self.tracker.end_run(run_id)
            slots[seed].clear()
            self.states[(role.key, seed)] = result.state_dict
            self.run_ids[(role.key, seed)] = run_id
            summary.trained += 1
            self.emit(Progress("done", role.key, seed, metrics=result.final))

    def evaluate_ensemble(self, role: Role, seed: int, summary: RunSummary) -> None:
        if self._missing_dependency(role, seed, summary):
            return
        run_id = self._start(role, seed)
        members = [self.model(m, seed) for m in role.members]
        teacher = self.model("teacher", seed)
        final = evaluate_ensemble(
            members, self.data, batch_size=self.plan.protocol.train.eval_batch_size, teacher=teacher
        )
        self.tracker.log_metrics(run_id, final, step=0)
        self.tracker.end_run(run_id)
        self.run_ids[(role.key, seed)] = run_id
        summary.trained += 1
        self.emit(Progress("done", role.key, seed, metrics=final))

    def _fail(self, role: Role, seed: int, run_id: str, reason: str, summary: RunSummary) -> None:
        self.tracker.set_tags(run_id, {"failure": reason[:4000]})
        self.tracker.end_run(run_id, "FAILED")
        summary.failed.append(f"{role.key} seed {seed}: {reason.splitlines()[0]}")
        self.emit(Progress("fail", role.key, seed, message=reason.splitlines()[0]))
