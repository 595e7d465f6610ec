"""The unpaired driver: one comparison of two groups that share no seed.

Without pairs, the groups are independent samples: Welch's t with its interval (variances
free), the exact Mann-Whitney U, the independent-samples permutation test, Hedges' g from
the pooled sd, and a BCa interval that resamples each group on its own (there are no pairs
to keep together). Kept apart from the paired driver because almost every statistic
differs, and the report's own comparisons are always paired.
"""

from __future__ import annotations

import numpy as np

from study.analysis.stats.aso import aso_epsilon_min
from study.analysis.stats.parametric import hedges_correction, mean, pooled_sd, welch_t
from study.analysis.stats.precision import require_finite, tie_keys
from study.analysis.stats.rank import mann_whitney
from study.analysis.stats.resampling import bca_interval, mean_difference, two_sample_permutation
from study.analysis.stats.results import (
    TEST_NAMES,
    Comparison,
    Note,
    PairedSample,
    monte_carlo_note,
)
from study.errors import UserInputError


def compare_unpaired(
    s: PairedSample,
    *,
    test: str,
    alpha: float,
    n_resamples: int,
    aso: bool,
    seed_sequence: np.random.SeedSequence,
    source: str | None = None,
) -> Comparison:
    """The ``Comparison`` of two independent groups: every statistic of ``compare`` for
    unpaired groups, the primary ``test``'s p as ``p``. Refuses (UserInputError) groups
    whose spread or results float64 cannot hold.

    Long only by the ``Comparison`` it fills, one named field a line (48 of them)."""
    boot_seed, perm_seed, aso_seed = seed_sequence.spawn(3)
    a, b = s.values_a, s.values_b
    n_a, n_b = len(a), len(b)
    _refuse_overflow(s, source)
    notes: list[Note] = []
    welch = welch_t(a, b)
    if not (np.ptp(a) > 0 or np.ptp(b) > 0):
        notes.append(Note("both groups have zero variance: Welch t and g are undefined"))
    u, p_u, u_method = mann_whitney(a, b)
    perm = two_sample_permutation(a, b, n_resamples=n_resamples, seed=perm_seed)
    sd_pooled = pooled_sd(a, b)
    g = hedges_correction(n_a + n_b - 2) * welch.mean / sd_pooled if sd_pooled > 0 else np.nan
    # Unpaired: each group is resampled on its own (there are no pairs to keep together).
    bca, bca_reason = bca_interval((a, b), mean_difference, n_resamples, boot_seed)
    notes.append(Note("the groups share no seed: compared as independent samples"))
    if perm.method == "monte carlo":
        notes.append(monte_carlo_note(n_resamples, perm.mc_se))
    aso_eps = aso_ratio = None
    if aso:
        aso_eps, aso_ratio = aso_epsilon_min(
            a, b, alpha=alpha, n_resamples=n_resamples, seed=aso_seed, paired=False
        )
    p_by_test = {"t": welch.p, "wilcoxon": p_u, "permutation": perm.p}
    c = Comparison(
        a=s.a,
        b=s.b,
        pairing=s.pairing,
        test=TEST_NAMES[s.pairing][test],
        n=n_a + n_b,
        n_a=n_a,
        n_b=n_b,
        seeds=list(s.seeds),
        unpaired_a=list(s.unpaired_a),
        unpaired_b=list(s.unpaired_b),
        mean_a=mean(a),
        mean_b=mean(b),
        mean_diff=welch.mean,
        sd_diff=None,
        sd_pooled=sd_pooled,
        ci95=welch.ci95,
        ci95_bca=bca,
        ci95_bca_reason=bca_reason,
        t=welch.t,
        df=welch.df,
        p_t=welch.p,
        w=None,
        p_wilcoxon=None,
        wilcoxon_method=None,
        u=u,
        p_mannwhitney=p_u,
        mannwhitney_method=u_method,
        p_permutation=perm.p,
        permutation_method=perm.method,
        d_z=None,
        g_z=None,
        g=float(g),
        effect_size=float(g),
        effect_size_name="g (Hedges-corrected mean difference / pooled sd)",
        p_greater=_share_greater(a, b),
        shapiro_p=None,
        p=float(p_by_test[test]),
        aso_epsilon_min=aso_eps,
        aso_violation_ratio=aso_ratio,
        notes=notes,
        permutation_mc_se=perm.mc_se,
        permutation_resolution=perm.resolution,
    )
    _require_finite(c, source)
    return c


def _share_greater(a: np.ndarray, b: np.ndarray) -> float:
    """The share of (a, b) value pairs with a > b, values equal up to rounding tied
    (``tie_keys``: a float32 accuracy is not above the float64 one of the same k / N)."""
    keys = tie_keys(np.concatenate([a, b]))
    return float(np.mean(keys[: len(a), None] > keys[None, len(a) :]))


def _require_finite(c: Comparison, source: str | None) -> None:
    """Refuse a comparison whose results float64 cannot hold."""
    require_finite(
        [
            (f"the mean difference {c.a} - {c.b}", c.mean_diff),
            ("the pooled sd", c.sd_pooled),
            *((f"the 95% Welch t interval of {c.a} - {c.b}", x) for x in c.ci95),
            *((f"the BCa interval of {c.a} - {c.b}", x) for x in c.ci95_bca or []),
        ],
        where=f"{c.a} vs {c.b}",
        source=source,
    )


def _refuse_overflow(s: PairedSample, source: str | None) -> None:
    """Values whose spread is beyond float64 (1.5e308 and -1.5e308) cannot be compared."""
    pooled = np.concatenate([s.values_a, s.values_b])
    with np.errstate(over="ignore"):
        spread = float(np.max(pooled) - np.min(pooled))
    if not np.isfinite(spread):
        raise UserInputError(
            f"{s.a} vs {s.b}: the values span more than the float64 range (about 1.8e308: "
            f"from {np.min(pooled):.4g} to {np.max(pooled):.4g}), so no test result can be "
            "given; divide the values by a power of ten and compare again",
            source=source,
        )
