"""The report's sentences with numbers in them, written once for both renderings.

Every "not applicable" says why, and every number printed beside a verdict reads as the
verdict does (see ``Units.diff``).
"""

from __future__ import annotations

from typing import Any

from study.analysis.power import PILOT_MIN_SEEDS, power_method
from study.analysis.report_data import Report
from study.analysis.report_tables import POWER, note_lines, split_notes
from study.analysis.stats import CORRECTION_NAMES
from study.analysis.units import fmt_num, format_p, missing

TEST_WORDS = {
    "t": "paired t-test",
    "wilcoxon": "Wilcoxon signed-rank test",
    "permutation": "sign-flip permutation test",
}
NORMALITY_ALPHA = 0.05  # the level at which stats.omnibus reads its Shapiro-Wilk tests


def report_text(rep: Report) -> dict[str, Any]:
    """The sentences with numbers in them, written once for both renderings."""
    a = rep.protocol.analysis
    n_tested = len(rep.tested)
    text: dict[str, Any] = {
        "comparisons": _comparisons_words(rep),
        "comparison_notes": note_lines(rep),
        "omnibus": _omnibus_lines(rep),
        "power": _power_words(rep),
    }
    others: dict[str, list[str]] = {}
    for c in rep.tested:
        for note in split_notes(c, a.test)[1]:
            others.setdefault(note, []).append(f"{c['a']} vs {c['b']}")
    text["detail_notes"] = [
        f"{note}: {'all comparisons' if len(who) == n_tested else ', '.join(who)}."
        for note, who in others.items()
    ]
    warnings: dict[str, list[str]] = {}
    for r in rep.power.itertuples() if len(rep.power) else []:
        if isinstance(r.warning, str) and r.warning:
            warnings.setdefault(r.warning, []).append(f"{r.a} vs {r.b}")
    text["power_warnings"] = [
        f"{'all tested comparisons' if len(who) == n_tested else ', '.join(who)}: {w}."
        for w, who in warnings.items()
    ]
    missing_runs = rep.collected.missing
    text["missing"] = (
        f"{len(missing_runs)} of {rep.header['runs_planned']} planned runs have no finished "
        "result; they are left out of every statistic above (a comparison uses the seeds "
        "both roles have)."
        if missing_runs
        else "None: every (role, seed) of the plan has a finished run."
    )
    return text


def _comparisons_words(rep: Report) -> str:
    a = rep.protocol.analysis
    u = rep.units
    m = rep.family_size
    families = list(dict.fromkeys(c["family"] for c in rep.comparisons))
    return (
        f"The comparisons ask, in this order: {'; '.join(families)} (each pair once). Each is "
        f"paired by seed (seed s of A against seed s of B) and tested with "
        f"the {TEST_WORDS[a.test]}; A - B and its 95% CI (the unadjusted 95% t interval of "
        f"the mean difference, whatever the test; it is not corrected for the "
        f"{m} comparison{'s' * (m != 1)}) are in {u.difference} of {u.name}, printed with "
        f"the decimals it takes to read them against 0 and ±min_effect; g_z is the "
        f"Hedges-corrected mean difference divided by the sd of the differences (undefined, "
        f"–, with 2 seeds). p is the raw p-value, p adj. the "
        f"{CORRECTION_NAMES[a.correction]}-corrected p-value; the correction family is the "
        f"{m} comparison{'s' * (m != 1)} below with at least 2 paired seeds "
        f"({len(rep.comparisons)} planned), including any whose p is undefined (counted, "
        f"conservatively). Significant: p adj. < alpha = {a.alpha:g}. A comparison that is "
        f"not significant is inconclusive when its CI includes differences of min_effect "
        f"({u.value(a.min_effect)} {u.difference}) or more, and its CI lies within "
        f"±min_effect otherwise; not significant is not evidence of no difference."
    )


