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
alone. The arithmetic is float32 like the losses', the sums float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

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
    targets it trains on); ``result(j)`` seed j's epoch means. A step only keeps references
    to its (detached) tensors, and the arithmetic runs once over several steps: a step of a
    small network costs little more than the launch of its operations, and twenty
    operations per step would cost a quarter of it. Not too many steps either: the kept
    references cost the training itself (a pack of 16 digits MLPs 5% of its step with 30
    steps kept, 0.7% with 3), and a reduction's passes cost more per value once its
    buffers outgrow the processor's cache (docs/benchmarks.md). So the steps are reduced
    when ``BUFFER`` samples a seed, or on the CPU ``CACHE`` values, would be kept, and at
    the epoch's end.

    A seed's numbers are bit for bit the same whichever seeds share its pack, and in the
    loop, although the pack's size decides which steps are reduced together: each seed's
    samples are padded to a multiple of ``PAD``, so that all of them fall in the vectorised
    body of every operation, never in its scalar tail (on the CPU a sum over the classes
    rounds otherwise in the tail's columns); every operation is exact per element or
    reduces a sample's (or a step's) values alone; and the sums over samples are exact, in
    integers (``SCALE``), so their order does not matter (tests/test_diagnostics.py, also on
    three threads). On a GPU each seed is reduced on its own (a reduction's order there
    depends on the whole tensor's shape).
    """

    BUFFER = 2048
    """Samples per seed kept at most before they are reduced (or one step's, if more):
    enough to share the operations' launch among steps (a digits epoch is one reduction)."""

    CACHE = 1 << 18
    """Values (seeds x samples x classes x sides) kept at most on the CPU before they are
    reduced (or one step's, if more): a megabyte. Measured against half (DKPP, packs of
    16 digits MLPs: a quarter less time in the diagnostics) and two megabytes (no better);
    docs/benchmarks.md."""

    PAD = 64
    """Each seed's samples are padded to a multiple of this: twice the widest vector of
    float32 lanes (AVX-512's 16) that a vectorised loop steps by, with room to spare."""

    SCALE = 2.0**32
    """Per-sample values are summed as integers in units of 1 / SCALE (exact, so in any
    order; a mean is off by less than 1 / SCALE; 2^26 samples of values up to 16 fit)."""

    def __init__(self, loss: str, params: Mapping[str, Any], k: int, device: torch.device):
        self.loss, self.device = loss, device
        self.kind = GRADIENT[loss]
        self.temperature = float(params["temperature"]) if self.kind == "soft" else 1.0
        # the order of the reduction's rows: the shares first, the per-batch CV last
        order = {**dict.fromkeys(SHARES, 0), **dict.fromkeys(PER_BATCH, 2)}
        self.keys = tuple(sorted(COMMON + EXTRA.get(loss, ()), key=lambda k: order.get(k, 1)))
        # the per-sample rows' factors to integer units: -SCALE for the shares (negated)
        rows = [k for k in self.keys if k not in PER_BATCH]
        units = [-self.SCALE if k in SHARES else self.SCALE for k in rows]
        self.units = torch.tensor(units, device=device).view(-1, 1, 1)
        self.sides = 3 if loss == "dkpp" else 2  # teacher, student, DKPP's targets
        self.sums = torch.zeros(k, len(self.keys), dtype=torch.int64, device=device)
        self.count = torch.zeros(k, dtype=torch.int64, device=device)
        # 0 while a seed's values are finite, NaN once one is not (``_sums``)
        self.bad = torch.zeros(k, dtype=torch.float32, device=device)
        self.steps: list[tuple[Tensor, Tensor, Tensor, Watched | None]] = []
        self.buffered = self.kept = 0
        self.cache = self.CACHE if device.type == "cpu" else math.inf
        self.together = device.type == "cpu"  # all seeds in one reduction, or each alone
        self.rows: Tensor | None = None
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
        if teacher_logits is None:
            return generator
        n = targets.shape[-1]
        values = student_logits.numel() * self.sides
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

    def _reduce(self) -> None:
        """Add the kept steps' values to the sums: all seeds at once on the CPU, each seed
        alone on a GPU."""
        if not self.steps:
            return
        steps, self.steps, self.buffered, self.kept = self.steps, [], 0, 0
        self.read = None
        x, y, sizes = self._classes_first(steps)
        k, m = x.shape[2], sum(sizes)
        group = k if self.together else 1
        with torch.no_grad():
            parts = [
                self._sums(x[:, :, j : j + group], y[j : j + group], sizes)
                for j in range(0, k, group)
            ]
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

    def _classes_first(
        self, steps: list[tuple[Tensor, Tensor, Tensor, Watched | None]]
    ) -> tuple[Tensor, Tensor, list[int]]:
        """The steps' values classes first, ``[C, sides, K', mp]`` float32 (each seed's
        teacher logits, its student's, for DKPP the permuted targets; each side's samples
        in a row, padded to ``mp``), the labels ``[K', mp]`` and the steps' sizes. Classes
        first, a reduction over the classes is C - 1 operations on whole rows, on the CPU
        several times faster than reducing a last dimension of 10 classes (and
        ``F.softmax`` there costs 6 times these few passes). The logits are divided by the
        temperature (as a product: half the cost of a quotient). The padding's logits are
        distinct (no tie for the argmax check); its values are dropped before the sums."""
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
        # float32: bf16 logits too), then the product with 1 / T (a strided product costs
        # more than a copy and a product)
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
        """A group of seeds' sums over their samples, ``[K'', metrics]`` integers in units of
        ``1 / SCALE`` (in the order of ``self.keys``), and per seed 0, or NaN if a value is
        not finite (``[K'']``), from their values ``x`` (``[C, sides, K'', mp]``, the logits
        divided by T; overwritten: few buffers stay in the cache) and labels ``y``
        (``[K'', mp]``)."""
        m = sum(sizes)
        logits = x[:, :2]  # teacher and student side by side: one softmax for both
        g = x[:, 1:2] - x[:, :1] if self.kind == "logits" else None  # s - t
        logits.sub_(logits.amax(dim=0))  # shifted: the maximum 0 exactly
        teacher = x[:, 0]
        sign = _top_sign(teacher)
        shifted = teacher.clone()  # log p + log z: the entropy needs it
        probs = logits.exp_()
        z = probs.sum(dim=0)  # [2, K'', mp]
        inverse = z.reciprocal()
        probs.mul_(inverse)  # x[:, 0] = p, x[:, 1] = q
        entropy = z[0].log().sub_(shifted.mul_(teacher).sum(dim=0))  # -sum p log p
        if g is None:  # q - p, and for DKPP besides its targets minus q: one set of passes
            g = x[:, 1:] - x[:, :-1]
        sq = g.square_()  # [C, shares, K'', mp]
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
        sums = per_sample.mul_(self.units).long().sum(dim=-1)  # [metrics, K'']
        if self.loss == "cwtm":  # [K'', steps]: each step's size times its weights' CV
            cv = _batch_cv(inverse[0, :, :m].double(), sizes)
            check = cv.sum(dim=-1)
            bad += (check - check).float()
            sums = torch.cat([sums, cv.mul_(self.SCALE).long().sum(dim=-1)[None]])
        return sums.T, bad

    def result(self, j: int = 0) -> dict[str, float]:
        """Seed j's means over the epoch's samples (empty before any step)."""
        self._reduce()
        if self.read is None:  # every seed's, read at once (a pack asks for each in turn)
            self.read = (self.count.tolist(), self.bad.tolist(), self.sums.tolist())
        counts, bad, sums = self.read
        if counts[j] == 0:
            return {}
        if bad[j] != 0:  # NaN
            return dict.fromkeys(self.keys, math.nan)
        return {key: v / self.SCALE / counts[j] for key, v in zip(self.keys, sums[j], strict=True)}


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


def _top_sign(shifted: Tensor) -> Tensor:
    """0 on each sample's first maximal class (``torch.argmax``'s) in ``shifted`` (logits
    minus their maximum, classes along dimension 0), -1 off it. On the CPU
    ``sign(shifted)``, unless a sample has two zeros (an exact tie, which continuous logits
    almost never have): a comparison, ``masked_fill`` and ``argmax`` cost several times a
    sign there. On a GPU ``argmax`` always (the check would wait for the device)."""
    sign = shifted.sign()
    samples = sign[0].numel()
    gpu = shifted.device.type != "cpu"
    # -(C - 1) a sample without a tie; a sum of these integers is exact in float32 while
    # every partial sum stays under 2^24 in magnitude (a quarter of the cost of float64)
    exact = torch.float32 if sign.numel() < 1 << 24 else torch.float64
    if gpu or float(sign.sum(dtype=exact)) != -(shifted.shape[0] - 1) * samples:
        first = shifted.argmax(dim=0, keepdim=True)
        sign = torch.full_like(shifted, -1.0).scatter_(0, first, 0.0)
    return sign


def _dark_share(sq: Tensor, sign: Tensor) -> Tensor:
    """Per sample, the share of ``sum_c g_c^2`` (``sq``, classes along dimension 0, which
    this overwrites) off the class where ``sign`` is 0 (the teacher's argmax; -1 on the
    others); 0 where g = 0."""
    total = sq.sum(dim=0).clamp_min(torch.finfo(sq.dtype).tiny)
    return sq.mul_(sign).sum(dim=0).neg_().div_(total)
