"""Training losses: one function per loss, registered by name, one way in (``get_loss``).

Every loss has the same call shape::

    spec = get_loss("kd")
    loss = spec(student_logits, targets, teacher_logits, generator=g, temperature=4.0)

and returns a float32 scalar, the mean over the batch. Two promises hold for all of them:

- the teacher is a constant: its logits are detached inside, so a caller's mistake cannot
  send gradients into the teacher;
- the arithmetic is float32 even when the logits come in bf16/fp16 (autocast), because
  log-softmax and KL terms lose too much in half precision.

Parameters are declared per loss as ``ParamRule``s (default, allowed range, doc), so that a
protocol can be validated before anything trains (``resolve_loss_params``). Temperature and
alpha may be given as the string ``"tuned"``; the tuner replaces it with a number later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from study.errors import UserInputError

TUNED = "tuned"
"""The placeholder value a protocol gives to a parameter that tuning fills in later."""


@dataclass(frozen=True)
class ParamRule:
    """One loss parameter: its default, its allowed range and what it means.

    ``low``/``high`` are bounds (``None``: unbounded); ``low_open``/``high_open`` make a
    bound exclusive. ``tunable`` parameters also accept the string ``"tuned"``.
    """

    default: float
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    tunable: bool = False

    def allowed(self) -> str:
        """The allowed range in words: ``"in [0, 1]"``, ``"> 0"``, ``">= 0"``."""
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "a finite number"

    def check(self, name: str, value: Any) -> float | str:
        """The value as it will be used (a float, or ``"tuned"``); UserInputError if not allowed."""
        if isinstance(value, str) and value == TUNED:
            if self.tunable:
                return TUNED
            raise UserInputError(f"{name} cannot be '{TUNED}'; give a number", field=name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            tuned = f" or '{TUNED}'" if self.tunable else ""
            raise UserInputError(f"{name} must be a number{tuned}, got {value!r}", field=name)
        x = float(value)
        too_low = self.low is not None and (x <= self.low if self.low_open else x < self.low)
        too_high = self.high is not None and (x >= self.high if self.high_open else x > self.high)
        if not math.isfinite(x) or too_low or too_high:
            raise UserInputError(f"{name} must be {self.allowed()}, got {value!r}", field=name)
        return x


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class LossFn(Protocol):
    def __call__(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None,
        *,
        generator: torch.Generator | None = None,
        **params: float,
    ) -> Tensor: ...


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its name, whether it needs a teacher, its parameters, its function.

    Calling the spec fills defaults and validates the parameters, then calls the function.
    """

    name: str
    fn: LossFn
    needs_teacher: bool
    params: dict[str, ParamRule] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """The loss function's docstring: formula and source."""
        return (self.fn.__doc__ or "").strip()

    def __call__(
        self,
        student_logits: Tensor,
        targets: Tensor,
        teacher_logits: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        **params: Any,
    ) -> Tensor:
        resolved = resolve_loss_params(self.name, params)
        pending = [k for k, v in resolved.items() if v == TUNED]
        if pending:
            raise ValueError(
                f"loss '{self.name}': {', '.join(pending)} still '{TUNED}'; "
                "replace it with the tuned value before training"
            )
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"loss '{self.name}' needs teacher_logits, got None")
        return self.fn(student_logits, targets, teacher_logits, generator=generator, **resolved)


_LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, needs_teacher: bool, params: Mapping[str, ParamRule] | None = None
) -> Callable[[LossFn], LossFn]:
    """Register a loss function under ``name``; the function itself is returned unchanged."""

    def decorate(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss '{name}' is already registered")
        _LOSSES[name] = LossSpec(name, fn, needs_teacher, dict(params or {}))
        return fn

    return decorate


def loss_names() -> list[str]:
    """The names of all registered losses, sorted."""
    return sorted(_LOSSES)


def get_loss(name: str) -> LossSpec:
    """The loss registered as ``name``; UserInputError listing the allowed names otherwise."""
    try:
        return _LOSSES[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown loss {name!r}; allowed: {', '.join(loss_names())}") from None


def resolve_loss_params(name: str, params: Mapping[str, Any] | None) -> dict[str, float | str]:
    """The loss's parameters with defaults filled in and every value checked.

    Numbers come back as floats (so ``4`` and ``4.0`` fingerprint the same); ``"tuned"`` is
    kept as-is for tunable parameters. Unknown names and out-of-range values raise
    UserInputError with ``field`` set to the parameter's name.
    """
    spec = get_loss(name)
    given = dict(params or {})
    for key in given:
        if key not in spec.params:
            accepted = ", ".join(sorted(spec.params)) or "none"
            raise UserInputError(
                f"unknown parameter {key!r} for loss '{name}'; accepted: {accepted}",
                field=str(key),
            )
    return {key: rule.check(key, given.get(key, rule.default)) for key, rule in spec.params.items()}


# --- parameter rules shared by several losses -------------------------------------------

_TEMPERATURE_KD = ParamRule(
    4.0, "softmax temperature T of teacher and student", low=0.0, low_open=True, tunable=True
)
_TEMPERATURE_1 = ParamRule(
    1.0, "softmax temperature T of teacher and student", low=0.0, low_open=True, tunable=True
)
_ALPHA = ParamRule(
    0.9,
    "weight of the distillation (soft) term; 1 - alpha weights the label cross-entropy",
    low=0.0,
    high=1.0,
    tunable=True,
)


# --- helpers -----------------------------------------------------------------------------


def _student(student_logits: Tensor) -> Tensor:
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be [N, C], got shape {tuple(student_logits.shape)}")
    return student_logits.float()


def _teacher(teacher_logits: Tensor | None, student_logits: Tensor, loss: str) -> Tensor:
    """The teacher's logits as a float32 constant (detached: no gradient reaches the teacher)."""
    if teacher_logits is None:
        raise ValueError(f"loss '{loss}' needs teacher_logits, got None")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"loss '{loss}': teacher_logits shape {tuple(teacher_logits.shape)} differs from "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    return teacher_logits.detach().float()


def _soft_cross_entropy(target_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """-sum_c q_c log p_c, summed over classes, mean over samples."""
    return -(target_probs * student_log_probs).sum(dim=1).mean()


# --- the losses --------------------------------------------------------------------------


@register_loss(
    "ce",
    needs_teacher=False,
    params={
        "label_smoothing": ParamRule(
            0.0,
            "label smoothing epsilon (0: plain one-hot targets)",
            low=0.0,
            high=1.0,
            high_open=True,
        )
    },
)
def ce(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy with the labels: mean_i -log softmax(s_i)[y_i].

    With label smoothing eps the target is (1 - eps) * onehot(y) + eps / C (Szegedy et al.
    2016, "Rethinking the Inception Architecture"). The teacher, if given, is ignored.
    """
    return F.cross_entropy(_student(student_logits), targets, label_smoothing=label_smoothing)


@register_loss("kd", needs_teacher=True, params={"temperature": _TEMPERATURE_KD, "alpha": _ALPHA})
def kd(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network"):

        loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    ``alpha`` weights the distillation (soft) term, ``1 - alpha`` the label term. The KL is
    summed over classes and averaged over samples ("batchmean"), not averaged over all
    elements. The T^2 factor keeps the soft term's gradient magnitude comparable across T
    (its gradient is T * (softmax(s/T) - softmax(t/T)) / N).
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "kd")
    log_p_student = F.log_softmax(s / temperature, dim=1)
    log_p_teacher = F.log_softmax(t / temperature, dim=1)
    # batchmean, not mean: reduction="mean" would also divide by C (Hinton 2015 T^2 scaling
    # assumes the per-sample KL).
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def _ban_term(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    soft = _soft_cross_entropy(F.softmax(t / temperature, dim=1), F.log_softmax(s / temperature, 1))
    return temperature**2 * soft


@register_loss("ban", needs_teacher=True, params={"temperature": _TEMPERATURE_1})
def ban(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Born-again distillation from the teacher's distribution only, no labels (Furlanello
    et al. 2018, "Born Again Neural Networks", ICML, Sec. 3):

        loss = T^2 * mean_i [ -sum_c softmax(t_i / T)_c * log softmax(s_i / T)_c ]

    At the paper's T = 1 this is the plain soft cross-entropy, with gradient
    (softmax(s) - softmax(t)) / N. The T^2 factor (1 at T = 1) keeps the gradient scale
    comparable across T, as in ``kd``.
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "ban")
    return _ban_term(s, t, temperature)


@register_loss(
    "ban_l",
    needs_teacher=True,
    params={
        "temperature": _TEMPERATURE_1,
        "label_weight": ParamRule(1.0, "weight of the label cross-entropy term", low=0.0),
    },
)
def ban_l(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    label_weight: float = 1.0,
) -> Tensor:
    """Born-again loss plus the label cross-entropy (Furlanello et al. 2018, the variant
    trained with both the teacher's output and the ground-truth labels):

        loss = ban(s, t; T) + label_weight * CE(s, y)
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "ban_l")
    return _ban_term(s, t, temperature) + label_weight * F.cross_entropy(s, targets)


@register_loss("cwtm", needs_teacher=True)
def cwtm(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Confidence-Weighted by Teacher Max (Furlanello et al. 2018, Eq. 10): the label
    cross-entropy of each sample weighted by the teacher's confidence in it,

        w_i = max_c softmax(t_i)_c / sum_j max_c softmax(t_j)_c,
        loss = sum_i w_i * CE(s_i, y_i).

    The weights sum to 1 over the batch (so equal confidences give the plain mean CE) and
    are constants: no gradient flows through them.
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "cwtm")
    confidence = F.softmax(t, dim=1).amax(dim=1)
    weights = confidence / confidence.sum()
    return (weights * F.cross_entropy(s, targets, reduction="none")).sum()


def _permute_non_argmax(probs: Tensor, argmax: Tensor, generator: torch.Generator) -> Tensor:
    """``probs`` with each row's entries other than ``argmax`` randomly permuted in place.

    Vectorised: random sort keys give each row a random order of its source positions, with
    the argmax's key forced to sort last; the destination positions are the row's positions
    in ascending order with the argmax also moved last. Pairing the two lists gives a
    permutation that maps the argmax to itself and shuffles the rest uniformly.
    """
    n, c = probs.shape
    keys = torch.rand((n, c), generator=generator, device=generator.device).to(probs.device)
    positions = torch.arange(c, device=probs.device).expand(n, c)
    is_argmax = positions == argmax.unsqueeze(1)
    sources = torch.argsort(keys.masked_fill(is_argmax, 2.0), dim=1)
    destinations = torch.argsort(torch.where(is_argmax, c, positions), dim=1, stable=True)
    permutation = torch.empty_like(sources).scatter_(1, destinations, sources)
    return probs.gather(1, permutation)


@register_loss("dkpp", needs_teacher=True)
def dkpp(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dark Knowledge with Permuted Predictions (Furlanello et al. 2018, Eq. 11): the soft
    cross-entropy against the teacher's distribution whose non-argmax probabilities are
    randomly permuted within each sample, the argmax probability staying in place:

        q_i = permute_{c != argmax t_i}(softmax(t_i)),  loss = mean_i -sum_c q_ic log softmax(s_i)_c

    A fresh permutation is drawn from ``generator`` on every call (required, so that runs are
    reproducible). This keeps the teacher's confidence in its prediction and destroys the
    information in which wrong classes it finds similar ("dark knowledge").
    """
    if generator is None:
        raise ValueError("loss 'dkpp' needs a seeded torch.Generator (generator=...), got None")
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "dkpp")
    target = _permute_non_argmax(F.softmax(t, dim=1), t.argmax(dim=1), generator)
    return _soft_cross_entropy(target, F.log_softmax(s, dim=1))


@register_loss(
    "mse_logits",
    needs_teacher=True,
    params={"scale": ParamRule(1.0, "multiplier of the squared error", low=0.0, low_open=True)},
)
def mse_logits(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: torch.Generator | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Logit matching (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"):

        loss = scale * mean_{i,c} (s_ic - t_ic)^2

    averaged over classes and samples alike (divided by N * C). Labels are not used.
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "mse_logits")
    return scale * F.mse_loss(s, t, reduction="mean")
