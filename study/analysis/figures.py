"""The report's figures, drawn from tidy tables into PNG bytes.

Each function takes plain data (DataFrames, dicts) and returns the PNG as bytes, so the
report can both write it next to report.md and embed it in report.html. Figures are drawn
on matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch):
safe in a CLI, a test and a notebook alike. Seaborn styles them and draws the
distributions.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

DPI = 100
KIND_COLOURS = {"teacher": "#4c72b0", "student": "#dd8452", "ensemble": "#55a868"}
_STYLE = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.9)}


LABEL_CHARS = 28
"""Names longer than this are drawn shortened in figures (``shorten``); the report's
tables carry them whole."""


def shorten(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` as drawn in a figure: whole when it has at most ``limit`` characters, else
    its start, an ellipsis and its end (which keeps a role's ``/genN``), ``limit`` long. A
    protocol's names may have 100 characters: drawn whole, one label takes the figure."""
    if len(name) <= limit:
        return name
    tail = min(len(name.rpartition("/")[2]) + 1 + 4, limit // 2) if "/" in name else limit // 2
    return name[: limit - tail - 1] + "\u2026" + name[-tail:]


def _tick_labels(ax, axis: str, names: Sequence[str], many: int = 5) -> None:
    """Category ticks named ``names`` (shortened), slanted when there are more than
    ``many`` or one is long."""
    labels = [shorten(n) for n in names]
    slant = len(labels) > many or max((len(t) for t in labels), default=0) > 12
    if axis == "x":
        ax.set_xticks(range(len(labels)), labels)
        if slant:
            ax.tick_params(axis="x", labelrotation=30)
            for t in ax.get_xticklabels():
                t.set_horizontalalignment("right")
                t.set_rotation_mode("anchor")
    else:
        ax.set_yticks(range(len(labels)), labels)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, explicitly: renders to memory, never to a display
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No 'Software' key: the same data gives the same bytes whatever matplotlib's version.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _style():
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def distributions(
    values: pd.DataFrame, order: Sequence[str], kinds: dict[str, str], label: str
) -> bytes:
    """Box plot and one point per seed for each role.

    ``values``: columns role, seed, value (already in display units), ``order``: roles
    left to right, ``kinds``: role -> teacher / student / ensemble (the colour).
    """
    order = [r for r in order if r in set(values["role"])]
    with _style():
        fig = _figure(max(5.0, 0.75 * len(order) + 2.0), 4.0)
        ax = fig.add_subplot()
        palette = {r: KIND_COLOURS.get(kinds.get(r, ""), "#8c8c8c") for r in order}
        data = values[values["role"].isin(order)]
        sns.boxplot(
            data=data,
            x="role",
            y="value",
            order=order,
            hue="role",
            hue_order=order,
            palette=palette,
            showfliers=False,
            width=0.55,
            boxprops={"alpha": 0.45},
            legend=False,
            ax=ax,
        )
        # One point per seed, spread evenly across a narrow band in seed order (a
        # deterministic jitter: the same data draws the same figure).
        for i, role in enumerate(order):
            v = data.loc[data["role"] == role].sort_values("seed")["value"].to_numpy(float)
            offsets = np.linspace(-0.14, 0.14, len(v)) if len(v) > 1 else np.zeros(len(v))
            ax.scatter(i + offsets, v, s=12, color="#222222", alpha=0.8, zorder=3, lw=0)
        ax.set_xlabel("")
        ax.set_ylabel(label)
        _tick_labels(ax, "x", order)
        return _png(fig)


def paired_lines(
    values: pd.DataFrame, chains: Sequence[tuple[str, Sequence[str]]], label: str
) -> bytes:
    """One line per seed across the roles of each chain (teacher -> gen1 -> gen2 ...).

    ``chains``: (panel title, roles in x order). A seed missing a role breaks its line there.
    The thick line is the mean over the seeds present at every role of the chain.
    """
    n = len(chains)
    widest = max(len(roles) for _, roles in chains)
    with _style():
        fig = _figure(max(4.5, 1.0 * widest + 1.5) * min(n, 2), 3.6 * math.ceil(n / 2))
        axes = fig.subplots(math.ceil(n / 2), min(n, 2), squeeze=False, sharey=True).ravel()
        for ax, (title, roles) in zip(axes, chains, strict=False):
            roles = list(roles)
            wide = (
                values[values["role"].isin(roles)]
                .pivot(index="seed", columns="role", values="value")
                .reindex(columns=roles)
            )
            x = np.arange(len(roles))
            for _, row in wide.iterrows():
                ax.plot(
                    x,
                    row.to_numpy(dtype=float),
                    color="#7f7f7f",
                    lw=0.8,
                    alpha=0.6,
                    marker="o",
                    ms=2.5,
                )
            # the mean over the seeds every role has: its slopes are the paired differences
            # the tests use (a seed missing in one role would tilt a mean over all seeds)
            complete = wide.dropna()
            ax.plot(
                x,
                complete.mean(axis=0).to_numpy(dtype=float),
                color="#c44e52",
                lw=2.4,
                marker="o",
                ms=5,
                label="mean over seeds"
                if len(complete) == len(wide)
                else f"mean over the {len(complete)} seeds in every role",
            )
            _tick_labels(ax, "x", roles, many=3)
            ax.set_xlim(-0.3, len(roles) - 0.7)
            ax.set_title(f"{shorten(title, 32)} ({len(wide)} seeds)")
            ax.set_ylabel(label)
            ax.legend(loc="best", fontsize="small")
        for ax in axes[n:]:
            ax.set_visible(False)
        return _png(fig)


@dataclass(frozen=True)
class Panel:
    """One panel of learning curves: a metric, for some roles, on its own axis."""

    metric: str
    label: str  # the y axis
    roles: tuple[str, ...]
    factor: float = 1.0  # applied to the values (100: percent)
    title: str = ""


def learning_curves(
    curves: pd.DataFrame, roles: Sequence[str], panels: Sequence[Panel], *, columns: int = 2
) -> bytes | None:
    """Mean over seeds per epoch with a 95% t band, one line per role, one panel per
    quantity: only comparable values share an axis.

    ``curves``: long table role, seed, epoch, metric, value; ``roles`` fixes each role's
    colour across panels. None when there is no curve to draw.
    """
    if not len(curves):
        return None
    present = set(curves["role"].unique())
    metrics = set(curves["metric"].unique())
    drawn = [
        replace(p, roles=tuple(r for r in p.roles if r in present))
        for p in panels
        if p.metric in metrics
    ]
    drawn = [p for p in drawn if p.roles]
    if not drawn:
        return None
    palette = sns.color_palette("tab10", max(len(roles), 1))
    colours = {r: palette[i % len(palette)] for i, r in enumerate(roles)}
    ncols = max(1, min(columns, len(drawn)))
    nrows = math.ceil(len(drawn) / ncols)
    wanted = curves[curves["metric"].isin({p.metric for p in drawn})]
    series = dict(
        iter(wanted.groupby(["role", "metric"], sort=False))
    )  # one pass, not one per line
    with _style():
        fig = _figure(4.6 * ncols + 1.6, 3.3 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, panel in zip(axes, drawn, strict=False):
            for role in panel.roles:
                if (role, panel.metric) not in series:
                    continue
                band = curve_band(series[(role, panel.metric)], panel.factor)
                label = shorten(role)
                ax.plot(band["epoch"], band["mean"], color=colours[role], lw=1.6, label=label)
                ax.fill_between(
                    band["epoch"], band["low"], band["high"], color=colours[role], alpha=0.18, lw=0
                )
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.2
            ax.set_ylabel(panel.label)
            if panel.title:
                ax.set_title(panel.title, fontsize="small")
            if len(panel.roles) < len(roles):  # a panel of some roles names them itself
                ax.legend(loc="best", fontsize="x-small")
        for ax in axes[len(drawn) :]:
            ax.set_visible(False)
        if all(len(p.roles) == len(roles) for p in drawn):
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside right center", fontsize="small", frameon=False)
        return _png(fig)


def curve_band(c: pd.DataFrame, factor: float = 1.0) -> pd.DataFrame:
    """Per epoch: n seeds, mean and the 95% t interval of the mean (NaN with one seed)."""
    g = c.groupby("epoch")["value"]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "sd": g.std(ddof=1)}).reset_index()
    half = stats.t.ppf(0.975, np.maximum(out["n"] - 1, 1)) * out["sd"] / np.sqrt(out["n"])
    half = half.where(out["n"] > 1)
    out["low"] = (out["mean"] - half) * factor
    out["high"] = (out["mean"] + half) * factor
    out["mean"] = out["mean"] * factor
    return out


