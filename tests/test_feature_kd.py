"""Feature-based distillation in the harness: taps of every architecture, the protocol's
``features`` field and its validation, fingerprints, training in the loop with connectors,
FitNets' hint stage, resume bit for bit, and a small study that trains and reports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from study import hooks
from study.checkpoint import CheckpointSlot
from study.cli import app
from study.engine import init_model
from study.errors import UserInputError
from study.features import LOOP_NOTE, build_feature_term
from study.models import create_model, model_names, resolve_model_kwargs
from study.models.taps import EMBEDDING, TapRecorder, tap_points, tap_shapes, tapped_archs
from study.pack import packable
from study.plan import expand
from study.protocol import load_protocol, parse_protocol
from study.train import train_role

CPU = torch.device("cpu")
PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
DIGITS = PROTOCOLS / "feature_kd_digits.toml"
CIFAR = PROTOCOLS / "feature_kd_cifar100.toml"

SMALL = {
    "wrn": {"depth": 10, "widen_factor": 1},
    "resnet_cifar": {"depth": 8},
    "densenet_bc": {"depth": 10, "growth_rate": 4},
    "small_cnn": {"channels": [4, 8], "hidden": 8},
    "mlp": {"hidden": [8, 6]},
    "resnet18": {},
    "densenet121": {},
    "mobilenet_v2": {"width_mult": 0.25},
}


def test_every_registered_architecture_has_taps_named_alike() -> None:
    assert tapped_archs() == model_names()
    assert set(SMALL) == set(model_names())
    for arch in model_names():
        model = create_model(arch, in_channels=3, num_classes=5, image_size=8, **SMALL[arch])
        names = list(tap_points(arch, model))
        stages = [n for n in names if n != EMBEDDING]
        assert names[-1] == EMBEDDING and stages == [f"stage{i}" for i in range(1, len(stages) + 1)]
        assert len(stages) >= 2, arch


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_taps_come_from_the_forward_pass_of_the_logits_and_change_nothing(arch) -> None:
    torch.manual_seed(0)
    model = create_model(arch, in_channels=3, num_classes=5, image_size=8, **SMALL[arch]).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        names = list(tap_points(arch, model))
        with TapRecorder(arch, model, names) as taps:
            logits = model(x)
        head = tap_points(arch, model)[EMBEDDING][0]
        assert torch.equal(plain, logits)  # hooks change nothing
        # the embedding is what the head turned into these logits
        assert torch.allclose(head(taps.values[EMBEDDING]), logits, atol=1e-6)
    shapes = tap_shapes(arch, SMALL[arch], in_channels=3, image_size=8, num_classes=5)
    assert {n: tuple(v.shape[1:]) for n, v in taps.values.items()} == shapes


def test_the_shipped_feature_protocols_validate_with_the_papers_taps() -> None:
    plan = expand(load_protocol(CIFAR))
    assert len(plan.seeds) == 15 and plan.protocol.train.milestones == [150, 180, 210]
    f = {r.arm: r.features for r in plan.roles if r.features}
    assert f["fitnet"]["student_taps"] == ["stage2"] and f["fitnet"]["connectors"] == ["conv1x1_bn"]
    assert f["at"]["student_taps"] == ["stage1", "stage2", "stage3"] and f["at"]["weight"] == 1e3
    assert f["sp"]["teacher_taps"] == ["stage3"] and f["sp"]["weight"] == 3000.0
    assert f["rkd"]["student_taps"] == ["embedding"]
    assert f["rkd"]["params"] == {"distance_weight": 25.0, "angle_weight": 50.0}
    assert all(
        x["teacher_kwargs"] == {"depth": 40, "widen_factor": 2, "dropout": 0.0} for x in f.values()
    )
    digits = expand(load_protocol(DIGITS))
    methods = {r.features["method"] for r in digits.roles if r.features}
    assert methods == {"fitnet", "at", "sp", "rkd"}
    assert not any(packable(r) for r in digits.roles if r.features)


def _with_arm(text: str, arm: str) -> str:
    return text.replace("[analysis]", arm + "\n[analysis]", 1)


AT_ARM = """
[[arms]]
name = "bad"
arch = "small_cnn"
kwargs = {{ channels = [8, 16], hidden = 32 }}
loss = "ce"
features = {features}
"""


@pytest.mark.parametrize(
    "features, field, words",
    [
        ('{ method = "at", student_taps = ["stage3"] }', "student_taps", "no tap 'stage3'"),
        (
            '{ method = "fitnet", student_taps = ["stage1"], teacher_taps = ["stage2"] }',
            "teacher_taps",
            "same spatial size",
        ),
        ('{ method = "rkd", student_taps = ["stage2"] }', "teacher_taps", "embeddings"),
        ('{ method = "hint" }', "method", "allowed: at, fitnet, rkd, sp"),
        ('{ method = "sp", temperature = 4.0 }', "temperature", "accepted"),
    ],
)
def test_a_protocol_pairing_taps_no_connector_can_join_is_refused_naming_file_and_field(
    tmp_path, features, field, words
) -> None:
    text = _with_arm(DIGITS.read_text(), AT_ARM.format(features=features))
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserInputError) as e:
        load_protocol(path)
    assert e.value.field == f"arms[8] ('bad').features.{field}"
    assert words in e.value.reason and str(path) in str(e.value)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "features" in res.output


def test_changing_a_feature_loss_retrains_only_its_arm() -> None:
    text = DIGITS.read_text()
    before = expand(parse_protocol(text, source="a.toml")).fingerprints("identity")
    changed = text.replace('method = "at", weight = 10.0, p = 2.0', 'method = "at", weight = 5.0')
    assert changed != text
    after = expand(parse_protocol(changed, source="b.toml")).fingerprints("identity")
    moved = {k[0] for k in before if before[k] != after[k]}
    assert moved == {"at/gen1"}
    # a tap changes it too
    tapped = text.replace(
        'method = "sp", weight = 100.0', 'method = "sp", student_taps = ["stage1"]'
    )
    again = expand(parse_protocol(tapped, source="c.toml")).fingerprints("identity")
    assert {k[0] for k in before if before[k] != again[k]} == {"sp/gen1"}


def test_adding_a_feature_arm_changes_no_other_roles_fingerprint() -> None:
    full = DIGITS.read_text()
    without = re.sub(r"\[\[arms\]\][^\[]*name = \"rkd\".*?(?=\n\[analysis)", "", full, flags=re.S)
    without = without.replace(', ["rkd/gen1", "ce/gen1"]', "")
    assert 'name = "rkd"' not in without
    before = expand(parse_protocol(without, source="r.toml")).fingerprints("identity")
    after = expand(parse_protocol(full, source="f.toml")).fingerprints("identity")
    assert before and all(after[k] == v for k, v in before.items())
    assert {k[0] for k in set(after) - set(before)} == {"rkd/gen1"}


# --- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(digits):
    """The digits protocol at 2 epochs, and a trained teacher for seeds 0 and 1."""
    text = DIGITS.read_text().replace("epochs = 6", "epochs = 2")
    plan = expand(parse_protocol(text, source="feature_kd_digits.toml"))
    teachers = {r.seed: r for r in train_role(plan.role("teacher"), [0, 1], digits, device=CPU)}
    models = {}
    for seed, result in teachers.items():
        role = plan.role("teacher")
        model = create_model(
            role.arch,
            in_channels=digits.in_channels,
            num_classes=digits.num_classes,
            image_size=digits.image_size,
            **resolve_model_kwargs(role.arch, role.arch_kwargs),
        )
        model.load_state_dict(result.state_dict)
        models[seed] = model
    return plan, models


def _train(plan, key, seeds, digits, teachers, slots=None):
    slots = slots if slots is None else {s: slots[s] for s in seeds}
    return train_role(
        plan.role(key), seeds, digits, teachers=teachers, device=CPU, checkpoints=slots
    )


def test_a_feature_role_trains_in_the_loop_and_says_why(trained, digits) -> None:
    plan, teachers = trained
    key = "fitnet/gen1"  # every method trains in test_a_small_feature_study_trains_and_reports
    results = _train(plan, key, [0, 1], digits, teachers)
    for r in results:
        assert r.failure is None and 0.1 < r.final["test_acc"] <= 1.0  # above chance
        assert r.teacher_cached is False  # the teacher ran in every step (features)
        assert LOOP_NOTE.format(method=plan.role(key).features["method"]) in r.notes
        plain = create_model(
            "small_cnn", in_channels=1, num_classes=10, image_size=8, channels=[8, 16], hidden=32
        )
        assert set(r.state_dict) == set(plain.state_dict())  # no connector in the model
    assert not torch.equal(
        results[0].state_dict["features.0.weight"], results[1].state_dict["features.0.weight"]
    )


def test_a_feature_term_changes_the_training(trained, digits) -> None:
    plan, teachers = trained
    ce = _train(plan, "ce/gen1", [0], digits, teachers)[0]
    at = _train(plan, "at/gen1", [0], digits, teachers)[0]
    assert ce.history[0]["train_loss"] != at.history[0]["train_loss"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "key",
    [
        "fitnet/gen1",  # a connector with BatchNorm and its momenta
        "rkd/gen1",
        pytest.param("at/gen1", marks=pytest.mark.slow),  # the same path as rkd's, on maps
        pytest.param("sp/gen1", marks=pytest.mark.slow),
    ],
)
def test_a_feature_role_interrupted_mid_epoch_resumes_bit_for_bit(
    trained, digits, tmp_path, monkeypatch, key
) -> None:
    plan, teachers = trained
    whole_slots = {0: CheckpointSlot(tmp_path / "whole")}
    whole = _train(plan, key, [0], digits, teachers, whole_slots)[0]
    steps = [0]

    def stop_in_epoch_two() -> None:  # the engine's after-step hook (study/hooks.py)
        steps[0] += 1
        if steps[0] == 25:  # 20 steps an epoch: the 5th step of epoch 2
            raise _Stop

    slots = {0: CheckpointSlot(tmp_path / "cut")}
    monkeypatch.setattr(hooks, "after_step", [stop_in_epoch_two])
    with pytest.raises(_Stop):
        _train(plan, key, [0], digits, teachers, slots)
    monkeypatch.setattr(hooks, "after_step", [])
    resumed = _train(plan, key, [0], digits, teachers, {0: CheckpointSlot(tmp_path / "cut")})[0]
    assert resumed.resumed_from == 1
    assert whole.history == resumed.history and whole.final == resumed.final
    assert all(torch.equal(whole.state_dict[n], resumed.state_dict[n]) for n in whole.state_dict)
    a, b = whole_slots[0].load(), CheckpointSlot(tmp_path / "cut").load()
    assert a["connectors"].keys() == b["connectors"].keys()
    assert all(torch.equal(a["connectors"][n], b["connectors"][n]) for n in a["connectors"])
    for index, state in a["optimizer"]["state"].items():  # connector momenta included
        assert torch.equal(
            state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"]
        )


def test_fitnet_hint_stage_trains_only_up_to_the_guided_layer_and_the_connector(
    trained, digits, tmp_path
) -> None:
    plan, teachers = trained
    role = plan.role("fitnet2/gen1")
    assert role.features["params"]["hint_epochs"] == 2.0
    slot = CheckpointSlot(tmp_path / "hint")
    result = _train(plan, "fitnet2/gen1", [0], digits, teachers, {0: slot})[0]
    saved = slot.load()
    assert saved["epoch"] == 2  # both epochs of this 2-epoch run are the hint stage
    start = init_model(role, 0, digits).state_dict()
    # the classifier, after the guided layer (stage2), is untouched; the convolutions moved
    assert torch.equal(result.state_dict["classifier.0.weight"], start["classifier.0.weight"])
    assert torch.equal(result.state_dict["classifier.3.weight"], start["classifier.3.weight"])
    assert not torch.equal(result.state_dict["features.4.weight"], start["features.4.weight"])
    fresh = build_feature_term(role, 0, digits).state_dict()  # the seed's initial connector
    assert not torch.equal(
        saved["connectors"]["connectors.0.0.weight"], fresh["connectors.0.0.weight"]
    )


# --- a small study that trains and reports ----------------------------------------------------


def test_a_small_feature_study_trains_and_reports(workdir: Path) -> None:
    text = DIGITS.read_text().replace("seeds = 5", "seeds = 2").replace("epochs = 6", "epochs = 2")
    text = text.replace(
        "kwargs = { channels = [32, 64], hidden = 64 }",
        "kwargs = { channels = [16, 16], hidden = 32 }",
    )
    for arm in ("fitnet2", "kd"):  # the other arms keep the study short
        text = re.sub(rf"\[\[arms\]\][^\[]*name = \"{arm}\".*?(?=\n\[)", "", text, flags=re.S)
    text = text.replace('["kd/gen1", "ce/gen1"], ', "")
    path = workdir / "small.toml"
    path.write_text(text)
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    report = (workdir / "reports" / "feature_kd_digits" / "report.md").read_text()
    for arm in ("fitnet", "at", "at_kd", "sp", "rkd"):
        assert f"| {arm}/gen1" in report
    assert "connector)" in report  # the connector's parameters apart from the student's
    assert "10 x at (stage1 -> stage1, stage2 -> stage2; p = 2)" in report
