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
import os
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.checkpoint import CheckpointSlot, CheckpointStore
from study.claims import ClaimBoard, dead_here, process_space
from study.data import DataSplits, load_data
from study.determinism import deterministic_mode, environment, pip_freeze, resolve_deterministic
from study.device import resolve_device
from study.engine import SeedResult, build_model, channels_last, evaluate_ensemble, load_model
from study.errors import NO_SPACE, DiskFull, TrackerUnavailable, UserInputError
from study.interrupts import held
from study.pack import auto_pack_size
from study.plan import Plan, Role, expand
from study.protocol import Protocol
from study.track import Tracker
from study.train import train_role

STOPS = (KeyboardInterrupt, UserInputError, TrackerUnavailable)
"""What stops a whole invocation rather than failing one pack: Ctrl-C or SIGTERM, a full disk
(``DiskFull``) or another input error, a tracking store lost."""


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
            synthetic=dict(d.synthetic) or None,
            verify_checksums=d.verify_checksums,
        )
    except UserInputError as e:
        field = f"data.{e.field}" if e.field else "data"
        raise type(e)(e.reason, source=protocol.source, field=field) from None


def data_facts(data: DataSplits) -> str:
    """The run tag ``data_facts``: split sizes and input shape, for a report made without
    the data (JSON: train, val, test, num_classes, in_channels, image_size)."""
    shape = {k: getattr(data, k) for k in ("num_classes", "in_channels", "image_size")}
    return json.dumps({**data.sizes, **shape}, sort_keys=True)