def critical_difference(
    mean_ranks: dict[str, float],
    cd: float,
    caption: str,
    cliques: Sequence[Sequence[str]] | None = None,
) -> bytes:
    """The critical-difference diagram of Demsar (2006).

    The axis carries the mean ranks; each group is a tick with its name on the left (lower
    half of the ranks) or on the right (upper half); thick bars join groups whose mean ranks
    differ by less than ``cd`` (not significantly different by the Nemenyi test), or, given
    ``cliques`` (runs of names consecutive in mean-rank order), those groups (``cd`` NaN:
    no CD bar).
    """
    items = sorted(mean_ranks.items(), key=lambda kv: (kv[1], kv[0]))
    names = [k for k, _ in items]
    ranks = np.array([v for _, v in items], dtype=float)
    k = len(items)
    if cliques is None:
        cliques = cd_cliques(ranks, cd)
    else:
        cliques = [(names.index(c[0]), names.index(c[-1])) for c in cliques]
    hi = float(max(k, 1 + cd)) if math.isfinite(cd) else float(k)
    half = math.ceil(k / 2)
    rows = max(half, k - half)
    step = 0.32
    bar_base = -0.35
    label_top = bar_base - 0.22 * (len(cliques) + 1)
    bottom = label_top - step * (rows - 1) - 0.3
    span = hi - 1
    pad = 0.55 * span + 0.5
    with _style():
        fig = _figure(9.0, 1.3 + 0.32 * rows + 0.18 * len(cliques))
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_xlim(1 - pad, hi + pad)
        ax.set_ylim(bottom, 0.95)
        ax.plot([1, hi], [0, 0], color="black", lw=1.2)
        for r in range(1, int(math.floor(hi)) + 1):
            ax.plot([r, r], [0, 0.08], color="black", lw=1.0)
            ax.text(r, 0.13, str(r), ha="center", va="bottom", fontsize=9)
        if math.isfinite(cd):
            ax.plot([1, 1 + cd], [0.62, 0.62], color="black", lw=1.6)
            for end in (1, 1 + cd):
                ax.plot([end, end], [0.56, 0.68], color="black", lw=1.2)
            ax.text(1 + cd / 2, 0.72, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
        for i, (name, r) in enumerate(zip(names, ranks, strict=True)):
            left = i < half
            row = i if left else k - 1 - i
            y = label_top - step * row
            x_edge = 1 - 0.15 * pad if left else hi + 0.15 * pad
            ax.plot([r, r, x_edge], [0, y, y], color="#333333", lw=0.9)
            ax.text(
                x_edge + (-0.05 if left else 0.05),
                y,
                f"{shorten(name)} ({r:.2f})" if not left else f"({r:.2f}) {shorten(name)}",
                ha="right" if left else "left",
                va="center",
                fontsize=9,
            )
        for j, (i0, i1) in enumerate(cliques):
            y = bar_base - 0.22 * j
            ax.plot(
                [ranks[i0] - 0.03, ranks[i1] + 0.03],
                [y, y],
                color="#c44e52",
                lw=4,
                solid_capstyle="round",
            )
        ax.set_title(caption, fontsize=10)
        return _png(fig)


def cd_cliques(sorted_ranks: np.ndarray, cd: float) -> list[tuple[int, int]]:
    """Maximal runs (i, j) of sorted mean ranks whose range is below ``cd`` (j > i)."""
    if not math.isfinite(cd):
        return []
    out: list[tuple[int, int]] = []
    k = len(sorted_ranks)
    for i in range(k):
        j = i
        while j + 1 < k and sorted_ranks[j + 1] - sorted_ranks[i] < cd:
            j += 1
        if j > i and not (out and out[-1][1] >= j):
            out.append((i, j))
    return out


@dataclass(frozen=True)
class ForestRow:
    """One row of a forest plot: an estimate and its interval, in display units."""

    label: str
    estimate: float
    low: float
    high: float


def forest(
    rows: Sequence[ForestRow],
    pooled: ForestRow | None,
    prediction: tuple[float, float] | None,
    band: float,
    label: str,
    title: str,
) -> bytes:
    """A forest plot: each condition's estimate and CI, the pooled estimate as a diamond
    (its CI as the width), the prediction interval for a new condition as a bar under it,
    0 as a line and +-``band`` (the smallest effect of interest) shaded."""
    n = len(rows) + (2 if pooled is not None else 0)
    with _style():
        fig = _figure(7.5, 1.3 + 0.34 * n)
        ax = fig.add_subplot()
        ax.axvspan(-band, band, color="#dddddd", alpha=0.6, lw=0, label=f"±{band:g}")
        ax.axvline(0, color="#555555", lw=0.9)
        for i, r in enumerate(rows):
            y = n - 1 - i
            ax.plot([r.low, r.high], [y, y], color="#333333", lw=1.4)
            ax.plot([r.estimate], [y], "s", color="#4c72b0", ms=6)
        ticks = [n - 1 - i for i in range(len(rows))]
        names = [r.label for r in rows]
        if pooled is not None:
            y = 1
            xs = [pooled.low, pooled.estimate, pooled.high, pooled.estimate]
            ax.fill(xs, [y, y + 0.3, y, y - 0.3], color="#c44e52", lw=0)
            ticks.append(y)
            names.append(pooled.label)
            if prediction is not None:
                ax.plot(prediction, [0, 0], color="#c44e52", lw=3, alpha=0.55)
                ticks.append(0)
                names.append("prediction (new condition)")
        ax.set_yticks(ticks, [shorten(n, 2 * LABEL_CHARS) for n in names])
        ax.set_ylim(-0.8, n - 0.2)
        ax.set_xlabel(label)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", visible=False)
        return _png(fig)
