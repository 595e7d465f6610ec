"""Random-effects meta-analysis of one contrast's per-condition effects.

A study of several conditions (teachers, datasets, students) measures each contrast (say
ban/gen1 - teacher) in each condition c as the mean y_c of its seed-wise paired differences,
with the within-condition variance v_c = s_c^2 / n_c of that mean. The conditions are a
sample of the conditions one could have run, and the effect differs between them: y_c =
mu + u_c + e_c with u_c ~ N(0, tau^2) between conditions and e_c ~ N(0, v_c) within. The
question "does it help across architectures" is about mu, and "will it help on the next
one" about a new condition's mu + u_new.

Pooling every seed of every condition into one paired test ignores tau^2: its interval
covered 0.65 where 95% was asked (issue 22's simulation, 4-12 conditions). Here:

- tau^2 by Paule-Mandel (the root of the generalised Q statistic sum w_c (y_c - mu_w)^2 =
  C - 1, w_c = 1 / (v_c + tau^2); 0 when Q(0) is below C - 1), or DerSimonian-Laird's
  moment estimator for comparison;
- mu as the inverse-variance weighted mean with those weights, and its interval by
  Hartung-Knapp-Sidik-Jonkman (HKSJ): the variance sum w_c (y_c - mu)^2 / ((C - 1) sum w_c)
  and a t quantile with C - 1 degrees of freedom; p from the same t;
- Cochran's Q (fixed-effect weights 1 / v_c) with its chi^2_{C-1} p, I^2 = max(0, (Q -
  (C - 1)) / Q), tau;
- the 95% prediction interval of a new condition's effect (Higgins, Thompson & Spiegelhalter
  2009): mu +- t_{C-2} sqrt(tau^2 + SE^2), SE = 1 / sqrt(sum w_c); it needs 3 conditions.

The numbers agree with statsmodels' ``combine_effects`` (tests/test_meta.py: to 1e-9); it
is not called here because its Paule-Mandel iteration stops at |Q - (C - 1)| < 1e-5 (a
root to the float's precision is one bracketed solve) and it divides by zero for a
condition whose differences are all equal. ``posterior`` adds the Bayesian normal-normal
hierarchical model with a stated prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

METHODS = {"pm": "Paule-Mandel", "dl": "DerSimonian-Laird"}
LEVEL = 0.95


@dataclass(frozen=True)
class MetaAnalysis:
    """The random-effects pooling of one contrast over C conditions (raw units)."""

    k: int  # conditions pooled
    effects: list[float]  # y_c
    variances: list[float]  # v_c
    method: str  # "pm" or "dl"
    tau2: float
    mean: float  # the pooled effect mu
    se: float  # 1 / sqrt(sum w): the usual random-effects standard error
    se_hksj: float  # the Hartung-Knapp-Sidik-Jonkman standard error
    ci95: tuple[float, float]  # HKSJ: mean +- t_{C-1} se_hksj
    ci95_z: tuple[float, float]  # the usual z interval: mean +- z se
    t: float  # mean / se_hksj
    p: float  # two-sided, t with C - 1 df
    q: float  # Cochran's Q (fixed-effect weights)
    q_p: float  # chi^2 with C - 1 df
    i2: float  # max(0, (Q - (C - 1)) / Q)
    prediction: tuple[float, float] | None  # 95% for a new condition; None below 3
    weights: list[float] = field(default_factory=list)  # relative random-effects weights

    @property
    def tau(self) -> float:
        return math.sqrt(self.tau2)

    @property
    def df(self) -> int:
        return self.k - 1


def random_effects(effects, variances, *, method: str = "pm") -> MetaAnalysis:
    """Pool per-condition effects with the random-effects model (see the module).

    Raises ValueError for fewer than 2 conditions, a non-finite effect, or a variance that
    is not a positive finite number (a condition whose differences are all equal has no
    inverse-variance weight)."""
    y = np.asarray(effects, dtype=float)
    v = np.asarray(variances, dtype=float)
    k = len(y)
    if k < 2 or len(v) != k:
        raise ValueError(f"a random-effects pooling needs 2 conditions or more, got {k}")
    if not np.all(np.isfinite(y)):
        raise ValueError("every condition's effect must be a finite number")
    if not np.all(np.isfinite(v) & (v > 0)):
        raise ValueError(
            "every condition's within-condition variance must be > 0 (a condition whose "
            "seeds all differ by the same amount has no inverse-variance weight)"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    # On the scale of the within-condition standard error: tau^2 of accuracy differences
    # is ~1e-6, far below a root finder's absolute tolerance in raw units.
    scale = math.sqrt(float(np.mean(v)))
    ys, vs = y / scale, v / scale**2
    tau2 = (paule_mandel if method == "pm" else dersimonian_laird)(ys, vs)
    return _pooled(y, v, tau2 * scale**2, method)


def paule_mandel(y: np.ndarray, v: np.ndarray) -> float:
    """The Paule-Mandel tau^2: the root of Q_gen(tau^2) = C - 1, 0 when Q_gen(0) <= C - 1.
    Q_gen decreases in tau^2 and is at most S / tau^2 (S: the squared deviations of y
    from its mean), so S / (C - 1) brackets the root."""
    k = len(y)

    def excess(tau2: float) -> float:
        w = 1 / (v + tau2)
        mu = np.sum(w * y) / np.sum(w)
        return float(np.sum(w * (y - mu) ** 2)) - (k - 1)

    if excess(0.0) <= 0:
        return 0.0
    upper = float(np.sum((y - y.mean()) ** 2)) / (k - 1)
    if excess(upper) >= 0:  # only by rounding: the bound is exact
        return upper
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-15 * upper, rtol=1e-15))


def dersimonian_laird(y: np.ndarray, v: np.ndarray) -> float:
    """The DerSimonian-Laird moment estimator of tau^2, truncated at 0."""
    w = 1 / v
    mu = np.sum(w * y) / np.sum(w)
    q = float(np.sum(w * (y - mu) ** 2))
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    return max(0.0, (q - (len(y) - 1)) / c)


def _pooled(y: np.ndarray, v: np.ndarray, tau2: float, method: str) -> MetaAnalysis:
    k = len(y)
    df = k - 1
    w = 1 / (v + tau2)
    mean = float(np.sum(w * y) / np.sum(w))
    se = math.sqrt(1 / float(np.sum(w)))
    se_hksj = math.sqrt(float(np.sum(w * (y - mean) ** 2)) / (df * float(np.sum(w))))
    crit = float(stats.t.ppf(1 - (1 - LEVEL) / 2, df))
    z = float(stats.norm.ppf(1 - (1 - LEVEL) / 2))
    t = mean / se_hksj if se_hksj > 0 else math.copysign(math.inf, mean) if mean else math.nan
    p = float(2 * stats.t.sf(abs(t), df)) if not math.isnan(t) else math.nan
    w_fe = 1 / v
    mean_fe = np.sum(w_fe * y) / np.sum(w_fe)
    q = float(np.sum(w_fe * (y - mean_fe) ** 2))
    return MetaAnalysis(
        k=k,
        effects=[float(x) for x in y],
        variances=[float(x) for x in v],
        method=method,
        tau2=tau2,
        mean=mean,
        se=se,
        se_hksj=se_hksj,
        ci95=(mean - crit * se_hksj, mean + crit * se_hksj),
        ci95_z=(mean - z * se, mean + z * se),
        t=t,
        p=p,
        q=q,
        q_p=float(stats.chi2.sf(q, df)),
        i2=max(0.0, (q - df) / q) if q > 0 else 0.0,
        prediction=prediction_interval(mean, se, tau2, k),
        weights=[float(x) for x in w / np.sum(w)],
    )


def prediction_interval(
    mean: float, se: float, tau2: float, k: int, level: float = LEVEL
) -> tuple[float, float] | None:
    """Where a new condition's true effect lies: mean +- t_{k-2} sqrt(tau^2 + se^2)
    (Higgins, Thompson & Spiegelhalter 2009); None with fewer than 3 conditions."""
    if k < 3:
        return None
    half = float(stats.t.ppf(1 - (1 - level) / 2, k - 2)) * math.sqrt(tau2 + se**2)
    return (mean - half, mean + half)


# --------------------------------------------------------------------------------------
# the Bayesian normal-normal hierarchical model
# --------------------------------------------------------------------------------------

GRID = 4000
"""Points of the quadrature over tau: equal prior mass each (the prior's quantiles)."""


@dataclass(frozen=True)
class Posterior:
    """The posterior of the pooled effect mu and of a new condition's effect, with the
    probabilities of lying below -m, within +-m and above +m (m = min_effect)."""

    prior: str
    mean: float
    sd: float
    ci95: tuple[float, float]
    p_below: float
    p_within: float
    p_above: float
    new_ci95: tuple[float, float]
    new_below: float
    new_within: float
    new_above: float
    tau_median: float


def posterior(effects, variances, *, min_effect: float, tau_scale: float) -> Posterior:
    """The normal-normal hierarchical model y_c ~ N(mu + u_c, v_c), u_c ~ N(0, tau^2), with a
    flat prior on mu and a half-Cauchy(tau_scale) prior on tau (Gelman 2006's choice for
    few groups). Given tau, mu is normal (mean mu_hat(tau), variance 1 / sum w(tau)); tau
    is integrated on GRID points of equal prior mass (the prior's quantiles), each weighted
    by its marginal likelihood: probabilities are mixtures of normal CDFs."""
    y = np.asarray(effects, dtype=float)
    v = np.asarray(variances, dtype=float)
    if len(y) < 1 or not np.all(np.isfinite(v) & (v > 0)) or tau_scale <= 0:
        raise ValueError("a posterior needs effects, positive variances and tau_scale > 0")
    u = (np.arange(GRID) + 0.5) / GRID
    tau = tau_scale * np.tan(np.pi * u / 2)  # half-Cauchy quantiles
    total = v[None, :] + tau[:, None] ** 2
    w = 1 / total
    mu_hat = np.sum(w * y, axis=1) / np.sum(w, axis=1)
    var_mu = 1 / np.sum(w, axis=1)
    log_like = 0.5 * np.log(var_mu) - 0.5 * np.sum(
        np.log(total) + (y[None, :] - mu_hat[:, None]) ** 2 / total, axis=1
    )
    weight = np.exp(log_like - log_like.max())
    weight /= weight.sum()
    sd_new = np.sqrt(var_mu + tau**2)
    sd_mu = np.sqrt(var_mu)

    def cdf(x: float, sd: np.ndarray) -> float:
        return float(np.sum(weight * stats.norm.cdf((x - mu_hat) / sd)))

    def quantile(q: float, sd: np.ndarray) -> float:
        lo = float(np.min(mu_hat - 40 * sd))
        hi = float(np.max(mu_hat + 40 * sd))
        return float(optimize.brentq(lambda x: cdf(x, sd) - q, lo, hi, xtol=1e-14 * (hi - lo)))

    m = min_effect
    mean = float(np.sum(weight * mu_hat))
    second = float(np.sum(weight * (var_mu + mu_hat**2)))
    below, above = cdf(-m, sd_mu), 1 - cdf(m, sd_mu)
    new_below, new_above = cdf(-m, sd_new), 1 - cdf(m, sd_new)
    cum = np.cumsum(weight)
    return Posterior(
        prior=f"flat on mu, half-Cauchy(scale {tau_scale:.3g}) on tau",
        mean=mean,
        sd=math.sqrt(max(second - mean**2, 0.0)),
        ci95=(quantile(0.025, sd_mu), quantile(0.975, sd_mu)),
        p_below=below,
        p_within=1 - below - above,
        p_above=above,
        new_ci95=(quantile(0.025, sd_new), quantile(0.975, sd_new)),
        new_below=new_below,
        new_within=1 - new_below - new_above,
        new_above=new_above,
        tau_median=float(tau[np.searchsorted(cum, 0.5)]),
    )
