"""Seed packs: K seeds as one block-diagonal network, each seed an independent training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from study import engine as engine_module
from study import pack as pack_module
from study.checkpoint import CheckpointSlot
from study.data import augment_batch
from study.engine import build_model, load_model
from study.models import create_model
from study.models import packed as packed_module
from study.models.packed import NotPackable, SeedPack
from study.pack import (
    augment_pack,
    auto_pack_size,
    packable,
    packed_optimizer_state,
    seed_optimizer_state,
    train_pack,
)
from study.plan import expand
from study.protocol import parse_protocol
from study.train import (
    init_model,
    predict_probs,
    to_device,
    train_role,
)
from tests.faults import installed

CPU = torch.device("cpu")
DEVICES = [  # the fused layers' tests run on a GPU too, where there is one
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU")),
]

ARCHS = {
    "mlp": {"hidden": [16, 8]},
    "small_cnn": {"channels": [4, 8], "hidden": 8},
    "wrn": {"depth": 10},
    "resnet_cifar": {"depth": 8},
    "densenet_bc": {"depth": 10, "growth_rate": 4},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one intra-op thread is faster, and immune to a busy machine's
    oversubscription (two spinning OpenMP threads on a loaded 2-core box cost 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plan():
    from tests.conftest import TINY_PROTOCOL

    teacher = "kwargs = { hidden = [32] }"
    text = TINY_PROTOCOL.replace(teacher, "kwargs = { hidden = [32], dropout = 0.5 }")
    text = text.replace("epochs = 2", "epochs = 3")
    text += '\n[[arms]]\nname = "dkpp"\nloss = "dkpp"\n'
    return expand(parse_protocol(text))


def _models(arch: str, k: int, seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [
        create_model(arch, in_channels=3, num_classes=5, image_size=8, **ARCHS[arch])
        for _ in range(k)
    ]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _packed_grads(pack: SeedPack, k: int) -> dict[str, torch.Tensor]:
    return {n: packed_module.seed_slice(p.grad, k, pack.k) for n, p in pack.net.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(
        torch.allclose(a[n].float(), b[n].float(), atol=atol, rtol=0) for n in a
    )


@pytest.fixture
def ieee_fp32():
    """On a GPU, fp32 arithmetic as the harness runs it (no TF32), for fp32 tolerances."""
    from study.determinism import configure_cuda_process

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    configure_cuda_process()
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_packed_seed_computes_its_own_model(
    arch: str, k: int, channels_last: bool, device: str, ieee_fp32
) -> None:
    device = torch.device(device)
    models = _models(arch, k)
    with engine_module.channels_last(channels_last):
        pack = to_device(SeedPack(models), device)
        models = [to_device(m, device) for m in models]
    if channels_last and arch != "mlp":  # the convolutions' weights, hence activations, NHWC
        conv = next(p for p in pack.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(k, 6, 3, 8, 8, device=device)
    logits = pack(x)
    logits.square().sum().backward()
    tol = 1e-5 if device.type == "cpu" else 1e-4  # cuDNN: other kernels, other sums
    for j, model in enumerate(models):
        plain = model(x[j])
        plain.square().sum().backward()
        assert torch.allclose(logits[j], plain, atol=tol, rtol=0)
        assert _close(_packed_grads(pack, j), _grads(model), atol=tol * max(1.0, k))
        # BatchNorm's running statistics are the seed's own
        assert _close(pack.seed_state(j), model.state_dict(), atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp", "small_cnn", "wrn", "densenet_bc"])
def test_a_seed_is_blind_to_the_other_seeds_weights_and_data(arch: str, device: str) -> None:
    device = torch.device(device)

    def seed0(models, x):
        pack = to_device(SeedPack(models), device)
        logits = pack(x)
        logits[0].square().sum().backward()
        return logits[0].detach(), _packed_grads(pack, 0)

    x = torch.randn(3, 6, 3, 8, 8, device=device)
    logits, grads = seed0(_models(arch, 3), x)
    perturbed = _models(arch, 3)
    with torch.no_grad():
        for p in perturbed[1].parameters():
            p.mul_(-3.0).add_(1.0)
    other = x.clone()
    other[1] = torch.randn_like(other[1]) * 10
    logits_p, grads_p = seed0(perturbed, other)
    assert torch.allclose(logits, logits_p, atol=1e-6, rtol=0)
    assert _close(grads, grads_p, atol=1e-6)


def test_seed_dropout_draws_the_plain_loops_masks_from_each_seeds_generator() -> None:
    torch.manual_seed(0)
    model = create_model("mlp", in_channels=1, num_classes=4, image_size=4, hidden=[32])
    model.hidden[2].p = 0.5
    pack = SeedPack([model, model])
    pack.set_dropout_generators([torch.Generator().manual_seed(7), torch.Generator()])
    x = torch.randn(2, 5, 1, 4, 4)
    x[1] = x[0]
    packed = pack(x)
    torch.manual_seed(7)
    assert torch.equal(packed[0], model(x[0]))  # what the loop computes after manual_seed(7)
    assert not torch.equal(packed[0], packed[1])  # same weights, same data, other stream


def test_augment_pack_gives_each_seed_the_reference_crops_and_flips() -> None:
    x = torch.randint(0, 256, (3, 5, 3, 8, 8), dtype=torch.uint8)
    for kind in ("crop_flip", "crop", "flip", "none"):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        ref_gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        for _ in range(2):  # the generators advance as the reference's do
            got = augment_pack(x, kind, gens)
            for j, g in enumerate(ref_gens):
                assert torch.equal(got[j], augment_batch(x[j], kind, g))


def test_optimizer_state_of_a_seed_round_trips_through_the_pack() -> None:
    models = _models("small_cnn", 3)
    pack = SeedPack(models)
    opt = torch.optim.Adam(pack.parameters(), lr=0.01, weight_decay=1e-3)
    pack(torch.randn(3, 4, 3, 8, 8)).sum().backward()
    opt.step()
    state = opt.state_dict()
    seeds = [seed_optimizer_state(state, j, 3) for j in range(3)]
    again = packed_optimizer_state(seeds)
    for index, entries in state["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, again["state"][index][key])
    assert seeds[1]["state"][0]["exp_avg"].shape == models[1].features[0].weight.shape


def test_a_pack_of_one_trains_like_the_plain_loop(plan, digits) -> None:
    role = plan.role("teacher")  # MLP with dropout 0.5: the masks must match too
    [loop] = train_role(role, [0], digits, device=CPU)
    [packed] = train_pack(role, [0], digits, device=CPU)
    assert _close(packed.state_dict, loop.state_dict, atol=1e-5)
    for key, value in loop.final.items():
        assert packed.final[key] == pytest.approx(value, abs=1e-4), key
    assert len(packed.history) == len(loop.history) == role.train.epochs


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_pack_of_one_matches_the_loop_for_every_packable_arch(
    plan, digits, arch: str, channels_last: bool
) -> None:
    """To float rounding, grown by an epoch of training: bit for bit on the Intel Xeon
    (MKL) of sessions 1-4, but not on an AMD EPYC, where MKL's batched and plain matrix
    products and oneDNN's grouped and plain channels-last convolutions round otherwise
    (seen there: up to 5e-3 per weight after an epoch; seeds 0 and 1 are 0.7 to 2.5
    apart)."""
    kwargs = {**ARCHS[arch], **({"dropout": 0.2} if arch != "resnet_cifar" else {})}
    role = dataclasses.replace(plan.role("teacher"), arch=arch, arch_kwargs=kwargs)
    role = dataclasses.replace(role, train=role.train.model_copy(update={"epochs": 1}))
    with engine_module.channels_last(channels_last):
        [loop] = train_role(role, [0], digits, device=CPU)
        [packed] = train_pack(role, [0], digits, device=CPU)
    assert len(packed.history) == len(loop.history) == 1
    assert _close(packed.state_dict, loop.state_dict, atol=2e-2)
    assert packed.final["test_acc"] == pytest.approx(loop.final["test_acc"], abs=0.01)
    if _blas_rounds_one_matrix_as_several():  # the Intel Xeon of sessions 1-4: bit for bit
        assert packed.final == loop.final and packed.history == loop.history
        assert _same(packed.state_dict, loop.state_dict)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_convnets_dropout_masks_are_the_loops_in_a_pack_in_either_memory_format(
    plan, digits, channels_last: bool
) -> None:
    """F.dropout draws a channels-last tensor's mask in memory order (and on a GPU in a fused
    kernel of its own): the loop draws as a pack's seed draws instead (SeedDropout). One
    epoch: float rounding grows in training (an AMD EPYC, where the two paths round
    otherwise, ends 3.5e-3 apart), other masks move weights far more."""
    base = plan.role("teacher")
    role = dataclasses.replace(base, arch="wrn", arch_kwargs={"depth": 10, "dropout": 0.3})
    role = dataclasses.replace(role, train=role.train.model_copy(update={"epochs": 1}))
    with engine_module.channels_last(channels_last):
        [loop] = train_role(role, [0], digits, device=CPU)
        [packed] = train_pack(role, [0], digits, device=CPU)
    assert _close(packed.state_dict, loop.state_dict, atol=1e-2)
    assert packed.final["test_acc"] == pytest.approx(loop.final["test_acc"], abs=0.01)


def test_on_the_cpu_an_mlp_seed_trains_bit_identically_in_any_pack_of_several(plan, digits) -> None:
    """What `study reproduce` relies on for the digits study (it re-trains a packed seed in
    a pack of the same size, with filler seeds): a seed's run does not depend on the seeds
    it shares a pack with or its place there (per-seed losses and masks, batched matmuls
    that compute each seed's block alone). A pack of one and the loop match it to float
    rounding: bit for bit on an Intel Xeon (MKL), not on an AMD EPYC, whose MKL rounds a
    batched product of one matrix, and a plain one, otherwise (seen at hidden = [128]).
    Convolutions do not promise even this: grouped kernels round otherwise for other K."""
    role = plan.role("teacher")
    [loop] = train_role(role, [1], digits, device=CPU)
    [alone] = train_pack(role, [1], digits, device=CPU)
    reference = train_pack(role, [0, 1, 2], digits, device=CPU)[1]
    for in_pack in (
        train_pack(role, [1, 7], digits, device=CPU)[0],
        train_pack(role, [5, 9, 4, 1], digits, device=CPU)[3],
    ):
        assert in_pack.history == reference.history and in_pack.final == reference.final
        assert _same(in_pack.state_dict, reference.state_dict)
    for other in (alone, loop):
        assert _close(other.state_dict, reference.state_dict, atol=1e-5)
        for key, value in reference.final.items():
            assert other.final[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        if _blas_rounds_one_matrix_as_several():  # then bit for bit (an Intel Xeon's MKL)
            assert other.final == reference.final
            assert _same(other.state_dict, reference.state_dict)


def _blas_rounds_one_matrix_as_several() -> bool:
    """Whether this BLAS computes the MLP's layers (64 -> 32 -> 10, batch 128) bit for bit
    alike as a plain product, a batched product of one matrix and one of two."""
    generator = torch.Generator().manual_seed(0)
    for n_in, n_out in ((64, 32), (32, 10)):
        x = torch.randn(128, n_in, generator=generator)
        w, b = (
            torch.randn(n_out, n_in, generator=generator),
            torch.randn(n_out, generator=generator),
        )
        plain = torch.nn.functional.linear(x, w, b)
        one = torch.baddbmm(b.view(1, 1, n_out), x[None], w.t()[None])[0]
        two = torch.baddbmm(
            torch.stack([b, b])[:, None], torch.stack([x, x]), torch.stack([w.t(), w.t()])
        )[0]
        if not (torch.equal(plain, one) and torch.equal(one, two)):
            return False
    return True


def _adam(role, optimizer: str, **update):
    settings = {"optimizer": optimizer, "lr": 0.01, "nesterov": False, "weight_decay": 1e-3}
    return dataclasses.replace(role, train=role.train.model_copy(update={**settings, **update}))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_on_the_cpu_an_mlp_seed_trains_bit_identically_in_packs_of_several_under_adam(
    plan, digits, optimizer: str
) -> None:
    role = _adam(plan.role("teacher"), optimizer, schedule="multistep", milestones=[2])
    [loop] = train_role(role, [1], digits, device=CPU)
    other = train_pack(role, [1, 6], digits, device=CPU)[0]
    in_pack = train_pack(role, [0, 1, 2], digits, device=CPU)[1]
    assert in_pack.history == other.history and in_pack.final == other.final
    assert _same(in_pack.state_dict, other.state_dict)
    assert _close(in_pack.state_dict, loop.state_dict, atol=1e-5)


def test_a_convnet_packed_under_adam_ends_within_a_few_lr_of_the_loop(plan, digits) -> None:
    """Not float tolerance (pack.py's docstring): Adam steps a weight whose gradient is
    near zero by about lr in the direction of that gradient's sign, and a grouped
    convolution can round such a gradient to the other sign. Seed 0 here ends 3.5e-3 off
    the loop (other seeds within 1e-6), with the same accuracy."""
    base = plan.role("teacher")
    kwargs = {"channels": [4, 8], "hidden": 8, "dropout": 0.2}
    role = _adam(dataclasses.replace(base, arch="small_cnn", arch_kwargs=kwargs), "adam")
    lr = role.train.lr
    packed = train_pack(role, [0, 1], digits, device=CPU)
    for result in packed:
        [loop] = train_role(role, [result.seed], digits, device=CPU)
        assert _close(result.state_dict, loop.state_dict, atol=5 * lr)
        assert result.final["test_acc"] == pytest.approx(loop.final["test_acc"], abs=0.01)


def test_a_pack_trains_under_bf16_autocast(plan, digits) -> None:
    base = plan.role("teacher")
    role = dataclasses.replace(base, train=base.train.model_copy(update={"precision": "bf16"}))
    [loop] = train_role(role, [0], digits, device=CPU)
    packed = train_role(role, [0, 1], digits, device=CPU)
    assert all(r.failure is None for r in packed)
    assert _close(packed[0].state_dict, loop.state_dict, atol=1e-3)


def test_packed_seeds_load_into_build_model_and_reproduce_their_metrics(plan, digits) -> None:
    role = plan.role("teacher")
    seen = []
    results = train_role(
        role, [0, 1, 2], digits, device=CPU, on_epoch=lambda s, e, m: seen.append((s, e))
    )
    assert [r.seed for r in results] == [0, 1, 2]
    assert sorted(seen) == [(s, e) for s in (0, 1, 2) for e in (1, 2, 3)]
    for r in results:
        assert r.failure is None
        model = build_model(role, digits)
        model.load_state_dict(r.state_dict)
        probs = predict_probs(model.eval(), digits.test_x, digits, batch_size=100)
        acc = (probs.argmax(1) == digits.test_y).float().mean().item()
        assert acc == pytest.approx(r.final["test_acc"])
        assert r.final["test_acc"] > 0.5
    assert not _close(results[0].state_dict, results[1].state_dict, atol=1e-3)
    # each seed is its own training: the same seed alone ends where it ended in the pack
    [alone] = train_pack(role, [1], digits, device=CPU)
    assert _close(alone.state_dict, results[1].state_dict, atol=1e-5)


@pytest.mark.parametrize("arm", ["kd/gen1", "dkpp/gen1"])
def test_a_student_pack_distils_from_its_own_seeds_teachers(plan, digits, arm: str) -> None:
    teacher_role = plan.role("teacher")
    trained = train_role(teacher_role, [0, 1], digits, device=CPU)
    teachers = {r.seed: load_model(teacher_role, digits, r.state_dict, CPU) for r in trained}
    role = plan.role(arm)
    packed = train_role(role, [0, 1], digits, teachers=teachers, device=CPU)
    for r in packed:
        [alone] = train_role(role, [r.seed], digits, teachers={r.seed: teachers[r.seed]})
        assert _close(r.state_dict, alone.state_dict, atol=1e-4)
        assert r.final["teacher_agreement"] == pytest.approx(
            alone.final["teacher_agreement"], abs=0.01
        )


@pytest.mark.parametrize("arm", ["kd/gen1", "ban/gen1"])
def test_a_student_pack_with_the_teacher_cache_trains_bit_for_bit_like_without(
    plan, digits, arm: str, monkeypatch
) -> None:
    import study.train as train

    teacher_role = plan.role("teacher")
    trained = train_role(teacher_role, [0, 1, 2], digits, device=CPU)
    teachers = {r.seed: load_model(teacher_role, digits, r.state_dict, CPU) for r in trained}
    role = plan.role(arm)
    built = []
    real_build = train.TeacherCache.build.__func__
    monkeypatch.setattr(
        train.TeacherCache,
        "build",
        classmethod(lambda cls, *a, **kw: built.append(real_build(cls, *a, **kw)) or built[-1]),
    )
    cached = train_role(role, [0, 1, 2], digits, teachers=teachers, device=CPU)
    [cache] = built
    assert cache is not None and cache.checked and cache.table is not None  # it was used
    assert cache.table.shape == (3, len(digits.train_x), digits.num_classes)
    monkeypatch.setattr(train.TeacherCache, "build", classmethod(lambda cls, *a, **kw: None))
    fresh = train_role(role, [0, 1, 2], digits, teachers=teachers, device=CPU)
    for a, b in zip(cached, fresh, strict=True):
        assert a.final == b.final
        assert _same(a.state_dict, b.state_dict)


def _poison_seed(monkeypatch, seed: int) -> None:
    """Seed ``seed`` starts with NaN weights: its loss is NaN from the first step."""
    real_init = pack_module.init_model

    def poisoned(role_, s, data):
        model = real_init(role_, s, data)
        if s == seed:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(pack_module, "init_model", poisoned)


def test_a_diverging_seed_fails_alone(plan, digits, monkeypatch) -> None:
    role = plan.role("teacher")
    clean = train_pack(role, [0, 1, 2], digits, device=CPU)
    _poison_seed(monkeypatch, 1)
    seen = []
    results = train_pack(
        role, [0, 1, 2], digits, device=CPU, on_epoch=lambda s, e, m: seen.append(s)
    )
    assert results[1].failure is not None and "seed 1" in results[1].failure
    assert results[1].state_dict == {}
    assert 1 not in seen
    for j in (0, 2):
        assert results[j].failure is None
        assert _close(results[j].state_dict, clean[j].state_dict, atol=1e-6)
        assert results[j].final == pytest.approx(clean[j].final, abs=1e-6)


def test_a_diverged_seed_leaves_the_other_seeds_loss_streams_alone(
    plan, digits, monkeypatch
) -> None:
    """DKPP draws from each seed's own generator: after seed 1 dies, seeds 0 and 2 draw
    exactly what they draw in a clean run, and end bit for bit where it ends."""
    teacher_role = plan.role("teacher")
    trained = train_role(teacher_role, [0, 1, 2], digits, device=CPU)
    teachers = {r.seed: load_model(teacher_role, digits, r.state_dict, CPU) for r in trained}
    role = plan.role("dkpp/gen1")
    clean = train_pack(role, [0, 1, 2], digits, teachers=teachers, device=CPU)
    _poison_seed(monkeypatch, 1)
    results = train_pack(role, [0, 1, 2], digits, teachers=teachers, device=CPU)
    assert results[1].failure is not None
    for j in (0, 2):
        assert results[j].history == clean[j].history and results[j].final == clean[j].final
        assert all(torch.equal(results[j].state_dict[n], v) for n, v in clean[j].state_dict.items())


def test_a_pack_computes_its_seeds_losses_in_one_call_per_step(plan, digits, monkeypatch) -> None:
    role = plan.role("teacher")
    spec = pack_module.get_loss(role.loss)
    shapes = []

    def counting(student, *args, **kwargs):
        shapes.append(tuple(student.shape))
        return spec.fn(student, *args, **kwargs)

    counted = dataclasses.replace(spec, fn=counting)
    monkeypatch.setattr(pack_module, "get_loss", lambda name: counted)
    train_pack(role, [0, 1, 2], digits, device=CPU)
    steps = -(-len(digits.train_y) // role.train.batch_size)
    assert len(shapes) == role.train.epochs * steps
    assert all(shape[0] == 3 and shape[-1] == digits.num_classes for shape in shapes)


def test_a_pack_saves_no_checkpoint_until_one_of_its_live_slots_is_due(
    plan, digits, tmp_path, monkeypatch
) -> None:
    role = plan.role("teacher")

    def slot(name: str, seed: int, interval_s: float) -> CheckpointSlot:
        return CheckpointSlot(tmp_path / name / str(seed), interval_s=interval_s)

    never = {s: slot("never", s, 3600.0) for s in (0, 1)}
    train_pack(role, [0, 1], digits, device=CPU, checkpoints=never)
    assert all(never[s].load() is None for s in (0, 1))
    # One live slot due: the whole pack saves, so that its seeds resume together.
    mixed = {0: slot("mixed", 0, 3600.0), 1: slot("mixed", 1, 0.0)}
    train_pack(role, [0, 1], digits, device=CPU, checkpoints=mixed)
    assert [mixed[s].load()["epoch"] for s in (0, 1)] == [role.train.epochs] * 2
    # A diverged seed's slot being due does not count.
    _poison_seed(monkeypatch, 1)
    dead = {0: slot("dead", 0, 3600.0), 1: slot("dead", 1, 0.0)}
    results = train_pack(role, [0, 1], digits, device=CPU, checkpoints=dead)
    assert results[1].failure is not None
    assert dead[0].load() is None and dead[1].load() is None


def test_the_lr_fault_injection_diverges_only_its_seed(plan, digits, monkeypatch) -> None:
    with installed(diverge_seeds=[2]):
        results = train_role(plan.role("teacher"), [0, 2], digits, device=CPU)
    assert results[0].failure is None and results[1].failure is not None


def _slots(tmp_path, seeds, name="slots"):
    return {s: CheckpointSlot(tmp_path / name / str(s)) for s in seeds}


class _Stop(Exception):
    pass


def test_a_pack_resumed_from_its_checkpoints_ends_bit_identical(plan, digits, tmp_path) -> None:
    role = plan.role("teacher")  # with dropout: the dropout streams resume too
    seeds = [0, 1, 2]
    whole = train_pack(role, seeds, digits, device=CPU, checkpoints=_slots(tmp_path, seeds, "a"))

    def crash(seed, epoch, metrics):
        if epoch == 2:
            raise _Stop

    slots = _slots(tmp_path, seeds, "b")
    with pytest.raises(_Stop):
        train_pack(role, seeds, digits, device=CPU, on_epoch=crash, checkpoints=slots)
    resumed = train_pack(role, seeds, digits, device=CPU, checkpoints=_slots(tmp_path, seeds, "b"))
    for a, b in zip(whole, resumed, strict=True):
        assert b.resumed_from == 2
        assert a.final == b.final and a.history == b.history
        assert all(torch.equal(a.state_dict[n], b.state_dict[n]) for n in a.state_dict)


def test_seeds_at_different_epochs_resume_as_separate_packs(plan, digits, tmp_path) -> None:
    role = plan.role("teacher")
    seeds = [0, 1, 2]
    whole = train_pack(role, seeds, digits, device=CPU)

    def crash(seed, epoch, metrics):
        if epoch == 2:
            raise _Stop

    slots = _slots(tmp_path, seeds)
    with pytest.raises(_Stop):
        train_pack(role, seeds, digits, device=CPU, on_epoch=crash, checkpoints=slots)
    newest = slots[1]._path(2)  # seed 1 lost its last epoch: it resumes from epoch 1
    newest.unlink()
    newest.with_suffix(".sha256").unlink()
    resumed = train_pack(role, seeds, digits, device=CPU, checkpoints=_slots(tmp_path, seeds))
    assert [r.resumed_from for r in resumed] == [2, 1, 2]
    for a, b in zip(whole, resumed, strict=True):
        assert _close(a.state_dict, b.state_dict, atol=1e-5)


def test_the_plain_loop_resumes_a_seed_from_a_pack_checkpoint(plan, digits, tmp_path) -> None:
    role = plan.role("teacher")

    def crash(seed, epoch, metrics):
        if epoch == 2:
            raise _Stop

    slots = _slots(tmp_path, [0, 1])
    with pytest.raises(_Stop):
        train_pack(role, [0, 1], digits, device=CPU, on_epoch=crash, checkpoints=slots)
    [alone] = train_role(role, [0], digits, device=CPU, checkpoints={0: slots[0]})
    [packed_alone] = train_pack(role, [0], digits, device=CPU)
    assert alone.resumed_from == 2
    assert _close(alone.state_dict, packed_alone.state_dict, atol=1e-5)


def test_packable_roles_and_auto_pack_size(plan, digits, monkeypatch) -> None:
    role = plan.role("teacher")
    assert packable(role)
    assert auto_pack_size(role, 20, CPU, digits) == 20
    assert auto_pack_size(role, 1, CPU, digits) == 1
    monkeypatch.setattr(pack_module, "MAX_PACK_CPU", 16)
    assert auto_pack_size(role, 20, CPU) == 10  # 20 seeds with room for 16: two packs of 10
    fp16 = role.train.model_copy(update={"precision": "fp16"})
    assert not packable(type(role)(**{**role.__dict__, "train": fp16}))
    other = type(role)(**{**role.__dict__, "arch": "resnet18", "arch_kwargs": {}})
    assert not packable(other) and auto_pack_size(other, 20, CPU) == 1
    # convolutions on the CPU are arithmetic-bound: packing them buys nothing there
    cnn = type(role)(**{**role.__dict__, "arch": "small_cnn", "arch_kwargs": {}})
    assert packable(cnn) and auto_pack_size(cnn, 20, CPU, digits) == 1
    assert auto_pack_size(cnn, 40, torch.device("cuda")) == 20  # without data: the cap, even


def test_layers_the_pack_does_not_know_are_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GELU())
    with pytest.raises(NotPackable, match="GELU"):
        SeedPack([model, model])


def test_teachers_that_cannot_pack_run_one_by_one() -> None:
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)) for _ in range(2)]
    frozen = packed_module.frozen_pack(models)
    x = torch.randn(2, 4, 3, 2, 2)
    out = frozen(x)
    assert not frozen.training
    assert torch.allclose(out[1], models[1](x[1]))
    assert torch.allclose(F.softmax(out[0], -1), F.softmax(models[0](x[0]), -1))


def test_init_is_the_loops_init(plan, digits) -> None:
    role = plan.role("ban/gen1")
    pack = SeedPack([init_model(role, s, digits) for s in (3, 4)])
    assert _close(pack.seed_state(1), init_model(role, 4, digits).state_dict(), atol=0)


def test_reproduce_retrains_a_packed_seed_in_a_pack_of_its_size(plan, digits) -> None:
    """MKL on an AMD EPYC rounds a batched product of one matrix otherwise than one of
    several: a seed trained in a pack of K is re-trained in a pack of K (filler seeds), which
    gives its bits whichever seeds fill it."""
    from study.reproduce import pack_of_the_run

    mlp = plan.role("teacher")
    assert pack_of_the_run({"pack_size": "3"}, mlp, 1, [0, 1, 2]) == [1, 0, 2]
    assert pack_of_the_run({"pack_size": "4"}, mlp, 1, [0, 1]) == [1, 0, 2, 3]  # spares
    assert pack_of_the_run({"pack_size": "1"}, mlp, 1, [0, 1, 2]) == [1]
    assert pack_of_the_run({}, mlp, 1, [0, 1, 2]) == [1]  # runs logged without the tag
    fp16 = dataclasses.replace(mlp, train=mlp.train.model_copy(update={"precision": "fp16"}))
    assert pack_of_the_run({"pack_size": "4"}, fp16, 1, [0, 1, 2]) == [1]  # never packs
    original = train_pack(mlp, [0, 1, 2], digits, device=CPU)[1]
    again = train_pack(
        mlp, pack_of_the_run({"pack_size": "3"}, mlp, 1, [1, 5, 6]), digits, device=CPU
    )[0]
    assert again.final == original.final and _same(again.state_dict, original.state_dict)


def test_a_pack_interrupted_between_its_seeds_checkpoint_writes_resumes_bit_identical(
    digits, tmp_path, monkeypatch
) -> None:
    """The pack writes its seeds' checkpoints one after another. Stopped after seed 0 had
    written epoch 2 and before seeds 1 and 2 had, the pack used to resume as two packs
    (seed 0 alone from epoch 2, seeds 1-2 from epoch 1), which grouped convolutions round
    otherwise than the pack of three. Epoch 2 counts only once every seed has written it:
    all three resume from epoch 1, together, and end bit for bit as the uninterrupted pack."""
    from tests.conftest import TINY_PROTOCOL

    text = TINY_PROTOCOL.replace(
        'arch = "mlp"\nkwargs = { hidden = [32] }',
        'arch = "small_cnn"\nkwargs = { channels = [4, 8], hidden = 8 }',
    ).replace("epochs = 2", "epochs = 3")
    role = expand(parse_protocol(text)).role("teacher")
    seeds = [0, 1, 2]
    whole = train_pack(role, seeds, digits, device=CPU)
    real_save = CheckpointSlot.save
    written: list[int] = []

    def save_then_stop(self, state, **kwargs):
        digest = real_save(self, state, **kwargs)
        written.append(int(state["epoch"]))
        if written.count(2) == 1 and written[-1] == 2:  # seed 0's epoch 2, before seed 1's
            raise _Stop
        return digest

    monkeypatch.setattr(CheckpointSlot, "save", save_then_stop)
    slots = _slots(tmp_path, seeds)
    with pytest.raises(_Stop):
        train_pack(role, seeds, digits, device=CPU, checkpoints=slots)
    monkeypatch.setattr(CheckpointSlot, "save", real_save)
    assert slots[0]._path(2).exists() and not slots[1]._path(2).exists()
    again = _slots(tmp_path, seeds)
    resumed = train_pack(role, seeds, digits, device=CPU, checkpoints=again)
    assert [r.resumed_from for r in resumed] == [1, 1, 1]
    assert "stopped before all its seeds saved the epoch" in again[0].notes[0]
    for a, b in zip(whole, resumed, strict=True):
        assert a.final == b.final and a.history == b.history
        assert all(torch.equal(a.state_dict[n], b.state_dict[n]) for n in a.state_dict)
