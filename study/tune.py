"""Everything Optuna: `study tune` searches an arm's loss settings on the validation split.

The protocol's ``[tune]`` section names an arm, one of its generations g, the ranges to
search (temperature, alpha, lr), the metric (val_acc or val_nll) and seeds of its own,
disjoint from the evaluation seeds (the protocol refuses an overlap), so that no number
in the report comes from a seed the tuning has seen.

A trial trains generation g of the arm with the trial's values on every tuning seed,
seed s distilling from seed s of generation g-1 (the teacher for g = 1), and returns the
mean validation metric over the tuning seeds. The teachers are ordinary runs of the
study: found in the tracker by fingerprint, trained first when missing (logged in the
study's experiment with the tuning seeds, which the report never collects). Trials never
compute a test metric (``train_role(..., evaluate_test=False)``).

What the pruner sees. The seeds of a trial are trained one after another, so a trial's
steps are (seed index, epoch) in that order: step ``i * E + e`` is epoch e of the i-th
tuning seed (E epochs per seed). The value reported at a step is the *running estimate
of the objective*: the mean of the finished seeds' final metric and the current seed's
metric at epoch e. Two trials at the same step have trained the same seeds for the same
epochs from the same initialisation and data order (the random streams depend on seed
and generation, not on the loss), so the median pruner compares like with like, can
stop a bad trial during its first seed, and the value at the last step is exactly the
trial's objective. The last step is never pruned (its work is done).

Several workers. Trials live in an Optuna storage: by default a journal file
(``optuna-journal.log``, next to the MLflow sqlite database), which several processes on
one machine may share; ``--storage`` also takes a database URL for workers on several
machines. ``--trials N`` asks for N finished trials (complete, pruned or failed) in the
study in total: a worker starts a trial only while finished + running trials number fewer
than N, so a rerun after an interruption runs only the remainder and two workers never
overshoot. On one machine that check and the one-time setup (the MLflow store, the
teachers, the parent run) are serialised by a lock file next to the storage. The sampler
of trial n is TPE seeded from (sampler_seed, n): one worker's study is reproducible, a
resumed study samples what an uninterrupted one would have, and concurrent workers do not
draw the same values.

Tracking. One parent MLflow run per tuning study (tags ``kind = tuning``, ``arm``,
``generation``, ``optuna_study``, ``storage``), shared by every invocation and worker; one
nested run per trial with the trial's values as parameters, per-step metrics (the
current seed's ``val_acc``, ``val_nll``, ``train_loss``, ``train_acc`` and the running
``objective``), tags ``trial_number`` and ``trial_state`` (complete, pruned, fail), and
status FINISHED (complete), KILLED (pruned: stopped on purpose, its metrics are partial;
also an interrupted trial) or FAILED. Trial runs carry no fingerprint: the executor and
the report never take them for a (role, seed) run.

Per-step metrics of a trial reach MLflow in batches (every ``[execution] log_every_s``
seconds and at the trial's end), and every tracker or Optuna write holds Ctrl-C back until
it is done: an interrupt inside a sqlite write would leave its transaction open and lock
the store for the cleanup. After Ctrl-C the trial is failed in Optuna, its run and the
parent run end KILLED, and KeyboardInterrupt goes on (``study tune`` exits 130). A rerun
ends the trial runs a dead worker of this machine left RUNNING (``trials.settle_trial_runs``).

What a study is. The Optuna study's name ends in a hash of ``tuning_config``: the ranges,
metric, tuning seeds, epochs, sampler seed, pruner, the tuned role's config and the
fingerprints of its teachers (recipes, architectures, [data] settings, package version).
A changed [tune] (or recipe, teacher, data settings) is a new study, started from zero;
an unchanged one resumes. The budget (``trials``) is not part of it: raising it tops the
same study up.

The result, ``results/<study>/tuned.json``, is what ``study run`` reads where an arm's loss
says ``temperature = "tuned"`` or ``alpha = "tuned"`` (see ``load_tuned``). It records the
config hash, and a file whose hash is not the current protocol's counts as no result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from study.claims import process_space
from study.data import DataSplits
from study.device import resolve_device
from study.engine import TrainingDiverged, channels_last, load_model
from study.errors import UserInputError
from study.execute import Progress, load_study_data, run_study
from study.interrupts import held
from study.losses import TUNED
from study.plan import (
    Plan,
    Role,
    derive_seed,
    tune_section,
    tuned_roles,
    tuning_config,
    tuning_hash,
)
from study.protocol import Protocol, TrainSection
from study.track import Tracker, check_writable, resolve_uri
from study.train import train_role
from study.trials import (
    DATA_ATTR,
    FINISHED,
    TuningPlan,
    best_trial,
    exclusive,
    fail_orphaned_trials,
    resolve_storage,
    settle_trial_runs,
    tuning_result,
)
from study.tuned import TUNED_FILE, digest, write_tuned

WORKER = f"{process_space()}:{os.getpid()}"  # see claims.dead_here
PARENT_ATTR = "mlflow_parent_run_id"
CONFIG_ATTR = "config_hash"


class TuningError(RuntimeError):
    """Tuning cannot go on (a teacher failed to train): not the user's input, not a bug."""