def check_models(plan: Plan, data: DataSplits) -> None:
    """Every trained role's network can be built for the data (image size, channels):
    refused now, naming the protocol's field, and not when the role's turn to train comes,
    after other roles have trained. Built on the meta device: no memory, no arithmetic."""
    p = plan.protocol
    seen: set[str] = set()
    for role in plan.trained_roles:
        key = json.dumps([role.arch, role.arch_kwargs], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device("meta"):
                build_model(role, data)
        except UserInputError as e:
            index = next((i for i, a in enumerate(p.arms) if a.name == role.arm), None)
            where = "teacher" if index is None else f"arms[{index}] ('{role.arm}')"
            raise UserInputError(
                f"{e.reason} (for the data: {data.in_channels} x {data.image_size} x "
                f"{data.image_size}; [data] image_size resizes)",
                source=p.source,
                field=f"{where}.{e.field}" if e.field else where,
            ) from None


def run_study(
    protocol: Protocol,
    tracker: Tracker,
    *,
    progress: ProgressCallback | None = None,
    pack_size: int | None = None,
    device: str | None = None,
    data: DataSplits | None = None,
    plan: Plan | None = None,
    seeds: list[int] | None = None,
    poll_s: float = 2.0,
) -> RunSummary:
    """Train every (role, seed) of the protocol that the tracker does not already hold.

    ``plan`` replaces ``expand(protocol)``: one with tuned values resolved, or a part of
    the roles for other seeds (the teachers that `study tune` needs). ``seeds`` restricts
    this worker to some of the plan's seeds (a Slurm job's chain).

    Several workers may run the same plan against one tracking store at once: each
    (role, seed) is claimed before it is trained (see ``Tracker.try_claim``), a student
    waits for a teacher that another worker is still training, and a claim whose worker
    stopped sending heartbeats is taken over and resumed from its checkpoint.
    """
    emit = progress or (lambda event: None)
    start = time.time()
    plan = plan or expand(protocol)
    plan.require_trainable()
    data = data or load_study_data(protocol)
    check_models(plan, data)
    fingerprints = plan.fingerprints(data.identity)
    study = protocol.study.name
    exp_id = tracker.experiment_id(study)
    assert exp_id is not None
    mine = [k for k in fingerprints if seeds is None or k[1] in seeds]
    run_ids: dict[tuple[str, int], str] = {}

    def refresh() -> None:
        finished = tracker.finished_runs(exp_id)
        for key, fp in fingerprints.items():
            hit = finished.get((key[0], fp))
            if hit is not None:
                run_ids.setdefault(key, hit.run_id)

    refresh()
    todo = [k for k in mine if k not in run_ids]
    summary = RunSummary(study, exp_id, None, reused=len(mine) - len(todo))
    epochs_todo = sum(plan.role(r).train.epochs for r, _ in todo if plan.role(r).train)
    emit(Progress("start", total_runs=len(todo), total_epochs=epochs_todo))
    try:
        if todo:
            _invocation(
                protocol, tracker, plan, data, mine, fingerprints, run_ids, summary, refresh,
                emit, pack_size=pack_size, device=device, poll_s=poll_s,
            )  # fmt: skip
    finally:
        summary.seconds = time.time() - start
        summary.runs = {
            f"{role}@{seed}": {
                "run_id": run_ids[(role, seed)],
                "fingerprint": fingerprints[(role, seed)],
            }
            for (role, seed) in mine
            if (role, seed) in run_ids
        }
    return summary


def _invocation(
    protocol: Protocol,
    tracker: Tracker,
    plan: Plan,
    data: DataSplits,
    mine: list[tuple[str, int]],
    fingerprints: dict[tuple[str, int], str],
    run_ids: dict[tuple[str, int], str],
    summary: RunSummary,
    refresh: Callable[[], None],
    emit: ProgressCallback,
    *,
    pack_size: int | None,
    device: str | None,
    poll_s: float,
) -> None:
    """The invocation's parent run around the training of what is left (``_work``): the
    parent and every run it creates carry this worker's tag, and whatever stops it (an
    interrupt between two calls, an error) the runs left RUNNING are found by that tag and
    ended KILLED, the parent FAILED or KILLED (``_end_runs``)."""
    study, exp_id = summary.study, summary.experiment_id
    execution = protocol.execution
    size = pack_size or (execution.pack if isinstance(execution.pack, int) else None)
    resolved = resolve_device(device or protocol.train.device)  # before the parent exists
    worker = f"{process_space()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _end_runs_of_dead_workers(tracker, exp_id)
    parent = board = None
    status = "FINISHED"
    given_up: set[tuple[str, int]] = set()  # failed or blocked in this invocation
    try:
        parent = tracker.start_parent(
            exp_id,
            study,
            {
                "protocol_sha": protocol.sha256,
                "protocol_file": protocol.source,
                "worker": worker,
            },
        )
        summary.parent_run_id = parent
        session = _Session(
            plan, data, tracker, exp_id, parent, fingerprints, run_ids, environment(), emit
        )
        session.device, session.worker = resolved, worker
        board = ClaimBoard(tracker, study, execution.heartbeat_s, execution.stale_after_s, worker)
        with channels_last(execution.channels_last):
            _work(session, board, plan, mine, size, summary, refresh, given_up, poll_s)
        if summary.failed:
            status = "FAILED"
    except Exception:  # an error escaped: the invocation failed, it was not interrupted
        status = "FAILED"
        raise
    except BaseException:  # Ctrl-C (KeyboardInterrupt), or the process being told to exit
        status = "KILLED"
        raise
    finally:
        with held():
            _end_runs(tracker, exp_id, worker, parent, board, status)
        if status == "KILLED" and tracker.lost is not None:
            # The heartbeat found the tracker gone and interrupted the training, or it went
            # while an interrupt was handled: the runs could not be ended KILLED; say that.
            raise TrackerUnavailable(tracker.lost.uri, tracker.lost.reason)


def _work(session, board, plan, mine, size, summary, refresh, given_up, poll_s) -> None:
    """The invocation's loop: claim what is ready, train it, wait for other workers."""
    fingerprints, run_ids, tracker = session.fingerprints, session.run_ids, session.tracker
    study = plan.protocol.study.name
    while True:
        refresh()
        remaining = [k for k in mine if k not in run_ids and k not in given_up]
        if not remaining:
            break
        claims = tracker.claims(study)
        session.interrupted = tracker.interrupted_runs(session.exp_id)
        worked = False
        for role in plan.roles:
            ready = [
                s
                for (key, s) in remaining
                if key == role.key and all((d, s) in run_ids for d in plan.dependencies(role.key))
            ]
            step = size or auto_pack_size(role, len(ready), session.device, session.data)
            for i in range(0, len(ready), step):
                won, took_over = board.claim(
                    [(s, fingerprints[(role.key, s)]) for s in ready[i : i + step]], claims
                )
                if not won:
                    continue
                # A claim is released only after its run is FINISHED: a claim won over a
                # released one may be for a run that finished since our last look.
                if took_over:
                    refresh()
                    done = [s for s in won if (role.key, s) in run_ids]
                    board.release(won.pop(s) for s in done)
                    if not won:
                        continue
                worked = True
                try:
                    if role.kind == "ensemble":
                        for seed in won:
                            session.evaluate_ensemble(role, seed, summary)
                    else:
                        session.train_pack(role, list(won), summary)
                finally:
                    board.release(won.values())
                given_up.update((role.key, s) for s in won if (role.key, s) not in run_ids)
        if worked:
            continue
        # Decided on a fresh look: a claim we lost just now was taken after `claims` was
        # read, and a run finished since the last refresh may have made work ready.
        if board.others_active(tracker.claims(study), list(fingerprints.values())):
            time.sleep(poll_s)  # another worker trains something we need: wait for it
            continue
        known = len(run_ids)
        refresh()
        if len(run_ids) > known:
            continue
        for role_key, seed in remaining:  # nobody works on them and they cannot start
            missing = [d for d in plan.dependencies(role_key) if (d, seed) not in run_ids]
            summary.skipped.append(f"{role_key} seed {seed} (needs {', '.join(missing)})")
            session.emit(Progress("skip", role_key, seed, message=f"needs {', '.join(missing)}"))
        break


def _end_runs(tracker: Tracker, exp_id: str, worker: str, parent, board, status: str) -> None:
    """Stop the heartbeats, end the runs this invocation left RUNNING (KILLED: the next
    `study run` resumes them) and its parent run with ``status``. After a failure (a lost
    tracker, a full disk) what cannot be ended is left as it is, quietly: the failure is
    what the user must hear about."""
    if board is not None:
        board.stop()
    try:
        if status != "FINISHED":
            for run_id, tags in tracker.running_runs(exp_id):
                if tags.get("worker") == worker and run_id != parent:
                    tracker.end_run(run_id, "KILLED")
        if parent is not None:
            tracker.end_run(parent, status)
    except Exception:
        if status == "FINISHED":
            raise


def _end_runs_of_dead_workers(tracker: Tracker, exp_id: str) -> None:
    """Runs left RUNNING by a worker of this machine whose process is gone (killed, the OOM
    killer) are ended KILLED: their trainings resume (or start over) in this invocation."""
    for run_id, tags in tracker.running_runs(exp_id):
        if dead_here(tags.get("worker", "")):
            tracker.end_run(run_id, "KILLED")


class _Session:
    """State of one invocation: trained models in memory, run ids, what failed.

    One class of about 240 lines because starting, resuming, training, logging and failing
    a run all read and write the same invocation state (the run ids, the models kept for
    their students, the interrupted runs to resume); each method is short."""

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
        self.worker = ""  # this invocation's worker tag, on every run it creates or resumes
        self.checkpoints = CheckpointStore(
            tracker.checkpoint_root(), plan.protocol.execution.checkpoint_every_s
        )
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
        if (key, seed) in self.states:
            return load_model(self.plan.role(key), self.data, self.states[(key, seed)], self.device)
        run_id = self.run_ids[(key, seed)]
        state = self.tracker.load_checkpoint(run_id)
        model = model_of_run(self.plan.role(key), self.data, state, self.device, run_id)
        self.states[(key, seed)] = state
        return model

    def _tags(self, role: Role, seed: int) -> dict[str, Any]:
        p = self.plan.protocol
        teacher_run = self.run_ids.get((role.teacher, seed)) if role.teacher else None
        return {
            "study": p.study.name,
            "condition": p.condition,  # None (no tag) for a protocol of one condition
            "arm": role.arm,
            "generation": role.generation,
            "role": role.key,
            "kind": role.kind,
            "seed": seed,
            "fingerprint": self.fingerprints[(role.key, seed)],
            "protocol_sha": p.sha256,
            "teacher_run_id": teacher_run,
            "data_identity": self.data.identity,
            "data_facts": data_facts(self.data),
            "device": str(self.device),
            "job_id": job_id(),
            "deterministic": resolve_deterministic(role.train.deterministic, self.device)
            if role.train
            else None,
            "members_run_ids": ",".join(self.run_ids.get((m, seed), "") for m in role.members)
            or None,
            "worker": self.worker,
        }

    def _missing_dependency(self, role: Role, seed: int, summary: RunSummary) -> bool:
        missing = [d for d in self.plan.dependencies(role.key) if (d, seed) not in self.run_ids]
        if missing:
            summary.skipped.append(f"{role.key} seed {seed} (needs {', '.join(missing)})")
            self.emit(Progress("skip", role.key, seed, message=f"needs {', '.join(missing)}"))
        return bool(missing)

    def _params(self, role: Role, seed: int) -> dict[str, Any]:
        return {**role.params(), "seed": seed, "dataset": self.plan.protocol.data.dataset}

    def _start(self, role: Role, seed: int, pack: int = 1) -> str:
        """A new run; its parameters go with its first metrics (``_params``)."""
        run_id = self.tracker.start_run(
            self.exp_id,
            parent_id=self.parent,
            name=f"{role.key}/seed{seed}",
            # the pack size changes nothing but float rounding (grouped convolutions)
            tags={**self._tags(role, seed), "pack_size": pack},
        )
        self.tracker.log_files(run_id, self.protocol_files)
        return run_id

    def _start_or_resume(
        self, role: Role, seed: int, pack: int
    ) -> tuple[str, set[int], CheckpointSlot]:
        """A new run, or the interrupted run of the same fingerprint reopened to continue
        from its checkpoint.

        Returns the run id, the epochs already logged to it (none for a new run) and the
        seed's checkpoint slot. Only a seed that resumes reads its slot; a new run's slot is
        cleared unread (files planted or left there are never loaded). An interrupted run
        without a checkpoint this device can resume (none was due yet, all are refused, or
        they come from another device type) is left KILLED and tagged with the run that
        supersedes it: the epochs a run logs are those of one training.
        """
        fingerprint = self.fingerprints[(role.key, seed)]
        slot = self.checkpoints.slot(fingerprint)
        hit = self.interrupted.get((role.key, fingerprint))
        if hit is not None and slot.resume_state(self.device) is not None:
            self.tracker.reopen(hit.run_id, {"worker": self.worker})
            # train_loss is in every epoch's metrics (val_acc is not: val_size = 0), and an
            # epoch's metrics go to MLflow together
            logged = {step for step, _ in self.tracker.metric_history(hit.run_id, "train_loss")}
            return hit.run_id, logged, slot
        notes = list(slot.notes)
        slot.clear()
        slot.resume = False
        run_id = self._start(role, seed, pack)
        if notes:  # why its checkpoints were refused: in the run, as on the terminal
            self.tracker.set_tags(run_id, {"checkpoint_notes": "\n".join(notes)[:4000]})
        if hit is not None:
            self._supersede(role, fingerprint, hit.run_id, run_id)
        return run_id, set(), slot

    def _supersede(self, role: Role, fingerprint: str, old: str, new: str) -> None:
        self.tracker.set_tags(old, {"superseded_by": new})
        self.tracker.end_run(old, "KILLED")
        del self.interrupted[(role.key, fingerprint)]

    def train_pack(self, role: Role, seeds: list[int], summary: RunSummary) -> None:
        seeds = [s for s in seeds if not self._missing_dependency(role, s, summary)]
        if not seeds:
            return
        teachers = {s: self.model(role.teacher, s) for s in seeds} if role.teacher else None
        started = {s: self._start_or_resume(role, s, len(seeds)) for s in seeds}
        runs = {s: run_id for s, (run_id, _, _) in started.items()}
        slots = {s: slot for s, (_, _, slot) in started.items()}
        # Per-epoch metrics reach MLflow every `log_every_s` seconds, a batch per run: one
        # database transaction per seed and epoch would cost more than a small network's
        # epoch. What a crash loses from the buffer is in the checkpoint's history, and a
        # resumed seed logs the epochs of that history MLflow lacks before it trains on.
        metrics_log = _MetricsBuffer(
            self.tracker,
            runs,
            {s: logged for s, (_, logged, _) in started.items()},
            self.plan.protocol.execution.log_every_s,
            params={s: self._params(role, s) for s in seeds},
        )

        def on_epoch(seed: int, epoch: int, metrics: dict[str, float]) -> None:
            metrics_log.add(seed, epoch, metrics)
            self.emit(Progress("epoch", role.key, seed, epoch, metrics=metrics))

        def on_resume(seed: int, history: list[dict[str, float]]) -> None:
            metrics_log.backfill(seed, history)
            # said before the seed trains on, so that progress counts the epochs it skips
            self.emit(Progress("resumed", role.key, seed, epoch=len(history)))

        try:
            results = train_role(
                role,
                seeds,
                self.data,
                teachers=teachers,
                device=self.device,
                on_epoch=on_epoch,
                checkpoints=slots,
                on_resume=on_resume,
            )
        except STOPS as stop:  # the invocation stops; its runs end KILLED (``_end_runs``)
            if not isinstance(stop, TrackerUnavailable | DiskFull):
                metrics_log.flush()  # what Ctrl-C and SIGTERM keep of the epochs so far
            raise
        except OSError as e:
            if e.errno in NO_SPACE:
                raise DiskFull.at(Path(e.filename or ".").parent, "a file") from None
            results = _failed(seeds, e)
        except Exception as e:  # noqa: BLE001 - one pack's crash must not sink the study
            results = _failed(seeds, e)
        finally:
            for seed in seeds:
                for note in slots[seed].notes:
                    self.emit(Progress("note", role.key, seed, message=note))
                slots[seed].notes.clear()
        for result in results:
            seed = result.seed
            if result.failure is not None:
                metrics_log.flush(seed)
                self._fail(role, seed, runs[seed], result.failure, summary)
                continue
            run_id = runs[seed]
            for note in result.notes:
                self.emit(Progress("note", role.key, seed, message=note))
            if result.resumed_from:
                self.tracker.set_tags(run_id, {"resumed_from_epoch": result.resumed_from})
            # the epochs not yet in MLflow (buffered, or restored from a checkpoint that the
            # killed process had not logged and `backfill` could not send), and the final
            # metrics at the last epoch's step
            last = result.history[-1] if result.history else {}
            extra = {k: v for k, v in result.final.items() if k not in last}
            metrics_log.flush(seed, history=result.history, final=(role.train.epochs, extra))
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
        fingerprint = self.fingerprints[(role.key, seed)]
        hit = self.interrupted.get((role.key, fingerprint))
        if hit is not None:  # an evaluation stopped midway: this one replaces it
            self._supersede(role, fingerprint, hit.run_id, run_id)
        members = [self.model(m, seed) for m in role.members]
        teacher = self.model("teacher", seed)
        recipe = self.plan.role(role.members[-1]).train  # the members' (one arm's)
        with deterministic_mode(recipe.deterministic if recipe else None, self.device):
            final = evaluate_ensemble(
                members,
                self.data,
                batch_size=self.plan.protocol.train.eval_batch_size,
                teacher=teacher,
            )
        self.tracker.log_history(run_id, [(0, final, time.time())], params=self._params(role, seed))
        self.tracker.end_run(run_id)
        self.run_ids[(role.key, seed)] = run_id
        summary.trained += 1
        self.emit(Progress("done", role.key, seed, metrics=final))

    def _fail(self, role: Role, seed: int, run_id: str, reason: str, summary: RunSummary) -> None:
        # a retry starts over: resuming a diverged run would only diverge again
        self.checkpoints.slot(self.fingerprints[(role.key, seed)]).clear()
        self.tracker.set_tags(run_id, {"failure": reason[:4000]})
        self.tracker.end_run(run_id, "FAILED")
        summary.failed.append(f"{role.key} seed {seed}: {reason.splitlines()[0]}")
        self.emit(Progress("fail", role.key, seed, message=reason.splitlines()[0]))


def _failed(seeds: list[int], e: Exception) -> list[SeedResult]:
    reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
    return [SeedResult(seed=s, state_dict={}, failure=reason) for s in seeds]


def model_of_run(
    role: Role, data: DataSplits, state: dict[str, torch.Tensor], device: torch.device, run_id: str
) -> nn.Module:
    """The model of a tracked run from its logged ``state_dict``: one that does not fit the
    role's network (missing, unexpected or misshapen tensors) is refused, naming the run."""
    try:
        return load_model(role, data, state, device)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserInputError(
            f"its artifact checkpoint/model.pt is not a state dict of role {role.key}'s "
            f"network ({first}): refused",
            source=f"run {run_id}",
        ) from None


class _MetricsBuffer:
    """The per-epoch metrics of a pack's runs on their way to MLflow.

    ``add`` buffers an epoch; when ``interval_s`` has passed since the last flush, every
    run's buffered epochs go out, one ``log_batch`` per run. ``logged[seed]`` is the set of
    epochs MLflow holds for the seed's run: a set, not the last one, because a resumed run
    may hold epochs up to its last flush and lack some before them (a checkpoint saved, the
    process killed before that epoch was logged). A run's ``params`` go with its first flush.
    """

    def __init__(
        self,
        tracker: Tracker,
        runs: dict[int, str],
        logged: dict[int, set[int]],
        interval_s: float,
        *,
        params: dict[int, dict[str, Any]],
    ):
        self.tracker, self.runs, self.interval_s = tracker, runs, interval_s
        self.logged = {s: set(logged.get(s, ())) for s in runs}
        self.params = dict(params)
        self.pending: dict[int, list[tuple[int, dict[str, float], float]]] = {s: [] for s in runs}
        self.last_flush = time.monotonic()

    def add(self, seed: int, epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in self.logged[seed]:
            self.pending[seed].append((epoch, dict(metrics), time.time()))
        if time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def backfill(self, seed: int, history: list[dict[str, float]]) -> None:
        """A seed resumed from a checkpoint whose ``history`` holds epochs MLflow lacks:
        send them now, before its training goes on (``train_role``'s ``on_resume``)."""
        rows = [
            (e, history[e - 1], time.time())
            for e in range(1, len(history) + 1)
            if e not in self.logged[seed]
        ]
        params = self.params.pop(seed, None)
        if rows or params:
            self.tracker.log_history(self.runs[seed], rows, params=params)
            self.logged[seed].update(e for e, _, _ in rows)

    def flush(
        self,
        seed: int | None = None,
        *,
        history: list[dict[str, float]] | None = None,
        final: tuple[int, dict[str, float]] | None = None,
    ) -> None:
        """Send the buffered epochs of ``seed`` (None: every seed). With ``history`` (the
        seed's whole training), every epoch MLflow lacks is sent; ``final`` adds
        ``(step, metrics)``. One transaction per run (up to 1000 metrics)."""
        for s in [seed] if seed is not None else list(self.runs):
            rows = [r for r in self.pending[s] if r[0] not in self.logged[s]]
            if history is not None:
                when = {e: t for e, _, t in rows}
                rows = [
                    (e, history[e - 1], when.get(e, time.time()))
                    for e in range(1, len(history) + 1)
                    if e not in self.logged[s]
                ]
            epochs = [e for e, _, _ in rows]
            if final is not None and final[1]:
                rows = [*rows, (final[0], final[1], time.time())]
            params = self.params.pop(s, None)
            if rows or params:
                self.tracker.log_history(self.runs[s], rows, params=params)
                self.logged[s].update(epochs)
            self.pending[s] = []
        if seed is None:
            self.last_flush = time.monotonic()


def job_id() -> str | None:
    """The scheduler's id of the job this worker runs in (Slurm, or submitit's local one)."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def study_status(
    plan: Plan, tracker: Tracker, data_identity: str, stale_after_s: float
) -> list[dict[str, Any]]:
    """Per role: how many seeds are done, running, failed or waiting, and which."""
    fingerprints = plan.fingerprints(data_identity)
    study = plan.protocol.study.name
    runs = tracker.runs_frame(study)
    claims = tracker.claims(study)
    now = time.time()
    rows = []
    for role in plan.roles:
        states: dict[str, list[int]] = {"done": [], "running": [], "failed": [], "waiting": []}
        jobs: set[str] = set()
        for seed in plan.seeds:
            fp = fingerprints[(role.key, seed)]
            mine = runs[(runs["role"] == role.key) & (runs["fingerprint"] == fp)]
            claim = claims.get(fp)
            if (mine["status"] == "FINISHED").any():
                state = "done"
            elif claim and claim.active and now - claim.heartbeat < stale_after_s:
                state = "running"
            elif len(mine) and mine.sort_values("start_time")["status"].iloc[-1] == "FAILED":
                state = "failed"
            else:
                state = "waiting"
            states[state].append(seed)
            jobs.update(j for j in mine.get("job_id", []) if isinstance(j, str) and j)
        rows.append({"role": role.key, **states, "jobs": sorted(jobs)})
    return rows
