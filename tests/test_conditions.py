"""Protocols of several conditions: expansion, overrides, fingerprints and the messages for
bad input (study/conditions.py)."""

from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli import app
from study.conditions import load_condition, load_study, parse_study, study_dir
from study.errors import UserInputError
from study.plan import expand
from study.protocol import load_protocol, parse_protocol

BASE = """
[study]
name = "grid"
seeds = 3

[data]
dataset = "digits"
val_size = 0.15
augmentation = "none"

[train]
epochs = 2
batch_size = 64
lr = 0.05
schedule = "cosine"
device = "cpu"

[teacher]
arch = "mlp"
kwargs = { hidden = [32], dropout = 0.1 }

[[arms]]
name = "ban"
loss = "ban"
generations = 2
ensemble = true

[[arms]]
name = "kd"
arch = "mlp"
kwargs = { hidden = [16] }
loss = { name = "kd", temperature = 4.0, alpha = 0.9 }

[analysis]
contrasts = [["ban/gen1", "teacher"]]
"""

LISTED = (
    BASE
    + """
[[conditions]]
name = "narrow"

[[conditions]]
name = "wide"
description = "a wider teacher"
teacher = { kwargs = { hidden = [128] } }
train = { lr = 0.02 }
seeds = [7, 8]

[[conditions]]
name = "cnn"
teacher = { arch = "small_cnn" }
arms = { kd = { arch = "same" } }
"""
)

GRID = (
    BASE
    + """
[[grid.teacher]]
name = "mlp32"
teacher = { kwargs = { hidden = [32] } }

[[grid.teacher]]
name = "mlp64"
teacher = { kwargs = { hidden = [64] } }

[[grid.recipe]]
name = "lr05"
train = { lr = 0.05 }

[[grid.recipe]]
name = "lr02"
train = { lr = 0.02 }
"""
)


def parse(text: str):
    return parse_study(textwrap.dedent(text), source="grid.toml")


def refused(text: str) -> UserInputError:
    with pytest.raises(UserInputError) as e:
        parse(text)
    return e.value


def test_listed_conditions_expand_into_one_protocol_each_with_its_overrides() -> None:
    study = parse(LISTED)
    assert study.has_conditions and study.names == ["narrow", "wide", "cnn"]
    narrow, wide, cnn = study.protocols
    assert [p.condition for p in study.protocols] == ["narrow", "wide", "cnn"]
    assert narrow.teacher.kwargs == {"hidden": [32], "dropout": 0.1}
    # a section's keys are replaced one by one; a table (kwargs) whole
    assert wide.teacher.kwargs == {"hidden": [128]} and wide.teacher.arch == "mlp"
    assert wide.train.lr == 0.02 and wide.train.epochs == 2
    assert wide.seeds == [7, 8] and narrow.seeds == [0, 1, 2]
    # a new architecture starts from no kwargs; "same": the teacher's architecture
    assert cnn.teacher.arch == "small_cnn" and cnn.teacher.kwargs == {}
    kd = cnn.arm("kd")
    assert kd.arch is None and kd.kwargs is None
    assert expand(cnn).role("kd/gen1").arch == "small_cnn"
    assert study.conditions[1].description == "a wider teacher"
    # the analysis and the roles are the same in every condition
    assert {tuple(p.role_keys) for p in study.protocols} == {tuple(narrow.role_keys)}
    assert all(p.analysis == narrow.analysis for p in study.protocols)


def test_a_grid_is_the_product_of_its_axes_named_by_joining_the_levels() -> None:
    study = parse(GRID)
    assert study.names == ["mlp32+lr05", "mlp32+lr02", "mlp64+lr05", "mlp64+lr02"]
    p = study.protocol("mlp64+lr02")
    assert p.teacher.kwargs == {"hidden": [64]} and p.train.lr == 0.02
    assert "grid (teacher[1], recipe[1])" == study.conditions[3].where


def test_the_condition_is_in_every_fingerprint_and_in_the_role_config() -> None:
    study = parse(LISTED)
    narrow = study.protocols[0]
    plain = parse_protocol(
        textwrap.dedent(BASE).replace('contrasts = [["ban/gen1", "teacher"]]', "")
    )
    a = expand(narrow).fingerprints("data")
    b = expand(plain).fingerprints("data")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)  # the same networks, but the condition's own runs
    assert all(r.config()["condition"] == "narrow" for r in expand(narrow).roles)
    assert all("condition" not in r.config() for r in expand(plain).roles)
    assert expand(narrow).role("teacher").params()["condition"] == "narrow"


def test_a_protocol_without_conditions_loads_as_it_always_did(tmp_path: Path) -> None:
    for path in sorted(glob.glob("protocols/*.toml")):
        study = load_study(path)
        if study.has_conditions:
            continue
        old = load_protocol(path)
        assert study.protocols == (old,) and old.condition is None
        assert expand(study.protocols[0]).fingerprints("x") == expand(old).fingerprints("x")
        assert study_dir(Path("results"), old) == Path("results") / old.study.name


