"""The report across conditions, from hand-built results with a known structure (no
training): study/analysis/across.py and study/analysis/conditions_report.py."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from study.analysis import conditions_report as cr
from study.analysis.across import build_across, cliques, contrast_pairs, with_results
from study.analysis.collect import Collected
from study.analysis.condition_power import pooled_power, seeds_needed
from study.analysis.stats.meta import random_effects
from study.conditions import parse_study
from study.plan import expand
from study.track import FINAL_METRICS

PROTOCOL = """
[study]
name = "across"
seeds = {seeds}

[teacher]
arch = "mlp"
kwargs = {{ hidden = [16] }}

[[arms]]
name = "ban"
loss = "ban"
generations = 2
ensemble = true

[analysis]
alpha = {alpha}
min_effect = 0.005
comparisons = ["vs_teacher", "vs_previous"]
contrasts = [["ban/gen1", "teacher"], ["ban/ens2", "ban/gen2"]]
"""
# gen1 beats its teacher by about 1 point, with a condition-to-condition sd of 0.3 points
GAIN = {"teacher": 0.0, "ban/gen1": 0.010, "ban/gen2": 0.011, "ban/ens2": 0.013}


def study_of(conditions: int, *, seeds: int = 8, alpha: float = 0.05):
    text = PROTOCOL.format(seeds=seeds, alpha=alpha) + "".join(
        f'\n[[conditions]]\nname = "c{i}"\nteacher = {{ kwargs = {{ hidden = [{16 + i}] }} }}\n'
        for i in range(conditions)
    )
    return parse_study(textwrap.dedent(text), source="across.toml")


def results(study, *, tau: float = 0.003, noise: float = 0.004, rng_seed: int = 0, edit=None):
    """(protocol, Collected) per condition: 0.9 + condition level + role gain (varying by
    condition with sd tau) + seed effect + noise."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for p in study.protocols:
        plan = expand(p)
        level = rng.normal(0, 0.02)
        shift = {r: (rng.normal(0, tau) if r != "teacher" else 0.0) for r in GAIN}
        seed_effect = {s: rng.normal(0, 0.004) for s in plan.seeds}
        rows = []
        for role in plan.roles:
            for seed in plan.seeds:
                acc = 0.9 + level + GAIN[role.key] + shift[role.key] + seed_effect[seed]
                acc += rng.normal(0, noise)
                rows.append(
                    {
                        "condition": p.condition,
                        "role": role.key,
                        "kind": role.kind,
                        "arm": role.arm,
                        "generation": role.generation,
                        "seed": seed,
                        "status": "FINISHED",
                        "run_id": f"{p.condition}-{role.key}-{seed}",
                        "fingerprint": "fp",
                        "reason": "",
                        **{m: np.nan for m in FINAL_METRICS},
                        "test_acc": acc,
                    }
                )
        runs = pd.DataFrame(rows)
        if edit is not None:
            runs = edit(p.condition, runs)
        meta = {"study": p.study.name, "condition": p.condition}
        out.append((p, Collected(runs=runs, curves=pd.DataFrame(), meta=meta)))
    return out


def differences(collected: Collected, a: str, b: str) -> np.ndarray:
    wide = collected.table.pivot(index="seed", columns="role", values="test_acc")
    return (wide[a] - wide[b]).dropna().to_numpy()


@pytest.fixture(scope="module")
def four():
    study = study_of(4)
    collected = results(study)
    return build_across(study, collected), collected


def test_each_contrast_is_the_random_effects_pooling_of_the_per_condition_means(four) -> None:
    rep, collected = four
    c = next(x for x in rep.contrasts if (x.a, x.b) == ("ban/gen1", "teacher"))
    d = [differences(col, "ban/gen1", "teacher") for _, col in collected]
    y = [float(np.mean(x)) for x in d]
    v = [float(np.var(x, ddof=1)) / len(x) for x in d]
    expected = random_effects(y, v)
    assert c.meta.mean == pytest.approx(expected.mean, rel=1e-12)
    assert c.meta.ci95 == pytest.approx(expected.ci95, rel=1e-12)
    assert c.meta.tau2 == pytest.approx(expected.tau2, rel=1e-9, abs=1e-18)
    assert [e.mean for e in c.effects] == pytest.approx(y)
    # sensitivity: the equal-weight t on the C means and the exact sign flip (2^C vectors)
    t = stats.ttest_1samp(y, 0.0)
    assert c.equal_weight.p == pytest.approx(t.pvalue, rel=1e-9)
    assert c.sign_flip.method == "exact" and c.sign_flip.arrangements == 16
    assert c.sign_flip.p == pytest.approx(2 / 16)  # all four positive: the floor 2 / 2^4
    up, down, n = c.significant_in(0.05)
    ps = [stats.ttest_1samp(x, 0.0).pvalue for x in d]
    assert (up, down, n) == (sum(p < 0.05 and m > 0 for p, m in zip(ps, y, strict=True)), 0, 4)


