"""The trainer: random streams per seed and generation, teacher in eval mode, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.data import normalize
from study.plan import expand
from study.protocol import parse_protocol
from study.train import (
    evaluate_ensemble,
    expected_calibration_error,
    init_model,
    load_model,
    predict_probs,
    train_role,
)


@pytest.fixture(scope="module")
def plan():
    from tests.conftest import TINY_PROTOCOL

    teacher = "kwargs = { hidden = [32] }"
    text = TINY_PROTOCOL.replace(teacher, "kwargs = { hidden = [32], dropout = 0.5 }")
    return expand(parse_protocol(text))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_initialisation_distinct_per_seed_and_generation_same_across_arms(plan, digits) -> None:
    t0 = init_model(plan.role("teacher"), 0, digits).state_dict()
    t0_again = init_model(plan.role("teacher"), 0, digits).state_dict()
    t1 = init_model(plan.role("teacher"), 1, digits).state_dict()
    g1 = init_model(plan.role("ban/gen1"), 0, digits).state_dict()
    g2 = init_model(plan.role("ban/gen2"), 0, digits).state_dict()
    assert _same(t0, t0_again)
    assert not _same(t0, t1)
    assert not _same(t0, g1) and not _same(g1, g2)


def test_same_seed_trains_to_identical_metrics_on_cpu(plan, digits) -> None:
    role = plan.role("teacher")
    [a] = train_role(role, [0], digits, device=torch.device("cpu"))
    [b] = train_role(role, [0], digits, device=torch.device("cpu"))
    [c] = train_role(role, [1], digits, device=torch.device("cpu"))
    assert a.final == b.final
    assert _same(a.state_dict, b.state_dict)
    assert not _same(a.state_dict, c.state_dict)


def test_final_model_is_last_epoch_and_metrics_are_complete(plan, digits) -> None:
    epochs = []
    role = plan.role("teacher")
    [res] = train_role(
        role, [2], digits, device=torch.device("cpu"), on_epoch=lambda s, e, m: epochs.append(e)
    )
    assert epochs == [1, 2]
    assert res.final["test_acc"] == res.history[-1]["test_acc"]
    assert res.final["val_acc"] == res.history[-1]["val_acc"]
    assert {"test_acc", "test_nll", "test_ece", "val_acc", "val_nll"} <= set(res.final)
    assert res.final["test_acc"] > 0.5  # a 2-epoch MLP on digits is far above chance (0.1)
    model = load_model(role, digits, res.state_dict, torch.device("cpu"))
    probs = predict_probs(model, digits.test_x, digits, batch_size=100)
    acc = (probs.argmax(1) == digits.test_y).float().mean().item()
    assert acc == pytest.approx(res.final["test_acc"])


def test_teacher_runs_in_eval_mode_without_gradients(plan, digits) -> None:
    [teacher] = train_role(plan.role("teacher"), [0], digits, device=torch.device("cpu"))
    model = load_model(plan.role("teacher"), digits, teacher.state_dict, torch.device("cpu"))
    model.train()  # a careless caller hands over a teacher in train mode
    seen = []
    model.register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), o.requires_grad))
    )
    [student] = train_role(
        plan.role("ban/gen1"), [0], digits, teachers={0: model}, device=torch.device("cpu")
    )
    assert seen and all(s == (False, False, False) for s in seen)
    assert all(p.grad is None for p in model.parameters())
    # the teacher's weights are unchanged by the student's training
    assert _same(model.state_dict(), teacher.state_dict)
    assert 0 <= student.final["teacher_agreement"] <= 1
    assert student.final["teacher_kl"] >= 0


def test_ece_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=400)
    y = rng.integers(0, 5, size=400)
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(15):
        m = np.minimum((conf * 15).astype(int), 14) == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - (pred[m] == y[m]).mean())
    got = expected_calibration_error(torch.tensor(probs), torch.tensor(y))
    assert got == pytest.approx(ece, abs=1e-12)


def test_ensemble_is_the_mean_of_member_softmaxes(plan, digits) -> None:
    cpu = torch.device("cpu")
    [a] = train_role(plan.role("teacher"), [0], digits, device=cpu)
    [b] = train_role(plan.role("teacher"), [1], digits, device=cpu)
    ma, mb = (load_model(plan.role("teacher"), digits, r.state_dict, cpu) for r in (a, b))
    got = evaluate_ensemble([ma, mb], digits, batch_size=64, teacher=None)
    pa = predict_probs(ma, digits.test_x, digits, batch_size=64)
    pb = predict_probs(mb, digits.test_x, digits, batch_size=64)
    mean = (pa + pb) / 2
    y = digits.test_y
    assert got["test_acc"] == pytest.approx((mean.argmax(1) == y).float().mean().item())
    nll = -torch.log(mean[torch.arange(len(y)), y]).mean().item()
    assert got["test_nll"] == pytest.approx(nll, rel=1e-5)


def test_tuning_mode_never_touches_the_test_split(plan, digits) -> None:
    import dataclasses

    poisoned = dataclasses.replace(digits, test_x=None, test_y=None)  # any use would crash
    seen = []
    [res] = train_role(
        plan.role("teacher"),
        [0],
        poisoned,
        device=torch.device("cpu"),
        on_epoch=lambda s, e, m: seen.append(set(m)),
        evaluate_test=False,
    )
    assert all(not any(k.startswith("test_") for k in keys) for keys in seen)
    assert set(res.final) == {"val_acc", "val_nll", "val_ece"}


def test_on_epoch_can_stop_a_seed(plan, digits) -> None:
    class Stop(Exception):
        pass

    def stop(seed, epoch, metrics):
        raise Stop

    with pytest.raises(Stop):
        train_role(plan.role("teacher"), [0], digits, device=torch.device("cpu"), on_epoch=stop)


@pytest.mark.parametrize("student", ["ban/gen1", "kd/gen1"])
def test_the_teacher_cache_trains_a_student_bit_for_bit_like_teacher_forward_passes(
    plan, digits, student, monkeypatch
) -> None:
    import study.train as train

    [t] = train_role(plan.role("teacher"), [0], digits, device=torch.device("cpu"))
    calls = []
    teacher = load_model(plan.role("teacher"), digits, t.state_dict, torch.device("cpu"))
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    role = plan.role(student)
    [cached] = train_role(role, [0], digits, teachers={0: teacher}, device=torch.device("cpu"))
    # one pass over the training set to fill the table, one batch to check it, no others
    n_train, steps = len(digits.train_x), -(-len(digits.train_x) // role.train.batch_size)
    assert sum(calls) < n_train + 2 * role.train.batch_size + len(digits.val_x) + len(digits.test_x)
    monkeypatch.setattr(train.TeacherCache, "build", classmethod(lambda cls, *a, **k: None))
    calls.clear()
    [fresh] = train_role(role, [0], digits, teachers={0: teacher}, device=torch.device("cpu"))
    assert len(calls) >= steps * role.train.epochs  # the uncached path: a forward per step
    assert cached.final == fresh.final
    assert _same(cached.state_dict, fresh.state_dict)
    assert cached.teacher_cached is True and fresh.teacher_cached is False
    assert cached.notes == fresh.notes == []  # not built is no news; switched off would be


@pytest.mark.parametrize("seeds", [[0], [0, 1]])  # the loop, and a pack
def test_a_run_whose_teacher_cache_switched_off_says_so(plan, digits, seeds, monkeypatch) -> None:
    import study.train as train

    cpu = torch.device("cpu")
    trained = train_role(plan.role("teacher"), seeds, digits, device=cpu)
    teachers = {
        r.seed: load_model(plan.role("teacher"), digits, r.state_dict, cpu) for r in trained
    }
    real_init = train.TeacherCache.__init__

    def rounded_otherwise(self, forward, table, **kwargs):
        real_init(self, forward, table + 1e-6, **kwargs)

    monkeypatch.setattr(train.TeacherCache, "__init__", rounded_otherwise)
    results = train_role(plan.role("kd/gen1"), seeds, digits, teachers=teachers, device=cpu)
    for r in results:
        assert r.teacher_cached is False
        [note] = r.notes
        assert note.startswith("teacher-output cache switched off")


def test_the_teacher_cache_switches_off_when_a_forward_pass_disagrees_with_it(digits) -> None:
    from study.train import TeacherCache

    weights = torch.randn(64, 10)
    cache = TeacherCache.build(
        lambda x: x.flatten(1) @ weights,
        digits,
        batch_size=256,
        precision="fp32",
        device=torch.device("cpu"),
    )
    assert cache is not None and cache.table.shape == (len(digits.train_x), 10)
    idx = torch.tensor([5, 900, 17])
    xb = normalize(digits.train_x[idx], digits.mean, digits.std)
    table = cache.table
    assert torch.equal(cache.lookup(idx, xb), xb.flatten(1) @ weights)
    skewed = TeacherCache(lambda x: x.flatten(1) @ weights + 1e-6, table)  # rounds otherwise
    assert skewed.lookup(idx, xb) is None
    assert skewed.table is None and skewed.lookup(idx, xb) is None


def test_no_teacher_cache_for_augmented_views(digits) -> None:
    from dataclasses import replace

    from study.train import TeacherCache

    augmented = replace(digits, augmentation="crop_flip")
    assert (
        TeacherCache.build(
            lambda x: x, augmented, batch_size=64, precision="fp32", device=torch.device("cpu")
        )
        is None
    )


@pytest.mark.parametrize("seeds", [[0], [0, 1]])  # the loop, and a pack
def test_a_convnet_trains_in_channels_last_like_nchw_and_logs_plain_weights(
    plan, digits, seeds
) -> None:
    import dataclasses

    from study import train

    base = plan.role("teacher")
    role = dataclasses.replace(base, arch="small_cnn", arch_kwargs={"channels": [4, 8]})
    seen = []
    real_to_device = train.to_device

    def spy(model, device):
        seen.append(real_to_device(model, device))
        return seen[-1]

    cpu = torch.device("cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "to_device", spy)
        mp.setattr("study.pack.to_device", spy)
        nhwc = train_role(role, seeds, digits, device=cpu)
    convs = [p for p in seen[0].parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    with train.channels_last(False):
        nchw = train_role(role, seeds, digits, device=cpu)
    assert train.channels_last.on
    for a, b in zip(nhwc, nchw, strict=True):
        assert a.final["test_acc"] == pytest.approx(b.final["test_acc"], abs=0.02)
        for key, value in a.state_dict.items():
            assert value.is_contiguous(), key  # the logged checkpoint is in the plain format
            # rounding apart, the same training (two epochs amplify it to about 1e-3)
            assert torch.allclose(value, b.state_dict[key], atol=1e-2), key
        model = load_model(role, digits, a.state_dict, cpu)
        probs = predict_probs(model, digits.test_x, digits, batch_size=100)
        accuracy = (probs.argmax(1) == digits.test_y).float().mean().item()
        assert accuracy == pytest.approx(a.final["test_acc"])


def test_to_device_sets_the_memory_format_both_ways() -> None:
    """A teacher loaded while channels-last was on serves a student trained with it off
    (`reproduce` of an older run, `study bench --no-channels-last`): it must follow."""
    from study import train
    from study.models import create_model

    cpu = torch.device("cpu")
    model = create_model("small_cnn", in_channels=3, num_classes=5, image_size=8)
    convs = [p for p in model.parameters() if p.dim() == 4]
    train.to_device(model, cpu)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    with train.channels_last(False):
        train.to_device(model, cpu)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() == 4)


def test_a_student_that_does_not_distil_runs_its_teacher_only_for_the_agreement(
    plan, digits
) -> None:
    """A teacher given to a cross-entropy student serves the agreement metrics alone: no
    table of its outputs, no forward pass in the training steps."""
    import dataclasses

    cpu = torch.device("cpu")
    [t] = train_role(plan.role("teacher"), [0], digits, device=cpu)
    teacher = load_model(plan.role("teacher"), digits, t.state_dict, cpu)
    images = []
    teacher.register_forward_hook(lambda m, i, o: images.append(len(i[0])))
    role = dataclasses.replace(plan.role("kd/gen1"), loss="ce", loss_params={})
    [r] = train_role(role, [0], digits, teachers={0: teacher}, device=cpu)
    assert sum(images) == len(digits.val_x) + len(digits.test_x)  # one pass over each
    assert "teacher_agreement" in r.final and r.teacher_cached is None and r.notes == []
