"""Training losses: one function per loss, registered by name, one way in (``get_loss``).

Every loss has the same call shape::

    spec = get_loss("kd")
    loss = spec(student_logits, targets, teacher_logits, generator=g, temperature=4.0)

Shapes: logits are ``[..., N, C]`` (student and teacher alike), targets ``[..., N]``. The
plain call, ``[N, C]``, returns a float32 0-d scalar, the mean over the batch. Leading
dimensions are independent problems, one per index: a seed pack calls the loss once on
``[K, N, C]`` and gets each seed's loss ``[K]``. Every reduction over samples and classes
runs along the last two dimensions of one index, so seed k's loss is what the plain call
on seed k's slice returns, and on the CPU bit for bit, its gradient too (the tests pin
it): the pack costs one call instead of K, and a seed trains identically in any pack.
Losses that draw random numbers (DKPP) take one generator per leading index for that
reason.

Two promises hold for all of them:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from study.errors import UserInputError

TUNED = "tuned"
"""The placeholder value a protocol gives to a parameter that tuning fills in later."""


@dataclass
class Watched:
    """A loss's random stream handed to the loss by the dark-knowledge diagnostics
    (``study.diagnostics``): the loss draws from ``stream`` exactly as it would, and DKPP
    leaves in ``targets`` the permuted soft targets it trained on in that call (detached),
    for the diagnostics to read after the loss has run."""

    stream: torch.Generator | Sequence[torch.Generator]
    targets: Tensor | None = None


LossGenerator = torch.Generator | Sequence[torch.Generator] | Watched
"""A loss's random stream: one generator, or one per leading index of the logits (seed),
either of them ``Watched``."""


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
        generator: LossGenerator | None = None,
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
        generator: LossGenerator | None = None,
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
    if student_logits.dim() < 2:
        raise ValueError(
            f"student_logits must be [..., N, C], got shape {tuple(student_logits.shape)}"
        )
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


def _label_cross_entropy(s: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Each sample's cross-entropy with its label, ``[..., N]``.

    ``F.cross_entropy`` wants the classes in dimension 1 (``[M, C]``), so the leading
    dimensions are flattened into the samples and restored; per sample nothing depends on
    the others. The callers average over N themselves (``reduction="none"``): a mean over
    all M would mix the seeds.
    """
    if targets.shape != s.shape[:-1]:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits shape "
            f"{tuple(s.shape)}: expected {tuple(s.shape[:-1])}"
        )
    if s.dim() == 2:  # the plain call: no reshapes (each costs an autograd node)
        return F.cross_entropy(s, targets, reduction="none", label_smoothing=label_smoothing)
    per_sample = F.cross_entropy(
        s.flatten(0, -2), targets.flatten(), reduction="none", label_smoothing=label_smoothing
    )
    return per_sample.view(s.shape[:-1])


def _soft_cross_entropy(target_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """-sum_c q_c log p_c, summed over classes, mean over samples (per leading index)."""
    return -(target_probs * student_log_probs).sum(dim=-1).mean(dim=-1)


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
    generator: LossGenerator | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy with the labels: mean_i -log softmax(s_i)[y_i].

    With label smoothing eps the target is (1 - eps) * onehot(y) + eps / C (Szegedy et al.
    2016, "Rethinking the Inception Architecture"). The teacher, if given, is ignored.
    """
    return _label_cross_entropy(_student(student_logits), targets, label_smoothing).mean(dim=-1)


@register_loss("kd", needs_teacher=True, params={"temperature": _TEMPERATURE_KD, "alpha": _ALPHA})
def kd(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: LossGenerator | None = None,
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
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    # "batchmean" per leading index: summed over classes and samples, divided by N. Not a
    # mean over elements, which would also divide by C (Hinton 2015 T^2 scaling assumes the
    # per-sample KL); and not F.kl_div's own batchmean, which divides by the size of dim 0.
    pointwise = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)
    soft = pointwise.sum(dim=(-2, -1)) / s.shape[-2]
    hard = _label_cross_entropy(s, targets).mean(dim=-1)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


def _ban_term(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    target = F.softmax(t / temperature, dim=-1)
    soft = _soft_cross_entropy(target, F.log_softmax(s / temperature, dim=-1))
    return temperature**2 * soft


@register_loss("ban", needs_teacher=True, params={"temperature": _TEMPERATURE_1})
def ban(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: LossGenerator | None = None,
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
    generator: LossGenerator | None = None,
    temperature: float = 1.0,
    label_weight: float = 1.0,
) -> Tensor:
    """Born-again loss plus the label cross-entropy (Furlanello et al. 2018, the variant
    trained with both the teacher's output and the ground-truth labels):

        loss = ban(s, t; T) + label_weight * CE(s, y)
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "ban_l")
    hard = _label_cross_entropy(s, targets).mean(dim=-1)
    return _ban_term(s, t, temperature) + label_weight * hard


@register_loss("cwtm", needs_teacher=True)
def cwtm(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: LossGenerator | None = None,
) -> Tensor:
    """Confidence-Weighted by Teacher Max (Furlanello et al. 2018, Eq. 10): the label
    cross-entropy of each sample weighted by the teacher's confidence in it,

        w_i = max_c softmax(t_i)_c / sum_j max_c softmax(t_j)_c,
        loss = sum_i w_i * CE(s_i, y_i).

    The weights sum to 1 over the batch (over each leading index's batch: each seed's own),
    so equal confidences give the plain mean CE, and are constants: no gradient flows
    through them.
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "cwtm")
    confidence = F.softmax(t, dim=-1).amax(dim=-1)
    weights = confidence / confidence.sum(dim=-1, keepdim=True)
    return (weights * _label_cross_entropy(s, targets)).sum(dim=-1)


def _uniform_keys(shape: torch.Size, generator: LossGenerator, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers of ``shape`` (``[..., N, C]``) on ``device``.

    One generator draws them all at once. A sequence holds one generator per leading index,
    and index k's ``[N, C]`` block is drawn from generator k alone, exactly what that
    generator draws for a plain ``[N, C]`` call: a seed's stream does not depend on the pack.
    """
    if isinstance(generator, Watched):
        generator = generator.stream
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device).to(device)
    generators = list(generator)
    blocks = math.prod(shape[:-2])
    if len(generators) != blocks or not generators:
        raise ValueError(
            f"{len(generators)} generators for logits of shape {tuple(shape)}: "
            f"expected one per leading index ({blocks})"
        )
    keys = torch.empty((blocks, *shape[-2:]), device=generators[0].device)
    for block, g in zip(keys, generators, strict=True):
        block.uniform_(generator=g)  # what torch.rand draws, written in place
    return keys.view(shape).to(device)


