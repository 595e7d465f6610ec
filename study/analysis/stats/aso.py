"""Almost Stochastic Order (ASO): how far A's distribution over seeds lies above B's.

Dror, Shlomov & Reichart (2019) proposed it for comparing deep-learning models over seeds:
the violation ratio eps_W2 (del Barrio, Cuesta-Albertos & Matran 2018) measures the share
of the squared Wasserstein-2 distance between the two empirical quantile functions where A
falls below B, and eps_min is its bootstrap upper confidence bound. It answers "is A
almost always at least as good as B", a question about whole distributions that neither
the t test (means) nor the rank tests answer.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from study.analysis.stats.precision import exponent
from study.analysis.stats.resampling import SeedLike, generator


def violation_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """The ASO violation ratio eps_W2(A, B) of del Barrio et al. (2018).

    With F^-1, G^-1 the (left-continuous, empirical) quantile functions of A and B:
    eps = int_{F^-1 < G^-1} (F^-1(t) - G^-1(t))^2 dt / int_0^1 (F^-1(t) - G^-1(t))^2 dt,
    the share of the squared Wasserstein-2 distance where A's quantiles fall below B's.
    0 means A's quantiles are everywhere >= B's (A stochastically dominates B), 1 the
    reverse. The empirical quantile functions are step functions, so the integrals are
    computed exactly on the union of their breakpoints (no grid). NaN if A and B have the
    same quantile function.
    """
    k = exponent(a, b)  # the ratio is scale-free; squared gaps of 1e200 are not
    return float(
        _violation_ratios(
            np.sort(np.ldexp(np.asarray(a, float), -k))[None, :],
            np.sort(np.ldexp(np.asarray(b, float), -k))[None, :],
        )[0]
    )


def _violation_ratios(a_sorted: np.ndarray, b_sorted: np.ndarray) -> np.ndarray:
    """Violation ratio of each row of a_sorted against the same row of b_sorted."""
    na, nb = a_sorted.shape[1], b_sorted.shape[1]
    # Breakpoints of both step functions on the integer scale t * na * nb (exact arithmetic).
    ends = np.union1d(np.arange(1, na + 1) * nb, np.arange(1, nb + 1) * na)
    widths = np.diff(ends, prepend=0) / (na * nb)
    ia = (ends + nb - 1) // nb - 1  # F^-1(t) = x_(ceil(t na)) on (previous end, end]
    ib = (ends + na - 1) // na - 1
    gap = a_sorted[:, ia] - b_sorted[:, ib]
    total = np.sum(widths * gap**2, axis=1)
    violated = np.sum(widths * np.minimum(gap, 0.0) ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, violated / np.where(total > 0, total, 1.0), np.nan)


def aso_epsilon_min(
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: SeedLike = 0,
    paired: bool = True,
) -> tuple[float, float]:
    """Almost Stochastic Order of A over B: (eps_min, violation ratio).

    eps_min (del Barrio, Cuesta-Albertos & Matran 2018; Dror, Shlomov & Reichart 2019) is the
    upper confidence bound at level 1 - alpha of the violation ratio eps_W2(A, B):
    eps_min = eps_hat - Phi^-1(alpha) * sigma_hat / sqrt(n_a n_b / (n_a + n_b)), where
    sigma_hat is the bootstrap sd of sqrt(n_a n_b / (n_a + n_b)) * (eps* - eps_hat); the
    scaling cancels, so eps_min = eps_hat + z_(1-alpha) * sd(eps*). eps_min < 0.5 says A is
    almost stochastically larger than B (the smaller, the stronger); eps_min = 0 is
    stochastic dominance. Clipped to [0, 1].

    The bootstrap resamples seeds (pairs) when ``paired`` (pitfall avoided: resampling each
    group independently would ignore the pairing), each group on its own otherwise. NaN if
    A and B have the same empirical distribution.
    """
    k = exponent(a, b)  # the ratio is scale-free; squared gaps of 1e200 are not
    a = np.ldexp(np.asarray(a, dtype=float), -k)
    b = np.ldexp(np.asarray(b, dtype=float), -k)
    eps_hat = violation_ratio(a, b)
    if not np.isfinite(eps_hat):
        return math.nan, math.nan
    rng = generator(seed)
    if paired:
        idx = rng.integers(0, len(a), size=(n_resamples, len(a)))
        idx_a = idx_b = idx
    else:
        idx_a = rng.integers(0, len(a), size=(n_resamples, len(a)))
        idx_b = rng.integers(0, len(b), size=(n_resamples, len(b)))
    boot = _violation_ratios(np.sort(a[idx_a], axis=1), np.sort(b[idx_b], axis=1))
    boot = boot[np.isfinite(boot)]
    sigma = float(np.std(boot, ddof=1)) if len(boot) > 1 else 0.0
    eps_min = eps_hat + stats.norm.ppf(1 - alpha) * sigma
    return float(np.clip(eps_min, 0.0, 1.0)), eps_hat
