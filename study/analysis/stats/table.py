"""The tidy table of results: validated, and cut into the comparisons it asks for.

One row per (group, seed) with a numeric value is the only input the statistics accept
(``tidy_results`` checks it and says what is wrong, naming the file and the column).
``pair_groups`` turns it into ``PairedSample`` objects: paired by seed where the groups
share seeds, unpaired where they share none, refused in between.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.results import PAIRED, UNPAIRED, PairedSample, plain
from study.errors import UserInputError


def tidy_results(
    table: pd.DataFrame,
    *,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    source: str | None = None,
) -> pd.DataFrame:
    """The table reduced to validated columns ``group`` (str), ``seed`` and ``value`` (float).

    Raises ``UserInputError`` for a missing column, a missing or non-numeric value, a missing
    group or seed, or a (group, seed) that appears twice.
    """
    if not isinstance(table, pd.DataFrame):
        raise UserInputError(
            f"expected a table (pandas DataFrame), got {type(table).__name__}", source=source
        )
    named = (("value_col", value_col), ("group_col", group_col), ("seed_col", seed_col))
    absent = [(option, col) for option, col in named if col not in table.columns]
    if absent:  # every missing column at once, not the first alone
        what = ", ".join(f"'{col}' ({option})" for option, col in absent)
        raise UserInputError(
            f"column{'s' * (len(absent) > 1)} {what} {'are' if len(absent) > 1 else 'is'} "
            f"missing; the table has columns {[str(c) for c in table.columns]}",
            source=source,
            field=absent[0][1],
        )
    if len(table) == 0:
        raise UserInputError("the table has no rows", source=source)

    # Positional arrays: the table's index may have duplicate or non-integer labels.
    labels = table.index.to_numpy()
    raw = table[value_col].to_numpy()
    groups = table[group_col].to_numpy()
    seed_values = table[seed_col].to_numpy()
    values = numeric_values(table[value_col])
    for i in np.flatnonzero(~np.isfinite(values)):
        what = _why_no_value(raw[i], values[i])
        row, group, seed = (plain(labels[i]), plain(groups[i]), plain(seed_values[i]))
        raise UserInputError(
            f"value {what} (row {row!r}, group {group!r}, seed {seed!r}); "
            "every row needs a finite numeric value",
            source=source,
            field=value_col,
        )
    for col, column in ((group_col, groups), (seed_col, seed_values)):
        missing = pd.isna(column)
        if missing.any():
            raise UserInputError(
                f"{col} is missing in row {plain(labels[np.argmax(missing)])!r}",
                source=source,
                field=col,
            )

    seeds = table[seed_col]
    if pd.api.types.is_float_dtype(seeds) and np.all(np.mod(seeds.to_numpy(), 1) == 0):
        seeds = seeds.astype(np.int64)  # seeds read as 0.0, 1.0, ... from a CSV
    tidy = pd.DataFrame(
        {"group": [str(g) for g in groups], "seed": seeds.to_numpy(), "value": values}
    )
    dup = tidy.duplicated(["group", "seed"], keep=False)
    if dup.any():
        first = tidy[dup].iloc[0]
        in_group = int((dup & (tidy["group"] == first["group"])).sum())
        raise UserInputError(
            f"group {first['group']!r} has {in_group} rows sharing seeds (first: seed "
            f"{plain(first['seed'])!r}); each (group, seed) must appear once",
            source=source,
            field=seed_col,
        )
    return tidy


def _why_no_value(raw: Any, value: float) -> str:
    """Why a cell of the value column gives no finite number, in words."""
    if pd.isna(raw):
        return "is missing"
    if np.isnan(value):
        return f"is not a number: {plain(raw)!r}"
    text = str(plain(raw))
    if isinstance(plain(raw), float) or text.strip().lstrip("+-").lower() in ("inf", "infinity"):
        return f"is not finite: {plain(raw)!r}"
    shown = text if len(text) <= 24 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"
    return f"is beyond the float64 range (about 1.8e308): {shown}"


def numeric_values(column: pd.Series) -> np.ndarray:
    """The column as float64: NaN where a cell is not a number, +-inf where it is a number
    float64 cannot hold. (pandas' ``to_numeric`` raises OverflowError on an integer beyond
    float64, which a CSV of 400 digits is read as; cell by cell, it is an infinity.)"""
    try:
        return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    except OverflowError:
        return np.array([_number(x) for x in column.to_numpy()], dtype=float)


def _number(x: Any) -> float:
    """One cell as a float (see ``numeric_values``)."""
    try:
        return float(x)
    except OverflowError:  # an integer beyond float64
        return math.inf if x > 0 else -math.inf
    except (TypeError, ValueError):
        return math.nan


def pair_groups(
    table: pd.DataFrame,
    *,
    value_col: str = "value",
    group_col: str = "group",
    seed_col: str = "seed",
    baseline: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    source: str | None = None,
) -> list[PairedSample]:
    """The comparisons a table asks for, each with its values paired by seed.

    With ``baseline``: every other group against it (A = the group, B = the baseline). With
    ``pairs``: those pairs, in that order. With neither: all pairs of groups in the order
    the groups first appear in the table.
    """
    tidy = tidy_results(
        table, value_col=value_col, group_col=group_col, seed_col=seed_col, source=source
    )
    return pair_samples(tidy, resolve_pairs(tidy, baseline, pairs, source), seed_col, source)


def resolve_pairs(
    tidy: pd.DataFrame,
    baseline: str | None,
    pairs: Sequence[tuple[str, str]] | None,
    source: str | None,
) -> list[tuple[str, str]]:
    """The (A, B) pairs to compare: every group against ``baseline``, or ``pairs`` as
    given (checked: known groups, no self-comparison, no pair twice), or all pairs of
    groups in the order they first appear."""
    groups = list(dict.fromkeys(tidy["group"]))
    if baseline is not None and pairs is not None:
        raise UserInputError(
            "give either a baseline or pairs, not both", source=source, field="pairs"
        )
    if baseline is not None:
        baseline = str(baseline)
        if baseline not in groups:
            raise UserInputError(
                f"baseline group {baseline!r} is not in the table; groups are {groups}",
                source=source,
                field="baseline",
            )
        if len(groups) < 2:
            raise UserInputError(
                f"only the baseline {baseline!r} is in the table: nothing to compare it with",
                source=source,
                field="baseline",
            )
        return [(g, baseline) for g in groups if g != baseline]
    if pairs is not None:
        if len(pairs) == 0:
            raise UserInputError("pairs is empty", source=source, field="pairs")
        resolved: list[tuple[str, str]] = []
        for pair in pairs:
            if isinstance(pair, str) or len(pair) != 2:
                raise UserInputError(
                    f"each pair must name two groups, got {pair!r}", source=source, field="pairs"
                )
            a, b = str(pair[0]), str(pair[1])
            for g in (a, b):
                if g not in groups:
                    raise UserInputError(
                        f"pair ({a!r}, {b!r}) names group {g!r}, which is not "
                        f"in the table; groups are {groups}",
                        source=source,
                        field="pairs",
                    )
            if a == b:
                raise UserInputError(
                    f"pair ({a!r}, {b!r}) compares a group with itself",
                    source=source,
                    field="pairs",
                )
            if (a, b) in resolved or (b, a) in resolved:
                raise UserInputError(
                    f"pair ({a!r}, {b!r}) is listed twice", source=source, field="pairs"
                )
            resolved.append((a, b))
        return resolved
    if len(groups) < 2:
        raise UserInputError(
            f"the table has one group ({groups[0]!r}): nothing to compare",
            source=source,
            field="group",
        )
    return list(itertools.combinations(groups, 2))


def pair_samples(
    tidy: pd.DataFrame, pairs: list[tuple[str, str]], seed_col: str, source: str | None
) -> list[PairedSample]:
    """One ``PairedSample`` per pair: paired on the seeds both groups have (at least 2),
    unpaired when they share none (at least 2 seeds each); refused otherwise."""
    by_group = {
        g: dict(zip(df["seed"], df["value"], strict=True))
        for g, df in tidy.groupby("group", sort=False)
    }
    samples = []
    for a, b in pairs:
        va, vb = by_group[a], by_group[b]
        common = sorted_seeds(set(va) & set(vb))
        only_a = sorted_seeds(set(va) - set(vb))
        only_b = sorted_seeds(set(vb) - set(va))
        if len(common) >= 2:
            samples.append(
                PairedSample(
                    a,
                    b,
                    PAIRED,
                    tuple(common),
                    np.array([va[s] for s in common]),
                    np.array([vb[s] for s in common]),
                    tuple(only_a),
                    tuple(only_b),
                )
            )
        elif len(common) == 0 and len(va) >= 2 and len(vb) >= 2:
            # No seed in common: the groups are independent samples, compared unpaired.
            samples.append(
                PairedSample(
                    a,
                    b,
                    UNPAIRED,
                    (),
                    np.array([va[s] for s in only_a]),
                    np.array([vb[s] for s in only_b]),
                    tuple(only_a),
                    tuple(only_b),
                )
            )
        else:
            raise UserInputError(
                f"{a!r} vs {b!r}: {len(common)} paired seed(s) ({a!r} has {len(va)} seeds, "
                f"{b!r} has {len(vb)}); a paired comparison needs at least 2 seeds present in "
                "both groups, an unpaired one (no seed shared) at least 2 seeds in each",
                source=source,
                field=seed_col,
            )
    return samples


def sorted_seeds(seeds: set[Any]) -> list[Any]:
    """Seeds in order; by their text where they mix types."""
    try:
        return sorted(seeds)
    except TypeError:  # mixed types
        return sorted(seeds, key=str)


def unpaired_seeds(tidy: pd.DataFrame, groups: list[str]) -> dict[str, list[Any]]:
    """For each compared group, its seeds missing from at least one other compared group."""
    seeds = {g: set(tidy.loc[tidy["group"] == g, "seed"]) for g in groups}
    everywhere = set.intersection(*seeds.values()) if seeds else set()
    return {g: sorted_seeds(s - everywhere) for g, s in seeds.items() if s - everywhere}
