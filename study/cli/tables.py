"""Commands on any tidy table: compare and plan-seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from study.cli.terminal import console, err_console, fmt_number, print_table, user_errors
from study.errors import UserInputError

TableArg = Annotated[
    Path, typer.Argument(metavar="TABLE", help="A tidy CSV table: one row per (group, seed).")
]
ValueCol = Annotated[str, typer.Option("--value-col", help="Column of the values.")]
GroupCol = Annotated[str, typer.Option("--group-col", help="Column naming the group.")]
SeedCol = Annotated[str, typer.Option("--seed-col", help="Column of the seeds (pairing key).")]
Baseline = Annotated[
    str | None, typer.Option("--baseline", help="Compare every other group against this one.")
]
Pairs = Annotated[
    str | None, typer.Option("--pairs", help="Explicit comparisons A:B,C:D (differences A - B).")
]
Alpha = Annotated[float, typer.Option("--alpha", help="Significance level, in (0, 1).")]
TestName = Annotated[str, typer.Option("--test", help="Primary test: t, wilcoxon or permutation.")]


def _read_table(path: Path, *, group_col: str = "group", seed_col: str = "seed"):
    """The CSV table; with a ``status`` column (the export's runs.csv) only its FINISHED
    rows, the others named on stderr."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserInputError("table file not found", source=str(path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserInputError(f"not a readable CSV table: {e}", source=str(path)) from None
    if "status" in table.columns:
        finished = table["status"].astype(str).str.strip().str.upper() == "FINISHED"
        if not finished.all():
            left = table[~finished]
            what = [
                f"{r.get(group_col, '?')} seed {r.get(seed_col, '?')} ({r['status']})"
                for r in left.to_dict("records")
            ]
            err_console.print(
                f"{path}: left out {len(left)} rows whose status is not FINISHED: "
                + ", ".join(what),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        table = table[finished].reset_index(drop=True)
    return table


def _require_columns(frame, table: Path, columns: dict[str, str]) -> None:
    """Every column the options name is in the table; if not, all the missing ones, each
    with the option that names it (``--value-col``), and the columns the table has."""
    absent = [(flag, col) for flag, col in columns.items() if col not in frame.columns]
    if not absent:
        return
    what = "; ".join(f"'{col}' (set by {flag})" for flag, col in absent)
    has = ", ".join(str(c) for c in frame.columns)
    flags = ", ".join(flag for flag, _ in absent)
    raise UserInputError(
        f"missing column{'s' * (len(absent) > 1)} {what}; the table has columns {has}: "
        f"name {'them' if len(absent) > 1 else 'it'} with {flags}",
        source=str(table),
    )


def _pairs(text: str | None) -> list[tuple[str, str]] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep or not a or not b:
            raise UserInputError(
                f"'{item}' is not of the form A:B", source="command line", field="--pairs"
            )
        out.append((a, b))
    return out


ReportProtocol = Annotated[
    Path | None,
    typer.Option(
        "--protocol",
        help="Test the comparisons the report of this protocol tests, as it tests them: its "
        "[analysis] metric, test, correction, alpha, min_effect, families and pairs, on the "
        "export's role column; p adj. is then the report's. Options given as well win.",
    ),
]


@user_errors
def compare(
    table: TableArg,
    value_col: ValueCol = "value",
    group_col: GroupCol = "group",
    seed_col: SeedCol = "seed",
    baseline: Baseline = None,
    pairs: Pairs = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="Significance level, in (0, 1). [0.05]")
    ] = None,
    correction: Annotated[
        str | None, typer.Option("--correction", help="holm, bh, bonferroni or none. [holm]")
    ] = None,
    test: Annotated[
        str | None, typer.Option("--test", help="Primary test: t, wilcoxon or permutation. [t]")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every resampling.")] = 0,
    aso: Annotated[
        bool, typer.Option("--aso", help="Also Almost Stochastic Order (epsilon_min).")
    ] = False,
    min_effect: Annotated[
        float | None,
        typer.Option(
            "--min-effect",
            help="Smallest difference of interest (value units): a non-significant verdict "
            "says whether the CI rules it out.",
        ),
    ] = None,
    protocol: ReportProtocol = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Paired comparisons across seeds of any tidy table (seed, group, value); a table with
    a status column (the export's runs.csv) is reduced to its FINISHED rows. A value column
    named after a metric (test_acc, test_nll, ...) is shown in the report's units."""
    from study.analysis.stats import compare as run_compare

    frame = _read_table(table, group_col=group_col, seed_col=seed_col)
    families = None
    if protocol is None:
        _require_columns(
            frame,
            table,
            {"--value-col": value_col, "--group-col": group_col, "--seed-col": seed_col},
        )
    if protocol is not None:
        frame, families, settings = _report_family(frame, protocol, group_col, value_col)
        pairs, value_col, group_col, seed_col = None, "value", "group", "seed"
        if baseline is not None:
            raise UserInputError(
                "--protocol tests the report's comparisons; --baseline asks for others",
                source="command line",
                field="--baseline",
            )
        alpha = settings.alpha if alpha is None else alpha
        correction = correction or settings.correction
        test = test or settings.test
        min_effect = settings.min_effect if min_effect is None else min_effect
        metric = settings.metric
    else:
        metric = value_col
    alpha, correction, test = alpha or 0.05, correction or "holm", test or "t"
    result = run_compare(
        frame,
        value_col=value_col,
        group_col=group_col,
        seed_col=seed_col,
        baseline=baseline,
        pairs=[(c["a"], c["b"]) for c in families] if families is not None else _pairs(pairs),
        alpha=alpha,
        correction=correction,
        test=test,
        seed=seed,
        aso=aso,
        min_effect=min_effect,
        source=str(table),
    )
    data = result.to_dict()
    if as_json:
        print(json.dumps(data, indent=2, allow_nan=False))
        return
    _print_comparisons(
        data,
        f"{table}: {metric} by {group_col if protocol is None else 'role'}",
        metric,
        families,
        alpha=alpha,
        correction=correction,
        test=test,
        min_effect=min_effect,
    )


def _report_family(frame, protocol: Path, group_col: str, value_col: str):
    """The export's table as the report reads it (group, seed, value of the protocol's
    metric), the report's testable comparisons, and the protocol's [analysis]."""
    from study.analysis.report import long_values, planned_comparisons
    from study.protocol import load_protocol

    p = load_protocol(protocol)
    metric = p.analysis.metric if value_col == "value" else value_col
    role = "role" if group_col == "group" else group_col
    for col, option in ((role, "--group-col"), (metric, "--value-col")):
        if col not in frame.columns:
            raise UserInputError(
                f"column '{col}' is missing (the export's runs.csv has it); the table has "
                f"columns {[str(c) for c in frame.columns]}",
                source="command line",
                field=option,
            )
    long = long_values(frame.rename(columns={role: "role"}), metric)
    families = [c for c in planned_comparisons(p, long) if c["testable"]]
    if not families:
        raise UserInputError(
            "no comparison of this protocol's report has 2 paired seeds in the table",
            source=str(protocol),
        )
    return long, families, p.analysis.model_copy(update={"metric": metric})


def _print_comparisons(data, title, metric, families, *, alpha, correction, test, min_effect):
    """The comparisons as a table and verdict lines, in the report's units where the value
    column is one of its metrics (accuracies in percent, differences in points)."""
    from study.analysis.report import verdict_words
    from study.analysis.stats import as_note, format_p, format_seeds
    from study.analysis.units import RAW, units_of

    units = units_of(metric)
    shown = units if units is not RAW else None

    def p_text(p) -> str:  # never rounded onto or across alpha
        return "-" if p is None else format_p(p, alpha, digits=3, significant=True)

    against = (0.0,) if min_effect is None else (0.0, min_effect, -min_effect)

    def num(x) -> str:  # read against 0 and min_effect as the verdict is
        return shown.diff(x, against=against) if shown else fmt_number(x)

    unit = f" ({units.difference})" if shown else ""
    out = Table(
        title=f"{title}, {correction} correction"
        + (f", differences in {units.difference}" if shown else "")
    )
    columns = ["A", "B", *(["family"] if families else []), "pairing", "n"]
    for col in (*columns, f"mean diff{unit}", "unadj. 95% t CI", "effect", "p", "p adj", ""):
        out.add_column(col)
    for i, c in enumerate(data["comparisons"]):
        lo, hi = c["ci95"] or (None, None)
        family = [families[i]["family"]] if families else []
        out.add_row(
            c["a"],
            c["b"],
            *family,
            c["pairing"],
            str(c["n"]),
            num(c["mean_diff"]),
            f"[{num(lo)}, {num(hi)}]",
            f"{(c['effect_size_name'] or '').split(' ')[0]} {fmt_number(c['effect_size'], 2)}",
            p_text(c["p"]),
            p_text(c["p_adj"]),
            "reject" if c["reject"] else "",
        )
    print_table(out)
    notes: dict[str, list[str]] = {}  # one line per distinct note, not one per comparison
    for c in data["comparisons"]:
        verdict = c["verdict"]
        if shown:
            full = {**c, "testable": True}
            verdict = verdict_words(
                full, shown, alpha=alpha, correction=correction, test=test, min_effect=min_effect
            )[1]
        console.print(f"- {verdict}", highlight=False, markup=False, soft_wrap=True)
        for note in c["notes"]:
            if not as_note(note).about_another_test(test):
                notes.setdefault(note, []).append(f"{c['a']} vs {c['b']}")
    for note, where in notes.items():
        which = "all comparisons" if len(where) == len(data["comparisons"]) else "; ".join(where)
        console.print(f"note: {note} ({which})", highlight=False, markup=False, soft_wrap=True)
    if data["unpaired_seeds"]:
        console.print(
            "seeds not present in every compared group (left out of the pairs that lack "
            "them and of the omnibus): "
            + "; ".join(f"{g}: {format_seeds(s)}" for g, s in data["unpaired_seeds"].items()),
            highlight=False,
            markup=False,
        )
    om = data.get("omnibus")
    if om:
        console.print(
            f"omnibus over {om['k']} groups, {om['n_seeds_common']} common seeds: Friedman "
            f"Q = {fmt_number(om['q'], 3)}, p = {p_text(om['p_friedman'])}, Kendall's W = "
            f"{fmt_number(om['w_kendall'], 3)}, Nemenyi CD = {fmt_number(om['cd'], 3)}",
            highlight=False,
        )


@user_errors
def plan_seeds(
    table: TableArg,
    effect: Annotated[
        float, typer.Option("--effect", help="Smallest difference worth detecting (value units).")
    ],
    value_col: ValueCol = "value",
    group_col: GroupCol = "group",
    seed_col: SeedCol = "seed",
    baseline: Baseline = None,
    pairs: Pairs = None,
    alpha: Alpha = 0.05,
    power: Annotated[float, typer.Option("--power", help="Target power, in (0, 1).")] = 0.8,
    test: TestName = "t",
    comparisons: Annotated[
        int,
        typer.Option(
            "--comparisons",
            min=1,
            help="Size m of the correction family the results will be corrected over (at "
            "least the comparisons in this table are counted).",
        ),
    ] = 1,
    correction: Annotated[
        str,
        typer.Option(
            "--correction",
            help="holm, bh, bonferroni or none; holm, bonferroni and (conservatively) bh are "
            "planned at alpha / m.",
        ),
    ] = "holm",
    sd_confidence: Annotated[
        float | None,
        typer.Option(
            "--sd-confidence",
            help="Plan for this one-sided upper confidence bound of the pilot's sd (e.g. 0.8: "
            "the plan reaches the power in about 80% of pilots, not about half).",
        ),
    ] = None,
    condition_col: Annotated[
        str | None,
        typer.Option(
            "--condition-col",
            help="Plan over conditions and seeds: the column naming each row's condition "
            "(the export's conditions.csv: condition). Pooled by the report's random-effects "
            "test, Var ~ tau^2/C + sigma^2/(nC).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Seeds needed to detect an effect with the chosen test's own power, from the observed
    sd of paired differences, at alpha / m for a family of m corrected comparisons; a table
    with a status column (the export's runs.csv) is reduced to its FINISHED rows. With
    --condition-col: what more seeds and more conditions buy for the pooled effect."""
    from study.analysis.power import plan_seeds as run_plan

    if effect <= 0:
        raise UserInputError(f"must be > 0, got {effect}", source="command line", field="--effect")
    common = {
        "effect": effect,
        "alpha": alpha,
        "power": power,
        "comparisons": comparisons,
        "correction": correction,
        "value_col": value_col,
        "group_col": group_col,
        "seed_col": seed_col,
        "baseline": baseline,
        "pairs": _pairs(pairs),
        "source": str(table),
    }
    rows = _read_table(table, group_col=group_col, seed_col=seed_col)
    _require_columns(
        rows,
        table,
        {"--value-col": value_col, "--group-col": group_col, "--seed-col": seed_col}
        | ({"--condition-col": condition_col} if condition_col is not None else {}),
    )
    if condition_col is not None:
        _plan_conditions(rows, condition_col=condition_col, as_json=as_json, **common)
        return
    frame = run_plan(rows, test=test, sd_confidence=sd_confidence, **common)
    if as_json:
        records = json.loads(frame.to_json(orient="records"))
        for i, record in enumerate(records):
            record.update({key: frame.attrs[key][i] for key in ("sd_planned", "pilot_warning")})
        print(json.dumps(records, indent=2))
        return
    _print_seed_plan(
        frame,
        effect=effect,
        alpha=alpha,
        power=power,
        test=test,
        correction=correction,
        sd_confidence=sd_confidence,
    )


def _print_seed_plan(frame, *, effect, alpha, power, test, correction, sd_confidence) -> None:
    """`study plan-seeds`' table, the line that says how to read it, and its warnings."""
    family = frame.attrs.get("family") or "one comparison, no correction needed"
    if correction == "none" and frame.attrs.get("comparisons", 1) > 1:
        family = f"{frame.attrs['comparisons']} comparisons, no correction"
    out = Table(title=f"seeds for effect {effect} at alpha {alpha}, power {power} ({test})")
    for col in (
        "A",
        "B",
        "n",
        "sd diff",
        "seeds needed",
        "alone, at alpha",
        "MDE at n",
        "power at n",
    ):
        out.add_column(col)

    def seeds(x, pairing) -> str:
        if x is None or x != x:
            return "-"
        return f"{int(x)}" + (" per group" if pairing != "paired by seed" else "")

    for r, sd_planned in zip(frame.itertuples(), frame.attrs["sd_planned"], strict=True):
        out.add_row(
            r.a,
            r.b,
            str(r.n) + (" (A + B)" if r.pairing != "paired by seed" else ""),
            fmt_number(r.sd_diff)
            + (f" (planned: {fmt_number(sd_planned)})" if sd_confidence else ""),
            seeds(r.n_required, r.pairing),
            seeds(r.n_required_unadjusted, r.pairing),
            fmt_number(r.mde),
            fmt_number(r.power_at_n, 3),
        )
    print_table(out)
    console.print(
        f"family: {family}; 'seeds needed', 'MDE at n' and 'power at n' are at the planned "
        f"level, 'alone, at alpha' plans the comparison as if it were the only one; power "
        f"of the {test} test from {frame.attrs['power_method']}"
        + (
            f"; planned for the sd's {sd_confidence:.0%} upper confidence bound"
            if sd_confidence
            else ""
        ),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for r, pilot in zip(frame.itertuples(), frame.attrs["pilot_warning"], strict=True):
        for text in (r.warning, pilot):
            if isinstance(text, str) and text:
                err_console.print(
                    f"[yellow]warning:[/] {r.a} vs {r.b}: {text}", highlight=False, soft_wrap=True
                )


def _plan_conditions(frame, *, as_json: bool, **options) -> None:
    """`study plan-seeds --condition-col`: the power of the pooled test over conditions."""
    from study.analysis.condition_power import plan_conditions

    plan = plan_conditions(frame, **options)
    if as_json:
        print(plan.to_json(orient="records", indent=2))
        return
    m = plan.attrs["comparisons"]
    out = Table(
        title=f"power over conditions and seeds for effect {options['effect']} at alpha / "
        f"{m} = {plan.attrs['alpha_planned']:.4g}, target {options['power']}"
    )
    columns = {
        "A": "a", "B": "b", "C": "conditions", "n": "seeds", "sigma": "sigma", "tau": "tau",
        "power now": "power", "2n seeds": "power_2n", "all seeds": "power_all_seeds",
        "2C conditions": "power_2c", "conditions needed": "conditions_needed",
        "seeds needed": "seeds_needed",
    }  # fmt: skip
    for col in columns:
        out.add_column(col)
    for r in plan.to_dict("records"):
        out.add_row(*(_plan_cell(key, r[key]) for key in columns.values()))
    print_table(out)
    console.print(
        "Var(pooled) ~ tau^2/C + sigma^2/(nC): sigma is the seed-to-seed sd of one paired "
        "difference within a condition, tau the between-condition sd (Paule-Mandel); the "
        "pooled test is HKSJ's t with C - 1 df. 'all seeds': infinitely many seeds per "
        "condition, the ceiling only more conditions raise.",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for r in plan.to_dict("records"):
        if isinstance(r["warning"], str):
            err_console.print(
                f"[yellow]warning:[/] {escape(r['a'])} vs {escape(r['b'])}: {escape(r['warning'])}",
                highlight=False,
                soft_wrap=True,
            )


def _plan_cell(key: str, x) -> str:
    if isinstance(x, str):
        return x
    if key in ("conditions_needed", "seeds_needed"):
        return "none suffices" if x != x else str(int(x))
    if key in ("conditions", "seeds"):
        return "-" if x is None or x != x else f"{x:g}"
    return fmt_number(x, 2 if key.startswith("power") else 4)
