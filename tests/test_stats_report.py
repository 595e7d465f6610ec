"""What the report says about the statistics' known limits (issue 15, points 4 and 5): the
power section plans the protocol's test with its own power and warns about a small pilot,
and the BCa interval carries the coverage the project's calibration found at its n.

Built on the synthetic studies of tests/test_report.py (no training)."""

from __future__ import annotations

import re

from study.analysis.stats.calibration import bca_coverage
from tests.test_report import markdown_of, protocol, section, synthetic


def test_power_section_uses_the_tests_own_power_and_warns_about_a_small_pilot():
    p = protocol(5, test="wilcoxon")
    power = section(markdown_of(p, synthetic(p)), "## Power and seeds")
    assert "the seeds the Wilcoxon signed-rank test needs" in power
    assert "Wilcoxon signed-rank test's own decision rule simulated on 10,000 studies" in power
    assert "the pilot has 5 paired seeds (fewer than 10): the sd of A - B is uncertain" in power
    assert "--sd-confidence 0.8" in power
    ten = protocol(10)
    assert "the pilot has" not in section(markdown_of(ten, synthetic(ten)), "## Power and seeds")


def test_bca_interval_is_labelled_with_its_calibrated_coverage():
    p = protocol(5)
    details = section(markdown_of(p, synthetic(p)), "### Test details")
    coverage = bca_coverage(5)
    assert coverage is not None and coverage < 0.9
    labels = re.findall(r"\(calibrated coverage (\d+)%\)", details)
    assert labels and set(labels) == {f"{100 * coverage:.0f}"}


def test_a_monte_carlo_permutation_p_shows_its_standard_error_in_the_details():
    # Issue 15: above the exact limit (2^16 sign vectors) the permutation p is Monte Carlo
    # "with the Monte Carlo standard error of p shown in the details"; the details table
    # said "0.0012 (MC)" and the standard error was only in the notes of the permutation
    # test, which the report shows when it is the primary test.
    p = protocol(20)
    details = section(markdown_of(p, synthetic(p)), "### Test details")
    shown = re.findall(r"\(MC, standard error (\d\.\d+(?:e-\d+)?)\)", details)
    assert shown, details
    assert all(0 < float(se) < 0.01 for se in shown)