def _permute_non_argmax(probs: Tensor, argmax: Tensor, generator: LossGenerator) -> Tensor:
    """``probs`` (``[..., N, C]``) with each row's entries other than ``argmax`` randomly
    permuted in place.

    Vectorised: random sort keys give each row a random order of its source positions, with
    the argmax's key forced to sort last; the destination positions are the row's positions
    in ascending order with the argmax also moved last (0, 1, .., skipping the argmax, then
    the argmax: computed, not sorted). Pairing the two lists gives a permutation that maps
    the argmax to itself and shuffles the rest uniformly.
    """
    c = probs.shape[-1]
    keys = _uniform_keys(probs.shape, generator, probs.device)
    positions = torch.arange(c, device=probs.device).expand(probs.shape)
    argmax = argmax.unsqueeze(-1)
    sources = torch.argsort(keys.masked_fill(positions == argmax, 2.0), dim=-1)
    destinations = torch.where(positions == c - 1, argmax, positions + (positions >= argmax))
    permuted = torch.empty_like(probs).scatter_(-1, destinations, probs.gather(-1, sources))
    if isinstance(generator, Watched):
        generator.targets = permuted.detach()
    return permuted


@register_loss("dkpp", needs_teacher=True)
def dkpp(
    student_logits: Tensor,
    targets: Tensor,
    teacher_logits: Tensor | None,
    *,
    generator: LossGenerator | None = None,
) -> Tensor:
    """Dark Knowledge with Permuted Predictions (Furlanello et al. 2018, Eq. 11): the soft
    cross-entropy against the teacher's distribution whose non-argmax probabilities are
    randomly permuted within each sample, the argmax probability staying in place:

        q_i = permute_{c != argmax t_i}(softmax(t_i)),  loss = mean_i -sum_c q_ic log softmax(s_i)_c

    A fresh permutation is drawn from ``generator`` on every call (required, so that runs are
    reproducible; for ``[K, N, C]`` logits a sequence of K generators, one per seed). This
    keeps the teacher's confidence in its prediction and destroys the information in which
    wrong classes it finds similar ("dark knowledge").
    """
    if generator is None:
        raise ValueError("loss 'dkpp' needs a seeded torch.Generator (generator=...), got None")
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "dkpp")
    target = _permute_non_argmax(F.softmax(t, dim=-1), t.argmax(dim=-1), generator)
    return _soft_cross_entropy(target, F.log_softmax(s, dim=-1))


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
    generator: LossGenerator | None = None,
    scale: float = 1.0,
) -> Tensor:
    """Logit matching (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"):

        loss = scale * mean_{i,c} (s_ic - t_ic)^2

    averaged over classes and samples alike (divided by N * C, per leading index). Labels
    are not used.
    """
    s = _student(student_logits)
    t = _teacher(teacher_logits, student_logits, "mse_logits")
    return scale * F.mse_loss(s, t, reduction="none").mean(dim=(-2, -1))
