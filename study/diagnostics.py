"""Where a distillation signal comes from: dark-knowledge diagnostics, per seed and epoch.

Born-Again Networks (Furlanello et al. 2018, Sec. 3) decompose the gradient of the soft
cross-entropy with respect to the student's logit c into ``q_c - p_c`` (student q, teacher
p, both at the loss's temperature): the teacher's argmax class ``a`` contributes
``q_a - p_a``, every other class ("dark knowledge") ``q_c - p_c``. These diagnostics
measure that split during training, from the tensors a step already has (the student's and
the teacher's logits, the labels, and for DKPP the permuted targets its loss trains on,
which the loss leaves in the ``losses.Watched`` stream it is handed), under ``no_grad``:
training is bit for bit the same with them on or off (tests/test_diagnostics.py).

Per sample i (``g_i`` the soft-target gradient, ``a_i = argmax_c t_ic``, ``p_i`` the
teacher's soft targets at the loss's temperature T):

- ``dk_grad_share``: ``sum_{c != a_i} g_ic^2 / sum_c g_ic^2`` (0 where ``g_i = 0``), with
  ``g_i = softmax(s_i / T) - p_i``. For ``mse_logits`` the gradient of the loss itself,
  ``g_i = s_i - t_i`` (logit matching is KD's high-temperature limit, Hinton et al.
  2015). For ``cwtm`` and ``dkpp``, which do not train on ``p_i`` itself, the same share
  at T = 1: what the teacher's soft targets offer, the quantity those controls remove.
- ``dk_grad_share_permuted`` (DKPP): the share on the targets DKPP trains on,
  ``g_i = softmax(s_i) - perm(p_i)``, ``perm(p_i)`` the loss's own targets in this step
  (DKPP keeps the argmax in place).
- ``teacher_conf``: ``p_{i, a_i}``; ``teacher_entropy``: ``-sum_c p_ic log p_ic`` (nats);
  ``teacher_correct``: ``1[a_i = y_i]`` on the (augmented) view the student trains on.
- ``cwtm_weight_cv`` (CWTM): the coefficient of variation (population sd / mean) of the
  batch's weights ``w_i = max_c softmax(t_i)_c / sum_j max_c softmax(t_j)_c``.

Each is averaged over the epoch's training samples (the batch CV weighted by the batch's
size); a pack gets one set per seed, bit for bit what the seed gets in any other pack or
alone. The arithmetic is float32 like the losses', the sums over samples float64 or exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.losses import LossGenerator, Watched, resolve_loss_params
from study.switch import Switch

COMMON = ("dk_grad_share", "teacher_conf", "teacher_entropy", "teacher_correct")
EXTRA = {"dkpp": ("dk_grad_share_permuted",), "cwtm": ("cwtm_weight_cv",)}
DIAGNOSTIC_METRICS = (*COMMON, "dk_grad_share_permuted", "cwtm_weight_cv")
SHARES = ("dk_grad_share", "dk_grad_share_permuted")  # computed negated (``_sums``)
PER_BATCH = ("cwtm_weight_cv",)  # from each step's weights, not summed per sample
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


switch = Switch(
    """Diagnostics on (the default) or off within a ``with`` block (``study bench`` and the
    bit-identity tests turn them off; results are the same either way)."""
)


def measured(loss: str) -> bool:
    """Whether a role trained with ``loss`` logs dark-knowledge diagnostics."""
    return loss in GRADIENT


class EpochDiagnostics:
    """One epoch's diagnostics of K seeds (K = 1: the loop).

    ``start`` gives one per epoch; ``update`` once per step with the tensors the loss gets,
    before the loss is called, and the loss gets the generator ``update`` returns (for
    DKPP the loss's own stream, ``losses.Watched``, in which the loss leaves the permuted
    targets it trains on); ``result(j)`` seed j's epoch means.

    A step only keeps references to its (detached) tensors, and the arithmetic runs once
    over several steps, when ``BUFFER`` samples a seed, or on the CPU ``CACHE`` logits,
    would be kept, and at the epoch's end (DKPP's targets exist once its loss has run): a
    step of a small network costs little more than the launch of its operations.

    On the CPU by compiled loops (``study.fused``): a few operations a reduction where the
    tensor operations below launch some forty and pass twenty times over values that the
    training has pushed out of the cache (docs/benchmarks.md). Each sample is computed
    alone and each seed's sums are float64 additions in its samples' order, so a seed's
    numbers are bit for bit the same alone and in any pack (tests/test_diagnostics.py).

    Elsewhere (a GPU) by tensor operations, which queue on the device without waiting for
    it: each seed reduced on its own (a reduction's order there depends on the whole
    tensor's shape), classes first; each seed's samples padded to a multiple of ``PAD``
    (on a CPU, where the tests run this path too, a sum over the classes rounds otherwise
    in a vectorised loop's scalar tail); every operation exact per element or reducing a
    sample's (or a step's) values alone; and the sums over samples exact, in integers
    (``SCALE``), so that their order does not matter.
    """

    BUFFER = 2048
    """Samples per seed kept at most before they are reduced (or one step's, if more):
    enough to share a reduction's launch among steps (a digits epoch is one reduction)."""

    PAD = 64
    """Each seed's samples are padded to a multiple of this: twice the widest vector of
    float32 lanes (AVX-512's 16) that a vectorised loop steps by, with room to spare."""

    CACHE = 1 << 16
    """Student logits (seeds x samples x classes) kept at most on the CPU before they are
    reduced (or one step's, if more): kept outputs cost the training itself. Half and
    twice this read alike (docs/benchmarks.md)."""

    SCALE = 2.0**32
    """Per-sample values are summed as integers in units of 1 / SCALE (exact, so in any
    order; a mean is off by less than 1 / SCALE; 2^26 samples of values up to 16 fit)."""

    def __init__(
        self,
        loss: str,
        params: Mapping[str, Any],
        k: int,
        device: torch.device,
        fused: bool | None = None,
    ):
        """``fused``: the compiled loops (the default on the CPU) or tensor operations
        (the default elsewhere; on the CPU for the tests of that path)."""
        self.loss, self.device = loss, device
        self.kind = GRADIENT[loss]
        self.temperature = float(params["temperature"]) if self.kind == "soft" else 1.0
        # the order of the reduction's rows: the shares first, the per-batch CV last
        order = {**dict.fromkeys(SHARES, 0), **dict.fromkeys(PER_BATCH, 2)}
        self.keys = tuple(sorted(COMMON + EXTRA.get(loss, ()), key=lambda k: order.get(k, 1)))
        self.steps: list[tuple[Tensor, Tensor, Tensor, Watched | None]] = []
        self.buffered = self.kept = 0
        self.rows: Tensor | None = None
        self.fused = device.type == "cpu" if fused is None else fused
        if self.fused and device.type != "cpu":
            raise ValueError(f"the diagnostics' compiled loops run on the CPU, not {device}")
        self.cache = self.CACHE if self.fused else math.inf
        if self.fused:
            self._start_fused(k)
        else:
            self._start_tensors(k)

    def _start_fused(self, k: int) -> None:
        from study import fused  # Numba: imported, and the loops loaded, when first needed

        self.kernel = fused.add
        self.columns = [fused.COLUMNS.index(key) for key in self.keys]
        self.totals = np.zeros((k, len(fused.COLUMNS)))  # float64, in the samples' order
        self.counts = np.zeros(k, dtype=np.int64)
        self.nonfinite = np.zeros(k, dtype=np.bool_)
        self.index: tuple[Tensor | None, np.ndarray] | None = None  # ``rows`` in NumPy

    def _start_tensors(self, k: int) -> None:
        device = self.device
        # the per-sample rows' factors to integer units: -SCALE for the shares (negated)
        rows = [key for key in self.keys if key not in PER_BATCH]
        units = [-self.SCALE if key in SHARES else self.SCALE for key in rows]
        self.units = torch.tensor(units, device=device).view(-1, 1, 1)
        self.sides = 3 if self.loss == "dkpp" else 2  # teacher, student, DKPP's targets
        self.sums = torch.zeros(k, len(self.keys), dtype=torch.int64, device=device)
        self.count = torch.zeros(k, dtype=torch.int64, device=device)
        # 0 while a seed's values are finite, NaN once one is not (``_sums``)
        self.bad = torch.zeros(k, dtype=torch.float32, device=device)
        self.read: tuple[list, list, list] | None = None  # the sums as lists, once reduced
        self.fill: tuple[Any, tuple[Tensor, Tensor]] | None = None  # the padding, by shape

    @classmethod
    def start(
        cls, loss: str, params: Mapping[str, Any], device: torch.device, k: int = 1
    ) -> EpochDiagnostics:
        """The epoch's accumulator; a no-op one when switched off or ``loss`` is not a
        measured distillation loss."""
        if not switch.on or not measured(loss):
            return _OFF
        return cls(loss, resolve_loss_params(loss, params), k, device)

    def update(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        targets: Tensor,
        *,
        generator: LossGenerator | None = None,
        rows: Tensor | None = None,
    ) -> LossGenerator | None:
        """Add one step: logits ``[N, C]`` (the loop) or ``[K', N, C]`` (a pack; ``rows``
        the seeds of the K' slices when some seeds left the pack, else all K; the same
        within an epoch). Returns the generator to give the loss: ``generator``, for DKPP
        watched (the step's permuted targets are read from it after the loss has run)."""
        n = targets.shape[-1]
        if teacher_logits is None or n == 0:  # (an empty step: nothing to measure)
            return generator
        values = student_logits.numel()
        if self.steps and (self.buffered + n > self.BUFFER or self.kept + values > self.cache):
            self._reduce()  # the steps before this one: their losses ran
        watched = None
        if self.loss == "dkpp":
            if generator is None:
                raise ValueError("dkpp diagnostics need the loss's generator (generator=...)")
            generator = watched = Watched(generator)
        self.rows = rows
        self.steps.append((student_logits.detach(), teacher_logits.detach(), targets, watched))
        self.buffered += n
        self.kept += values
        return generator

    def result(self, j: int = 0) -> dict[str, float]:
        """Seed j's means over the epoch's samples (empty before any step)."""
        self._reduce()
        if self.fused:
            count, nonfinite = int(self.counts[j]), bool(self.nonfinite[j])
            sums = [float(self.totals[j, c]) for c in self.columns]
        else:
            if self.read is None:  # every seed's, read at once (a pack asks for each in turn)
                self.read = (self.count.tolist(), self.bad.tolist(), self.sums.tolist())
            count, nonfinite = self.read[0][j], self.read[1][j] != 0  # (NaN)
            sums = [v / self.SCALE for v in self.read[2][j]]
        if count == 0:
            return {}
        if nonfinite:
            return dict.fromkeys(self.keys, math.nan)
        return {key: v / count for key, v in zip(self.keys, sums, strict=True)}

    def _reduce(self) -> None:
        """Add the kept steps' values to the sums."""
        if not self.steps:
            return
        steps, self.steps, self.buffered, self.kept = self.steps, [], 0, 0
        if self.fused:
            self._fused(steps)
            return
        self.read = None
        x, y, sizes = self._classes_first(steps)
        k, m = x.shape[2], sum(sizes)
        with torch.no_grad():  # each seed on its own
            parts = [self._sums(x[:, :, j : j + 1], y[j : j + 1], sizes) for j in range(k)]
        sums, bad = (
            parts[0] if len(parts) == 1 else (torch.cat(p) for p in zip(*parts, strict=True))
        )
        if self.rows is None:
            self.sums += sums
            self.bad += bad
            self.count += m
        else:
            self.sums.index_add_(0, self.rows, sums)
            self.bad.index_add_(0, self.rows, bad)
            self.count.index_add_(0, self.rows, torch.full_like(self.rows, m))

    def _fused(self, steps: list[tuple[Tensor, Tensor, Tensor, Watched | None]]) -> None:
        """The kept steps added to the sums by the compiled loops (the CPU)."""
        sizes = np.array([step[2].shape[-1] for step in steps], dtype=np.int64)
        c = steps[0][0].shape[-1]
        k = steps[0][2].numel() // int(sizes[0])
        t, s = (_float32([step[i] for step in steps], k, c) for i in (1, 0))
        if self.loss == "dkpp":
            permuted = _float32([_permuted(step[3]) for step in steps], k, c)
        else:
            permuted = t[:, :0]
        labels = [step[2] for step in steps]
        y = torch.cat(labels, dim=-1) if len(labels) > 1 else labels[0]
        if self.index is None or self.index[0] is not self.rows:
            rows = torch.arange(k) if self.rows is None else self.rows
            self.index = (self.rows, rows.long().numpy())
        self.kernel(
            t,
            s,
            permuted,
            y.reshape(k, -1).long().numpy(),
            sizes,
            self.index[1],
            1.0 / self.temperature,
            self.kind == "logits",
            self.totals,
            self.counts,
            self.nonfinite,
        )

    def _classes_first(
        self, steps: list[tuple[Tensor, Tensor, Tensor, Watched | None]]
    ) -> tuple[Tensor, Tensor, list[int]]:
        """The steps' values classes first, ``[C, sides, K', mp]`` float32 (each seed's
        teacher logits, its student's, for DKPP the permuted targets; each side's samples
        in a row, padded to ``mp``), the labels ``[K', mp]`` and the steps' sizes. Classes
        first, a reduction over the classes is C - 1 operations on whole rows. The logits
        are multiplied by 1 / T. The padding's logits are distinct (no tie for the
        argmax); its values are dropped before the sums."""
        sizes = [step[2].shape[-1] for step in steps]
        s0, m = steps[0][0], sum(sizes)
        c, k = s0.shape[-1], steps[0][2].numel() // sizes[0]
        mp = m + (-m % self.PAD)
        sides = [[step[1] for step in steps], [step[0] for step in steps]]
        if self.loss == "dkpp":
            sides.append([_permuted(step[3]) for step in steps])
        labels = [step[2] for step in steps]
        if mp > m:  # padding: distinct logits (and labels) for every seed
            values, classes = self._filler(s0, mp - m)
            sides = [[*side, values] for side in sides]
            labels.append(classes)
        # one cat ([N, C] or [K', N, C] steps alike), then the transposing copy (to
        # float32: bf16 logits too), then the product with 1 / T
        steps_in_a_row = torch.cat([b for side in sides for b in side], dim=-2)
        x = torch.empty((c, len(sides), k, mp), dtype=torch.float32, device=s0.device)
        x.copy_(steps_in_a_row.view(k, len(sides), mp, c).permute(3, 1, 0, 2))
        if self.temperature != 1.0:  # (only losses with two sides have a temperature)
            x.mul_(1.0 / self.temperature)
        y = torch.cat(labels, dim=-1) if len(labels) > 1 else labels[0]
        return x, y.reshape(k, mp), sizes

    def _filler(self, like: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``n`` padding samples of every seed (logits ``0 .. C - 1``, label 0), the
        shape of ``like``'s leading dimensions; kept for the next reduction of the size."""
        key = (like.shape[:-2], n, like.device)
        if self.fill is None or self.fill[0] != key:
            c = like.shape[-1]
            values = torch.arange(c, dtype=torch.float32, device=like.device)
            values = values.expand(*like.shape[:-2], n, c)
            self.fill = (key, (values, values[..., 0].long()))
        return self.fill[1]

    def _sums(self, x: Tensor, y: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
        """A seed's sums over its samples, ``[1, metrics]`` integers in units of
        ``1 / SCALE`` (in the order of ``self.keys``), and 0, or NaN if a value is not
        finite (``[1]``), from its values ``x`` (``[C, sides, 1, mp]``, the logits divided
        by T; overwritten: few buffers) and labels ``y`` (``[1, mp]``)."""
        m = sum(sizes)
        logits = x[:, :2]  # teacher and student side by side: one softmax for both
        g = x[:, 1:2] - x[:, :1] if self.kind == "logits" else None  # s - t
        logits.sub_(logits.amax(dim=0))  # shifted: the maximum 0 exactly
        teacher = x[:, 0]
        # -1 off the teacher's top class (the first maximal one, as torch.argmax), 0 on it
        first = teacher.argmax(dim=0, keepdim=True)
        sign = torch.full_like(teacher, -1.0).scatter_(0, first, 0.0)
        shifted = teacher.clone()  # log p + log z: the entropy needs it
        probs = logits.exp_()
        z = probs.sum(dim=0)  # [2, 1, mp]
        inverse = z.reciprocal()
        probs.mul_(inverse)  # x[:, 0] = p, x[:, 1] = q
        entropy = z[0].log().sub_(shifted.mul_(teacher).sum(dim=0))  # -sum p log p
        if g is None:  # q - p, and for DKPP besides its targets minus q: one set of passes
            g = x[:, 1:] - x[:, :-1]
        sq = g.square_()  # [C, shares, 1, mp]
        total = sq.sum(dim=0).clamp_min_(torch.finfo(sq.dtype).tiny)
        # minus the shares (the sign is -1 off the teacher's argmax): negated in the sums
        shares = sq.mul_(sign[:, None]).sum(dim=0).div_(total)
        correct = sign.gather(0, y[None]).add_(1.0)  # 1 on the argmax
        per_sample = torch.cat([shares, inverse[:1], entropy[None], correct])[..., :m]
        # a NaN or an infinity anywhere makes the (bounded) values' float sum not finite,
        # and then the sum minus itself NaN (else exactly 0)
        check = per_sample.sum(dim=(0, 2))
        bad = check - check
        # in units of 1 / SCALE, the fraction truncated (exact: a power of two's multiple)
        sums = per_sample.mul_(self.units).long().sum(dim=-1)  # [metrics, 1]
        if self.loss == "cwtm":  # [1, steps]: each step's size times its weights' CV
            cv = _batch_cv(inverse[0, :, :m].double(), sizes)
            check = cv.sum(dim=-1)
            bad += (check - check).float()
            sums = torch.cat([sums, cv.mul_(self.SCALE).long().sum(dim=-1)[None]])
        return sums.T, bad


class _Off(EpochDiagnostics):
    """The accumulator of a role without diagnostics: every call does nothing (``update``
    hands the loss its generator untouched)."""

    def __init__(self) -> None:
        pass

    def update(
        self, *args: Any, generator: LossGenerator | None = None, **kwargs: Any
    ) -> LossGenerator | None:
        return generator

    def result(self, j: int = 0) -> dict[str, float]:
        return {}


_OFF = _Off()


def _float32(steps: list[Tensor], k: int, c: int) -> np.ndarray:
    """Steps' ``[N, C]`` or ``[K', N, C]`` values in a row, a float32 ``[K', M, C]`` array."""
    x = torch.cat(steps, dim=-2) if len(steps) > 1 else steps[0]
    return x.reshape(k, -1, c).to(torch.float32).contiguous().numpy()


def _permuted(watched: Watched | None) -> Tensor:
    """The permuted targets DKPP's loss left in the stream it was handed."""
    if watched is None or watched.targets is None:
        raise RuntimeError(
            "dkpp's diagnostics read the permuted targets its loss trains on: give the loss "
            "the generator that update() returned, and call it before the epoch's result()"
        )
    return watched.targets


def _batch_cv(conf: Tensor, sizes: list[int]) -> Tensor:
    """Per seed and step (``conf`` is ``[K', samples]``, steps of ``sizes`` samples in a
    row): the step's size times the CV (population sd / mean) of its confidences, which is
    the CV of CWTM's weights (they are the confidences normalised); ``[K', steps]``. Each
    step is reduced alone (runs of steps of one size at once)."""
    out, start = [], 0
    for size, run in itertools.groupby(sizes):
        r = len(list(run))
        steps = conf[:, start : start + r * size].reshape(-1, r, size)
        mean = steps.mean(dim=-1)
        square = (steps * steps).mean(dim=-1)
        out.append((square - mean * mean).clamp_min(0).sqrt() / mean * size)
        start += r * size
    return torch.cat(out, dim=-1)
