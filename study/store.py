"""The local tracking store: created whole or not at all, repaired when its creation never
finished, refused when it is another program's database, checked before a command uses it.

A sqlite store that MLflow creates in place is half-migrated when the process is killed
meanwhile, and no later command could open it; so a new store's tables are built in a
temporary file and renamed into place, under a lock file beside it (``<db>.init.lock``)
that keeps two processes from creating it at once. ``track.Tracker`` opens stores through
``ensure_store``; the commands call ``check_writable`` (or ``check_has_store`` when they
only read) before any work.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

from study.errors import NO_SPACE, DiskFull, UserInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock around creating the store
    fcntl = None


def resolve_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's default (sqlite in the cwd)."""
    if uri:
        return uri
    import mlflow  # deferred, as every MLflow import here: track.py sets MLflow's environment

    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def check_has_store(uri: str | None = None) -> None:
    """For commands that only read: a sqlite store that does not exist is a mistaken
    directory or URI, and opening it would create an empty one."""
    resolved = resolve_uri(uri)
    if resolved.startswith("sqlite:///"):
        path = Path(resolved.removeprefix("sqlite:///"))
        if not path.exists():
            raise UserInputError(
                f"no MLflow store at {path}: run 'study run' here first, or point "
                "--tracking-uri (or MLFLOW_TRACKING_URI) at the study's store",
                source=resolved,
                field="tracking-uri",
            )
    _refuse_foreign_sqlite(resolved)


def check_writable(uri: str | None = None, *, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    A tracking server is asked for its /health first with a short timeout: MLflow's own
    client retries with exponential backoff for minutes before it gives up.
    """
    resolved = resolve_uri(uri)
    if resolved.startswith(("http://", "https://")):
        import requests

        try:
            answer = requests.get(f"{resolved.rstrip('/')}/health", timeout=timeout_s)
            answer.raise_for_status()
        except requests.RequestException as e:
            raise UserInputError(
                f"tracking server is not reachable: {type(e).__name__}: {e}",
                source=resolved,
                field="tracking-uri",
            ) from None
    from mlflow.tracking import MlflowClient

    try:
        with _creating(resolved):
            _refuse_foreign_sqlite(resolved)  # under the lock: not a store half-created
            _create_or_repair(resolved)
            MlflowClient(tracking_uri=resolved).search_experiments(max_results=1)
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means "not usable"
        raise UserInputError(
            f"tracking store is not reachable or not usable: {type(e).__name__}: {e}",
            source=resolved,
            field="tracking-uri",
        ) from None


def sqlite_path(uri: str) -> Path:
    """The resolved file of a ``sqlite:///`` URI."""
    return Path(uri.removeprefix("sqlite:///")).resolve()


def ensure_store(uri: str) -> None:
    """A local sqlite store that does not exist yet (or is an empty file) is created whole
    (``_create_sqlite_store``) before MLflow opens it: MLflow would create its tables in
    place, and a process killed meanwhile left a half-migrated file that no later command
    could open. Cheap for a store that exists: nothing is opened."""
    if not uri.startswith("sqlite:///"):
        return
    db = sqlite_path(uri)
    if db.is_file() and db.stat().st_size > 0:
        return
    with _creating(uri):
        if not (db.is_file() and db.stat().st_size > 0):  # another process may have won
            _create_sqlite_store(db)


def _create_or_repair(uri: str) -> None:
    """Under the creation lock: create a missing store whole, and rebuild one whose
    creation never finished (a process killed while MLflow created its tables, before this
    version made creation atomic): MLflow cannot open it, and it holds no run and no
    experiment of its own. It is moved aside, not deleted, with a warning."""
    if not uri.startswith("sqlite:///"):
        return
    db = sqlite_path(uri)
    if not (db.is_file() and db.stat().st_size > 0):
        _create_sqlite_store(db)
        return
    try:
        _probe(uri)
        return
    except Exception:
        if not _unfinished(db):
            raise
    aside = db.with_name(f"{db.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(db, aside)
    warnings.warn(
        f"{db} was a tracking store whose creation never finished (MLflow cannot open it; "
        f"it holds no run): moved aside to {aside.name}, and a new store created",
        UserWarning,
        stacklevel=2,
    )
    _create_sqlite_store(db)


def _probe(uri: str) -> None:
    """Open a sqlite store as MLflow does (its schema verified), on an engine of its own
    that is closed after: MLflow keeps one engine per URI for the process, and one opened
    on a store that is then moved aside would go on reading the old file."""
    import random

    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    own = f"{uri}?timeout={30 + random.random():.12f}"  # the same file, another engine
    SqlAlchemyStore(own, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).engine.dispose()


def _unfinished(db: Path) -> bool:
    """Whether a sqlite file is an MLflow store that holds nothing: some of MLflow's tables,
    no run, no registered model, no trace, no experiment but the Default one."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables & MLFLOW_TABLES:
                return False
            held = (("runs", 0), ("experiments", 1), ("registered_models", 0), ("trace_info", 0))
            for table, most in held:
                if (
                    table in tables
                    and con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > most
                ):
                    return False
    except sqlite3.DatabaseError:
        return False
    return True


def _create_sqlite_store(db: Path) -> None:
    """MLflow's tables built in a temporary file beside ``db``, which is then renamed into
    place: a store is there whole or not at all. Call under ``_creating``'s lock."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in db.parent.glob(f"{db.name}.creating-*"):  # of a creation that was killed
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.creating-{os.getpid()}")
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, db)
    except BaseException as e:  # Ctrl-C too: no half-built file is left beside the store
        for left in db.parent.glob(f"{tmp.name}*"):
            left.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        full = isinstance(e, OSError) and e.errno in NO_SPACE
        if full or "database or disk is full" in str(e):
            raise DiskFull.at(db.parent, "the tracking store") from None
        raise


MLFLOW_TABLES = frozenset(
    {
        "alembic_version",
        "experiments",
        "experiment_tags",
        "runs",
        "metrics",
        "latest_metrics",
        "params",
        "tags",
    }
)


def _refuse_foreign_sqlite(uri: str) -> None:
    """An existing sqlite file that holds tables, none of them MLflow's, belongs to
    something else: opening it as a store would add MLflow's ~30 tables to that database.
    (A store another process is creating has some of MLflow's tables already.)"""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file() or path.stat().st_size == 0:
        return
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
    except sqlite3.DatabaseError:
        return  # not sqlite at all: MLflow's own open says so below
    if tables and not MLFLOW_TABLES & tables:
        names = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserInputError(
            f"{path} is an SQLite database but not an MLflow store (its tables: {names}); "
            "point --tracking-uri (or MLFLOW_TRACKING_URI) at another file",
            source=uri,
            field="tracking-uri",
        )


@contextlib.contextmanager
def _creating(uri: str):
    """One process at a time opens a local sqlite store: the first one creates its tables,
    and two processes migrating a new database at once break it ("table already exists",
    half-applied migrations). A lock file beside the database; released if a process dies."""
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
