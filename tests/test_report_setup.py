"""The report's Setup section and its comparison families: what was compared, and the
questions a knowledge-distillation reviewer asks (issue 16)."""

from __future__ import annotations

import re

import pytest

from study.analysis.report import build_report, comparison_pairs, render_markdown
from study.errors import UserInputError
from study.plan import expand
from study.protocol import load_protocol, parse_protocol
from tests.test_report import (  # noqa: F401 - fixed_environment is an autouse fixture
    PROTOCOL,
    cells,
    fixed_environment,
    protocol,
    row_of,
    section,
    synthetic,
)


def with_run_info(c, *, pack: int = 5):
    """The synthetic results as the tracker gives them: each run's start and end (ms), its
    device and pack size, and the data facts the runs record."""
    runs = c.runs.copy()
    start = {r: 1_000_000 * i for i, r in enumerate(dict.fromkeys(runs["role"]))}
    runs["start_time"] = runs["role"].map(start) + runs["seed"] // pack * 4_000
    runs["end_time"] = runs["start_time"] + 3_000  # each pack of 5 seeds: 3 s, 1 s apart
    runs["device"] = "cpu"
    runs["pack_size"] = pack
    c.runs = runs
    c.meta["data_facts"] = {
        "train": 1222,
        "val": 216,
        "test": 359,
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 8,
    }
    return c


def test_setup_gives_each_role_its_architecture_parameters_loss_recipe_and_wall_time() -> None:
    text = PROTOCOL.format(seeds=10, ensemble="true", test="t").replace(
        'loss = { name = "kd", temperature = 4.0, alpha = 0.9 }',
        'arch = "mlp"\nkwargs = { hidden = [8] }\n'
        'loss = { name = "kd", temperature = 4.0, alpha = 0.9 }\ntrain = { lr = 0.05 }',
    )
    p = parse_protocol(text, source="synthetic.toml")
    md = render_markdown(build_report(p, with_run_info(synthetic(p))), [])
    setup = section(md, "## Setup")
    # 8x8 digits, 10 classes: mlp [16] = 64*16 + 16 + 16*10 + 10 weights, mlp [8] likewise
    teacher = cells(row_of(setup, "teacher"))
    assert teacher[1:4] == ["mlp (hidden = [16])", "1,210", "labels only"]
    assert teacher[4] == "ce (label_smoothing = 0)" and teacher[5] == "as [train]"
    kd = cells(row_of(setup, "kd/gen1"))
    assert kd[1:4] == ["mlp (hidden = [8])", f"{64 * 8 + 8 + 8 * 10 + 10:,}", "teacher"]
    assert kd[4] == "kd (temperature = 4, alpha = 0.9)"
    assert kd[5] == "lr = 0.05 (not 0.1)"  # the recipe where it differs from [train]
    assert cells(row_of(setup, "ban/gen2"))[3] == "ban/gen1"
    ens = cells(row_of(setup, "ban/ens2"))
    assert ens[2] == "2,420 (members)" and ens[3] == "ban/gen1, ban/gen2"
    # two packs of 5 seeds, 3 s each, 1 s apart: 6 s of wall time, not 10 x 3 s
    assert cells(row_of(setup, "teacher"))[6] == "6.0 s (packs of 5)"
    assert "1,222 training, 216 validation (val_size = 0.1" in setup
    assert "359 test examples; 10 classes, inputs 1 x 8 x 8" in setup
    assert "augmentation of the training batches: none" in setup
    assert "10 seeds (0-9) for every role" in setup
    assert "Trained on cpu (50 runs)" in setup
    assert "[train]: 10 epochs, batch size 128, optimizer = sgd, lr = 0.1" in setup
    assert "precision fp32" in setup
    assert "kd: Knowledge distillation (Hinton, Vinyals & Dean 2015" in setup


TUNED = """
[study]
name = "synthetic"
seeds = 4

[teacher]
arch = "mlp"
kwargs = { hidden = [16] }

[[arms]]
name = "ban"
loss = "ban"
generations = 2
ensemble = true

[[arms]]
name = "kd"
loss = { name = "kd", temperature = "tuned", alpha = 0.9 }

[tune]
arm = "kd"
temperature = { low = 1.0, high = 10.0 }
"""


def test_tuned_values_say_so_with_the_tuning_result_file() -> None:
    p = parse_protocol(TUNED, source="tuned.toml")
    c = synthetic(expand(p, tuned={"temperature": 3.25}).protocol, noise=0.002)
    c.meta.update(tuned={"temperature": 3.25}, tuned_file="results/synthetic/tuned.json")
    md = render_markdown(build_report(p, c), [])
    setup = section(md, "## Setup")
    assert cells(row_of(setup, "kd/gen1"))[4] == "kd (temperature = 3.25 [tuned], alpha = 0.9)"
    assert "[tuned]: chosen by study tune on the validation split" in setup
    assert "(results/synthetic/tuned.json); temperature = 3.25." in setup


def test_runs_that_do_not_record_the_data_say_what_is_unknown() -> None:
    p = protocol(4)
    md = render_markdown(build_report(p, synthetic(p)), [])
    setup = section(md, "## Setup")
    assert "split sizes not recorded by these runs" in setup
    assert cells(row_of(setup, "teacher"))[6] == "–"  # no start and end times
    assert "(–: these results record no run times)" in setup


# --------------------------------------------------------------------------------------
# comparison families
# --------------------------------------------------------------------------------------


def families(p) -> dict[tuple[str, str], str]:
    return {(a, b): f for a, b, f in comparison_pairs(expand(p), p.analysis)}