def _omnibus_lines(rep: Report) -> list[str]:
    a = rep.protocol.analysis
    u = rep.units
    om = rep.omnibus
    if om is None:
        note = rep.omnibus_note or "no omnibus test"
        return [note[0].upper() + note[1:] + "."]
    k, n = om["k"], om["n_seeds_common"]
    sig = (not missing(om["p_friedman"])) and om["p_friedman"] < a.alpha
    lines = [
        f"Over all {k} roles with results, on the {n} seed{'s' * (n != 1)} every one of "
        f"them has: Friedman chi-square = {fmt_num(om['q'])} (df = {k - 1}), "
        f"p = {format_p(om['p_friedman'], a.alpha)} "
        f"({'' if sig else 'not '}significant at alpha = {a.alpha:g}); "
        f"Kendall's W = {fmt_num(om['w_kendall'], 3)} (0: no agreement of the seeds on the "
        "ranking, 1: every seed ranks the roles alike).",
        f"Nemenyi critical difference of mean ranks at alpha = {a.alpha:g}: "
        f"CD = {fmt_num(om['cd'], 3)} (q_alpha = {fmt_num(om['q_alpha'], 3)}); two roles whose "
        f"mean ranks differ by more than CD differ significantly. Rank 1 = lowest "
        f"{u.name} on a seed. The Nemenyi post-hoc test applies only when the Friedman "
        f"test rejects (Demšar 2006)"
        + (
            "; it does here."
            if sig
            else "; Friedman does not reject here, so the CD and its diagram are "
            "descriptive only: no pair of roles is shown to differ."
        ),
        f"Repeated-measures ANOVA: F({fmt_num(om['df1'], 0)}, {fmt_num(om['df2'], 0)}) = "
        f"{fmt_num(om['F'])}, p = {format_p(om['p_anova'], a.alpha)}; "
        f"Greenhouse-Geisser epsilon = {fmt_num(om['gg_epsilon'], 3)}, "
        f"corrected p = {format_p(om['p_anova_gg'], a.alpha)} ({anova_reading(om)}).",
    ]
    return lines + [f"Note: {x}." for x in om["notes"]]


def anova_reading(om: dict[str, Any]) -> str:
    """Whether the RM-ANOVA applies here, and why not when it does not."""
    shapiro = om.get("shapiro_p") or {}
    if om["anova_applicable"]:
        return (
            f"applicable: Shapiro-Wilk does not reject normality at {NORMALITY_ALPHA:g} for "
            f"any role's differences from {om['groups'][0]}"
        )
    if missing(om["F"]):
        why = "the F statistic is undefined (see the note below)"
    elif om["n_seeds_common"] < 3:
        why = "normality of the differences cannot be checked with fewer than 3 seeds"
    else:
        rejected = [(d, p) for d, p in shapiro.items() if p is not None and p < NORMALITY_ALPHA]
        constant = [d for d, p in shapiro.items() if p is None]
        parts = []
        if rejected:
            parts.append(
                f"Shapiro-Wilk rejects the normality it assumes at {NORMALITY_ALPHA:g} for "
                + ", ".join(f"{d} (p = {format_p(p)})" for d, p in rejected)
            )
        if constant:
            parts.append(f"{', '.join(constant)} constant, so normality cannot be checked")
        why = "; ".join(parts) or "its assumptions could not be checked"
    return f"not applicable here: {why}; rely on Friedman"


def _power_words(rep: Report) -> str:
    a = rep.protocol.analysis
    u = rep.units
    m = max(rep.family_size, 1)
    planned = a.alpha / m if a.correction != "none" and m > 1 else a.alpha
    level = (
        f"alpha / {m} = {planned:.4g} (the {CORRECTION_NAMES[a.correction]} correction over "
        f"the {m} comparisons of the family; "
        + (
            "conservative for Holm's later steps)"
            if a.correction == "holm"
            else "conservative for Benjamini-Hochberg)"
            if a.correction == "bh"
            else "Bonferroni's level)"
        )
        if planned != a.alpha
        else f"alpha = {a.alpha:g}"
    )
    floor = (
        "The t-test's p has no floor (it reaches any value above 0 given enough evidence), "
        "so the table has no smallest-p column."
        if a.test == "t"
        else f"The last column is the smallest p-value the {TEST_WORDS[a.test]} can reach "
        f"with n seeds (raw; the corrected one is at least {m} times larger under Holm and "
        "Bonferroni); the seeds needed are raised until that smallest p falls below the "
        "planned level."
    )
    return (
        f"For each tested comparison: the sd of the seed-wise differences at the current n, "
        f"the seeds the {TEST_WORDS[a.test]} needs to detect the protocol's smallest effect "
        f"of interest (min_effect = {u.value(a.min_effect)} {u.difference}) with {POWER:.0%} "
        f"power at {level}, the same for the comparison alone at alpha = {a.alpha:g}, the "
        f"minimal detectable effect (MDE) with {POWER:.0%} power at the current n and the "
        f"power the current n has for min_effect (both at the planned level). {floor} "
        f"The power of the {TEST_WORDS[a.test]} comes from {power_method(a.test)}. Every "
        f"number treats the sd as known; with fewer than {PILOT_MIN_SEEDS} seeds it is not, "
        f"and a warning below says how far off it may be and what planning for its upper "
        f"bound needs."
    )
