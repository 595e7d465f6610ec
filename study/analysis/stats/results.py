"""The plain data the statistics hand around: what a comparison is given and what it finds.

``PairedSample`` is the input of one comparison (two groups' values, paired by seed or
not), ``Comparison`` its result, ``Omnibus`` the tests across all compared groups, and
``ComparisonReport`` everything one ``compare`` call found. They live apart from the code
that fills them so that the paired and unpaired drivers, the omnibus tests and the report
share one definition, and so that ``to_dict`` (strict JSON: NaN and infinities become
None) is written once.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.precision import rank_safe_differences

TESTS = ("t", "wilcoxon", "permutation")
PAIRED = "paired by seed"
UNPAIRED = "unpaired"
TEST_NAMES = {
    PAIRED: {
        "t": "paired t",
        "wilcoxon": "Wilcoxon signed-rank",
        "permutation": "sign-flip permutation",
    },
    UNPAIRED: {
        "t": "Welch t",
        "wilcoxon": "Mann-Whitney U",
        "permutation": "permutation (independent samples)",
    },
}


class NoteKind(enum.Enum):
    """What a comparison's note is about, set where the note is made: a reader (the
    report, `study compare`, a verdict) picks notes by kind, never by their words."""

    GENERAL = "general"  # the comparison as a whole: values, variance, effect size, pairing
    SEEDS_LEFT_OUT = "seeds left out"  # seeds of one group without a pair, not compared
    WILCOXON = "wilcoxon"  # how the rank test's p was reached (Wilcoxon signed-rank)
    PERMUTATION = "permutation"  # how the permutation test's p was reached


class Note(str):
    """A note on a comparison: its text (a ``str``: printed, compared and written to JSON
    as the text alone) and its ``kind``."""

    kind: NoteKind

    def __new__(cls, text: str, kind: NoteKind = NoteKind.GENERAL) -> Note:
        note = super().__new__(cls, text)
        note.kind = kind
        return note

    def __reduce__(self) -> tuple:  # copies and pickles keep the kind
        return (Note, (str(self), self.kind))

    def about_another_test(self, test: str) -> bool:
        """Whether the note is on a test other than the primary ``test`` (a protocol's
        't', 'wilcoxon' or 'permutation', or a result's test name such as 'Wilcoxon
        signed-rank'): a reader of the primary test's results can leave it out."""
        if self.kind is NoteKind.WILCOXON:
            return not test.lower().startswith("wilcoxon")
        if self.kind is NoteKind.PERMUTATION:
            return "permutation" not in test.lower()
        return False


def monte_carlo_note(n_resamples: int, mc_se: float) -> Note:
    """The note of a permutation p estimated from random permutations."""
    return Note(
        f"permutation p from {n_resamples} random permutations (Monte Carlo standard "
        f"error of p: {mc_se:.2g})",
        NoteKind.PERMUTATION,
    )


def as_note(note: str) -> Note:
    """A note as a ``Note``: a plain string (written by hand, read back from JSON) is
    GENERAL."""
    return note if isinstance(note, Note) else Note(note)


def note_kind(note: str) -> NoteKind:
    """A note's kind (``as_note``'s)."""
    return as_note(note).kind


@dataclass(frozen=True)
class PairedSample:
    """The values two groups contribute to one comparison.

    Paired (``pairing == 'paired by seed'``): ``values_a[i]`` and ``values_b[i]`` come from
    the same seed ``seeds[i]``; seeds present in only one group are listed in ``unpaired_a``
    / ``unpaired_b`` and left out of the pairs. Unpaired (the groups share no seed): all the
    values of each group, ``seeds`` is empty and ``unpaired_a`` / ``unpaired_b`` list every
    seed of each group.
    """

    a: str
    b: str
    pairing: str
    seeds: tuple[Any, ...]
    values_a: np.ndarray
    values_b: np.ndarray
    unpaired_a: tuple[Any, ...]
    unpaired_b: tuple[Any, ...]

    @property
    def n(self) -> int:
        """Number of pairs (paired) or of values in both groups together (unpaired)."""
        if self.pairing == PAIRED:
            return len(self.seeds)
        return len(self.values_a) + len(self.values_b)

    @property
    def differences(self) -> np.ndarray:
        """Seed-wise A - B, cleaned of subtraction roundoff (paired samples only)."""
        if self.pairing != PAIRED:
            raise ValueError(f"{self.a} and {self.b} share no seed: there are no differences")
        return rank_safe_differences(self.values_a, self.values_b)


@dataclass
class Comparison:
    """One comparison A vs B. Differences are always A - B.

    ``n``: paired seeds (paired) or n_a + n_b (unpaired); ``ci95``: t interval of the mean
    difference, always 95% whatever alpha; ``ci95_bca``: 95% BCa bootstrap interval (None,
    with ``ci95_bca_reason``, when degenerate); ``t``, ``df``, ``p_t``: paired t (Welch t
    when unpaired); ``wilcoxon_method``: 'exact', 'approx' or 'none' (all differences 0);
    ``permutation_method``: 'exact' or 'monte carlo', with ``permutation_mc_se`` the Monte
    Carlo standard error of ``p_permutation`` (None when exact) and
    ``permutation_resolution`` how "as extreme" was decided (exact integer units of the
    data's grid, or a tolerance from the rounding of the values); ``ci95_bca_coverage``:
    where the project's calibration found the BCa interval to cover the true difference
    less often than 95% at this n, that coverage (None otherwise; see
    ``study.analysis.stats.calibration``); ``test`` and ``p``: the primary test and its
    raw p; ``p_adj``: corrected across the call's comparisons; ``reject``: p_adj <
    alpha; ``effect_size``: g_z (paired) or g (unpaired), named in ``effect_size_name``;
    ``notes``: anything unusual (zeros dropped, zero variance, Monte Carlo p).

    Keys that do not apply to the pairing are None: the Wilcoxon and d_z/g_z keys for
    unpaired groups, the Mann-Whitney and pooled-sd keys for paired ones. Undefined numbers
    (zero variance) are NaN, and None in ``to_dict``.
    """

    a: str
    b: str
    pairing: str
    test: str
    n: int
    n_a: int
    n_b: int
    seeds: list[Any]
    unpaired_a: list[Any]
    unpaired_b: list[Any]
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float | None
    sd_pooled: float | None
    ci95: list[float]
    ci95_bca: list[float] | None
    ci95_bca_reason: str | None
    t: float
    df: float
    p_t: float
    w: float | None
    p_wilcoxon: float | None
    wilcoxon_method: str | None
    u: float | None
    p_mannwhitney: float | None
    mannwhitney_method: str | None
    p_permutation: float
    permutation_method: str
    d_z: float | None
    g_z: float | None
    g: float | None
    effect_size: float | None
    effect_size_name: str
    p_greater: float
    shapiro_p: float | None
    p: float
    p_adj: float = math.nan
    reject: bool = False
    verdict: str = ""
    aso_epsilon_min: float | None = None
    aso_violation_ratio: float | None = None
    notes: list[Note] = field(default_factory=list)
    permutation_mc_se: float | None = None
    permutation_resolution: str = ""
    ci95_bca_coverage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN and infinities become None."""
        return jsonable(asdict(self))


@dataclass
class Omnibus:
    """Tests across all compared groups on the seeds every group has.

    Mean ranks rank the groups within each seed, 1 = lowest value (ties get the mean rank).
    """

    groups: list[str]
    k: int
    n_seeds_common: int
    seeds_common: list[Any]
    q: float
    p_friedman: float
    w_kendall: float
    mean_ranks: dict[str, float]
    q_alpha: float
    cd: float
    F: float
    df1: float
    df2: float
    p_anova: float
    gg_epsilon: float
    p_anova_gg: float
    anova_applicable: bool
    shapiro_p: dict[str, float | None]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, NaN and infinities become None."""
        return jsonable(asdict(self))


@dataclass
class ComparisonReport:
    """Everything ``compare`` found, in the order the comparisons were asked for."""

    comparisons: list[Comparison]
    omnibus: Omnibus | None
    omnibus_note: str | None
    unpaired_seeds: dict[str, list[Any]]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data: ``comparisons`` (a list of objects with ``a`` and ``b``),
        ``omnibus`` (an object or None), ``omnibus_note``, ``unpaired_seeds``, ``settings``."""
        return {
            "comparisons": [c.to_dict() for c in self.comparisons],
            "omnibus": self.omnibus.to_dict() if self.omnibus is not None else None,
            "omnibus_note": self.omnibus_note,
            "unpaired_seeds": jsonable(self.unpaired_seeds),
            "settings": jsonable(self.settings),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison (for tables in reports)."""
        return pd.DataFrame([asdict(c) for c in self.comparisons])


def plain(x: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else unchanged."""
    if isinstance(x, np.generic):
        return x.item()
    return x


def jsonable(obj: Any) -> Any:
    """Dicts, lists, tuples and arrays with Python scalars in them; NaN and infinities as
    None (strict JSON has neither)."""
    if isinstance(obj, dict):
        return {str(plain(k)): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [jsonable(v) for v in obj]
    obj = plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
