"""Protocol validation: every bad input names the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.conditions import load_study
from study.errors import UserInputError
from study.protocol import load_protocol, parse_protocol

ROOT = Path(__file__).resolve().parent.parent


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("path", sorted((ROOT / "protocols").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_protocols_are_valid(path: Path) -> None:
    for p in load_study(path).protocols:  # one, or one per condition
        assert p.study.name == path.stem
        assert len(p.sha256) == 64


def test_ban_cifar100_matches_the_paper_recipe() -> None:
    p = load_protocol(ROOT / "protocols" / "ban_cifar100.toml")
    t = p.train
    assert (t.optimizer, t.nesterov, t.momentum, t.lr) == ("sgd", True, 0.9, 0.1)
    assert (t.weight_decay, t.batch_size, t.epochs) == (5e-4, 128, 200)
    assert (t.schedule, t.milestones, t.gamma) == ("multistep", [60, 120, 160], 0.2)
    assert (p.teacher.arch, p.teacher.kwargs["depth"], p.teacher.kwargs["widen_factor"]) == (
        "wrn",
        28,
        1,
    )
    assert len(p.seeds) == 50 and p.data.augmentation == "crop_flip"
    assert {a.name: a.loss.name for a in p.arms} == {"ban": "ban", "cwtm": "cwtm", "dkpp": "dkpp"}
    assert p.arm("ban").generations == 3 and p.arm("ban").ensemble


def test_seeds_given_as_count_or_list(tiny_protocol_text: str) -> None:
    assert parse_protocol(tiny_protocol_text).seeds == [0, 1, 2]
    listed = _replace(tiny_protocol_text, "seeds = 3", "seeds = [7, 3, 11]")
    assert parse_protocol(listed).seeds == [7, 3, 11]


def test_loss_as_string_or_table(tiny_protocol_text: str) -> None:
    p = parse_protocol(tiny_protocol_text)
    assert p.arm("ban").loss.name == "ban" and p.arm("ban").loss.params == {}
    assert p.arm("kd").loss.params == {"temperature": 4.0, "alpha": 0.9}


def test_arm_without_arch_is_born_again(tiny_protocol_text: str) -> None:
    from study.protocol import resolved_arch

    p = parse_protocol(tiny_protocol_text)
    assert resolved_arch(p, p.arm("ban")) == ("mlp", {"hidden": [32]})
    assert resolved_arch(p, p.arm("kd")) == ("mlp", {"hidden": [16]})


BAD = [
    # (old, new, field named, words in the reason)
    ("[study]", "[study", None, "malformed TOML"),
    ("epochs = 2", "epochs = 2\nfoo = 1", "train.foo", "unknown key 'foo'; allowed keys: epochs"),
    (
        'arch = "mlp"\nkwargs = { hidden = [16] }',
        'arch = "resnet9000"',
        "arms[1] ('kd')",
        "unknown model 'resnet9000'; allowed models:",
    ),
    ('loss = "ban"', 'loss = "nope"', "arms[0] ('ban').loss.name", "unknown loss 'nope'; allowed:"),
    ("alpha = 0.9", "alpha = 1.5", "arms[1] ('kd').loss.alpha", "alpha must be in [0, 1], got 1.5"),
    (
        "temperature = 4.0",
        "temperature = 0.0",
        "arms[1] ('kd').loss.temperature",
        "temperature must be > 0",
    ),
    (
        "temperature = 4.0",
        "temperature = -2.0",
        "arms[1] ('kd').loss.temperature",
        "temperature must be > 0",
    ),
    ("epochs = 2", "epochs = -3", "train.epochs", "greater than or equal to 1"),
    ("seeds = 3", "seeds = 0", "study.seeds", "count >= 1"),
    ("seeds = 3", "seeds = []", "study.seeds", "non-empty list"),
    ("seeds = 3", "seeds = [1, 1]", "study.seeds", "distinct"),
    ('dataset = "digits"', 'dataset = "imagenet"', "data.dataset", "allowed: cifar10, cifar100"),
    (
        "kwargs = { hidden = [32] }",
        "kwargs = { hidden = [32], depth = 3 }",
        "teacher",
        "does not accept kwarg 'depth'",
    ),
    (
        'loss = "ban"',
        'loss = "ban"\ntrain = { lr = -1 }',
        "arms[0] ('ban').train.lr",
        "greater than 0",
    ),
    (
        'loss = "ban"',
        'loss = "ban"\ntrain = { lrr = 1 }',
        "arms[0] ('ban').train.lrr",
        "unknown key 'lrr'",
    ),
    (
        "temperature = 4.0, alpha",
        "tempreature = 4.0, alpha",
        "arms[1] ('kd').loss.tempreature",
        "unknown parameter",
    ),
    ('name = "tiny"', 'nme = "tiny"', "study.nme", "unknown key 'nme'"),
    ('name = "ban"', 'name = "kd"', None, "arm names must be unique"),
    ('schedule = "cosine"', 'schedule = "cosine"\nmilestones = [5]', "train", "milestones"),
    (  # epochs = 2: a milestone at 2 would lower the lr after the last epoch
        'schedule = "cosine"',
        'schedule = "multistep"\nmilestones = [1, 2]',
        "train",
        "milestones must lie in [1, epochs - 1 = 1]",
    ),
    ('device = "cpu"', 'device = "tpu"', "train.device", "should match pattern"),
    (
        "[study]",
        "[execution]\ncheckpoint_every_s = -1\n\n[study]",
        "execution.checkpoint_every_s",
        "greater than or equal to 0",
    ),
    (
        "[study]",
        '[execution]\nlog_every_s = "often"\n\n[study]',
        "execution.log_every_s",
        "valid number",
    ),
    # TOML is typed: no coercion of booleans or strings into numbers, no inf or nan
    ("seeds = 3", "seeds = true", "study.seeds", "valid integer"),
    ("seeds = 3", 'seeds = "3"', "study.seeds", "valid integer"),
    ("seeds = 3", "seeds = [true, 5]", "study.seeds", "valid integer"),
    ("val_size = 0.15", "val_size = true", "data.val_size", "valid number"),
    ("val_size = 0.15", "val_size = 1.0", "data.val_size", "written without a decimal point (1)"),
    ("[study]", '[execution]\npack = "many"\n\n[study]', "execution.pack", "integer or 'auto'"),
    ("seeds = 3", 'seeds = "3"', "study.seeds", "a valid integer or a valid list (got '3')"),
    ("val_size = 0.15", "val_size = 5000.0", "data.val_size", "float of 1 or more"),
    (
        'val_size = 0.15\naugmentation = "none"',
        'val_size = 0\naugmentation = "none"\n[analysis]\nmetric = "val_acc"',
        "analysis.metric",
        "val_size = 0 leaves none",
    ),
    ("lr = 0.05", "lr = inf", "train.lr", "finite number"),
    ("lr = 0.05", "lr = nan", "train.lr", "finite number"),
    (
        '{ name = "kd", temperature = 4.0',
        "{ temperature = 4.0",
        "arms[1] ('kd').loss",
        "needs a name",
    ),
    # the protocol's own bookkeeping is not a key a file may set
    ("[study]", 'sha256 = "abc"\n[study]', "sha256", "unknown key 'sha256'"),
    ("[study]", 'source = "x.toml"\n[study]', "source", "unknown key 'source'"),
]


@pytest.mark.parametrize("old,new,field,words", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_protocol_names_file_field_and_allowed(
    tmp_path: Path, tiny_protocol_text: str, old: str, new: str, field: str | None, words: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_replace(tiny_protocol_text, old, new))
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    err = info.value
    assert err.source == str(path)
    assert str(path) in err.message
    if field is not None:
        assert err.field == field
        assert f"field '{field}'" in err.message
    assert words in err.message


def test_missing_protocol_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        load_protocol(tmp_path / "absent.toml")


def test_protocol_is_immutable(tiny_protocol_text: str) -> None:
    p = parse_protocol(tiny_protocol_text)
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        p.train.epochs = 5  # type: ignore[misc]


TUNE = """
[tune]
arm = "kd"
temperature = { low = 1.0, high = 20.0, log = true }
alpha = { low = 0.1, high = 1.0 }
trials = 4
seeds = 2
"""


def test_tune_section_defaults_to_seeds_disjoint_from_evaluation(tiny_protocol_text) -> None:
    p = parse_protocol(tiny_protocol_text + TUNE)
    assert p.tune is not None and p.tune.seed_list == [1000, 1001]
    assert not set(p.tune.seed_list) & set(p.seeds)
    assert p.tune.direction == "maximize"


@pytest.mark.parametrize(
    "old,new,words",
    [
        ("seeds = 2", "seeds = [2, 1001]", "overlap the study's evaluation seeds [2]"),
        ("low = 0.1, high = 1.0", "low = 0.5, high = 0.5", "empty search range"),
        ("low = 1.0, high = 20.0, log = true", "low = 0.0, high = 2.0, log = true", "log-scale"),
        ('arm = "kd"', 'arm = "nope"', "is not an arm"),
        ('arm = "kd"', 'arm = "kd"\ngeneration = 2', "exceeds arm 'kd'"),
        ("low = 0.1, high = 1.0", "low = 0.5, high = 2.0", "leaves the values alpha may take"),
        ("low = 1.0, high = 20.0, log = true", "low = -1.0, high = 2.0", "temperature may take"),
        ("seeds = 2", "seeds = 2\nlr = { low = 0.0, high = 0.1 }", "learning rate must be > 0"),
    ],
)
def test_bad_tuning_setup_is_refused(tmp_path, tiny_protocol_text, old, new, words) -> None:
    path = tmp_path / "t.toml"
    path.write_text(tiny_protocol_text + TUNE.replace(old, new))
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    assert words in info.value.message and str(path) in info.value.message


def test_tuning_a_parameter_the_loss_lacks_is_refused(tmp_path, tiny_protocol_text) -> None:
    path = tmp_path / "t.toml"
    path.write_text(tiny_protocol_text + TUNE.replace('arm = "kd"', 'arm = "ban"'))
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    assert info.value.field == "tune.alpha" and "has no alpha" in info.value.message


def test_tuning_needs_a_validation_split(tmp_path, tiny_protocol_text) -> None:
    path = tmp_path / "t.toml"
    path.write_text(_replace(tiny_protocol_text, "val_size = 0.15", "val_size = 0") + TUNE)
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    assert info.value.field == "data.val_size" and "validation split" in info.value.message


def test_only_the_tuned_arm_may_take_tuned_values(tmp_path, tiny_protocol_text) -> None:
    """Values tuned for kd's loss must not reach another arm that also says "tuned"."""
    text = _replace(
        tiny_protocol_text, 'loss = "ban"', 'loss = { name = "ban", temperature = "tuned" }'
    )
    path = tmp_path / "t.toml"
    path.write_text(text + TUNE)
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    assert info.value.field == "arms[0] ('ban').loss.temperature"
    assert "tunes arm 'kd'" in info.value.message
    # and the plan gives tuned numbers to the [tune] arm only, whatever it is handed
    from study.plan import expand

    kd_tuned = _replace(tiny_protocol_text, "temperature = 4.0", 'temperature = "tuned"')
    plan = expand(parse_protocol(kd_tuned + TUNE), tuned={"temperature": 7.5})
    assert plan.role("kd/gen1").loss_params["temperature"] == 7.5
    untuned = expand(parse_protocol(kd_tuned + TUNE))
    assert plan.role("ban/gen1").loss_params == untuned.role("ban/gen1").loss_params


