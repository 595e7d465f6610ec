"""The trainer: random streams per seed and generation, teacher in eval mode, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.data import normalize
from study.engine import evaluate_ensemble, init_model, load_model, predict_probs
from study.metrics import expected_calibration_error
from study.plan import expand
from study.protocol import parse_protocol
from study.train import train_role


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
    # one pass over the training set to fill the table, and the first batch of each batch
    # size to check it (a full one and the last, partial one), no others
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
        assert note.startswith("teacher-output cache not used for batches of shape")
        assert "the teacher ran for every batch" in note


def test_the_teacher_cache_refuses_a_shape_whose_forward_pass_disagrees_with_it(digits) -> None:
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
    idx = torch.arange(256)  # the table's first chunk: the same forward pass, bit for bit
    xb = normalize(digits.train_x[idx], digits.mean, digits.std)
    table = cache.table
    assert torch.equal(cache.lookup(idx, xb), xb.flatten(1) @ weights)
    skewed = TeacherCache(lambda x: x.flatten(1) @ weights + 1e-6, table)  # rounds otherwise
    assert skewed.lookup(idx, xb) is None
    assert skewed.refused == {tuple(xb.shape)} and skewed.lookup(idx, xb) is None
    assert not skewed.used


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

    from study import engine, train

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
    with engine.channels_last(False):
        nchw = train_role(role, seeds, digits, device=cpu)
    assert engine.channels_last.on
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
    from study import engine, train
    from study.models import create_model

    cpu = torch.device("cpu")
    model = create_model("small_cnn", in_channels=3, num_classes=5, image_size=8)
    convs = [p for p in model.parameters() if p.dim() == 4]
    train.to_device(model, cpu)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)
    with engine.channels_last(False):
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


def _rounding_the_partial_batch_otherwise(partial: int):
    """A TeacherCache.__init__ whose check forward pass rounds batches of ``partial``
    images otherwise (1e-6 off), as a backend whose kernels block by batch size may: the
    table is right, the partial shape's check fails, the full shape's passes."""
    import study.train as train

    real_init = train.TeacherCache.__init__

    def init(self, forward, table, **kwargs):
        def skewed(x):
            out = forward(x)
            return out + 1e-6 if x.shape[-4] == partial else out  # [b, ...] or [K, b, ...]

        real_init(self, skewed, table, **kwargs)

    return init


@pytest.mark.parametrize("seeds", [[0], [0, 1]])  # the loop, and a pack
def test_the_teacher_cache_is_checked_on_the_last_partial_batch_too(
    plan, digits, seeds, monkeypatch
) -> None:
    """A backend may round a batch of another size differently from the table: the first
    epoch's last, partial batch is checked against a real forward pass as well, and a
    mismatch there keeps the table from that shape only (with the note): the full batches
    still read it, and the training is bit for bit the one without a cache."""
    import study.train as train

    cpu = torch.device("cpu")
    trained = train_role(plan.role("teacher"), seeds, digits, device=cpu)
    teachers = {
        r.seed: load_model(plan.role("teacher"), digits, r.state_dict, cpu) for r in trained
    }
    role = plan.role("kd/gen1")
    assert len(digits.train_x) % role.train.batch_size  # there is a partial batch
    built = []
    real_build = train.TeacherCache.build.__func__
    monkeypatch.setattr(
        train.TeacherCache,
        "build",
        classmethod(lambda cls, *a, **kw: built.append(real_build(cls, *a, **kw)) or built[-1]),
    )
    monkeypatch.setattr(
        train.TeacherCache,
        "__init__",
        _rounding_the_partial_batch_otherwise(len(digits.train_x) % role.train.batch_size),
    )
    results = train_role(role, seeds, digits, teachers=teachers, device=cpu)
    [cache] = built
    assert len(cache.checked) == 2 and len(cache.refused) == 1  # the full and the partial
    [refused] = cache.refused
    assert refused[-4] == len(digits.train_x) % role.train.batch_size  # the partial batch
    monkeypatch.setattr(train.TeacherCache, "build", classmethod(lambda cls, *a, **k: None))
    uncached = train_role(role, seeds, digits, teachers=teachers, device=cpu)
    for r, u in zip(results, uncached, strict=True):
        assert r.teacher_cached is True
        [note] = r.notes
        assert note.startswith("teacher-output cache not used for batches of shape")
        assert "the teacher ran for those batches" in note
        assert r.final == u.final and _same(r.state_dict, u.state_dict)


def test_the_teacher_cache_checks_the_first_batch_of_every_shape(digits) -> None:
    from study.train import TeacherCache

    weights = torch.randn(64, 10)
    forward = lambda x: x.flatten(1) @ weights  # noqa: E731
    cache = TeacherCache.build(
        forward, digits, batch_size=256, precision="fp32", device=torch.device("cpu")
    )
    assert cache is not None
    full, partial = torch.arange(0, 256), torch.tensor([300, 301, 302])
    cache.table[partial] += 1e-6  # as if the backend rounded a 3-image batch otherwise
    xb = normalize(digits.train_x[full], digits.mean, digits.std)
    assert torch.equal(cache.lookup(full, xb), forward(xb))  # the table's first chunk
    assert torch.equal(cache.lookup(full + 8, xb), cache.table[full + 8])  # shape known
    xb3 = normalize(digits.train_x[partial], digits.mean, digits.std)
    assert cache.lookup(partial, xb3) is None and cache.refused == {(3, 1, 8, 8)}
    assert cache.lookup(partial + 1, xb3) is None  # that shape stays refused, unchecked
    assert torch.equal(cache.lookup(full, xb), cache.table[full]) and cache.used


def _one_example_last_batch(plan, digits):
    """small_cnn with four blocks on 8x8 digits (the configuration cnn.py advertises): its
    last BatchNorm sees 1x1 maps. A batch size dividing n_train - 1 leaves one example."""
    import dataclasses

    base = plan.role("teacher")
    role = dataclasses.replace(
        base, arch="small_cnn", arch_kwargs={"channels": [4, 4, 4, 4], "hidden": 8}
    )
    n = len(digits.train_x)
    size = next(b for b in range(100, n) if n % b == 1)
    return dataclasses.replace(
        role, train=role.train.model_copy(update={"batch_size": size, "epochs": 1})
    )


def test_a_last_batch_of_one_is_folded_into_the_previous_one_where_batchnorm_needs_it(
    plan, digits
) -> None:
    import dataclasses

    from study.engine import one_example_breaks_batchnorm, train_batches
    from study.pack import train_pack

    cpu = torch.device("cpu")
    role = _one_example_last_batch(plan, digits)
    n, size = len(digits.train_x), role.train.batch_size
    assert one_example_breaks_batchnorm(role, digits)
    batches = train_batches(role, digits)
    assert batches[-1] == (n - 1 - size, n) and len(batches) == n // size
    [loop] = train_role(role, [0], digits, device=cpu)  # raised ValueError before
    [alone] = train_pack(role, [0], digits, device=cpu)
    packed = train_role(role, [0, 1], digits, device=cpu)
    assert all(r.failure is None for r in (loop, alone, *packed))
    # the same batches in both (float rounding apart: the two paths round otherwise on
    # some CPUs, e.g. MKL on an AMD EPYC)
    assert alone.history[0]["train_acc"] == pytest.approx(loop.history[0]["train_acc"], abs=0.01)
    for name, value in loop.state_dict.items():
        assert torch.allclose(alone.state_dict[name].float(), value.float(), atol=1e-2), name
    # Where a batch of one trains (no BatchNorm, or BatchNorm over larger maps), it stays:
    # those trainings are as they were.
    for arch, kwargs in (("mlp", {"hidden": [16]}), ("small_cnn", {"channels": [4, 8]})):
        other = dataclasses.replace(role, arch=arch, arch_kwargs=kwargs)
        assert not one_example_breaks_batchnorm(other, digits)
        assert train_batches(other, digits)[-1] == (n - 1, n)


def test_teacher_predictions_cache_and_final_evaluation_run_in_deterministic_mode(
    plan, digits, monkeypatch
) -> None:
    """Deterministic mode (on by default on the CPU) covers every forward pass of a
    training, in the loop and in a pack: not only the epochs."""
    from study import pack, train

    cpu = torch.device("cpu")
    trained = train_role(plan.role("teacher"), [0, 1], digits, device=cpu)
    teachers = {
        r.seed: load_model(plan.role("teacher"), digits, r.state_dict, cpu) for r in trained
    }
    seen: list[tuple[str, bool]] = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            seen.append((name, torch.are_deterministic_algorithms_enabled()))
            return real(*args, **kwargs)

        return wrapped

    real_build = train.TeacherCache.build.__func__
    monkeypatch.setattr(train, "predict_probs", spy("loop", train.predict_probs))
    monkeypatch.setattr(pack, "predict_pack_probs", spy("pack", pack.predict_pack_probs))
    monkeypatch.setattr(
        train.TeacherCache,
        "build",
        classmethod(lambda cls, *a, **kw: spy("cache", real_build)(cls, *a, **kw)),
    )
    assert not torch.are_deterministic_algorithms_enabled()
    role = plan.role("kd/gen1")
    train_role(role, [0], digits, teachers=teachers, device=cpu)  # the loop
    train_role(role, [0, 1], digits, teachers=teachers, device=cpu)  # a pack
    assert {name for name, _ in seen} == {"loop", "pack", "cache"}
    assert all(on for _, on in seen), seen
    assert not torch.are_deterministic_algorithms_enabled()  # as it was
