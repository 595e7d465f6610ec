"""Trials in the Optuna storage: where the storage lives, what a tuning study is (its plan),
the trials a dead worker left behind, and the result read off the trials.

Kept apart from the search itself (``tune.py``) because every worker, and `study tune`
after an interruption, reads and repairs the same storage: a trial whose worker is gone is
failed (``fail_orphaned_trials``) and its MLflow run ended (``settle_trial_runs``), judged
by the worker's process space as ``claims.dead_here`` judges a claim's, never by host
name alone. The result is written with ``tuned.write_tuned``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from study.claims import dead_here
from study.errors import UserInputError
from study.plan import Plan, Role
from study.protocol import Protocol, SearchRange, TuneSection
from study.tuned import SEARCHABLE, tuned_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: workers on one machine are not serialised
    fcntl = None

JOURNAL_FILE = "optuna-journal.log"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DATA_ATTR = "data_identity"


# -- where the Optuna study lives ------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """An Optuna storage: a journal file (safe for several processes) or a database URL."""

    url: str  # the journal file's absolute path, or the database URL
    journal: bool
    lock: Path | None  # serialises the workers of one machine; None for a remote database

    def open(self) -> optuna.storages.BaseStorage | str:
        if self.journal:
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(self.url))
        return self.url


def resolve_storage(spec: str | None, tracking_uri: str) -> Storage:
    """``--storage`` as given, else a journal file next to the MLflow sqlite database."""
    if spec is None:
        if tracking_uri.startswith("sqlite:///"):
            base = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
        else:
            base = Path.cwd()
        spec = str(base / JOURNAL_FILE)
    if "://" in spec:
        if spec.startswith("sqlite:///") and spec != "sqlite:///":
            path = Path(spec.removeprefix("sqlite:///")).resolve()
            return Storage(f"sqlite:///{path}", False, path.with_name(path.name + ".workers.lock"))
        if spec.startswith("sqlite:"):
            raise UserInputError(
                f"'{spec}' is not a sqlite file URL; use sqlite:///path/optuna.db",
                field="--storage",
            )
        return Storage(spec, False, None)
    if spec.endswith(".log"):
        path = Path(spec).expanduser().resolve()
        return Storage(str(path), True, path.with_name(path.name + ".workers.lock"))
    raise UserInputError(
        f"'{spec}' is neither a database URL (sqlite:///optuna.db, postgresql://...) nor a "
        "journal file path ending in .log",
        field="--storage",
    )


@contextlib.contextmanager
def exclusive(lock: Path | None) -> Iterator[None]:
    """Hold the workers' lock file (released by the kernel if this process dies)."""
    if lock is None or fcntl is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class TuningPlan:
    """One tuning study, resolved and checked: nothing is created or trained yet."""

    protocol: Protocol
    spec: TuneSection
    trials: int  # finished trials the study should hold in total
    storage: Storage
    tracking_uri: str
    study_name: str  # the Optuna study's name
    student: Role  # the tuned role as the protocol gives it; trial values go on top
    teachers: Plan  # the roles the student distils from, for the tuning seeds
    epochs: int  # per seed, per trial
    results_dir: Path
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # see tuning_config
    config_hash: str = ""

    @property
    def seeds(self) -> list[int]:
        return list(self.teachers.seeds)

    @property
    def space(self) -> dict[str, SearchRange]:
        return {k: getattr(self.spec, k) for k in SEARCHABLE if getattr(self.spec, k)}

    @property
    def steps(self) -> int:
        return self.epochs * len(self.seeds)

    @property
    def result_path(self) -> Path:
        return tuned_path(self.protocol.study.name, self.results_dir)


def settle_trial_runs(
    tuning: TuningPlan, tracker: Any, exp_id: str, study: optuna.Study
) -> list[str]:
    """End the trial runs left RUNNING by a worker of this machine that is gone (killed,
    or interrupted before it could write), as Optuna recorded their trials: complete
    FINISHED, pruned or failed KILLED. A trial Optuna still counts as running is left to
    ``fail_orphaned_trials``. Returns the run ids ended."""
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    ended = []
    where = (
        "attributes.status = 'RUNNING' and tags.kind = 'trial' and "
        f"tags.optuna_study = '{tuning.study_name}'"
    )
    for run in tracker._search(exp_id, where):
        tags = run.data.tags
        if not dead_here(str(tags.get("worker", ""))):
            continue
        number = tags.get("trial_number", "")
        state = states.get(int(number)) if number.isdigit() else None
        if state is None or state == TrialState.RUNNING:
            continue
        if state == TrialState.COMPLETE:
            status, update = "FINISHED", {"trial_state": "complete"}
        elif state == TrialState.PRUNED:
            status, update = "KILLED", {"trial_state": "pruned"}
        else:
            status, update = "KILLED", {"trial_state": "fail"}
            update.setdefault("failure", tags.get("failure") or "interrupted (worker gone)")
        tracker.set_tags(run.info.run_id, update)
        tracker.end_run(run.info.run_id, status)
        ended.append(run.info.run_id)
    return ended


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker, on this machine, is dead (a kill -9).

    Without this a killed worker's trial would count as running for ever, and the study
    would never reach its total. "This machine" is the worker's process space (host, boot
    id, PID namespace: ``claims.dead_here``), not its host name alone: containers sharing a
    host name must not fail each other's live trials. Returns the numbers of the trials
    marked.
    """
    marked = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not dead_here(str(t.user_attrs.get("worker", ""))):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        marked.append(t.number)
    return marked


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


# -- the result ------------------------------------------------------------------------


def tuning_result(
    tuning: TuningPlan, study: optuna.Study, mlflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The content of tuned.json, from the Optuna study (every worker's trials)."""
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        by_state[t.state.name.lower()] += 1
    best = best_trial(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    spec = tuning.spec
    return {
        "study": tuning.protocol.study.name,
        "protocol": tuning.protocol.source,
        "arm": spec.arm,
        "generation": spec.generation,
        "metric": spec.metric,
        "direction": spec.direction,
        "split": "validation",
        "best_params": dict(best.params) if best else {},
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "n_trials": len(trials),
        "n_trials_by_state": by_state,
        "storage": tuning.storage.url,
        "optuna_study": tuning.study_name,
        "sampler": "tpe",
        "sampler_seed": spec.sampler_seed,
        "pruner": spec.pruner,
        "seeds": tuning.seeds,
        "epochs": tuning.epochs,
        "search_space": {k: r.model_dump() for k, r in tuning.space.items()},
        "config_hash": tuning.config_hash,
        "tuning_config": json.loads(json.dumps(tuning.config, default=str)),
        "data_identity": study.user_attrs.get(DATA_ATTR),
        "date": _last_finished(trials).isoformat(timespec="seconds"),
        "history": [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
                "last_step": t.last_step,
                "duration_s": t.duration.total_seconds() if t.duration else None,
            }
            for t in sorted(trials, key=lambda t: t.number)
        ],
        "importances": _importances(study, spec.sampler_seed) if len(complete) >= 2 else {},
        "mlflow": dict(mlflow or {}),
    }


def _last_finished(trials: list[FrozenTrial]) -> datetime:
    """When the study's last trial ended (UTC): tuned.json of an unchanged study is the
    same file on every rewrite, so DVC sees no new result where there is none."""
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not ends:
        return datetime.now(timezone.utc)
    return max(ends).astimezone(timezone.utc)


def _importances(study: optuna.Study, seed: int) -> dict[str, float]:
    """fANOVA importances over the complete trials; {} when they cannot be told apart."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # e.g. a single distinct value per parameter
        return {}
    return {k: float(v) for k, v in found.items()}