def test_holm_corrects_across_the_tested_contrasts(four) -> None:
    rep, _ = four
    tested = rep.tested
    pairs = [(c.a, c.b) for c in rep.contrasts]
    # declared first, then the per-condition families, each pair once
    assert pairs[:2] == [("ban/gen1", "teacher"), ("ban/ens2", "ban/gen2")]
    assert len(pairs) == len(set(map(frozenset, pairs))) == 5
    expected = multipletests([c.meta.p for c in tested], method="holm")[1]
    assert [c.p_adj for c in tested] == pytest.approx(list(expected), rel=1e-12)
    assert all(c.reject == (c.p_adj < 0.05) for c in tested)
    assert rep.header["family"] == len(tested) == 5


def test_default_contrasts_can_be_switched_off() -> None:
    study = study_of(3)
    analysis = study.protocols[0].analysis.model_copy(update={"default_contrasts": False})
    assert contrast_pairs(study.protocols[0], analysis) == [
        ("ban/gen1", "teacher", "declared contrast"),
        ("ban/ens2", "ban/gen2", "declared contrast"),
    ]


def test_few_conditions_say_what_cannot_be_claimed(four) -> None:
    rep, _ = four
    lines = cr.cannot_claim(rep)
    assert rep.rank_claim_min == 6
    assert "With 4 conditions no rank-based claim" in lines[0] and "2 / 2^4 = 0.125" in lines[0]
    six = build_across(study_of(6), results(study_of(6)))
    assert cr.cannot_claim(six) == []
    # at alpha = 0.1, 5 conditions suffice (2 / 32 < 0.1)
    five = build_across(study_of(5, alpha=0.1), results(study_of(5, alpha=0.1)))
    assert five.rank_claim_min == 5 and cr.cannot_claim(five) == []


def test_ranking_cliques_come_from_pairwise_wilcoxon_holm() -> None:
    # 8 conditions: ban/ens2 > ban/gen2 ~ ban/gen1 > teacher in every condition
    study = study_of(8)
    rep = build_across(study, results(study, tau=0.0005, noise=0.0005))
    r = rep.ranking
    assert r.mean_ranks["teacher"] == 1 and r.mean_ranks["ban/ens2"] == 4
    by_pair = {frozenset((d["a"], d["b"])): d for d in r.pairwise}
    teacher_ens = by_pair[frozenset(("teacher", "ban/ens2"))]
    assert teacher_ens["p"] == pytest.approx(2 / 2**8)  # exact Wilcoxon, 8 of 8 one way
    raw = [d["p"] for d in r.pairwise]
    assert [d["p_adj"] for d in r.pairwise] == pytest.approx(
        list(multipletests(raw, method="holm")[1])
    )
    separated = {k for k, d in by_pair.items() if d["reject"]}
    order = sorted(r.mean_ranks, key=lambda k: (r.mean_ranks[k], k))
    assert r.cliques == cliques(order, separated)
    assert frozenset(("teacher", "ban/ens2")) in separated
    assert all(not ({"teacher", "ban/ens2"} <= set(c)) for c in r.cliques)


def test_cliques_are_maximal_runs_of_unseparated_roles() -> None:
    order = ["a", "b", "c", "d"]
    assert cliques(order, set()) == [["a", "b", "c", "d"]]
    assert cliques(order, {frozenset("ad")}) == [["a", "b", "c"], ["b", "c", "d"]]
    everything = {frozenset((x, y)) for x in order for y in order if x != y}
    assert cliques(order, everything) == []


def test_a_condition_with_constant_differences_counts_in_the_family_without_a_pool() -> None:
    study = study_of(3)

    def constant(condition, runs):
        if condition == "c1":  # ban/gen1 = teacher + 1 point exactly, every seed
            teacher = runs[runs["role"] == "teacher"].set_index("seed")["test_acc"]
            mine = runs["role"] == "ban/gen1"
            runs.loc[mine, "test_acc"] = runs.loc[mine, "seed"].map(teacher).to_numpy() + 0.01
        return runs

    rep = build_across(study, results(study, edit=constant))
    c = rep.contrasts[0]
    assert (c.a, c.b) == ("ban/gen1", "teacher")
    assert c.meta is None and c.testable and math.isnan(c.p_adj)
    assert "c1" in c.reason and "no inverse-variance weight" in c.reason
    assert c.equal_weight is not None  # the sensitivity analyses still run
    others = [x for x in rep.tested if x is not c]
    expected = multipletests([x.meta.p for x in others] + [1.0], method="holm")[1][:-1]
    assert [x.p_adj for x in others] == pytest.approx(list(expected))  # m counts c
    assert cr.verdict_short(rep, c) == "no pooled test possible"


