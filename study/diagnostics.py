"""Where a distillation signal comes from: dark-knowledge diagnostics, per seed and epoch.

Born-Again Networks (Furlanello et al. 2018, Sec. 3) decompose the gradient of the soft
cross-entropy with respect to the student's logit c into ``q_c - p_c`` (student q, teacher
p, both at the loss's temperature): the teacher's argmax class ``a`` contributes
``q_a - p_a``, every other class ("dark knowledge") ``q_c - p_c``. These diagnostics
measure that split during training, from the tensors a step already has (the student's and
the teacher's logits, the labels, and for DKPP the loss's generator), under ``no_grad``
and without drawing from any of the training's random streams: training is bit for bit
the same with them on or off (tests/test_diagnostics.py).

Per sample i (``g_i`` the soft-target gradient, ``a_i = argmax_c t_ic``, ``p_i`` the
teacher's soft targets at the loss's temperature T):

- ``dk_grad_share``: ``sum_{c != a_i} g_ic^2 / sum_c g_ic^2`` (0 where ``g_i = 0``), with
  ``g_i = softmax(s_i / T) - p_i``. For ``mse_logits`` the gradient of the loss itself,
  ``g_i = s_i - t_i`` (logit matching is KD's high-temperature limit, Hinton et al.
  2015). For ``cwtm`` and ``dkpp``, which do not train on ``p_i`` itself, the same share
  at T = 1: what the teacher's soft targets offer, the quantity those controls remove.
- ``dk_grad_share_permuted`` (DKPP): the share on the targets DKPP trains on,
  ``g_i = softmax(s_i) - perm(p_i)``, with the permutation the loss draws in this step.
- ``teacher_conf``: ``p_{i, a_i}``; ``teacher_entropy``: ``-sum_c p_ic log p_ic`` (nats);
  ``teacher_correct``: ``1[a_i = y_i]`` on the (augmented) view the student trains on.
- ``cwtm_weight_cv`` (CWTM): the coefficient of variation (population sd / mean) of the
  batch's weights ``w_i = max_c softmax(t_i)_c / sum_j max_c softmax(t_j)_c``.

Each is averaged over the epoch's training samples (the batch CV weighted by the batch's
size); a pack gets one set per seed. The arithmetic is float32 like the losses', the sums
float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from study.losses import LossGenerator, resolve_loss_params, uniform_keys

COMMON = ("dk_grad_share", "teacher_conf", "teacher_entropy", "teacher_correct")
EXTRA = {"dkpp": ("dk_grad_share_permuted",), "cwtm": ("cwtm_weight_cv",)}
DIAGNOSTIC_METRICS = (*COMMON, "dk_grad_share_permuted", "cwtm_weight_cv")
"""Every metric key the diagnostics log (per epoch, per seed)."""

# How each distillation loss's soft-target gradient is formed: "soft" (softmax(s/T) - p at
# the loss's temperature), "soft_t1" (at T = 1: losses that do not train on p itself),
# "logits" (s - t). A loss missing here (a future feature loss) gets no diagnostics until
# its gradient is defined.
GRADIENT = {
    "kd": "soft",
    "ban": "soft",
    "ban_l": "soft",
    "cwtm": "soft_t1",
    "dkpp": "soft_t1",
    "mse_logits": "logits",
}


class _Switch:
    """Diagnostics on (the default) or off within a ``with`` block (``study bench`` and the
    bit-identity tests turn them off; results are the same either way)."""

    def __init__(self) -> None:
        self.on = True

    @contextmanager
    def __call__(self, enabled: bool) -> Iterator[None]:
        before, self.on = self.on, enabled
        try:
            yield
        finally:
            self.on = before


switch = _Switch()


def measured(loss: str) -> bool:
    """Whether a role trained with ``loss`` logs dark-knowledge diagnostics."""
    return loss in GRADIENT


class EpochDiagnostics:
    """One epoch's diagnostics of K seeds (K = 1: the loop).

    ``start`` gives one per epoch; ``update`` once per step with the tensors the loss gets,
    before the loss is called; ``result(j)`` seed j's epoch means. A step only keeps
    references to its (detached) logits and labels, and for DKPP draws the loss's
    permutation keys from a copy of the loss's generator in its state before the loss
    draws; the arithmetic runs once over several steps (``BUFFER`` values, or the epoch's
    end): a step of a small network costs little more than the launch of its operations,
    and twenty operations per step cost a quarter of it (docs/benchmarks.md).
    """

    BUFFER = 2048
    """Samples per seed kept before the buffered steps are reduced: enough to share the
    operations' launch among steps (a digits epoch is one reduction). Counted per seed,
    and each seed reduced on its own, so that a seed's numbers are bit for bit the same
    in any pack: an operation's rounding can depend on where an element falls in a
    tensor (vectorised body or scalar tail, each thread's share), so no operation mixes
    seeds."""

    def __init__(self, loss: str, params: Mapping[str, Any], k: int, device: torch.device):
        self.loss, self.k = loss, k
        self.kind = GRADIENT[loss]
        self.temperature = float(params["temperature"]) if self.kind == "soft" else 1.0
        self.keys = COMMON + EXTRA.get(loss, ())
        self.sums = torch.zeros(k, len(self.keys), dtype=torch.float64, device=device)
        self.count = torch.zeros(k, dtype=torch.float64, device=device)
        self.steps: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.buffered = 0
        self.rows: Tensor | None = None

    @classmethod
    def start(
        cls, loss: str, params: Mapping[str, Any], device: torch.device, k: int = 1
    ) -> EpochDiagnostics:
        """The epoch's accumulator; a no-op one when switched off or ``loss`` is not a
        measured distillation loss."""
        if not switch.on or not measured(loss):
            return _OFF
        return cls(loss, resolve_loss_params(loss, params), k, device)

    @torch.no_grad()
    def update(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        generator: LossGenerator | None = None,
        rows: Tensor | None = None,
    ) -> None:
        """Add one step: logits ``[N, C]`` (the loop) or ``[K', N, C]`` (a pack; ``rows``
        the seeds of the K' slices when some seeds left the pack, else all K; the same
        within an epoch)."""
        if teacher_logits is None:
            return
        keys = None
        if self.loss == "dkpp":
            keys = uniform_keys(student_logits.shape, _copies(generator), student_logits.device)
        self.rows = rows
        self.steps.append((student_logits.detach(), teacher_logits.detach(), targets, keys))
        self.buffered += student_logits.shape[-2]
        if self.buffered >= self.BUFFER:
            self._reduce()

    def _reduce(self) -> None:
        """Add the buffered steps' per-sample values to the sums, all steps at once."""
        if not self.steps:
            return
        steps, k = self.steps, self.steps[0][2].numel() // self.steps[0][2].shape[-1]
        with torch.no_grad():
            sums = torch.cat([self._add([_seed(step, j, k) for step in steps]) for j in range(k)])
        m = sum(step[2].shape[-1] for step in steps)
        if self.rows is None:
            self.sums += sums
            self.count += m
        else:
            self.sums.index_add_(0, self.rows, sums)
            self.count.index_add_(0, self.rows, torch.full_like(self.rows, m, dtype=torch.float64))
        self.steps, self.buffered = [], 0

    def _add(self, steps: list[tuple[Tensor, Tensor, Tensor, Tensor | None]]) -> Tensor:
        """One seed's sums over the buffered steps (``[1, N, C]`` logits each), ``[1, m]``."""
        m = sum(step[2].shape[-1] for step in steps)
        # Classes first, [C, K', samples]: a reduction over the classes is then C - 1
        # operations on whole rows, on the CPU several times faster than reducing a last
        # dimension of 10 classes (and F.softmax there costs 6 times these few passes).
        # Student and teacher side by side (one operation for both softmaxes), computed
        # alike: g = 0 exactly where s = t.
        logits = torch.cat(
            [_classes_first(step[0]) for step in steps]
            + [_classes_first(step[1]) for step in steps],
            dim=-1,
        ).float()
        scaled = _scaled(logits, self.temperature)
        shifted = scaled - scaled.amax(dim=0)  # log softmax = shifted - log z
        e = shifted.exp()
        z = e.sum(dim=0)
        probs = e / z
        q, p, z, t_shifted = probs[..., :m], probs[..., m:], z[..., m:], shifted[..., m:]
        g = logits[..., :m] - logits[..., m:] if self.kind == "logits" else q - p
        on_top = _first_maximum(t_shifted)
        targets = torch.cat([step[2].reshape(-1, step[2].shape[-1]) for step in steps], dim=-1)
        per_sample = [  # each [K', m]
            _dark_share(g, on_top),
            1.0 / z,  # p at the argmax: exp(0) / z
            z.log() - (p * t_shifted).sum(dim=0),  # -sum p log p
            on_top.gather(0, targets[None])[0].to(p.dtype),
        ]
        if self.loss == "dkpp":
            keys = torch.cat([_classes_first(step[3]) for step in steps if step[3] is not None], -1)
            classes = torch.arange(p.shape[0], device=p.device)[:, None, None]
            top = (on_top * classes).sum(dim=0)[..., None]
            permuted = _permute_with_keys(p.movedim(0, -1), top, keys.movedim(0, -1))
            per_sample.append(_dark_share(q - permuted.movedim(-1, 0), on_top))
        sums = torch.stack(per_sample, dim=-1).double().sum(dim=1)  # [K', metrics]
        if self.loss == "cwtm":
            sizes = torch.tensor([step[2].shape[-1] for step in steps], device=z.device)
            sums = torch.cat([sums, _batch_cv_sums(1.0 / z.double(), sizes)[:, None]], dim=-1)
        return sums

    def result(self, j: int = 0) -> dict[str, float]:
        """Seed j's means over the epoch's samples (empty before any step)."""
        self._reduce()
        count = float(self.count[j])
        if count == 0:
            return {}
        return {key: v / count for key, v in zip(self.keys, self.sums[j].tolist(), strict=True)}


class _Off(EpochDiagnostics):
    """The accumulator of a role without diagnostics: every call does nothing."""

    def __init__(self) -> None:
        pass

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def result(self, j: int = 0) -> dict[str, float]:
        return {}


_OFF = _Off()


def _permute_with_keys(probs: Tensor, top: Tensor, keys: Tensor) -> Tensor:
    """``probs`` permuted as ``losses._permute_non_argmax`` permutes them when its generator
    draws ``keys``: the same pairing of sort keys and destinations, for many steps at once
    (tests/test_diagnostics.py checks the share against DKPP's own gradient)."""
    c = probs.shape[-1]
    positions = torch.arange(c, device=probs.device).expand(probs.shape)
    sources = torch.argsort(keys.masked_fill(positions == top, 2.0), dim=-1)
    destinations = torch.where(positions == c - 1, top, positions + (positions >= top))
    return torch.empty_like(probs).scatter_(-1, destinations, probs.gather(-1, sources))


def _batch_cv_sums(conf: Tensor, sizes: Tensor) -> Tensor:
    """Per seed (``conf`` is ``[K', samples]``, steps of ``sizes`` samples in a row): the
    sum over steps of the step's size times the CV (population sd / mean) of its
    confidences, which is the CV of CWTM's weights (they are the confidences normalised)."""
    step = torch.repeat_interleave(torch.arange(len(sizes), device=conf.device), sizes)
    k, n = conf.shape[0], sizes.to(conf.dtype)
    total = torch.zeros(k, len(sizes), dtype=conf.dtype, device=conf.device)
    mean = total.index_add(1, step, conf) / n
    square = total.index_add(1, step, conf * conf) / n
    cv = (square - mean * mean).clamp_min(0).sqrt() / mean
    return (cv * n).sum(dim=-1)


def _scaled(x: Tensor, temperature: float) -> Tensor:
    return x if temperature == 1.0 else x / temperature


def _seed(
    step: tuple[Tensor, Tensor, Tensor, Tensor | None], j: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Seed j's part of a buffered step of K' seeds: logits ``[1, N, C]``, labels ``[1, N]``."""
    s, t, y, keys = step
    n, c = s.shape[-2:]
    return (
        s.reshape(k, n, c)[j : j + 1],
        t.reshape(k, n, c)[j : j + 1],
        y.reshape(k, n)[j : j + 1],
        None if keys is None else keys.reshape(k, n, c)[j : j + 1],
    )


def _classes_first(x: Tensor) -> Tensor:
    """``[..., N, C]`` as a ``[C, K', N]`` view."""
    return x.reshape(-1, *x.shape[-2:]).movedim(-1, 0)


def _first_maximum(shifted: Tensor) -> Tensor:
    """One-hot (along the classes, dimension 0) of each sample's first maximal class
    (``torch.argmax``'s) in ``shifted`` (logits minus their maximum). On the CPU the
    zeros, unless a sample has two (an exact tie, which continuous logits almost never
    have): ``argmax`` costs several times more there. On a GPU ``argmax`` always (the
    check would wait for the device)."""
    on_top = shifted == 0
    if shifted.device.type != "cpu" or int(on_top.sum()) != on_top[0].numel():
        first = shifted.argmax(dim=0, keepdim=True)
        on_top = torch.zeros_like(on_top).scatter_(0, first, True)
    return on_top


def _dark_share(g: Tensor, on_top: Tensor) -> Tensor:
    """Per sample, the share of ``sum_c g_c^2`` (classes along dimension 0) off the class
    marked ``on_top``; 0 where g = 0."""
    sq = g * g
    off_top = sq.masked_fill(on_top, 0.0).sum(dim=0)
    return off_top / sq.sum(dim=0).clamp_min(torch.finfo(sq.dtype).tiny)


def _copies(generator: LossGenerator | None) -> LossGenerator:
    """Generators in the state of ``generator`` (one or a sequence): drawing from them
    replays what the loss is about to draw, and the loss's own stream is left untouched."""
    if generator is None:
        raise ValueError("dkpp diagnostics need the loss's generator (generator=...)")

    def copy(g: torch.Generator) -> torch.Generator:
        return torch.Generator(device=g.device).set_state(g.get_state())

    if isinstance(generator, torch.Generator):
        return copy(generator)
    return [copy(g) for g in generator]