def test_every_shipped_protocol_of_several_conditions_validates() -> None:
    shipped = {p: load_study(p) for p in sorted(glob.glob("protocols/*.toml"))}
    grids = {p: s for p, s in shipped.items() if s.has_conditions}
    assert {Path(p).name for p in grids} >= {"ban_grid_digits.toml", "ban_table1_cifar100.toml"}
    table1 = grids["protocols/ban_table1_cifar100.toml"]
    assert table1.names == ["wrn-28-1", "wrn-28-2", "wrn-28-5", "wrn-28-10", "densenet-bc-112-33"]
    dense = table1.protocol("densenet-bc-112-33")
    assert dense.teacher.kwargs == {"depth": 112, "growth_rate": 33}
    assert (dense.train.epochs, dense.train.batch_size, dense.train.milestones) == (
        300,
        64,
        [150, 225],
    )
    assert expand(dense).role("ban/gen3").arch == "densenet_bc"


def test_load_condition_gives_one_condition_and_names_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(LISTED))
    assert load_condition(path, "wide").condition == "wide"
    with pytest.raises(UserInputError, match="no condition 'nope'; conditions: narrow, wide, cnn"):
        load_condition(path, "nope")
    with pytest.raises(UserInputError, match="declares 3 conditions: name one"):
        load_condition(path, None)


A = '[[conditions]]\nname = "a"\n'
B = '[[conditions]]\nname = "b"\n'


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        (A + A + "teacher = { kwargs = { hidden = [9] } }", "conditions[1] ('a').name", "twice"),
        (A, "conditions", "at least 2"),
        (A + "model = 3\n" + B, "conditions[0] ('a').model", "unknown key 'model'"),
        (
            A + "arms = { ban = { generations = 3 } }\n" + B,
            "conditions[0] ('a').arms.ban.generations",
            "same roles",
        ),
        (A + 'arms = { nope = { arch = "mlp" } }\n' + B, "conditions[0] ('a').arms.nope", "no arm"),
        (A.replace('"a"', '"a b"') + B, "conditions[0] ('a b').name", "letters, digits"),
        (A.replace('"a"', '".."') + B, "conditions[0] ('..').name", "collide"),
        (A.replace('"a"', '"figures"') + B, "conditions[0] ('figures').name", "collide"),
        (A.replace('"a"', '"report.md"') + B, "conditions[0] ('report.md').name", "collide"),
        (
            A + B + "teacher = { kwargs = { hidden = [0] } }",
            "conditions[1] ('b').teacher",
            "hidden=[0] is not allowed",
        ),
        (A + B + "seeds = [4, 5]", "conditions[1] ('b')", "counted twice"),
        (A + B + "train = { epochs = 0 }", "conditions[1] ('b').train.epochs", "equal to 1"),
        ("[grid]\n" + A, "grid", "not both"),
        (
            '[[grid.x]]\nname = "a"\ntrain = { lr = 0.1 }\n'
            '[[grid.y]]\nname = "b"\ntrain = { lr = 0.2 }',
            "grid (x[0], y[0])",
            "both set train.lr",
        ),
    ],
)
def test_bad_conditions_are_refused_naming_the_field(extra: str, field: str, words: str) -> None:
    e = refused(BASE + "\n" + extra)
    assert e.field == field and e.source == "grid.toml"
    assert words in e.reason


def test_tuning_is_refused_with_conditions() -> None:
    text = LISTED + '\n[tune]\narm = "kd"\ntemperature = { low = 1.0, high = 8.0 }\n'
    e = refused(text)
    assert e.field == "tune" and "not supported with conditions" in e.reason


def test_a_contrast_must_name_roles_of_the_protocol() -> None:
    e = refused(LISTED.replace('["ban/gen1", "teacher"]', '["ban/gen9", "teacher"]'))
    assert e.field == "analysis.contrasts[0]" and "'ban/gen9' is not a role" in e.reason


def test_contrasts_without_conditions_and_conditions_in_one_condition_commands() -> None:
    with pytest.raises(UserInputError) as e:
        parse_protocol(textwrap.dedent(BASE), source="one.toml")
    assert e.value.field == "analysis.contrasts" and "pooled across conditions" in e.value.reason
    with pytest.raises(UserInputError) as e:
        parse_protocol(textwrap.dedent(LISTED), source="grid.toml")
    assert e.value.field == "conditions" and "one condition" in e.value.reason


def test_cli_validates_each_condition_and_refuses_tuning_one(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(textwrap.dedent(LISTED))
    runner = CliRunner()
    out = runner.invoke(app, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    for name in ("narrow", "wide", "cnn"):
        assert f"condition '{name}'" in out.output
    assert "3 conditions (narrow, wide, cnn): 40 runs in total" in out.output.replace("\n", " ")
    out = runner.invoke(app, ["tune", str(path)])
    assert out.exit_code == 2 and "declares conditions" in out.output