@pytest.mark.parametrize(
    "tune_change,field,words",
    [
        ("alpha = { low = 0.1, high = 1.0 }\n", "arms[1] ('kd').loss.alpha", "no range for it"),
        ('arm = "kd"', "tune.generation", "tune generation 1"),
    ],
)
def test_a_tuned_arm_must_be_tunable_as_declared(
    tmp_path, tiny_protocol_text, tune_change, field, words
) -> None:
    text = _replace(
        tiny_protocol_text, "temperature = 4.0, alpha = 0.9", 'temperature = 4.0, alpha = "tuned"'
    )
    text = _replace(text, '[[arms]]\nname = "kd"', '[[arms]]\nname = "kd"\ngenerations = 2')
    if tune_change.startswith("arm"):
        tune = TUNE.replace(tune_change, 'arm = "kd"\ngeneration = 2')
    else:
        tune = TUNE.replace(tune_change, "")
    path = tmp_path / "t.toml"
    path.write_text(text + tune)
    with pytest.raises(UserInputError) as info:
        load_protocol(path)
    assert info.value.field == field and words in info.value.message


def test_synthetic_dataset_options_reach_the_loader(tmp_path) -> None:
    from study.execute import load_study_data

    text = """
[study]
name = "synth"
seeds = 2
[data]
dataset = "synthetic"
val_size = 0.1
synthetic = { n_train = 64, n_test = 32, num_classes = 3, image_size = 8, channels = 1 }
[teacher]
arch = "mlp"
[[arms]]
name = "kd"
loss = "kd"
"""
    data = load_study_data(parse_protocol(text))
    assert data.num_classes == 3 and data.test_x.shape == (32, 1, 8, 8)
    assert len(data.train_x) + len(data.val_x) == 64
    for old, new in [
        ("channels = 1 }", "chanels = 1 }"),  # a misspelt option
        ('dataset = "synthetic"', 'dataset = "digits"'),  # options of another dataset
        ("image_size = 8", "image_size = 2"),  # below the 4x4 every network takes
        ("num_classes = 3", "num_classes = 1"),  # one class is no classification
    ]:
        path = tmp_path / "bad.toml"
        path.write_text(text.replace(old, new))
        with pytest.raises(UserInputError) as info:
            load_protocol(path)
        assert info.value.field == "data" and "synthetic" in info.value.message


@pytest.mark.parametrize(
    ("option", "value"), [("image_size", 2), ("num_classes", 1), ("n_train", 0), ("seed", -1)]
)
def test_synthetic_loader_refuses_options_below_their_minimum(option, value) -> None:
    from study.data.sources import load_data

    with pytest.raises(UserInputError) as info:
        load_data("synthetic", root="data", synthetic={option: value})
    assert info.value.field == f"synthetic.{option}" and str(value) in info.value.message


def test_validate_lists_every_problem_of_a_protocol(tmp_path: Path) -> None:
    """A misspelt section and a bad value: both said in one run, none left as "1 more"."""
    from typer.testing import CliRunner

    from study.cli import app

    text = (Path(__file__).resolve().parent.parent / "protocols" / "ban_digits.toml").read_text()
    text = text.replace("[teacher]", "[teachr]").replace("batch_size = 64", 'batch_size = "big"')
    (tmp_path / "p.toml").write_text(text)
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "p.toml")])
    assert res.exit_code == 2
    message = " ".join(res.output.split())
    assert "more problem" not in message
    assert "field 'teachr': unknown key 'teachr'" in message
    assert "field 'train.batch_size': Input should be a valid integer (got 'big')" in message
    assert "field 'teacher': required field is missing" in message
