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
import torch.nn.functional as F
from torch import Tensor

from study.losses import LossGenerator, _permute_non_argmax, resolve_loss_params

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
    """One epoch's diagnostics of K seeds (K = 1: the loop), summed over the steps.

    ``start`` gives one per epoch; ``update`` once per step with the tensors the loss gets,
    before the loss is called (DKPP's permutation is replayed from a copy of the loss's
    generator in its state before the loss draws); ``result(j)`` seed j's epoch means.
    """

    def __init__(self, loss: str, params: Mapping[str, Any], k: int, device: torch.device):
        self.loss, self.k = loss, k
        self.kind = GRADIENT[loss]
        self.temperature = float(params["temperature"]) if self.kind == "soft" else 1.0
        self.keys = COMMON + EXTRA.get(loss, ())
        self.sums = torch.zeros(k, len(self.keys), dtype=torch.float64, device=device)
        self.count = torch.zeros(k, dtype=torch.float64, device=device)

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
        the seeds of the K' slices when some seeds left the pack, else all K)."""
        if teacher_logits is None:
            return
        s = student_logits.detach().float()
        t = teacher_logits.detach().float()
        if s.dim() == 2:
            s, t, targets = s[None], t[None], targets[None]
        n = s.shape[-2]
        log_p = F.log_softmax(t / self.temperature, dim=-1)
        p = F.softmax(t / self.temperature, dim=-1)  # as the losses and q: g = 0 when s = t
        top = t.argmax(dim=-1, keepdim=True)
        on_top = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, top, True)
        if self.kind == "logits":
            g = s - t
        else:
            q = F.softmax(s / self.temperature, dim=-1)
            g = q - p
        conf = p.gather(-1, top).squeeze(-1)
        per_sample = [
            _dark_share(g, on_top),
            conf,
            -(p * log_p).sum(dim=-1),
            (top.squeeze(-1) == targets).to(p.dtype),
        ]
        if self.loss == "dkpp":
            replay = _copies(generator)
            permuted = _permute_non_argmax(p, top.squeeze(-1), replay)
            per_sample.append(_dark_share(q - permuted, on_top))
        batch = torch.stack([x.sum(dim=-1) for x in per_sample], dim=-1)  # [K', metrics]
        if self.loss == "cwtm":  # the batch's weights' CV, counted once per sample
            cv = conf.std(dim=-1, correction=0) / conf.mean(dim=-1)
            batch = torch.cat([batch, (cv * n)[:, None]], dim=-1)
        if rows is None:
            self.sums += batch
            self.count += n
        else:
            self.sums.index_add_(0, rows, batch.double())
            self.count.index_add_(0, rows, torch.full_like(rows, n, dtype=torch.float64))

    def result(self, j: int = 0) -> dict[str, float]:
        """Seed j's means over the epoch's samples (empty before any step)."""
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


def _dark_share(g: Tensor, on_top: Tensor) -> Tensor:
    """Per sample, the share of ``sum_c g_c^2`` off the teacher's argmax (0 where g = 0)."""
    sq = g * g
    total = sq.sum(dim=-1)
    dark = sq.masked_fill(on_top, 0.0).sum(dim=-1)
    return torch.where(total > 0, dark / total, 0.0)  # 0/0 lands in the branch not taken


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
