"""Tests for study/losses.py: every loss against an independent numpy/closed-form computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study.errors import UserInputError
from study.losses import LossSpec, ParamRule, get_loss, loss_names, resolve_loss_params

N, C = 8, 5
TEACHER_LOSSES = ["kd", "ban", "ban_l", "cwtm", "dkpp", "mse_logits"]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(N, C, generator=g, dtype=torch.float64).float() * 2
    teacher = torch.randn(N, C, generator=g, dtype=torch.float64).float() * 3
    targets = torch.randint(0, C, (N,), generator=g)
    return student, teacher, targets


# --- numpy references ----------------------------------------------------------------------


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x))


def np_ce_per_sample(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np_log_softmax(s)[np.arange(len(y)), y]


def student_grad(spec: LossSpec, student, targets, teacher, **kw) -> torch.Tensor:
    s = student.clone().requires_grad_(True)
    spec(s, targets, teacher, **kw).backward()
    return s.grad


def recover_soft_target(spec: LossSpec, student, targets, teacher, **kw) -> torch.Tensor:
    """For a soft cross-entropy -mean_i sum_c q_ic log softmax(s_i)_c the gradient is
    (softmax(s) - q) / N, so the target q can be read back from autograd."""
    grad = student_grad(spec, student, targets, teacher, **kw)
    return torch.softmax(student, dim=1) - grad * student.shape[0]


# --- registry and parameters ----------------------------------------------------------------


def test_registry_lists_every_loss_with_its_teacher_need():
    assert loss_names() == sorted(["ce", *TEACHER_LOSSES])
    assert get_loss("ce").needs_teacher is False
    for name in TEACHER_LOSSES:
        spec = get_loss(name)
        assert spec.name == name and spec.needs_teacher is True
        assert "20" in spec.doc  # each docstring cites its source (year)
        assert all(isinstance(r, ParamRule) for r in spec.params.values())


def test_get_loss_unknown_name_lists_allowed_names():
    with pytest.raises(UserInputError) as err:
        get_loss("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in loss_names():
        assert name in msg


def test_resolve_fills_defaults():
    assert resolve_loss_params("kd", {}) == {"temperature": 4.0, "alpha": 0.9}
    assert resolve_loss_params("kd", {"alpha": 1}) == {"temperature": 4.0, "alpha": 1.0}
    assert resolve_loss_params("ce", None) == {"label_smoothing": 0.0}
    assert resolve_loss_params("ban", {}) == {"temperature": 1.0}
    assert resolve_loss_params("ban_l", {}) == {"temperature": 1.0, "label_weight": 1.0}
    assert resolve_loss_params("mse_logits", {}) == {"scale": 1.0}
    assert resolve_loss_params("cwtm", {}) == {}
    assert resolve_loss_params("dkpp", {}) == {}


def test_resolve_keeps_tuned_for_kd_temperature_and_alpha():
    out = resolve_loss_params("kd", {"temperature": "tuned", "alpha": "tuned"})
    assert out == {"temperature": "tuned", "alpha": "tuned"}


def test_tuned_is_rejected_for_a_non_tunable_param():
    with pytest.raises(UserInputError) as err:
        resolve_loss_params("ce", {"label_smoothing": "tuned"})
    assert err.value.field == "label_smoothing"


def test_calling_a_loss_with_a_tuned_placeholder_is_an_error(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="tuned"):
        get_loss("kd")(s, y, t, temperature="tuned")


@pytest.mark.parametrize(
    ("loss", "param", "value", "expected"),
    [
        ("kd", "alpha", 1.5, "alpha must be in [0, 1], got 1.5"),
        ("kd", "alpha", -0.1, "alpha must be in [0, 1], got -0.1"),
        ("kd", "temperature", 0, "temperature must be > 0, got 0"),
        ("kd", "temperature", -1, "temperature must be > 0, got -1"),
        ("kd", "temperature", float("nan"), "temperature must be > 0"),
        ("ce", "label_smoothing", 1.0, "label_smoothing must be in [0, 1), got 1.0"),
        ("ban_l", "label_weight", -1, "label_weight must be >= 0, got -1"),
        ("kd", "alpha", "high", "alpha must be a number or 'tuned', got 'high'"),
        ("kd", "alpha", True, "alpha must be a number"),
    ],
)
def test_out_of_range_param_names_field_and_allowed_range(loss, param, value, expected):
    with pytest.raises(UserInputError) as err:
        resolve_loss_params(loss, {param: value})
    assert err.value.field == param
    assert expected in str(err.value)


def test_unknown_param_names_field_and_lists_accepted_params():
    with pytest.raises(UserInputError) as err:
        resolve_loss_params("kd", {"beta": 0.5})
    assert err.value.field == "beta"
    assert "alpha" in str(err.value) and "temperature" in str(err.value)
    with pytest.raises(UserInputError) as err:
        resolve_loss_params("cwtm", {"temperature": 2})
    assert err.value.field == "temperature"


def test_losses_called_directly_validate_params(batch):
    s, t, y = batch
    with pytest.raises(UserInputError) as err:
        get_loss("kd")(s, y, t, alpha=2)
    assert err.value.field == "alpha"


# --- ce ---------------------------------------------------------------------------------------


def test_ce_equals_numpy_cross_entropy(batch):
    s, _, y = batch
    got = get_loss("ce")(s, y, None)
    assert got.item() == pytest.approx(np_ce_per_sample(s.numpy(), y.numpy()).mean(), rel=1e-5)


def test_ce_label_smoothing_mixes_uniform_target(batch):
    s, _, y = batch
    eps = 0.2
    logp = np_log_softmax(s.numpy())
    q = np.full((N, C), eps / C)
    q[np.arange(N), y.numpy()] += 1 - eps
    want = -(q * logp).sum(axis=1).mean()
    got = get_loss("ce")(s, y, None, label_smoothing=eps)
    assert got.item() == pytest.approx(want, rel=1e-5)


# --- kd ---------------------------------------------------------------------------------------


def np_kd(s, t, y, temperature, alpha):
    log_q = np_log_softmax(s / temperature)
    log_p = np_log_softmax(t / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * np_ce_per_sample(s, y).mean()


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 1.0), (4.0, 0.9), (2.5, 0.3)])
def test_kd_equals_numpy_formula(batch, temperature, alpha):
    s, t, y = batch
    got = get_loss("kd")(s, y, t, temperature=temperature, alpha=alpha)
    want = np_kd(s.numpy(), t.numpy(), y.numpy(), temperature, alpha)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_kd_kl_is_batchmean_not_divided_by_classes(batch):
    s, t, y = batch
    got = get_loss("kd")(s, y, t, temperature=1.0, alpha=1.0).item()
    kl_per_sample = np_kd(s.numpy(), t.numpy(), y.numpy(), 1.0, 1.0)
    assert got == pytest.approx(kl_per_sample, rel=1e-5)
    assert got != pytest.approx(kl_per_sample / C, rel=1e-2)  # what reduction="mean" would give


def test_kd_at_t1_alpha1_gradient_is_q_minus_p_over_n(batch):
    s, t, y = batch
    grad = student_grad(get_loss("kd"), s, y, t, temperature=1.0, alpha=1.0)
    q, p = np_softmax(s.numpy()), np_softmax(t.numpy())
    np.testing.assert_allclose(grad.numpy(), (q - p) / N, atol=1e-6)


@pytest.mark.parametrize("temperature", [2.0, 4.0, 10.0])
def test_kd_soft_gradient_is_t_times_q_minus_p_at_temperature(batch, temperature):
    s, t, y = batch
    grad = student_grad(get_loss("kd"), s, y, t, temperature=temperature, alpha=1.0)
    q, p = np_softmax(s.numpy() / temperature), np_softmax(t.numpy() / temperature)
    np.testing.assert_allclose(grad.numpy(), temperature * (q - p) / N, atol=1e-6)


def test_kd_with_alpha0_equals_label_cross_entropy_in_value_and_gradient(batch):
    s, t, y = batch
    got = get_loss("kd")(s, y, t, temperature=4.0, alpha=0.0)
    assert got.item() == pytest.approx(np_ce_per_sample(s.numpy(), y.numpy()).mean(), rel=1e-5)
    grad = student_grad(get_loss("kd"), s, y, t, temperature=4.0, alpha=0.0)
    onehot = np.eye(C)[y.numpy()]
    np.testing.assert_allclose(grad.numpy(), (np_softmax(s.numpy()) - onehot) / N, atol=1e-6)


# --- ban, ban_l -------------------------------------------------------------------------------


def np_soft_ce(target: np.ndarray, s: np.ndarray) -> float:
    return float(-(target * np_log_softmax(s)).sum(axis=1).mean())


def test_ban_equals_numpy_soft_cross_entropy(batch):
    s, t, y = batch
    got = get_loss("ban")(s, y, t)
    assert got.item() == pytest.approx(np_soft_ce(np_softmax(t.numpy()), s.numpy()), rel=1e-5)


def test_ban_at_temperature_scales_soft_cross_entropy_by_t_squared(batch):
    s, t, y = batch
    temp = 3.0
    got = get_loss("ban")(s, y, t, temperature=temp)
    want = temp**2 * np_soft_ce(np_softmax(t.numpy() / temp), s.numpy() / temp)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_ban_ignores_labels(batch):
    s, t, y = batch
    assert get_loss("ban")(s, y, t).item() == get_loss("ban")(s, (y + 1) % C, t).item()


def test_ban_gradient_is_q_minus_p_over_n(batch):
    s, t, y = batch
    grad = student_grad(get_loss("ban"), s, y, t)
    q, p = np_softmax(s.numpy()), np_softmax(t.numpy())
    np.testing.assert_allclose(grad.numpy(), (q - p) / N, atol=1e-6)


@pytest.mark.parametrize("label_weight", [1.0, 0.5, 0.0])
def test_ban_l_equals_ban_plus_weighted_label_ce(batch, label_weight):
    s, t, y = batch
    got = get_loss("ban_l")(s, y, t, label_weight=label_weight)
    want = (
        np_soft_ce(np_softmax(t.numpy()), s.numpy())
        + label_weight * np_ce_per_sample(s.numpy(), y.numpy()).mean()
    )
    assert got.item() == pytest.approx(want, rel=1e-5)


# --- cwtm -------------------------------------------------------------------------------------


def np_cwtm_weights(t: np.ndarray) -> np.ndarray:
    conf = np_softmax(t).max(axis=1)
    return conf / conf.sum()


def test_cwtm_equals_numpy_confidence_weighted_ce(batch):
    s, t, y = batch
    w = np_cwtm_weights(t.numpy())
    assert w.sum() == pytest.approx(1.0)
    want = (w * np_ce_per_sample(s.numpy(), y.numpy())).sum()
    assert get_loss("cwtm")(s, y, t).item() == pytest.approx(want, rel=1e-5)


def test_cwtm_weights_sum_to_one_and_are_constants(batch):
    # The gradient of sum_i w_i CE_i with constant w is w_i (softmax(s_i) - onehot(y_i)):
    # summing it over classes gives 0 per row, and dividing by that row's CE gradient
    # recovers w_i; the recovered weights must sum to 1.
    s, t, y = batch
    grad = student_grad(get_loss("cwtm"), s, y, t).numpy()
    onehot = np.eye(C)[y.numpy()]
    ce_grad = np_softmax(s.numpy()) - onehot
    w = (grad * ce_grad).sum(axis=1) / (ce_grad * ce_grad).sum(axis=1)
    np.testing.assert_allclose(w, np_cwtm_weights(t.numpy()), atol=1e-6)
    assert w.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(grad, w[:, None] * ce_grad, atol=1e-6)


def test_cwtm_with_equal_teacher_confidence_equals_plain_ce(batch):
    s, _, y = batch
    # Every row a permutation of the same logits: the same max probability for all samples.
    base = torch.tensor([3.0, 1.0, 0.0, -1.0, 0.5])
    g = torch.Generator().manual_seed(1)
    t = torch.stack([base[torch.randperm(C, generator=g)] for _ in range(N)])
    got = get_loss("cwtm")(s, y, t)
    assert got.item() == pytest.approx(np_ce_per_sample(s.numpy(), y.numpy()).mean(), rel=1e-5)


# --- dkpp -------------------------------------------------------------------------------------


def dkpp_target(student, targets, teacher, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return recover_soft_target(get_loss("dkpp"), student, targets, teacher, generator=g)


def test_dkpp_requires_a_generator(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="[Gg]enerator"):
        get_loss("dkpp")(s, y, t)


def test_dkpp_keeps_teacher_argmax_in_place(batch):
    s, t, y = batch
    p = torch.softmax(t, dim=1)
    rows = torch.arange(N)
    for seed in range(10):
        q = dkpp_target(s, y, t, seed)
        arg = t.argmax(dim=1)
        torch.testing.assert_close(q[rows, arg], p[rows, arg], atol=1e-6, rtol=0)
        assert torch.equal(q.argmax(dim=1), arg)


def test_dkpp_target_is_a_permutation_of_teacher_probabilities(batch):
    s, t, y = batch
    p = torch.softmax(t, dim=1)
    for seed in range(10):
        q = dkpp_target(s, y, t, seed)
        torch.testing.assert_close(q.sort(dim=1).values, p.sort(dim=1).values, atol=1e-6, rtol=0)


def test_dkpp_actually_permutes_non_argmax_positions(batch):
    s, t, y = batch
    p = torch.softmax(t, dim=1)
    not_argmax = torch.ones(N, C, dtype=torch.bool)
    not_argmax[torch.arange(N), t.argmax(dim=1)] = False
    moved = torch.zeros(N, C, dtype=torch.bool)
    for seed in range(20):
        q = dkpp_target(s, y, t, seed)
        moved |= (q - p).abs() > 1e-6
    # Over many draws every non-argmax position of every sample has changed at least once.
    assert torch.equal(moved, not_argmax)


def test_dkpp_matches_numpy_soft_ce_with_the_drawn_target(batch):
    s, t, y = batch
    q = dkpp_target(s, y, t, seed=3)
    g = torch.Generator().manual_seed(3)
    got = get_loss("dkpp")(s, y, t, generator=g)
    assert got.item() == pytest.approx(
        np_soft_ce(q.numpy().astype(np.float64), s.numpy()), rel=1e-5
    )


def test_dkpp_same_seed_same_loss_different_seed_different_target(batch):
    s, t, y = batch
    spec = get_loss("dkpp")
    a = spec(s, y, t, generator=torch.Generator().manual_seed(7))
    b = spec(s, y, t, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item()
    assert not torch.allclose(dkpp_target(s, y, t, 7), dkpp_target(s, y, t, 8))


def test_dkpp_redraws_the_permutation_each_call(batch):
    s, t, y = batch
    spec = get_loss("dkpp")
    g = torch.Generator().manual_seed(0)
    first = recover_soft_target(spec, s, y, t, generator=g)
    second = recover_soft_target(spec, s, y, t, generator=g)
    assert not torch.allclose(first, second)


def test_dkpp_is_uniform_over_non_argmax_permutations():
    # One sample, C = 4: the argmax is fixed, the other 3 positions take 3! = 6 orders,
    # each with probability 1/6.
    t = torch.tensor([[0.0, 1.0, 3.0, 2.0]])
    s = torch.zeros(1, 4)
    y = torch.tensor([2])
    g = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, ...], int] = {}
    draws = 600
    for _ in range(draws):
        q = recover_soft_target(get_loss("dkpp"), s, y, t, generator=g)
        order = tuple(q[0].argsort().tolist())
        counts[order] = counts.get(order, 0) + 1
    assert len(counts) == 6
    assert all(abs(n - draws / 6) < 45 for n in counts.values())  # ~4.4 sigma


# --- mse_logits -------------------------------------------------------------------------------


def test_mse_logits_equals_numpy_mean_over_classes_and_samples(batch):
    s, t, y = batch
    want = ((s.numpy().astype(np.float64) - t.numpy()) ** 2).mean()
    assert get_loss("mse_logits")(s, y, t).item() == pytest.approx(want, rel=1e-5)
    assert get_loss("mse_logits")(s, y, t, scale=0.5).item() == pytest.approx(want / 2, rel=1e-5)


# --- properties shared by all teacher losses --------------------------------------------------


def call(name: str, s, y, t, **kw) -> torch.Tensor:
    if name == "dkpp":
        kw.setdefault("generator", torch.Generator().manual_seed(0))
    return get_loss(name)(s, y, t, **kw)


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_no_gradient_reaches_teacher_logits(batch, name):
    s, t, y = batch
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    call(name, s, y, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_teacher_losses_reject_missing_teacher(batch, name):
    s, _, y = batch
    with pytest.raises(ValueError, match="teacher"):
        call(name, s, y, None)


@pytest.mark.parametrize("name", loss_names())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_float32_result_of_float32_computation(batch, name, dtype):
    s, t, y = batch
    s_half, t_half = s.to(dtype), t.to(dtype)
    got = call(name, s_half, y, t_half)
    want = call(name, s_half.float(), y, t_half.float())
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # and close to the full-precision loss, up to the input rounding
    assert got.item() == pytest.approx(call(name, s, y, t).item(), rel=0.05)


@pytest.mark.parametrize("name", [n for n in loss_names() if n != "dkpp"])  # dkpp: random target
def test_loss_is_mean_over_batch_not_sum(batch, name):
    # Repeating the batch twice leaves a mean unchanged (a sum would double).
    s, t, y = batch
    once = call(name, s, y, t)
    twice = call(name, s.repeat(2, 1), y.repeat(2), t.repeat(2, 1))
    assert twice.item() == pytest.approx(once.item(), rel=1e-5)


def test_mismatched_teacher_shape_is_an_error(batch):
    s, t, y = batch
    with pytest.raises(ValueError, match="shape"):
        get_loss("kd")(s, y, t[:, :-1])


def test_ce_gradient_flows_in_float32_back_to_bf16_logits(batch):
    s, _, y = batch
    s = s.to(torch.bfloat16).requires_grad_(True)
    get_loss("ce")(s, y, None).backward()
    assert s.grad.dtype == torch.bfloat16
    want = (F.softmax(s.detach().float(), 1) - F.one_hot(y, C).float()) / N
    torch.testing.assert_close(s.grad.float(), want, atol=1e-2, rtol=0)


# --- stacked logits: one call for K independent problems (a seed pack) ---------------------

LEADING = [(3,), (2, 2)]
PARAMS = {"kd": {"temperature": 2.0, "alpha": 0.7}, "ban": {"temperature": 2.0}}


def stacked_batch(leading: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    student = torch.randn(*leading, N, C, generator=g) * 2
    teacher = torch.randn(*leading, N, C, generator=g) * 3
    targets = torch.randint(0, C, (*leading, N), generator=g)
    return student, teacher, targets


def seeded_generators(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(count)]


@pytest.mark.parametrize("leading", LEADING)
@pytest.mark.parametrize("name", loss_names())
def test_stacked_call_gives_each_slice_exactly_its_own_loss_and_gradient(name, leading):
    # What the seed pack relies on: one call on [..., N, C] is, bit for bit, the plain call
    # on each [N, C] slice, in value and in the gradient that reaches the slice.
    s, t, y = stacked_batch(leading)
    blocks = int(np.prod(leading))
    kw = dict(PARAMS.get(name, {}))
    stacked = s.clone().requires_grad_(True)
    if name == "dkpp":
        kw["generator"] = seeded_generators(blocks)
    out = get_loss(name)(stacked, y, t, **kw)
    assert out.shape == leading and out.dtype == torch.float32
    out.sum().backward()

    generators = seeded_generators(blocks)
    for b, index in enumerate(np.ndindex(*leading)):
        if name == "dkpp":
            kw["generator"] = generators[b]
        alone = s[index].clone().requires_grad_(True)
        value = get_loss(name)(alone, y[index], t[index], **kw)
        value.backward()
        assert value.dim() == 0
        assert torch.equal(out[index], value), (name, index)
        assert torch.equal(stacked.grad[index], alone.grad), (name, index)


@pytest.mark.parametrize("name", loss_names())
def test_a_slice_of_a_stacked_call_does_not_depend_on_the_other_slices(name):
    s, t, y = stacked_batch((3,))
    kw = {"generator": seeded_generators(3)} if name == "dkpp" else {}
    before = get_loss(name)(s, y, t, **kw)
    s2, t2 = s.clone(), t.clone()
    s2[1], t2[1] = s[1] * -5 + 1, t[1].flip(-1) * 3  # another seed's, wildly different
    kw = {"generator": seeded_generators(3)} if name == "dkpp" else {}
    after = get_loss(name)(s2, y, t2, **kw)
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    assert not torch.equal(after[1], before[1])


def test_dkpp_with_one_generator_for_stacked_logits_draws_the_slices_one_after_another():
    s, t, y = stacked_batch((3,))
    out = get_loss("dkpp")(s, y, t, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    for k in range(3):
        assert torch.equal(out[k], get_loss("dkpp")(s[k], y[k], t[k], generator=g))


@pytest.mark.parametrize("count", [2, 4])
def test_dkpp_needs_one_generator_per_leading_index(count):
    s, t, y = stacked_batch((3,))
    with pytest.raises(ValueError, match="one per leading index"):
        get_loss("dkpp")(s, y, t, generator=seeded_generators(count))


@pytest.mark.parametrize("name", ["ce", "kd", "ban_l", "cwtm"])  # the losses that use labels
def test_targets_must_have_the_logits_leading_shape(name):
    s, t, y = stacked_batch((3,))
    with pytest.raises(ValueError, match="targets shape"):
        get_loss(name)(s, y.flatten(), t)


def test_logits_without_a_class_dimension_are_an_error():
    with pytest.raises(ValueError, match=r"\[\.\.\., N, C\]"):
        get_loss("ce")(torch.zeros(N), torch.zeros(N, dtype=torch.long))
