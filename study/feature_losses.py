"""Feature-based distillation: losses on inner activations, their taps and connectors.

A role distils features when its arm has a ``features`` table::

    loss = "ce"                                     # or { name = "kd", ... }
    features = { method = "at", weight = 1000.0 }   # taps: the method's defaults

Its training loss is the arm's logit loss (``study.losses``) plus ``weight`` times the
feature loss, as RepDistiller combines them (``-r 1 -a 0 -b <weight>``). Four methods:

- ``fitnet`` (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): a regressor (the
  *connector*) from the student's guided layer to the teacher's hint layer, L2 between
  them (mean squared error); one-stage with weight 100 (RepDistiller's ``-b 100``), or
  the paper's two-stage procedure with ``hint_epochs > 0``: those first epochs train only
  the student up to its guided layer, and the connector, on the hint loss alone.
- ``at`` (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): attention
  map Q = vec(mean_c |A_c|^p), L2-normalised per example; loss = sum over tap pairs of
  mean((Q_s - Q_t)^2), weight 1000 (the paper's code's beta and RepDistiller's ``-b``).
- ``sp`` (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"): per batch
  G = row-L2-normalised F F^T of the flattened activations F [b, d]; loss = sum over tap
  pairs of ||G_s - G_t||_F^2 / b^2, weight 3000.
- ``rkd`` (Park et al. 2019, "Relational Knowledge Distillation"): on embeddings, the
  distance-wise potential (pairwise distances divided by their mean over distinct pairs)
  and the angle-wise one (cosines of the angles at each anchor), each through the Huber
  (smooth L1) loss; loss = 25 * distance + 50 * angle (the paper's weights), weight 1.

Each method declares its parameters as ``ParamRule``s (validated with the protocol), its
default taps (paper-following: ``at`` every stage, ``fitnet`` the middle stage, ``sp`` the
last stage, ``rkd`` the embedding) and what joins a student tap to a teacher tap. Teacher
features are constants (detached); the arithmetic is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.errors import UserInputError
from study.losses import ParamRule
from study.models.taps import EMBEDDING

Shape = tuple[int, ...]

FeatureLossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class FeatureMethod:
    """A registered feature loss: its function, parameters, default taps and joins.

    ``join`` says what a (student, teacher) tap pair needs: ``"regressor"`` (a connector
    maps the student's tap onto the teacher's shape: maps of the same spatial size, or two
    embeddings), ``"same_map"`` (feature maps of the same spatial size, channels free),
    ``"batch"`` (anything: only the batch is shared), ``"vector"`` (embeddings)."""

    name: str
    fn: FeatureLossFn
    weight: float
    join: str
    default_taps: Callable[[list[str], list[str]], tuple[list[str], list[str]]]
    params: dict[str, ParamRule] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


_METHODS: dict[str, FeatureMethod] = {}


def feature_method_names() -> list[str]:
    return sorted(_METHODS)


def get_feature_method(name: object) -> FeatureMethod:
    """The method registered as ``name``; UserInputError listing the allowed names."""
    if not isinstance(name, str) or name not in _METHODS:
        raise UserInputError(
            f"unknown feature method {name!r}; allowed: {', '.join(feature_method_names())}",
            field="method",
        )
    return _METHODS[name]


def _register(method: FeatureMethod) -> None:
    _METHODS[method.name] = method


# --- the four losses (unweighted; lists of tap tensors, one pair per index) --------------


def _pairs(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student taps for {len(teacher)} teacher taps")
    return [(s.float(), t.detach().float()) for s, t in zip(student, teacher, strict=True)]


def fitnet_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """FitNets hint loss (Romero et al. 2015, Eq. 3, as a mean): sum over tap pairs of
    mean((r(v_s) - u_t)^2), the student's taps already mapped by their connectors r."""
    return sum(F.mse_loss(s, t) for s, t in _pairs(student, teacher))


def attention_map(a: Tensor, p: float) -> Tensor:
    """Q = vec(mean_c |a_c|^p), L2-normalised per example: [N, H*W]."""
    return F.normalize(a.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], *, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, Eq. 2 in the code's form): sum over
    tap pairs of mean_{i,j} (Q_s - Q_t)_{ij}^2, Q = vec(mean_c |a_c|^p) / ||.||_2 per example."""
    return sum(
        (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
        for s, t in _pairs(student, teacher)
    )


def _similarity(a: Tensor) -> Tensor:
    f = a.flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019, Eq. 4): sum over tap pairs of
    ||G_s - G_t||_F^2 / b^2, G = row-normalised F F^T of the flattened activations."""
    total = 0
    for s, t in _pairs(student, teacher):
        b = s.shape[0]
        total = total + (_similarity(s) - _similarity(t)).pow(2).sum() / (b * b)
    return total