def optuna_study_name(protocol: Protocol) -> str:
    """``<study>-tune-<arm>-gen<g>-<hash>``: the hash of ``tuning_config``, so that a
    changed search (ranges, seeds, epochs, metric, sampler, pruner, the student's recipe,
    its teachers or the data) is a new Optuna study, and an unchanged one resumes."""
    spec = tune_section(protocol)
    key = tuning_hash(protocol)[:12]
    return f"{protocol.study.name}-tune-{spec.arm}-gen{spec.generation}-{key}"


def plan_tuning(
    protocol: Protocol,
    *,
    trials: int | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    results_dir: Path = Path("results"),
) -> TuningPlan:
    """Resolve and check a tuning study; raises UserInputError before anything is created."""
    spec = tune_section(protocol)
    n_trials = spec.trials if trials is None else trials
    if n_trials < 1:
        raise UserInputError(f"must be >= 1, got {n_trials}", field="--trials")
    uri = resolve_uri(tracking_uri)
    where = resolve_storage(storage, uri)
    student, chain = tuned_roles(protocol)
    for name, value in student.loss_params.items():
        if value == TUNED and getattr(spec, name, None) is None:
            raise UserInputError(
                f"arm '{spec.arm}' gives {name} = 'tuned' but [tune] does not search it: add a "
                f"tune.{name} range, or give {name} a number",
                source=protocol.source,
                field=f"tune.{name}",
            )
    seeds = spec.seed_list
    copy = protocol.model_copy(
        update={"study": protocol.study.model_copy(update={"seeds": list(seeds)})}
    )
    teachers = Plan(protocol=copy, roles=tuple(chain), seeds=tuple(seeds))
    teachers.require_trainable()
    config = tuning_config(protocol)
    return TuningPlan(
        protocol=protocol,
        spec=spec,
        trials=n_trials,
        storage=where,
        tracking_uri=uri,
        study_name=optuna_study_name(protocol),
        student=student,
        teachers=teachers,
        epochs=spec.epochs or student.train.epochs,
        results_dir=results_dir,
        config=config,
        config_hash=digest(config),
    )


def trial_role(student: Role, values: Mapping[str, float], epochs: int) -> Role:
    """The student with a trial's values, trained for ``epochs`` epochs.

    A shorter budget compresses the schedule: cosine anneals over the trial's epochs, and
    multistep milestones are scaled by epochs / the recipe's epochs.
    """
    train = student.train
    assert train is not None
    update: dict[str, Any] = {"epochs": epochs}
    if "lr" in values:
        update["lr"] = float(values["lr"])
    if epochs != train.epochs and train.milestones:
        scaled = {max(1, round(m * epochs / train.epochs)) for m in train.milestones}
        update["milestones"] = sorted(m for m in scaled if m < epochs)  # m = epochs: never applies
    loss = {k: float(values[k]) if k in values else v for k, v in student.loss_params.items()}
    return dataclasses.replace(
        student, loss_params=loss, train=TrainSection(**{**train.model_dump(), **update})
    )


