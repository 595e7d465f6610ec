"""Everything MLflow: the single store of results.

Conventions: one experiment per study (named after it, tagged ``mlflow.experimentKind =
custom_model_development`` so that MLflow's UI opens it on its runs); one parent run per
``study run`` invocation; one run per ``study report`` (tag ``kind = report``) that holds
the report's files as artifacts; one run per (role, seed) with tags ``study``, ``arm``,
``generation``, ``role``, ``seed``, ``fingerprint``, ``protocol_sha``, ``teacher_run_id``;
the resolved role config as parameters; per-epoch metrics logged with their ``step`` in
one batch per epoch (each MLflow call is a database transaction); final metrics;
artifacts: the ``state_dict`` checkpoint, the protocol, the environment snapshot. The
rest of the package talks to this module with plain data (dicts, DataFrames, state dicts)
and never imports mlflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.store.tracking.dbmodels.models import (  # noqa: E402
    SqlLatestMetric,
    SqlMetric,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from study import hooks  # noqa: E402
from study.errors import NO_SPACE, DiskFull, TrackerUnavailable, UserInputError  # noqa: E402
from study.interrupts import held  # noqa: E402
from study.paths import within  # noqa: E402
from study.store import (  # noqa: E402
    check_has_store,
    check_writable,
    ensure_store,
    resolve_uri,
    sqlite_path,
)

# A store that cannot be written (a full disk) is said once, as a DiskFull naming its
# folder; MLflow would also log every failed transaction with its traceback.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

CHECKPOINT = "checkpoint/model.pt"
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
"""The experiment tag MLflow 3's UI reads to choose an experiment's first page: with this
value it opens on the runs (the training view), not on the GenAI overview of traces."""
TAG_KEYS = (
    "study",
    "arm",
    "generation",
    "role",
    "kind",
    "seed",
    "fingerprint",
    "protocol_sha",
    "job_id",
)
RUN_INFO_TAGS = ("data_identity", "data_facts", "device", "pack_size", "deterministic")
"""Tags of a run that describe how it ran, read with its results (the report's Setup)."""
_BULK_RUNS = 500  # runs per bulk query: far below SQLite's limit of bound variables
FINAL_METRICS = (
    "test_acc",
    "test_nll",
    "test_ece",
    "val_acc",
    "val_nll",
    "teacher_agreement",
    "teacher_kl",
)


TIMEOUT_VARIABLE = "STUDY_TRACKER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 120.0
"""Every call to a tracking server ends within this many seconds (``STUDY_TRACKER_TIMEOUT_S``
changes it): MLflow's client retries a lost server with exponential backoff for minutes
(7 retries, 2 s doubling; with its 120 s request timeout, far longer), and a study whose
server died would otherwise train on for good, logging nowhere."""


def tracker_timeout() -> float:
    """The deadline of every tracker call, in seconds (see ``DEFAULT_TIMEOUT_S``)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UserInputError(
            f"{text!r} is not a number of seconds > 0", source="environment", field=TIMEOUT_VARIABLE
        )
    return value


def _remote(uri: str) -> bool:
    return not uri.startswith(("sqlite:", "file:", "/", ".")) and "://" in uri


class _DeadlineClient:
    """An ``MlflowClient`` whose every call to a tracking server ends within the deadline.

    A call runs in a thread of its own and is waited for ``timeout_s`` seconds; one that is
    not answered by then marks the tracker lost (``lost``), and from then on every call
    fails at once: the command stops within one deadline instead of one per call. An
    interrupt that arrives while a call is in flight waits for that call first (up to the
    deadline), so that a run it creates exists before the interrupted invocation ends its
    runs. A local store (sqlite) is called directly, with Ctrl-C and SIGTERM held until
    the call returns (``study.interrupts``: an interrupt inside a sqlite transaction leaves
    the store locked for the rest of the process). Errors that mean a full disk become
    ``DiskFull`` naming the folder.
    """

    def __init__(self, client: MlflowClient, uri: str, timeout_s: float):
        self._client, self._uri, self._timeout_s = client, uri, timeout_s
        self._remote = _remote(uri)
        self.lost: TrackerUnavailable | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(attr, args, kwargs)

    def _call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if self.lost is not None:
            raise TrackerUnavailable(self.lost.uri, self.lost.reason)
        try:
            if self._remote:
                return self._wait(fn, args, kwargs)
            with held():
                return fn(*args, **kwargs)
        except (TrackerUnavailable, DiskFull):
            raise
        except Exception as e:
            translated = self._translate(e)
            if translated is e:
                raise
            raise translated from e
        finally:
            hooks.tracker_called()

    def _wait(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        box: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=call, name="tracker-call", daemon=True).start()
        try:
            answered = self._answered(done)
        except BaseException:  # an interrupt: the call in flight ends first, unless
            # another call (the claims' heartbeat) found the tracker lost and interrupted us
            if self.lost is None and not done.wait(self._timeout_s):
                self.lost = TrackerUnavailable(self._uri, f"no answer within {self._timeout_s:g} s")
            elif isinstance(box.get("error"), Exception):
                self._translate(box["error"])  # a lost server is recorded as lost
            raise
        if not answered:
            self.lose(f"no answer within {self._timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _answered(self, done: threading.Event) -> bool:
        """Whether the call answered within the deadline. Waited for in short slices: an
        interrupt sent by another thread (``_thread.interrupt_main``, as the claims'
        heartbeat does when it finds the tracker lost) is only raised between two waits,
        and one long wait would hold it until the deadline."""
        deadline = time.monotonic() + self._timeout_s
        while not done.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return False
        return True

    def lose(self, reason: str) -> None:
        """Mark the tracker lost, and raise so (see the class)."""
        self.lost = TrackerUnavailable(self._uri, reason)
        raise TrackerUnavailable(self._uri, reason)

    def _translate(self, e: Exception) -> Exception:
        text = str(e)
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            where = Path(e.filename).parent if e.filename else Path(self._uri)
            return DiskFull.at(where, "an artifact")
        if "database or disk is full" in text:
            return DiskFull.at(sqlite_path(self._uri).parent, "the tracking store")
        if self._remote and "API request to" in text and "failed with" in text:
            try:
                self.lose(f"it stopped answering ({_cause(text)}, after MLflow's retries)")
            except TrackerUnavailable as lost:
                return lost
        return e


def _cause(text: str) -> str:
    """A failed request's cause in a few words (MLflow's message runs to hundreds)."""
    for words in ("Connection refused", "Name or service not known", "timed out", "reset"):
        if words.lower() in text.lower():
            return words.lower()
    return text.splitlines()[0][:120]


@dataclass(frozen=True)
class Claim:
    """The latest claim on a (role, seed) fingerprint: who trains it, and are they alive."""

    fingerprint: str
    attempt: int
    experiment_id: str
    worker: str
    heartbeat: float  # seconds since the epoch
    active: bool  # False once released (the run finished, failed or was given up)


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    role: str
    seed: int
    fingerprint: str


class Tracker:
    """A study's view of one MLflow tracking store."""

    def __init__(self, uri: str | None = None):
        self.uri = resolve_uri(uri)
        timeout_s = tracker_timeout()
        if _remote(self.uri):  # MLflow's own retries end near the deadline too
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
        ensure_store(self.uri)
        self.client = _DeadlineClient(MlflowClient(tracking_uri=self.uri), self.uri, timeout_s)

    @property
    def lost(self) -> TrackerUnavailable | None:
        """Why the tracker is lost (a call went unanswered past its deadline), or None."""
        return self.client.lost

    def lose(self, reason: str) -> None:
        """Mark the tracker lost (a heartbeat went unanswered, say) and raise so."""
        self.client.lose(reason)

    # -- experiments and lookups ------------------------------------------------------

    def experiment_id(self, study: str, *, create: bool = True) -> str | None:
        """The study's experiment, created if absent (and ``create``). Workers started
        together (the jobs of one submission) may all find it absent: experiment names are
        unique in the store, so one creation wins and the others use the winner's."""
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            if create and EXPERIMENT_KIND not in exp.tags:  # made before the kind was set
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
            return exp.experiment_id
        if not create:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                study,
                artifact_location=self._artifact_root(study),
                tags={EXPERIMENT_KIND: TRAINING_KIND},
            )
        except MlflowException as e:
            if not _already_exists(e):
                raise
        return self.client.get_experiment_by_name(study).experiment_id

    def _artifact_root(self, study: str) -> str | None:
        """Next to a local sqlite database, not in whatever directory we happen to run in."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            return within(db.resolve().parent / "mlartifacts", study).resolve().as_uri()
        return None

    def _search(self, experiment_id: str, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def checkpoint_root(self) -> Path:
        """Per-epoch checkpoints: beside a local sqlite store, else in ./.study/checkpoints."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            return db.resolve().parent / "checkpoints"
        return Path(".study") / "checkpoints"

    # -- claims: several workers sharing one plan --------------------------------------
    #
    # A claim on a fingerprint is an MLflow experiment named
    # "<study>/_claims/<fingerprint>/<attempt>". Experiment names are unique in every
    # tracking store (a database constraint, also behind a tracking server), so creating
    # one is an atomic test-and-set: of two workers creating the same attempt, exactly one
    # succeeds. The winner keeps a heartbeat tag fresh; a claim whose heartbeat is stale
    # is taken over with the next attempt number. A released claim is deleted (its name
    # stays reserved, so attempt numbers only grow).

    def _claim_prefix(self, study: str) -> str:
        return f"{study}/_claims/"

    def claims(self, study: str) -> dict[str, Claim]:
        """The latest claim of every fingerprint of the study."""
        from mlflow.entities import ViewType

        prefix = self._claim_prefix(study)
        latest: dict[str, Claim] = {}
        token = None
        while True:
            page = self.client.search_experiments(
                view_type=ViewType.ALL,
                filter_string=f"name LIKE '{prefix}%'",
                max_results=1000,
                page_token=token,
            )
            for exp in page:
                if not exp.name.startswith(prefix):  # LIKE's `_` matches any character
                    continue
                fp, _, attempt = exp.name.removeprefix(prefix).partition("/")
                claim = Claim(
                    fingerprint=fp,
                    attempt=int(attempt),
                    experiment_id=exp.experiment_id,
                    worker=exp.tags.get("worker", ""),
                    heartbeat=float(exp.tags.get("heartbeat", 0)),
                    active=exp.lifecycle_stage == "active",
                )
                if fp not in latest or claim.attempt > latest[fp].attempt:
                    latest[fp] = claim
            token = page.token
            if not token:
                return latest

    def try_claim(self, study: str, fingerprint: str, attempt: int, worker: str) -> str | None:
        """Create claim number ``attempt``; its experiment id if we won, None if we lost."""
        from mlflow.exceptions import MlflowException

        name = f"{self._claim_prefix(study)}{fingerprint}/{attempt}"
        try:
            return self.client.create_experiment(
                name,
                artifact_location=self._artifact_root(f"{study}-claims"),
                tags={"worker": worker, "heartbeat": repr(time.time())},
            )
        except MlflowException as e:
            if _already_exists(e):
                return None
            raise

    def heartbeat(self, claim_ids: list[str]) -> None:
        now = repr(time.time())
        for exp_id in claim_ids:
            self.client.set_experiment_tag(exp_id, "heartbeat", now)

    def release(self, claim_id: str) -> None:
        self.client.delete_experiment(claim_id)

    def interrupted_runs(self, experiment_id: str) -> dict[tuple[str, str], FinishedRun]:
        """(role, seed) runs that were killed or left RUNNING by a crash, newest first."""
        found: dict[tuple[str, str], FinishedRun] = {}
        runs = self._search(experiment_id, "attributes.status != 'FINISHED'")
        for r in sorted(runs, key=lambda r: -r.info.start_time):
            tags = r.data.tags
            if r.info.status not in ("RUNNING", "KILLED") or "fingerprint" not in tags:
                continue
            if "superseded_by" in tags:  # its training goes on in another run
                continue
            run = FinishedRun(r.info.run_id, tags["role"], int(tags["seed"]), tags["fingerprint"])
            found.setdefault((run.role, run.fingerprint), run)
        return found

    def find_runs(self, experiment_id: str, tags: dict[str, Any]) -> list[str]:
        """Ids of the experiment's runs that carry all these tags, oldest first."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in _str(tags).items())
        runs = self._search(experiment_id, where)
        return [r.info.run_id for r in sorted(runs, key=lambda r: r.info.start_time)]

    def reopen(self, run_id: str, tags: dict[str, Any] | None = None) -> None:
        """Mark an interrupted run as running again (it is being resumed); ``tags`` first,
        so that a run reopened by this process carries its ``worker`` tag whenever it runs."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.update_run(run_id, status="RUNNING")

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        """(run id, tags) of the experiment's RUNNING runs, children and parents."""
        runs = self._search(experiment_id, "attributes.status = 'RUNNING'")
        return [(r.info.run_id, dict(r.data.tags)) for r in runs]

    def finished_runs(self, experiment_id: str) -> dict[tuple[str, str], FinishedRun]:
        """FINISHED (role, seed) runs of the experiment, by (role, fingerprint)."""
        found: dict[tuple[str, str], FinishedRun] = {}
        for r in self._search(experiment_id, "attributes.status = 'FINISHED'"):
            tags = r.data.tags
            if "fingerprint" not in tags or "role" not in tags:
                continue
            run = FinishedRun(r.info.run_id, tags["role"], int(tags["seed"]), tags["fingerprint"])
            found.setdefault((run.role, run.fingerprint), run)
        return found

    # -- writing -----------------------------------------------------------------------

    def start_parent(self, experiment_id: str, study: str, tags: dict[str, Any]) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"{study} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={"study": study, "kind": "invocation", **_str(tags)},
        )
        return run.info.run_id

    def log_report(
        self,
        study: str,
        files: dict[str, Path | bytes | str],
        *,
        tags: dict[str, Any] | None = None,
        name: str = "report",
    ) -> str:
        """A finished run of its own in the study's experiment (tag ``kind = report``) that
        holds a written report as artifacts ({artifact path: a file, or the content}),
        where the MLflow UI
        shows them: in the run's Artifacts tab, beside the runs they report on."""
        exp_id = self.experiment_id(study)
        run = self.client.create_run(
            exp_id, run_name=name, tags={"study": study, "kind": "report", **_str(tags or {})}
        )
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for rel, path in files.items():
                    staged = within(Path(tmp), rel)
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    if isinstance(path, Path):
                        staged.write_bytes(path.read_bytes())
                    else:
                        staged.write_bytes(path.encode() if isinstance(path, str) else path)
                self.client.log_artifacts(run_id, tmp)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def start_run(
        self,
        experiment_id: str,
        *,
        parent_id: str | None,
        name: str,
        tags: dict[str, Any],
        params: dict[str, Any] | None = None,
    ) -> str:
        """A new run. Its ``params`` may also come later, with its first ``log_history``
        (one database transaction fewer per run)."""
        all_tags = _str(tags)
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        if params:
            self.log_history(run.info.run_id, [], params=params)
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """One batch per call: an epoch's metrics are one database transaction."""
        self.log_history(run_id, [(step, metrics, time.time())])

    def log_history(
        self,
        run_id: str,
        rows: list[tuple[int, dict[str, float], float]],
        *,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Several steps' metrics, ``(step, metrics, unix time)`` each, and parameters, in
        as few database transactions as MLflow allows (100 parameters and 1000 values in
        all a batch). Logging a parameter again with the same value changes nothing."""
        metrics = [
            Metric(k, float(v), int(when * 1000), step)
            for step, values, when in rows
            for k, v in values.items()
        ]
        items = [Param(k, _param(v)) for k, v in sorted((params or {}).items())]
        while metrics or items:
            batch_params, items = items[:100], items[100:]
            room = 1000 - len(batch_params)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in _str(tags).items()])

    def log_files(self, run_id: str, files: dict[str, bytes | str]) -> None:
        """Artifacts given as {artifact path: content}."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel, content in files.items():
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            self.client.log_artifacts(run_id, tmp)

    def log_checkpoint(self, run_id: str, state_dict: dict[str, torch.Tensor]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(CHECKPOINT).name
            torch.save(state_dict, path)
            self.client.log_artifact(run_id, str(path), str(Path(CHECKPOINT).parent))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- reading -----------------------------------------------------------------------

    def load_checkpoint(self, run_id: str) -> dict[str, torch.Tensor]:
        """A run's logged ``state_dict``, loaded weights-only: a file that holds anything but
        tensors under names (a crafted pickle) is refused, naming the run and the file."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, CHECKPOINT, tmp)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - whatever the unpickler says, nothing ran
                first = (str(e).strip().splitlines() or [""])[0][:200]
                why = f"does not load weights-only ({type(e).__name__}: {first})"
            else:
                tensors = isinstance(state, dict) and all(
                    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
                )
                if tensors:
                    return state
                why = "is not a state dict (tensors by name)"
        raise UserInputError(
            f"its artifact {CHECKPOINT} in {self.uri} {why}: refused", source=f"run {run_id}"
        )

    def runs_frame(self, study: str) -> pd.DataFrame:
        """Every (role, seed) run of a study as a tidy table: tags, status, final metrics,
        start and end times (ms since the epoch)."""
        exp_id = self.experiment_id(study, create=False)
        tags = (*TAG_KEYS, "teacher_run_id", "failure", *RUN_INFO_TAGS)
        columns = ["run_id", "status", *tags, *FINAL_METRICS, "start_time", "end_time"]
        if exp_id is None:
            return pd.DataFrame(columns=columns)
        store = self._database_store()
        if store is None:
            rows = []
            for r in self._search(exp_id, "tags.fingerprint != ''"):
                row: dict[str, Any] = {"run_id": r.info.run_id, "status": r.info.status}
                row.update({k: r.data.tags.get(k) for k in tags})
                row.update({k: r.data.metrics.get(k) for k in FINAL_METRICS})
                row.update(start_time=r.info.start_time, end_time=r.info.end_time)
                rows.append(row)
        else:
            rows = _run_rows(store, int(exp_id), tags)
        df = pd.DataFrame(rows, columns=columns)
        df["seed"] = pd.to_numeric(df["seed"]).astype("Int64")
        df["generation"] = pd.to_numeric(df["generation"]).astype("Int64")
        return df

    def _database_store(self) -> SqlAlchemyStore | None:
        """MLflow's database store behind this tracker (sqlite, a server's own database is
        not: a server is a REST store), for the reads its client makes one run at a time."""
        store = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        return store if isinstance(store, SqlAlchemyStore) else None

    def run_record(self, run_id: str) -> dict[str, Any]:
        """A run's tags, params, final metrics and status, as plain data."""
        try:
            run = self.client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types
            raise UserInputError(
                f"no such run in {self.uri}: {e}", source=f"run {run_id}"
            ) from None
        return {
            "run_id": run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    def read_artifact_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def metric_histories(self, run_ids: list[str], keys: Sequence[str]) -> pd.DataFrame:
        """Every logged step of ``keys`` for many runs: columns run_id, key, step, value.

        A database store answers one query per chunk of runs, reading four columns of
        MLflow's metrics table (its client reads one run and key at a time, as entities:
        a 1,000-run report spent 11 s in 5,000 such reads); any other store one query per
        run and key."""
        columns = ["run_id", "key", "step", "value"]
        store = self._database_store()
        if store is None:
            rows = [
                (run_id, key, step, value)
                for key in keys
                for run_id in run_ids
                for step, value in self.metric_history(run_id, key)
            ]
            return pd.DataFrame(rows, columns=columns)
        wanted = (SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value)
        rows = []
        with held(), store.ManagedSessionMaker() as session:
            for i in range(0, len(run_ids), _BULK_RUNS):
                query = session.query(*wanted, SqlMetric.is_nan).filter(
                    SqlMetric.run_uuid.in_(run_ids[i : i + _BULK_RUNS]), SqlMetric.key.in_(keys)
                )
                rows += [(r, k, s, math.nan if nan else v) for r, k, s, v, nan in query.all()]
        return pd.DataFrame(rows, columns=columns)

    def experiment_info(self, study: str) -> dict[str, Any]:
        exp_id = self.experiment_id(study, create=False)
        return {"tracking_uri": self.uri, "experiment_id": exp_id}


def _run_rows(store: SqlAlchemyStore, experiment_id: int, tags: tuple[str, ...]) -> list[dict]:
    """``runs_frame``'s rows read as columns of MLflow's runs, tags and latest_metrics
    tables: what ``search_runs`` returns for the active runs with a fingerprint, without
    building an entity per run, tag, parameter and metric (3 s of a 1,000-run report)."""
    active = sa.select(SqlRun.run_uuid).where(
        SqlRun.experiment_id == experiment_id, SqlRun.lifecycle_stage == "active"
    )
    with held(), store.ManagedSessionMaker() as session:
        info = session.query(SqlRun.run_uuid, SqlRun.status, SqlRun.start_time, SqlRun.end_time)
        info = info.filter(SqlRun.run_uuid.in_(active)).all()
        tagged = session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
        tagged = tagged.filter(SqlTag.run_uuid.in_(active), SqlTag.key.in_(tags)).all()
        latest = session.query(
            SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value
        ).add_columns(SqlLatestMetric.is_nan)
        latest = latest.filter(
            SqlLatestMetric.run_uuid.in_(active), SqlLatestMetric.key.in_(FINAL_METRICS)
        ).all()
    absent = dict.fromkeys((*tags, *FINAL_METRICS))  # None, as search_runs leaves them
    rows: dict[str, dict[str, Any]] = {
        run_id: {"run_id": run_id, "status": status, "start_time": start, "end_time": end} | absent
        for run_id, status, start, end in info
    }
    for run_id, key, value in tagged:
        rows[run_id][key] = value
    for run_id, key, value, nan in latest:
        rows[run_id][key] = math.nan if nan else value
    return [r for r in rows.values() if r.get("fingerprint")]  # as "tags.fingerprint != ''"


def _already_exists(e: Exception) -> bool:
    """Whether MLflow refused to create something because its name is taken (the error
    code over a server; a sqlite store says so in the message)."""
    return getattr(e, "error_code", None) == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(e)


def _str(tags: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in tags.items() if v is not None}


def _param(v: Any) -> str:
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


__all__ = [
    "Tracker",
    "FinishedRun",
    "RunStatus",
    "check_has_store",
    "check_writable",
    "resolve_uri",
]