def test_power_row_follows_var_tau2_over_c_plus_sigma2_over_nc(four) -> None:
    rep, collected = four
    c = rep.tested[0]
    d = [differences(col, c.a, c.b) for _, col in collected]
    sigma2 = float(np.mean([np.var(x, ddof=1) for x in d]))  # equal seeds: the plain mean
    assert c.power["sigma"] == pytest.approx(math.sqrt(sigma2), rel=1e-12)
    tau2 = c.power["tau"] ** 2
    alpha = 0.05 / len(rep.tested)
    assert rep.header["alpha_planned"] == pytest.approx(alpha)
    assert c.power["power"] == pytest.approx(pooled_power(0.005, tau2, sigma2, 4, 8, alpha))
    se = math.sqrt(tau2 / 4 + sigma2 / 32)
    crit = stats.t.ppf(1 - alpha / 2, 3)
    hand = stats.nct.sf(crit, 3, 0.005 / se) + stats.nct.cdf(-crit, 3, 0.005 / se)
    assert c.power["power"] == pytest.approx(hand, rel=1e-9)
    needed = seeds_needed(0.005, tau2, sigma2, 4, alpha, 0.8)
    assert (c.power["seeds_needed"] == needed) or (
        math.isnan(needed) and math.isnan(c.power["seeds_needed"])
    )


def test_seeds_cannot_beat_the_between_condition_floor() -> None:
    tau2, sigma2 = 0.003**2, 0.004**2
    assert pooled_power(0.003, tau2, sigma2, 5, math.inf, 0.05) < 0.8
    assert math.isnan(seeds_needed(0.003, tau2, sigma2, 5, 0.05, 0.8))
    # without heterogeneity, seeds do suffice, and the answer is the smallest that does
    n = seeds_needed(0.003, 0.0, sigma2, 5, 0.05, 0.8)
    assert pooled_power(0.003, 0.0, sigma2, 5, n, 0.05) >= 0.8
    assert pooled_power(0.003, 0.0, sigma2, 5, n - 1, 0.05) < 0.8


def test_the_report_renders_every_section_figure_and_the_paper_table(four, tmp_path) -> None:
    rep, collected = four
    paths = cr.write_across(rep, tmp_path)
    md = (tmp_path / "report.md").read_text()
    for heading in (
        "## Why pooled this way",
        "**What 4 conditions cannot show.**",
        "## Results at a glance",
        "## Conditions",
        "## Contrasts across conditions",
        "### Verdicts",
        "### Forest plots",
        "### Sensitivity",
        "## Ranking (descriptive)",
        "## Power over conditions and seeds",
    ):
        assert heading in md, heading
    forests = sorted(p.name for p in (tmp_path / "figures").glob("forest_*.png"))
    assert len(forests) == len(rep.contrasts) == 5
    assert (tmp_path / "figures" / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for c in ("c0", "c1", "c2", "c3"):
        assert f"[{c}]({c}/report.md)" in md
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 6  # self-contained
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert {p.name for p in paths} >= {"report.md", "report.html", "table.md", "table.tex"}
    # the paper table: mean ± the half-width of the 95% t interval (n)
    _, first = collected[0]
    v = first.table.loc[first.table["role"] == "teacher", "test_acc"].to_numpy()
    half = stats.t.ppf(0.975, 7) * np.std(v, ddof=1) / math.sqrt(8)
    cell = f"{100 * np.mean(v):.2f} ± {100 * half:.2f} (8)"
    assert re.search(rf"\| c0 +\| +{re.escape(cell)} \|", md)
    tex = (tmp_path / "table.tex").read_text()
    assert f"${100 * np.mean(v):.2f} \\pm {100 * half:.2f}$ (8)" in tex
    assert "\\toprule" in tex and "\\label{tab:across-conditions}" in tex


def test_verdicts_read_the_pooled_interval_and_the_prediction_interval(four) -> None:
    rep, _ = four
    c = rep.contrasts[0]
    sentence = cr.verdict_sentence(rep, c)
    assert sentence.startswith("ban/gen1 is higher than teacher across conditions: pooled +")
    lo, hi = c.meta.prediction
    assert f"between {rep.units.diff(lo, against=(0, 0.005, -0.005))} and" in sentence
    assert ("may see no gain" in sentence) == (lo < 0 < hi)


def test_a_condition_without_results_is_named_and_left_out() -> None:
    study = study_of(4)
    rep = build_across(study, results(study)[:3])
    assert rep.conditions == ["c0", "c1", "c2"] and rep.header["missing"] == ["c3"]
    md = cr.render(rep, [], "across.md.j2")
    assert "condition c3 has no results" in md
    assert all(len(c.effects) == 3 for c in rep.contrasts)


def test_conditions_table_of_the_export_has_a_condition_column(tmp_path: Path) -> None:
    study = study_of(3)
    collected = results(study)
    path = cr.write_conditions_table(collected, tmp_path)
    table = pd.read_csv(path)
    assert list(table.columns[:2]) == ["condition", "role"]
    assert sorted(set(table["condition"])) == ["c0", "c1", "c2"]
    assert len(table) == sum(len(c.runs) for _, c in collected)


def test_conditions_without_any_run_are_left_out_by_name() -> None:
    study = study_of(3)

    def absent(condition, runs):
        if condition == "c2":
            runs = runs.assign(status="ABSENT", test_acc=np.nan)
        return runs

    collected = results(study, edit=absent)
    kept, left = with_results(study, collected)
    assert [p.condition for p, _ in kept] == ["c0", "c1"] and left == ["c2"]
    kept, left = with_results(study, collected[:1])
    assert left == ["c1", "c2"]