# -- progress --------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneProgress:
    """One progress event: 'start', 'teacher', 'trial' or 'stop'."""

    kind: str
    number: int | None = None  # the trial's number
    state: str = ""  # complete, pruned, fail
    value: float | None = None
    step: int | None = None  # the last step reported (where a pruned trial stopped)
    best_value: float | None = None
    best_number: int | None = None
    finished: int = 0  # finished trials in the study, all workers
    total: int = 0  # the finished trials asked for
    eta_s: float | None = None
    message: str = ""


TuneProgressCallback = Callable[[TuneProgress], None]


@dataclass
class TuneSummary:
    result: dict[str, Any]  # the content of tuned.json
    path: Path
    ran: int  # trials this invocation ran
    seconds: float
    experiment_id: str
    parent_run_id: str


# -- the tuning loop -------------------------------------------------------------------


def tune(
    tuning: TuningPlan,
    *,
    data: DataSplits | None = None,
    progress: TuneProgressCallback | None = None,
    timeout: float | None = None,
    device: str | None = None,
) -> TuneSummary:
    """Run trials until the study holds ``tuning.trials`` finished ones; write tuned.json.

    ``timeout`` (seconds) stops starting new trials; the one in progress finishes.
    """
    emit = progress or (lambda event: None)
    start = time.time()
    data = data or load_study_data(tuning.protocol)
    dev = resolve_device(device or tuning.protocol.train.device)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with channels_last(tuning.protocol.execution.channels_last):
            parent: str | None = None
            worker: _Worker | None = None
            interrupted: type[KeyboardInterrupt] | None = None
            try:
                # One worker at a time: creating the MLflow store, the teachers, the parent.
                with exclusive(tuning.storage.lock):
                    check_writable(tuning.tracking_uri)
                    tracker = _Shielded(Tracker(tuning.tracking_uri))
                    exp_id = tracker.experiment_id(tuning.protocol.study.name)
                    assert exp_id is not None
                    storage = tuning.storage.open()
                    study = _open_study(tuning, storage, data.identity)
                    settle_trial_runs(tuning, tracker, exp_id, study)
                    emit(TuneProgress("start", finished=_count(study), total=tuning.trials))
                    teachers = _teachers(tuning, tracker.raw, exp_id, data, dev, device, emit)
                    with held():  # a Ctrl-C comes once the parent is known, to end it
                        parent = _parent_run(tuning, tracker, exp_id, study)
                worker = _Worker(
                    tuning, storage, tracker, exp_id, parent, data, teachers, dev, emit
                )
                while timeout is None or time.time() - start < timeout:
                    trial = worker.reserve()
                    if trial is None:
                        break
                    worker.run(trial)
            except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (the CLI's subclass)
                interrupted = type(e)  # handled below, out of the except block: _Worker.run
            except BaseException:
                if parent is not None:
                    _end_run_quietly(tracker, parent, "FAILED")
                raise
            if interrupted is not None:
                gc.collect()
                if worker is not None:  # a Ctrl-C between reserving a trial and running it
                    worker.fail_reserved()
                if parent is not None:
                    _end_run_quietly(tracker, parent, "KILLED")
                raise interrupted()
            tracker.end_run(parent, "FINISHED")
            result = tuning_result(
                tuning, study, tracker.experiment_info(tuning.protocol.study.name)
            )
            result["mlflow"]["parent_run_id"] = parent
            path = write_tuned(result, tuning.result_path)
            tracker.log_files(parent, {TUNED_FILE: json.dumps(result, indent=2) + "\n"})
            if result["best_params"]:
                tracker.set_tags(parent, {"best_params": json.dumps(result["best_params"])})
            emit(TuneProgress("stop", finished=_count(study), total=tuning.trials))
            return TuneSummary(result, path, worker.ran, time.time() - start, exp_id, parent)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _open_study(tuning: TuningPlan, storage, data_identity: str) -> optuna.Study:
    """The tuning study, created or resumed. Its name holds the hash of the config; the
    hash and the identity of the data its trials ran on are kept as study attributes."""
    study = optuna.create_study(
        storage=storage,
        study_name=tuning.study_name,
        direction=tuning.spec.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != tuning.spec.direction:
        raise UserInputError(
            f"the Optuna study '{tuning.study_name}' in {tuning.storage.url} was created to "
            f"{study.direction.name.lower()}, but tune.metric '{tuning.spec.metric}' needs to "
            f"{tuning.spec.direction}: use another --storage",
            source=tuning.protocol.source,
            field="tune.metric",
        )
    attrs = study.user_attrs
    known = attrs.get(CONFIG_ATTR)
    if known is not None and known != tuning.config_hash:
        raise UserInputError(
            f"the Optuna study '{tuning.study_name}' in {tuning.storage.url} was run with "
            f"another tuning config (hash {str(known)[:12]}, now {tuning.config_hash[:12]}): "
            "use another --storage",
            source=tuning.protocol.source,
            field="tune",
        )
    data = attrs.get(DATA_ATTR)
    if data is not None and data != data_identity:
        raise UserInputError(
            f"the trials of the Optuna study '{tuning.study_name}' in {tuning.storage.url} "
            f"ran on other data (identity {str(data)[:12]}, now {data_identity[:12]}): the "
            "data files changed; use another --storage to tune on the new data",
            source=tuning.protocol.source,
            field="data",
        )
    if known is None:
        study.set_user_attr(CONFIG_ATTR, tuning.config_hash)
        study.set_user_attr("config", json.loads(json.dumps(tuning.config, default=str)))
    if data is None:
        study.set_user_attr(DATA_ATTR, data_identity)
    return study


def _count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _sampler(tuning: TuningPlan, number: int) -> optuna.samplers.BaseSampler:
    """TPE seeded from (sampler_seed, trial number): see the module docstring."""
    seed = derive_seed(tuning.spec.sampler_seed, number, "tpe") % 2**32
    # TPE's random start-up phase: a third of the budget, between 3 and 10 trials
    startup = min(10, max(3, tuning.spec.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def make_pruner(tuning: TuningPlan) -> optuna.pruners.BasePruner:
    """Median: judge a trial from its second half of the first seed's epochs on, once a
    few trials (a quarter of the budget, 2 to 5) have completed."""
    if tuning.spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=min(5, max(2, tuning.spec.trials // 4)),
            n_warmup_steps=tuning.epochs // 2,
        )
    if tuning.spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tuning.steps)
    return optuna.pruners.NopPruner()


def _teachers(
    tuning: TuningPlan,
    tracker: Tracker,
    exp_id: str,
    data: DataSplits,
    device,
    device_spec: str | None,
    emit: TuneProgressCallback,
) -> dict[int, nn.Module]:
    """Seed s's teacher for the tuned generation: from the tracker, trained if missing."""
    plan = tuning.teachers

    def relay(event: Progress) -> None:
        if event.kind in ("done", "fail", "skip"):
            what = "trained" if event.kind == "done" else event.kind
            val = event.metrics.get("val_acc")
            extra = f" (val_acc {val:.4f})" if val is not None else f" {event.message}"
            emit(TuneProgress("teacher", message=f"{event.role} seed {event.seed}: {what}{extra}"))

    fingerprints = plan.fingerprints(data.identity)
    finished = tracker.finished_runs(exp_id)
    if any((key, fp) not in finished for (key, _), fp in fingerprints.items()):
        summary = run_study(
            plan.protocol, tracker, plan=plan, progress=relay, device=device_spec, data=data
        )
        if summary.failed or summary.skipped:
            raise TuningError(
                "the teachers of the tuned generation could not be trained: "
                + "; ".join(summary.failed + summary.skipped)
            )
        finished = tracker.finished_runs(exp_id)
    key = plan.roles[-1].key
    out = {}
    for seed in plan.seeds:
        run = finished[(key, fingerprints[(key, seed)])]
        state = tracker.load_checkpoint(run.run_id)
        out[seed] = load_model(plan.role(key), data, state, device)
    return out


def _parent_run(tuning: TuningPlan, tracker: Tracker, exp_id: str, study: optuna.Study) -> str:
    """The tuning study's parent run, its id kept in the Optuna study: one per study."""
    known = study.user_attrs.get(PARENT_ATTR)
    found = tracker.find_runs(exp_id, {"kind": "tuning", "optuna_study": tuning.study_name})
    if known in found:
        tracker.reopen(known)
        return known
    spec = tuning.spec
    params: dict[str, Any] = {
        "metric": spec.metric,
        "direction": spec.direction,
        "trials": spec.trials,
        "seeds": ",".join(map(str, tuning.seeds)),
        "epochs": tuning.epochs,
        "sampler": "tpe",
        "sampler_seed": spec.sampler_seed,
        "pruner": spec.pruner,
    }
    for name, r in tuning.space.items():
        params[f"space.{name}"] = f"[{r.low}, {r.high}]" + (" log" if r.log else "")
    parent = tracker.start_run(
        exp_id,
        parent_id=None,
        name=tuning.study_name,
        tags={
            "study": tuning.protocol.study.name,
            "kind": "tuning",
            "arm": spec.arm,
            "generation": spec.generation,
            "optuna_study": tuning.study_name,
            "storage": tuning.storage.url,
            "protocol_sha": tuning.protocol.sha256,
        },
        params=params,
    )
    study.set_user_attr(PARENT_ATTR, parent)
    return parent


class _Worker:
    """This process's share of the study: reserves trials and runs them.

    One class of about 200 lines because its methods share one trial's state (the Optuna
    trial, its MLflow run, the metrics buffer, the teachers and data) across reserve, run,
    report and abort; each method is short, and splitting the class would pass that state
    around instead."""

    def __init__(self, tuning, storage, tracker, exp_id, parent, data, teachers, device, emit):
        self.tuning: TuningPlan = tuning
        self.storage = storage
        self.tracker: Tracker = tracker
        self.exp_id: str = exp_id
        self.parent: str = parent
        self.data: DataSplits = data
        self.teachers: dict[int, nn.Module] = teachers
        self.device = device
        self.emit: TuneProgressCallback = emit
        self.pruner = make_pruner(tuning)
        self.ran = 0
        self.durations: list[float] = []
        self.reserved: optuna.Trial | None = None  # the trial reserve() gave out last
        # its role (the suggested values in it) and MLflow run, until run() takes it over
        self.begun: tuple[Role, str] | None = None

    def _view(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.load_study(
            study_name=self.tuning.study_name,
            storage=self.storage,
            sampler=sampler,
            pruner=self.pruner,
        )

    def reserve(self) -> optuna.Trial | None:
        """A new trial, or None when finished + running trials already make the total."""
        with exclusive(self.tuning.storage.lock):
            study = self._view()
            for number in fail_orphaned_trials(study):
                for run_id in self.tracker.find_runs(
                    self.exp_id, {"optuna_study": self.tuning.study_name, "trial_number": number}
                ):
                    self.tracker.set_tags(run_id, {"trial_state": "fail", "failure": "worker died"})
                    self.tracker.end_run(run_id, "KILLED")
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished + running >= self.tuning.trials:
                return None
            # the sampler of trial n depends on n only (the next number: the trials so far)
            trial = None
            try:
                # the trial, its values and its MLflow run together: a Ctrl-C meanwhile
                # would leave a trial in Optuna that no run in MLflow shows
                with held():
                    trial = self._view(_sampler(self.tuning, len(trials))).ask()
                    self.reserved, self.begun = trial, None  # (failed below if need be)
                    trial.set_user_attr("worker", WORKER)
                    values = {
                        name: trial.suggest_float(name, r.low, r.high, log=r.log)
                        for name, r in self.tuning.space.items()
                    }
                    role = trial_role(self.tuning.student, values, self.tuning.epochs)
                    self.begun = (role, self._start(trial, values, role))
            except BaseException:
                # A Ctrl-C held back meanwhile is delivered as the block ends: the trial it
                # created must not stay RUNNING (nobody would end it), nor its run.
                if trial is not None:
                    self.fail_reserved()
                raise
        return trial

    def fail_reserved(self) -> None:
        """The last reserved trial fails in Optuna, and its MLflow run ends KILLED, unless
        ``run`` took it over (an interrupt after ``reserve`` returned and before ``run``)."""
        if self.reserved is None:
            return
        trial, begun, self.begun = self.reserved, self.begun, None
        with held():
            trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if begun is not None:
                with contextlib.suppress(Exception):  # ending it is what matters
                    self.tracker.set_tags(
                        begun[1], {"trial_state": "fail", "failure": "interrupted"}
                    )
                _end_run_quietly(self.tracker, begun[1], "KILLED")

    def run(self, trial: optuna.Trial) -> FrozenTrial:
        """Train the trial's student on every tuning seed; tell Optuna and MLflow the end.

        Ctrl-C: the trial fails in Optuna, its MLflow run ends KILLED with the epochs it
        logged, and KeyboardInterrupt goes on. Every tracker and Optuna write holds Ctrl-C
        back until it is done (``held``), and the cleanup runs out of the except
        block, once the interrupted frames are gone.
        """
        t0 = time.time()
        assert trial is self.reserved and self.begun is not None
        (role, run_id), self.begun = self.begun, None  # taken over
        metrics: _TrialMetrics | None = None
        outcome: tuple[TrialState, float | None, str, str, dict[str, Any]] | None = None
        stop: type[KeyboardInterrupt] = KeyboardInterrupt
        try:
            metrics = _TrialMetrics(
                self.tracker, run_id, self.tuning.protocol.execution.log_every_s
            )
            value = self._objective(trial, role, metrics)
            outcome = (TrialState.COMPLETE, value, "complete", "FINISHED", {})
        except optuna.TrialPruned as e:
            outcome = (TrialState.PRUNED, None, "pruned", "KILLED", {"pruned": str(e)})
        except TrainingDiverged as e:
            outcome = (TrialState.FAIL, None, "fail", "FAILED", {"failure": str(e)})
        except KeyboardInterrupt as e:  # outcome None: cleaned up below, out of the except
            stop = type(e)
        except BaseException as e:  # a bug: the trial fails, then re-raise
            self._abort(trial, run_id, metrics, f"{type(e).__name__}: {e}", "FAILED")
            raise
        if outcome is None:
            gc.collect()  # what the interrupted frames held (a database cursor) goes now
            self._abort(trial, run_id, metrics, "interrupted", "KILLED")
            raise stop()
        state, value, name, status, tags = outcome
        assert run_id is not None and metrics is not None
        with held():  # the trial's end is recorded whole, or not at all
            if state == TrialState.COMPLETE:
                frozen = trial.study.tell(trial, value)
            else:
                frozen = trial.study.tell(trial, state=state)
            metrics.flush()
            self.tracker.set_tags(run_id, {"trial_state": name, **tags})
            self.tracker.end_run(run_id, status)
        self.ran += 1
        self.durations.append(time.time() - t0)
        self._report(trial.study, frozen, name)
        return frozen

    def _abort(
        self,
        trial: optuna.Trial,
        run_id: str | None,
        metrics: _TrialMetrics | None,
        reason: str,
        status: str,
    ) -> None:
        """The trial fails: Optuna first, then its MLflow run (best effort: a run left
        RUNNING is ended by the next `study tune`, see ``trials.settle_trial_runs``)."""
        with held():
            try:
                trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as e:  # noqa: BLE001 - the cause being reported matters more
                _warn(f"could not mark trial {trial.number} failed in Optuna: {e}")
            if run_id is None:
                return
            try:
                if metrics is not None:
                    metrics.flush()
                self.tracker.set_tags(run_id, {"trial_state": "fail", "failure": reason[:4000]})
                self.tracker.end_run(run_id, status)
            except Exception as e:  # noqa: BLE001
                _warn(
                    f"could not end the MLflow run of trial {trial.number} ({run_id}): "
                    f"{type(e).__name__}: {e}; the next `study tune` ends it"
                )

    def _start(self, trial: optuna.Trial, values: dict[str, float], role: Role) -> str:
        return self.tracker.start_run(
            self.exp_id,
            parent_id=self.parent,
            name=f"trial {trial.number}",
            tags={
                "study": self.tuning.protocol.study.name,
                "kind": "trial",
                "arm": self.tuning.spec.arm,
                "generation": self.tuning.spec.generation,
                "optuna_study": self.tuning.study_name,
                "trial_number": trial.number,
                "worker": WORKER,
            },
            params={
                **values,
                "loss": role.loss,
                **{f"loss.{k}": v for k, v in role.loss_params.items()},
                "train.lr": role.train.lr,
                "epochs": role.train.epochs,
                "seeds": ",".join(map(str, self.tuning.seeds)),
            },
        )

    def _objective(self, trial: optuna.Trial, role: Role, metrics: _TrialMetrics) -> float:
        """Mean final validation metric over the tuning seeds, reported step by step."""
        metric = self.tuning.spec.metric
        epochs = role.train.epochs
        last = self.tuning.steps
        finals: list[float] = []
        for i, seed in enumerate(self.tuning.seeds):

            def on_epoch(seed: int, epoch: int, values: dict[str, float], i: int = i) -> None:
                step = i * epochs + epoch
                running = (sum(finals) + values[metric]) / (len(finals) + 1)
                metrics.add(step, {**values, "objective": running})
                with held():
                    trial.report(running, step)
                    prune = step < last and trial.should_prune()
                if prune:
                    raise optuna.TrialPruned(
                        f"pruned at step {step} (seed {seed}, epoch {epoch}): "
                        f"running {metric} {running:.4f}"
                    )

            [result] = train_role(
                role,
                [seed],
                self.data,
                teachers={seed: self.teachers[seed]},
                device=self.device,
                on_epoch=on_epoch,
                evaluate_test=False,
            )
            finals.append(result.final[metric])
            metrics.add(last, {f"seed_{seed}.{metric}": finals[-1]})
        return sum(finals) / len(finals)

    def _report(self, study: optuna.Study, frozen: FrozenTrial, state: str) -> None:
        finished = _count(study)
        best = best_trial(study)
        if best is not None:
            self.tracker.log_metrics(
                self.parent, {f"best_{self.tuning.spec.metric}": best.value}, step=finished
            )
        mean = sum(self.durations) / len(self.durations)
        self.emit(
            TuneProgress(
                "trial",
                number=frozen.number,
                state=state,
                value=frozen.value,
                step=frozen.last_step,
                best_value=best.value if best else None,
                best_number=best.number if best else None,
                finished=finished,
                total=self.tuning.trials,
                eta_s=max(0, self.tuning.trials - finished) * mean,
            )
        )


class _TrialMetrics:
    """A trial run's per-step metrics on their way to MLflow: sent every ``interval_s``
    seconds and at the trial's end, one batch each, instead of one database transaction
    per epoch (as ``study run`` does)."""

    def __init__(self, tracker: Any, run_id: str, interval_s: float):
        self.tracker, self.run_id, self.interval_s = tracker, run_id, interval_s
        self.pending: list[tuple[int, dict[str, float], float]] = []
        self.last_flush = time.monotonic()

    def add(self, step: int, values: dict[str, float]) -> None:
        self.pending.append((step, dict(values), time.time()))
        if time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.tracker.log_history(self.run_id, self.pending)
            self.pending = []
        self.last_flush = time.monotonic()


class _Shielded:
    """A Tracker whose every method call runs inside ``held``."""

    def __init__(self, tracker: Tracker):
        self.raw = tracker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with held():
                return attr(*args, **kwargs)

        return call


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _end_run_quietly(tracker: Any, run_id: str, status: str) -> None:
    try:
        tracker.end_run(run_id, status)
    except Exception as e:  # noqa: BLE001 - an interrupt or a failure is being reported
        _warn(f"could not end the MLflow parent run {run_id} as {status}: {e}")
