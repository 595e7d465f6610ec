"""The four feature losses against independent float64 computations of the papers' formulas
(values and gradients), their defaults against the papers' code, and the connectors.

The references below are written from the papers' equations, element by element in
float64, and call nothing in ``study.feature_losses``."""

from __future__ import annotations

import math

import pytest
import torch

from study.errors import UserInputError
from study.feature_losses import (
    FeatureTerm,
    at_loss,
    fitnet_loss,
    get_feature_method,
    resolve_features,
    rkd_loss,
    sp_loss,
)

# --- float64 references, from the papers -------------------------------------------------


def ref_fitnet(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Romero et al. 2015, Eq. 3 as a mean over the hint's elements
    total = torch.zeros((), dtype=torch.float64)
    flat_s, flat_t = s.reshape(-1), t.reshape(-1)
    for i in range(flat_s.numel()):
        total = total + (flat_s[i] - flat_t[i]) ** 2
    return total / flat_s.numel()


def ref_attention(a: torch.Tensor, p: float) -> list[list[torch.Tensor]]:
    # Zagoruyko & Komodakis 2017: F(A) = sum_c |A_c|^p (mean: the code's 1/C), then Q/||Q||_2
    n, c, h, w = a.shape
    maps = []
    for i in range(n):
        q = []
        for y in range(h):
            for x in range(w):
                v = torch.zeros((), dtype=torch.float64)
                for k in range(c):
                    v = v + a[i, k, y, x].abs() ** p
                q.append(v / c)
        norm = torch.sqrt(sum(v * v for v in q))
        maps.append([v / norm for v in q])
    return maps


def ref_at(s: torch.Tensor, t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    qs, qt = ref_attention(s, p), ref_attention(t, p)
    diffs = [
        (a - b) ** 2
        for row_s, row_t in zip(qs, qt, strict=True)
        for a, b in zip(row_s, row_t, strict=True)
    ]
    return sum(diffs) / len(diffs)


def ref_sp(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # Tung & Mori 2019, Eqs. 2-4: G = Q Q^T, rows L2-normalised; ||G_s - G_t||_F^2 / b^2
    def gram(a: torch.Tensor) -> list[list[torch.Tensor]]:
        f = a.reshape(a.shape[0], -1)
        b = f.shape[0]
        rows = []
        for i in range(b):
            row = [sum(f[i, d] * f[j, d] for d in range(f.shape[1])) for j in range(b)]
            norm = torch.sqrt(sum(v * v for v in row))
            rows.append([v / norm for v in row])
        return rows

    gs, gt = gram(s), gram(t)
    b = len(gs)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def huber(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * x if x.abs() < 1 else x.abs() - 0.5


def ref_rkd(s: torch.Tensor, t: torch.Tensor, wd: float = 25.0, wa: float = 50.0) -> torch.Tensor:
    # Park et al. 2019, Eqs. 4-7: psi_D = ||e_i - e_j|| / mu, mu the mean over distinct pairs;
    # psi_A = <(e_i - e_j)/||.||, (e_k - e_j)/||.||> at anchor j; Huber loss, means
    n = s.shape[0]

    def dist(e: torch.Tensor) -> list[list[torch.Tensor]]:
        d = [
            [
                torch.sqrt(((e[i] - e[j]) ** 2).sum()) if i != j else torch.zeros((), dtype=e.dtype)
                for j in range(n)
            ]
            for i in range(n)
        ]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[v / mu for v in row] for row in d]

    def angles(e: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    if b == a or c == a:
                        out.append(torch.zeros((), dtype=e.dtype))
                        continue
                    u, v = e[b] - e[a], e[c] - e[a]
                    out.append((u * v).sum() / torch.sqrt((u * u).sum() * (v * v).sum()))
        return out

    ds, dt = dist(s), dist(t)
    distance = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    as_, at_ = angles(s), angles(t)
    angle = sum(huber(x - y) for x, y in zip(as_, at_, strict=True)) / n**3
    return wd * distance + wa * angle


# --- the comparison ---------------------------------------------------------------------


def compare(ours, ref, s64: torch.Tensor, t64: torch.Tensor) -> tuple[float, float]:
    """Max abs difference of value and of the gradient w.r.t. the student's activations:
    ours in float32, the reference in float64."""
    s32 = s64.float().requires_grad_(True)
    value = ours([s32], [t64.float()])
    (grad,) = torch.autograd.grad(value, s32)
    s_ref = s64.clone().requires_grad_(True)
    expected = ref(s_ref, t64)
    (grad_ref,) = torch.autograd.grad(expected, s_ref)
    return abs(value.item() - expected.item()), float((grad.double() - grad_ref).abs().max())


def maps(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


CASES = {
    "fitnet": (fitnet_loss, ref_fitnet, (4, 3, 3, 3), 1e-6),
    "at": (at_loss, ref_at, (4, 3, 3, 3), 1e-6),
    "sp": (sp_loss, ref_sp, (5, 2, 3, 3), 1e-6),
    "rkd": (rkd_loss, ref_rkd, (5, 4), 1e-5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_feature_loss_matches_float64_reference_value_and_gradient(name):
    ours, ref, shape, tol = CASES[name]
    s, t = maps(1, shape), maps(2, shape)
    if name == "at":  # channels may differ between student and teacher
        t = maps(2, (shape[0], 5, *shape[2:]))
    value_diff, grad_diff = compare(ours, ref, s, t)
    assert value_diff < tol, value_diff
    assert grad_diff < tol, grad_diff


def test_rkd_huber_branch_beyond_one_is_checked_too():
    # scaled embeddings put some normalised-distance differences beyond delta = 1
    s, t = maps(3, (5, 4)), maps(4, (5, 4))
    s[0] *= 20
    value_diff, grad_diff = compare(rkd_loss, ref_rkd, s, t)
    assert value_diff < 1e-5 and grad_diff < 1e-5


def test_feature_losses_are_zero_when_student_equals_teacher_and_teacher_gets_no_gradient():
    a = maps(5, (4, 3, 4, 4)).float()
    e = maps(6, (6, 8)).float()
    for fn, x in ((fitnet_loss, a), (at_loss, a), (sp_loss, a), (rkd_loss, e)):
        assert float(fn([x], [x])) == pytest.approx(0.0, abs=1e-6)
        s, t = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        fn([s * 2 + 1], [t]).backward()
        assert s.grad is not None
        assert t.grad is None  # the teacher is a constant


def test_default_weights_follow_the_papers_code():
    # RepDistiller: -b 100 hint, 1000 attention, 3000 similarity, 1 rkd (w_d 25, w_a 50);
    # attention transfer's own code: beta = 1e3, p = 2
    assert get_feature_method("fitnet").weight == 100.0
    assert get_feature_method("at").weight == 1000.0
    assert get_feature_method("at").params["p"].default == 2.0
    assert get_feature_method("sp").weight == 3000.0
    rkd = get_feature_method("rkd")
    assert rkd.weight == 1.0
    assert rkd.params["distance_weight"].default == 25.0
    assert rkd.params["angle_weight"].default == 50.0


WRN = {"stage1": (32, 32, 32), "stage2": (64, 16, 16), "stage3": (128, 8, 8), "embedding": (128,)}
WIDE = {"stage1": (64, 32, 32), "stage2": (128, 16, 16), "stage3": (256, 8, 8), "embedding": (256,)}


def test_default_taps_follow_the_papers():
    assert resolve_features({"method": "at"}, WRN, WIDE)["student_taps"] == [
        "stage1",
        "stage2",
        "stage3",
    ]
    fit = resolve_features({"method": "fitnet"}, WRN, WIDE)
    assert (fit["student_taps"], fit["teacher_taps"]) == (["stage2"], ["stage2"])
    assert fit["connectors"] == ["conv1x1_bn"]
    assert resolve_features({"method": "sp"}, WRN, WIDE)["teacher_taps"] == ["stage3"]
    rkd = resolve_features({"method": "rkd"}, WRN, WIDE)
    assert rkd["student_taps"] == ["embedding"] and rkd["connectors"] == [None]
    emb = resolve_features({"method": "fitnet", "student_taps": ["embedding"]}, WRN, WIDE)
    assert emb["connectors"] == ["linear"]


@pytest.mark.parametrize(
    "given, field",
    [
        ({"method": "nope"}, "method"),
        ({"method": "at", "student_taps": ["stage9"]}, "student_taps"),
        ({"method": "at", "student_taps": ["stage1"], "teacher_taps": ["stage2"]}, "teacher_taps"),
        (
            {"method": "fitnet", "student_taps": ["stage1"], "teacher_taps": ["embedding"]},
            "teacher_taps",
        ),
        ({"method": "rkd", "student_taps": ["stage3"]}, "teacher_taps"),
        ({"method": "sp", "weight": -1.0}, "weight"),
        ({"method": "sp", "p": 2.0}, "p"),
    ],
)
def test_taps_no_connector_can_join_are_refused_naming_the_field(given, field):
    with pytest.raises(UserInputError) as e:
        resolve_features(given, WRN, WIDE)
    assert e.value.field == field


def test_feature_term_weights_the_loss_and_trains_its_connector():
    torch.manual_seed(0)
    features = resolve_features({"method": "fitnet", "weight": 3.0}, WRN, WIDE)
    term = FeatureTerm(features, WRN, WIDE)
    s, t = torch.randn(2, 64, 16, 16), torch.randn(2, 128, 16, 16)
    value = term([s], [t])
    assert math.isclose(value.item(), 3.0 * term.loss([s], [t]).item(), rel_tol=1e-6)
    value.backward()
    assert term.connectors[0][0].weight.grad is not None


def test_feature_term_takes_half_precision_taps_in_float32() -> None:
    torch.manual_seed(0)
    term = FeatureTerm(resolve_features({"method": "fitnet"}, WRN, WIDE), WRN, WIDE)
    s, t = torch.randn(2, 64, 16, 16), torch.randn(2, 128, 16, 16)
    value = term([s.bfloat16()], [t.bfloat16()])
    assert value.dtype == torch.float32
    assert math.isclose(value.item(), term([s.bfloat16().float()], [t]).item(), rel_tol=1e-2)