def test_each_ensemble_is_compared_with_its_last_member_and_the_teacher() -> None:
    p = protocol(6)
    asked = families(p)
    assert asked[("ban/ens2", "ban/gen2")] == "ensemble vs its last member"
    assert asked[("ban/ens2", "teacher")] == "vs teacher"
    alone = p.model_copy(
        update={"analysis": p.analysis.model_copy(update={"comparisons": ["ensembles"]})}
    )
    assert families(alone) == {
        ("ban/ens2", "ban/gen2"): "ensemble vs its last member",
        ("ban/ens2", "teacher"): "ensemble vs teacher",
    }
    md = render_markdown(build_report(p, synthetic(p)), [])
    assert row_of(section(md, "## Comparisons"), "ban/ens2", "ban/gen2")
    assert "- **ban/ens2 is higher than ban/gen2**: ban/ens2 - ban/gen2 = +" in md


def test_declared_pairs_form_their_own_family_and_are_asked_once() -> None:
    text = PROTOCOL.format(seeds=6, ensemble="true", test="t").replace(
        "min_effect = 0.005", 'min_effect = 0.005\npairs = [["kd/gen1", "ban/gen1"]]'
    )
    p = parse_protocol(text, source="pairs.toml")
    asked = comparison_pairs(expand(p), p.analysis)
    mine = [(a, b, f) for a, b, f in asked if {a, b} == {"kd/gen1", "ban/gen1"}]
    assert mine == [("kd/gen1", "ban/gen1", "declared pair")]  # not again under "arms"
    rep = build_report(p, synthetic(p))
    assert rep.family_size == len(asked) == 7  # in the one correction family
    md = render_markdown(rep, [])
    assert "declared pairs: kd/gen1 - ban/gen1" in md
    assert "declared pair" in row_of(section(md, "## Comparisons"), "kd/gen1", "ban/gen1")


@pytest.mark.parametrize(
    "pairs,field,words",
    [
        ('[["kd/gen1", "small/gen1"]]', "analysis.pairs[0]", "'small/gen1' is not a role"),
        ('[["kd/gen1", "kd/gen1"]]', "analysis.pairs[0]", "compares 'kd/gen1' with itself"),
        ('[["kd/gen1"]]', "analysis.pairs[0]", "a pair is two role names"),
        (
            '[["kd/gen1", "teacher"], ["teacher", "kd/gen1"]]',
            "analysis.pairs[1]",
            "repeats analysis.pairs[0]",
        ),
        ('[["kd/gen1", 3]]', "analysis.pairs[0][1]", "string"),
    ],
)
def test_bad_declared_pairs_name_the_file_and_the_field(pairs, field, words) -> None:
    text = PROTOCOL.format(seeds=3, ensemble="true", test="t") + f"pairs = {pairs}\n"
    with pytest.raises(UserInputError) as e:
        parse_protocol(text, source="bad.toml")
    assert e.value.field == field and words in e.value.reason, e.value.message
    assert "bad.toml" in e.value.message


def test_role_keys_of_the_protocol_are_the_plans() -> None:
    for path in ("protocols/ban_digits.toml", "protocols/ban_cifar100.toml"):
        p = load_protocol(path)
        assert p.role_keys == [r.key for r in expand(p).roles]


SHIPPED = ["ban_digits", "ban_cifar100", "densenet_to_resnet_cifar100", "hinton_mnist"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_protocols_train_each_distilled_architecture_without_distillation(name) -> None:
    """Where an arm's student differs from the teacher, "does KD help?" needs the same
    student trained on labels alone, and a declared pair comparing the two."""
    p = load_protocol(f"protocols/{name}.toml")
    plan = expand(p)
    teacher = plan.role("teacher")
    declared = {frozenset(pair) for pair in p.analysis.pairs}
    for role in plan.roles:
        if role.kind != "student" or role.generation != 1 or role.loss == "ce":
            continue
        if (role.arch, role.arch_kwargs) == (teacher.arch, teacher.arch_kwargs):
            continue  # born again: the teacher is the same network without distillation
        baselines = [
            r.key
            for r in plan.roles
            if r.loss == "ce"
            and r.kind == "student"
            and r.train == role.train
            and (r.arch, r.arch_kwargs) == (role.arch, role.arch_kwargs)
        ]
        assert baselines, f"{name}: {role.key} has no same-architecture ce student"
        assert any(frozenset((role.key, b)) in declared for b in baselines), (name, role.key)


def test_adding_an_arm_changes_no_other_roles_fingerprint() -> None:
    """The shipped digits study with and without its label-only arm: the other (role, seed)
    fingerprints are equal, so runs already in a store are reused."""
    full = load_protocol("protocols/ban_digits.toml")
    text = open("protocols/ban_digits.toml").read()
    without = re.sub(r"\[\[arms\]\][^\[]*name = \"small\".*?(?=\n\[)", "", text, flags=re.S)
    without = without.replace('pairs = [["kd/gen1", "small/gen1"]]', "")
    assert 'name = "small"' not in without
    reduced = parse_protocol(without, source="reduced.toml")
    before = expand(reduced).fingerprints("identity")
    after = expand(full).fingerprints("identity")
    assert before and all(after[k] == v for k, v in before.items())
    assert set(after) - set(before) == {("small/gen1", s) for s in full.seeds}


def test_a_report_of_the_shipped_digits_study_asks_whether_kd_helps() -> None:
    p = load_protocol("protocols/ban_digits.toml")
    asked = families(p)
    assert asked[("kd/gen1", "small/gen1")] == "declared pair"
    assert asked[("ban/ens3", "ban/gen3")] == "ensemble vs its last member"