def _distances(e: Tensor) -> Tensor:
    """Pairwise Euclidean distances [N, N] with an exact zero diagonal (no sqrt of 0 in
    the graph: its gradient would be infinite)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp(min=1e-12)
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    return torch.where(eye, torch.zeros_like(d2), d2.sqrt())


def _normalised_distances(e: Tensor) -> Tensor:
    d = _distances(e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean()


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at anchor a between b and c: <n(e_b - e_a), n(e_c - e_a)>, [N^3]
    (0 where b or c is the anchor)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD (Park et al. 2019, Eqs. 4-7): per tap pair, Huber (smooth L1, delta 1)
    of the normalised pairwise distances, mean over N^2, times distance_weight, plus
    Huber of the angle cosines, mean over N^3, times angle_weight."""
    total = 0
    for s, t in _pairs(student, teacher):
        s, t = s.flatten(1), t.flatten(1)
        dist = F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))
        angle = F.smooth_l1_loss(_angles(s), _angles(t))
        total = total + distance_weight * dist + angle_weight * angle
    return total


# --- default taps --------------------------------------------------------------------------


def _stages(names: list[str]) -> list[str]:
    return [n for n in names if n != EMBEDDING]


def _every_common_stage(s: list[str], t: list[str]) -> tuple[list[str], list[str]]:
    common = [n for n in _stages(s) if n in _stages(t)]
    return common, common


