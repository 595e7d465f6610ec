"""Tests of study.analysis.power: seed planning against known power values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from study.analysis.power import min_p_value, plan_seeds
from study.errors import UserInputError


def paired_table(differences: list[float], base: float = 0.7) -> pd.DataFrame:
    """Two groups whose seed-wise differences A - B are ``differences``."""
    n = len(differences)
    rng = np.random.default_rng(0)
    b = base + rng.normal(0, 0.05, n)
    return pd.DataFrame(
        {
            "group": ["A"] * n + ["B"] * n,
            "seed": list(range(n)) * 2,
            "value": np.concatenate([b + np.array(differences), b]),
        }
    )


def t_power_by_hand(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t from the noncentral t distribution."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = d * math.sqrt(n)
    return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


def test_n_required_for_half_an_sd_is_34():
    # Paired / one-sample t, d = 0.5, alpha = 0.05 two-sided, power 0.8: n = 33.37 -> 34
    # (G*Power, one-sample case, reports the same); checked below with the noncentral t.
    plan = plan_seeds(paired_table([-1.0, 0.0, 1.0]), effect=0.5)  # sd of differences = 1
    row = plan.iloc[0]
    assert (row["a"], row["b"], row["n"]) == ("A", "B", 3)
    assert row["sd_diff"] == pytest.approx(1.0, abs=1e-9)
    assert row["n_required"] == 34
    assert t_power_by_hand(0.5, 33) < 0.8 <= t_power_by_hand(0.5, 34)


def test_n_required_scales_with_the_noise_of_the_differences():
    plan = plan_seeds(paired_table([-2.0, 0.0, 2.0]), effect=0.5)  # sd 2: d = 0.25
    n_req = plan.iloc[0]["n_required"]
    assert t_power_by_hand(0.25, n_req - 1) < 0.8 <= t_power_by_hand(0.25, n_req)


def test_power_at_n_and_mde_agree_with_the_noncentral_t():
    diffs = [0.3, -0.1, 0.5, 0.2, 0.0, 0.4, 0.1, 0.35]
    row = plan_seeds(paired_table(diffs), effect=0.2).iloc[0]
    sd = float(np.std(diffs, ddof=1))
    assert row["sd_diff"] == pytest.approx(sd, abs=1e-9)
    assert row["power_at_n"] == pytest.approx(t_power_by_hand(0.2 / sd, 8), abs=1e-6)
    assert t_power_by_hand(row["mde"] / sd, 8) == pytest.approx(0.8, abs=1e-6)
    assert row["power_at_n"] == pytest.approx(
        TTestPower().power(effect_size=0.2 / sd, nobs=8, alpha=0.05), abs=1e-12
    )


def test_min_p_value_of_exact_tests():
    assert min_p_value("wilcoxon", 5) == 0.0625  # 2 / 2^5
    assert min_p_value("permutation", 5) == 0.0625
    assert min_p_value("wilcoxon", 6) == 0.03125
    assert min_p_value("t", 3) == 0.0
    assert min_p_value("permutation", 16) == 2 / 2**16
    assert min_p_value("permutation", 17, n_resamples=9999) == 2 / 10000  # Monte Carlo
    # Mann-Whitney exact with 4 and 4 seeds: 2 / C(8, 4) = 2 / 70.
    assert min_p_value("wilcoxon", 4, n_b=4) == pytest.approx(2 / 70, abs=1e-15)
    # Normal approximation beyond 50 seeds: the most extreme rank sum is far in the tail.
    assert 0 < min_p_value("wilcoxon", 60) < 1e-9
    with pytest.raises(UserInputError):
        min_p_value("anova", 5)


def test_min_p_value_agrees_with_scipy_at_the_most_extreme_data():
    d = np.arange(1.0, 6.0)  # all positive, no ties
    assert stats.wilcoxon(d, method="exact").pvalue == pytest.approx(min_p_value("wilcoxon", 5))


def test_warning_when_the_test_cannot_reach_alpha():
    table = paired_table([0.5, 0.7, 0.6, 0.8, 0.55])
    row = plan_seeds(table, effect=0.5, test="wilcoxon").iloc[0]
    assert row["min_p_possible"] == 0.0625
    assert "exact Wilcoxon with 5 paired seeds cannot go below p = 0.0625" in row["warning"]
    assert row["n_required"] >= 6  # raised so that significance is possible at all
    assert plan_seeds(table, effect=0.5, test="t").iloc[0]["warning"] is None


def test_one_row_per_comparison_with_baseline():
    rng = np.random.default_rng(1)
    base = rng.normal(0.7, 0.02, 8)
    table = pd.DataFrame(
        {
            "group": ["teacher"] * 8 + ["ban1"] * 8 + ["ban2"] * 8,
            "seed": list(range(8)) * 3,
            "value": np.concatenate(
                [base, base + rng.normal(0.01, 0.005, 8), base + rng.normal(0.02, 0.01, 8)]
            ),
        }
    )
    plan = plan_seeds(table, effect=0.005, baseline="teacher")
    assert list(plan["a"]) == ["ban1", "ban2"] and list(plan["b"]) == ["teacher"] * 2
    assert list(plan.columns) == [
        "a",
        "b",
        "pairing",
        "n",
        "sd_diff",
        "n_required",
        "mde",
        "power_at_n",
        "min_p_possible",
        "warning",
    ]


def test_unpaired_groups_are_planned_per_group():
    table = pd.DataFrame(
        {
            "group": ["A"] * 5 + ["B"] * 5,
            "seed": list(range(10)),
            "value": [1.0, 1.2, 0.9, 1.1, 1.05, 0.8, 0.7, 0.95, 0.85, 0.75],
        }
    )
    row = plan_seeds(table, effect=0.2).iloc[0]
    assert row["pairing"] == "unpaired" and row["n"] == 10
    assert row["min_p_possible"] == pytest.approx(0.0, abs=0)
    assert row["n_required"] >= 2


def test_bad_planning_input_is_rejected():
    table = paired_table([0.1, 0.2, 0.3])
    for kwargs, field in [
        ({"effect": 0.0}, "effect"),
        ({"effect": 0.1, "power": 1.2}, "power"),
        ({"effect": 0.1, "test": "z"}, "test"),
        ({"effect": 0.1, "baseline": "C"}, "baseline"),
    ]:
        with pytest.raises(UserInputError) as err:
            plan_seeds(table, source="pilot.csv", **kwargs)
        assert err.value.field == field and err.value.source == "pilot.csv"


def test_effect_far_larger_than_the_sd_needs_the_fewest_seeds() -> None:
    # sd of differences 1e-5 against an effect of 0.005: the root-finder gives up (NaN);
    # the plan must still answer with the smallest n whose power reaches 0.8.
    import pandas as pd

    from study.analysis.power import plan_seeds

    rows = [(s, "a", 0.9 + 1e-5 * ((s * 7) % 3)) for s in range(3)]
    rows += [(s, "b", 0.9) for s in range(3)]
    table = pd.DataFrame(rows, columns=["seed", "group", "value"])
    [row] = plan_seeds(table, effect=0.005).to_dict("records")
    assert row["n_required"] == 2
