"""The Python API for notebooks: a study's results as a pandas DataFrame, and the
statistics engine on any DataFrame.

    from study import load_results, compare

    runs = load_results("protocols/ban_digits.toml")           # as `study export`'s runs.csv
    result = compare(runs, baseline="teacher", value_col="test_acc")
    result.to_frame()                                          # one row per comparison

The same code paths as the command line: ``load_results`` is the table `study export`
writes to runs.csv, ``compare`` is `study compare`'s engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.errors import UserInputError

if TYPE_CHECKING:  # pandas, mlflow and the statistics load when called, not on `import study`
    import pandas as pd

    from study.analysis.collect import Collected
    from study.analysis.stats import ComparisonReport
    from study.protocol import Protocol


def collect_results(
    protocol: str | Path, tracking_uri: str | None = None
) -> tuple[Protocol, Collected]:
    """A protocol's results from the tracker alone (no data file is read: the data
    identity is the one its runs were tagged with): the protocol and its tidy tables.
    `study export`, `study report` and ``load_results`` all read results through here."""
    from study.analysis.collect import collect
    from study.plan import expand, tuned_values
    from study.protocol import load_protocol
    from study.track import Tracker, check_has_store, check_writable

    p = load_protocol(Path(protocol))
    plan = expand(p, tuned=tuned_values(p))
    plan.require_trainable()
    check_has_store(tracking_uri)
    check_writable(tracking_uri)
    tracker = Tracker(tracking_uri)
    collected = collect(plan, tracker)
    if (collected.runs["status"] == "ABSENT").all():  # failed runs still make a report
        raise UserInputError(
            f"no run in {tracker.uri} matches this protocol's {plan.n_runs} (role, seed) "
            f"fingerprints: run 'study run {protocol}' first (a changed protocol, tuning "
            "result, [data] setting or package version gives new fingerprints)",
            source=str(protocol),
        )
    return p, collected


def load_results(protocol: str | Path, tracking_uri: str | None = None) -> pd.DataFrame:
    """The tidy table of a study: one row per planned (role, seed) with its status
    (FINISHED, FAILED, ABSENT, ...), run id, fingerprint and final metrics (test_acc,
    test_nll, test_ece, val_acc, ...): the table `study export` writes as runs.csv.

    ``tracking_uri``: the MLflow store (default: $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory). Raises ``UserInputError`` for a bad
    protocol, a missing store, or a store without any run of this protocol."""
    return collect_results(protocol, tracking_uri)[1].runs


def compare(
    table: pd.DataFrame,
    *,
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    value_col: str = "test_acc",
    group_col: str = "role",
    pair_col: str = "seed",
    **options: Any,
) -> ComparisonReport:
    """Paired comparisons across seeds, as `study compare` makes them: every group against
    ``baseline`` (or the given ``pairs``, or all pairs), differences A - B, paired by
    ``pair_col``, Holm-corrected p-values, effect sizes, intervals and verdicts. A table
    with a ``status`` column (``load_results``'s) is reduced to its FINISHED rows first.

    ``options`` go to the engine (``study.analysis.stats.compare``): ``alpha``,
    ``correction``, ``test``, ``seed``, ``aso``, ``min_effect``, ``n_resamples``. The
    result has ``.to_frame()`` (one row per comparison), ``.to_dict()``, ``.comparisons``
    and ``.omnibus``."""
    from study.analysis.stats import compare as run_compare

    if "status" in table.columns:
        finished = table["status"].astype(str).str.strip().str.upper() == "FINISHED"
        table = table[finished].reset_index(drop=True)
    return run_compare(
        table,
        value_col=value_col,
        group_col=group_col,
        seed_col=pair_col,
        baseline=baseline,
        pairs=pairs,
        **options,
    )


__all__ = ["collect_results", "compare", "load_results"]