def _middle_stage(s: list[str], t: list[str]) -> tuple[list[str], list[str]]:
    # RepDistiller's hint_layer = 2: of three stages the second, the middle one
    ss, ts = _stages(s), _stages(t)
    return [ss[len(ss) // 2]], [ts[len(ts) // 2]]


def _last_stage(s: list[str], t: list[str]) -> tuple[list[str], list[str]]:
    return [_stages(s)[-1]], [_stages(t)[-1]]


def _embedding(s: list[str], t: list[str]) -> tuple[list[str], list[str]]:
    return [EMBEDDING], [EMBEDDING]


_WEIGHT_DOC = "multiplier of the feature loss added to the logit loss"

_register(
    FeatureMethod(
        "fitnet",
        fitnet_loss,
        100.0,
        "regressor",
        _middle_stage,
        {
            "hint_epochs": ParamRule(
                0.0,
                "epochs of the paper's first stage (hint training of the student up to the "
                "guided layer and the connector, hint loss only); 0: one-stage",
                low=0.0,
            )
        },
    )
)
_register(
    FeatureMethod(
        "at",
        at_loss,
        1000.0,
        "same_map",
        _every_common_stage,
        {"p": ParamRule(2.0, "power of |a| in the attention map", low=0.0, low_open=True)},
    )
)
_register(FeatureMethod("sp", sp_loss, 3000.0, "batch", _last_stage))
_register(
    FeatureMethod(
        "rkd",
        rkd_loss,
        1.0,
        "vector",
        _embedding,
        {
            "distance_weight": ParamRule(25.0, "weight of the distance-wise term", low=0.0),
            "angle_weight": ParamRule(50.0, "weight of the angle-wise term", low=0.0),
        },
    )
)


# --- a role's resolved feature configuration ------------------------------------------------

_KEYS = {"method", "weight", "student_taps", "teacher_taps"}


def resolve_features(
    given: Mapping[str, Any],
    student_shapes: Mapping[str, Shape],
    teacher_shapes: Mapping[str, Shape],
) -> dict[str, Any]:
    """An arm's ``features`` table, defaults filled in and checked against the taps the
    student's and the teacher's architectures have (``tap_shapes``: name -> shape; with
    unknown shapes, pass shapes of ``()`` and only the names are checked).

    Returns plain data (what a role fingerprints): method, weight, params, the tap pairs
    and the connector of each pair. UserInputError with ``field`` set to the offending key.
    """
    method = get_feature_method(given.get("method"))
    unknown = [k for k in given if k not in _KEYS and k not in method.params]
    if unknown:
        accepted = ", ".join(sorted(_KEYS | set(method.params)))
        raise UserInputError(
            f"unknown key {unknown[0]!r} for feature method '{method.name}'; accepted: {accepted}",
            field=unknown[0],
        )
    weight = ParamRule(method.weight, _WEIGHT_DOC, low=0.0).check(
        "weight", given.get("weight", method.weight)
    )
    params = {k: rule.check(k, given.get(k, rule.default)) for k, rule in method.params.items()}
    if "hint_epochs" in params and not float(params["hint_epochs"]).is_integer():
        raise UserInputError("hint_epochs must be a whole number of epochs", field="hint_epochs")
    s_names, t_names = list(student_shapes), list(teacher_shapes)
    s_default, t_default = method.default_taps(s_names, t_names)
    s_taps = _tap_list(given, "student_taps", s_default, s_names, "student")
    t_taps = _tap_list(
        given,
        "teacher_taps",
        t_default if "student_taps" not in given else s_taps,
        t_names,
        "teacher",
    )
    if len(s_taps) != len(t_taps):
        raise UserInputError(
            f"{len(s_taps)} student taps for {len(t_taps)} teacher taps: they pair by position",
            field="teacher_taps",
        )
    connectors = [
        _join(method, s, t, student_shapes[s], teacher_shapes[t])
        for s, t in zip(s_taps, t_taps, strict=True)
    ]
    return {
        "method": method.name,
        "weight": weight,
        "params": params,
        "student_taps": s_taps,
        "teacher_taps": t_taps,
        "connectors": connectors,
    }


def _tap_list(
    given: Mapping[str, Any], key: str, default: list[str], names: list[str], whose: str
) -> list[str]:
    taps = given.get(key, default)
    if isinstance(taps, str):
        taps = [taps]
    if not isinstance(taps, list) or not taps or not all(isinstance(x, str) for x in taps):
        raise UserInputError(
            f"{key} must be a non-empty list of tap names, got {taps!r}", field=key
        )
    for tap in taps:
        if tap not in names:
            raise UserInputError(
                f"the {whose}'s architecture has no tap {tap!r}; it has {', '.join(names)}",
                field=key,
            )
    return list(taps)


def _join(method: FeatureMethod, s: str, t: str, ss: Shape, ts: Shape) -> str | None:
    """The connector that joins tap ``s`` (shape ``ss``) to ``t`` (``ts``): ``"conv1x1_bn"``,
    ``"linear"`` or None (none needed); UserInputError when nothing can join them."""
    if not ss or not ts:  # shapes unknown before the data are read: names only
        return None if method.join != "regressor" else "unknown"

    def refuse(why: str) -> None:
        raise UserInputError(
            f"'{method.name}' cannot pair student tap {s!r} {list(ss)} with teacher tap "
            f"{t!r} {list(ts)}: {why}",
            field="teacher_taps",
        )

    if method.join == "regressor":
        if len(ss) == 3 and len(ts) == 3:
            if ss[1:] != ts[1:]:
                refuse("a 1x1-conv connector needs maps of the same spatial size")
            return "conv1x1_bn"
        if len(ss) == 1 and len(ts) == 1:
            return "linear"
        refuse("a connector joins two feature maps or two embeddings")
    if method.join == "same_map":
        if len(ss) != 3 or len(ts) != 3 or ss[1:] != ts[1:]:
            refuse("attention maps need feature maps of the same spatial size")
    if method.join == "vector" and (len(ss) != 1 or len(ts) != 1):
        refuse("relational potentials are taken on embeddings (vectors)")
    return None


def connector_for(kind: str | None, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
    """The regressor of one tap pair (``nn.Identity`` where none is needed); ``"unknown"``
    (shapes not known at validation) is decided here from the shapes."""
    if kind == "unknown":
        kind = "conv1x1_bn" if len(student_shape) == 3 else "linear"
    if kind == "conv1x1_bn":
        return nn.Sequential(
            nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False),
            nn.BatchNorm2d(teacher_shape[0]),
        )
    if kind == "linear":
        return nn.Linear(student_shape[0], teacher_shape[0])
    return nn.Identity()


class FeatureTerm(nn.Module):
    """A role's feature term: its connectors (trained with the student, in the student's
    optimizer, saved in its checkpoint, never part of the evaluated model) and the weighted
    loss over its tap pairs."""

    def __init__(
        self,
        features: Mapping[str, Any],
        student_shapes: Mapping[str, Shape],
        teacher_shapes: Mapping[str, Shape],
    ):
        super().__init__()
        self.method = get_feature_method(features["method"])
        self.weight = float(features["weight"])
        self.params = dict(features["params"])
        self.student_taps = list(features["student_taps"])
        self.teacher_taps = list(features["teacher_taps"])
        self.connectors = nn.ModuleList(
            connector_for(kind, student_shapes[s], teacher_shapes[t])
            for kind, s, t in zip(
                features["connectors"], self.student_taps, self.teacher_taps, strict=True
            )
        )
        self.hint_epochs = int(self.params.pop("hint_epochs", 0))

    def loss(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        """The unweighted feature loss of one step (student taps through the connectors)."""
        # float32: taps recorded under autocast (bf16, fp16) meet float32 connector weights
        mapped = [c(s.float()) for c, s in zip(self.connectors, student, strict=True)]
        return self.method.fn(mapped, teacher, **self.params)

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
        return self.weight * self.loss(student, teacher)
