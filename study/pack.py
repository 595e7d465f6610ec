"""Seed packs: the K seeds of one role trained as one fused computation.

A small network (an MLP on digits, WRN-28-1 on CIFAR) leaves the hardware mostly idle: each
step is a few small kernels, and the time goes to issuing them (Python, the dispatcher, a
GPU's launch latency). K seeds of the same role are the same computation on different
numbers, so a pack runs them as one network K times as wide whose layers are
block-diagonal (``study/models/packed.py``: ``SeedPack``).

Nothing couples the seeds: no layer mixes blocks, each seed's loss is the registry's loss
function on its own slice (one call on the ``[K, B, classes]`` logits returns all K, each
bit for bit what its slice alone gives), and the pack minimises the **sum** of the seeds'
losses, whose gradient with respect to seed k's weights is the gradient of seed k's loss.
SGD (momentum, Nesterov, weight decay), Adam and AdamW are element-wise, so one optimizer
over the packed parameters is K independent optimizers. Each seed keeps its own
initialisation, random streams, checkpoint and final metrics, built by the engine
(``study/engine.py``) exactly as the loop builds them: a seed's checkpoint resumes in the
loop or in a pack. A seed whose loss becomes NaN or infinite fails alone: it leaves the
summed loss and the others go on.

How closely a pack agrees with the loop: an MLP seed trains bit for bit the same in every
pack of two or more; a pack of one and the loop agree to float rounding, bit for bit only
where the BLAS rounds a batched product of one matrix as one of several, which is why
``study reproduce`` re-trains a packed seed in a pack of the run's size. Grouped
convolutions round differently for different K, and Adam and AdamW can amplify a rounding
difference on a near-zero gradient into a step of about ``lr``; the measured figures, and
why the pack is block-diagonal modules rather than ``torch.func.vmap``, are in
docs/benchmarks.md ("Seed packs against the loop: what agrees, and how closely").

Which architectures pack: ``PACKABLE_ARCHS``; the others, and fp16 (one GradScaler would
skip every seed's step when one seed overflows), train seed by seed in ``train.py``'s loop.
``auto_pack_size`` says how many seeds to pack.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study import hooks
from study.checkpoint import CheckpointSlot, commit_pack, pack_key
from study.data import AugmentDraw, DataSplits, apply_augmentation, draw_augmentation, normalize
from study.determinism import deterministic_mode
from study.device import resolve_device
from study.diagnostics import EpochDiagnostics  # [diagnostics]
from study.engine import (
    EpochCallback,
    ResumeCallback,
    SeedResult,
    SeedStreams,
    TeacherCache,
    TrainingDiverged,
    autocast,
    build_model,
    checkpoint_state,
    init_model,
    make_optimizer,
    make_scheduler,
    record_teacher_outputs,
    restore_streams,
    teacher_outputs,
    to_device,
    train_batches,
)
from study.interrupts import held
from study.losses import TUNED, get_loss, resolve_loss_params
from study.metrics import evaluate_probs, final_scores
from study.models.packed import SeedPack, concat_seeds, frozen_pack, seed_slice
from study.plan import Role

PACKABLE_ARCHS = frozenset({"mlp", "small_cnn", "wrn", "resnet_cifar", "densenet_bc"})
"""Architectures whose seeds train as one fused network (the others train in a loop)."""

MAX_PACK_CPU = 64
MAX_PACK_GPU = 32  # not yet measured on a GPU: see docs/benchmarks.md
CPU_PACK_MAX_MACS = 5_000_000
"""On the CPU, pack only roles whose forward step costs at most this many multiply-adds per
seed (see ``auto_pack_size``)."""


def packable(role: Role) -> bool:
    """Whether the seeds of ``role`` can train as one fused pack."""
    return (
        role.kind != "ensemble"
        and role.train is not None
        and role.arch in PACKABLE_ARCHS
        and role.train.precision != "fp16"
        and role.features is None  # feature KD trains in the loop (study/features.py)
    )


# --- optimizer state ----------------------------------------------------------------------


def seed_optimizer_state(state: dict[str, Any], k: int, size: int) -> dict[str, Any]:
    """Seed k's part of a packed optimizer's ``state_dict`` (element-wise state sliced)."""
    per_param = {
        index: {
            key: seed_slice(v, k, size).clone() if isinstance(v, Tensor) else v
            for key, v in entries.items()
        }
        for index, entries in state["state"].items()
    }
    return {"state": per_param, "param_groups": copy.deepcopy(state["param_groups"])}


def packed_optimizer_state(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The packed optimizer's ``state_dict`` from the seeds' plain ones (same step counts)."""
    first = states[0]
    per_param = {}
    for index, entries in first["state"].items():
        per_param[index] = {
            key: concat_seeds([s["state"][index][key] for s in states])
            if isinstance(v, Tensor) and v.dim()
            else v
            for key, v in entries.items()
        }
    return {"state": per_param, "param_groups": copy.deepcopy(first["param_groups"])}


# --- data ---------------------------------------------------------------------------------


def augment_pack(x: Tensor, kind: str, generators: Sequence[torch.Generator]) -> Tensor:
    """Augment each seed's uint8 batch ``x[k]`` (``[K, B, C, H, W]``) from its own generator.

    Seed k's crops and flips are drawn exactly as ``augment_batch(x[k], kind, generators[k])``
    draws them; they are then applied to all K*B images in one gather.
    """
    if kind == "none":
        return x
    k, b = x.shape[:2]
    draws = [draw_augmentation(b, kind, g, x.device) for g in generators]
    joint = AugmentDraw(
        top=torch.cat([d.top for d in draws]),
        left=torch.cat([d.left for d in draws]),
        flip=torch.cat([d.flip for d in draws]),
        crop=draws[0].crop,
        pad=draws[0].pad,
    )
    return apply_augmentation(x.flatten(0, 1), joint).view(x.shape)


def shared_batch_size(batch_size: int, k: int, device: torch.device) -> int:
    """Images per forward pass when all K seeds see the same images (evaluation, filling the
    teacher cache): on a GPU ``batch_size / K``, so that the pass needs the memory of the
    loop's; on the CPU ``batch_size``, as the loop."""
    return batch_size if device.type == "cpu" else max(1, batch_size // k)


@torch.inference_mode()
def predict_pack_probs(
    pack: nn.Module, x: Tensor, data: DataSplits, *, batch_size: int, precision: str = "fp32"
) -> Tensor:
    """Every seed's softmax probabilities (float32 ``[K, N, classes]``) on uint8 images.

    Each forward pass takes ``shared_batch_size`` images (K seeds each).
    """
    was_training = pack.training
    pack.eval()
    device = next(pack.parameters()).device
    batch_size = shared_batch_size(batch_size, pack.k, device)
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size].to(device), data.mean, data.std)
        with autocast(device, precision):
            logits = pack.forward_shared(xb)
        out.append(torch.softmax(logits.float(), dim=-1))
    pack.train(was_training)
    if not out:
        return torch.empty(pack.k, 0, data.num_classes, device=device)
    return torch.cat(out, dim=1)


# --- the trainer --------------------------------------------------------------------------


def train_pack(
    role: Role,
    seeds: list[int],
    data: DataSplits,
    *,
    teachers: dict[int, nn.Module] | None = None,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    evaluate_test: bool = True,
    checkpoints: dict[int, CheckpointSlot] | None = None,
    on_resume: ResumeCallback | None = None,
) -> list[SeedResult]:
    """``train_role`` for a packable role: the seeds train as one fused pack.

    Same contract as ``train_role``: one ``SeedResult`` per seed in the order given, each
    with the plain model's ``state_dict``; a diverging seed comes back with ``failure`` set
    while the others go on; ``on_epoch(seed, epoch, metrics)`` per seed and epoch. Each seed
    saves into its own checkpoint slot the state the plain loop saves (model, optimizer,
    scheduler, generators, its dropout stream in ``dropout_rng``), so either the pack or the
    loop can resume it. Seeds whose slots hold different epochs resume as separate packs,
    one per epoch; a seed whose checkpoint is from another device type starts over. Every
    seed that resumes is handed to ``on_resume(seed, history)`` before any training.
    """
    if role.kind == "ensemble" or role.train is None:
        raise ValueError(f"role {role.key} is not trained")
    if not packable(role):
        raise ValueError(
            f"role {role.key}: architecture {role.arch!r} with precision "
            f"{role.train.precision!r} cannot be packed; packable: {sorted(PACKABLE_ARCHS)}"
            " in fp32 or bf16"
        )
    device = device or resolve_device(role.train.device)
    if get_loss(role.loss).needs_teacher and (
        teachers is None or role.teacher is None or any(s not in teachers for s in seeds)
    ):
        raise ValueError(f"role {role.key}: loss '{role.loss}' needs a teacher")
    # A checkpoint from another device type starts its seed over (CheckpointSlot.resumable);
    # the seeds that can resume still do, as a pack of their own.
    saved = {
        s: checkpoints[s].resume_state(device) if checkpoints and s in checkpoints else None
        for s in seeds
    }
    by_epoch: dict[int, list[int]] = {}
    for s in seeds:
        by_epoch.setdefault(int(saved[s]["epoch"]) if saved[s] else 0, []).append(s)
    if on_resume is not None:
        for s in seeds:
            state = saved[s]
            if state is not None:
                on_resume(s, list(state["history"]))
    results: dict[int, SeedResult] = {}
    for group in by_epoch.values():
        slots = {s: checkpoints.get(s) for s in group} if checkpoints else {}
        trained = _PackRun(role, group, data, teachers, device, evaluate_test, slots, saved)
        results.update({r.seed: r for r in trained.run(on_epoch)})
    return [results[s] for s in seeds]


class _PackRun:
    """One pack of seeds that start (or resume) at the same epoch.

    Beside ``train._SeedRun`` method for method (set up, run, one epoch, evaluate, save,
    finish), so that the two read side by side; what they share is in ``engine.py``. About
    250 lines because a pack's step, save and finish each handle K seeds and the seeds
    that diverged; each method is short."""

    def __init__(
        self,
        role: Role,
        seeds: list[int],
        data: DataSplits,
        teachers: dict[int, nn.Module] | None,
        device: torch.device,
        evaluate_test: bool,
        slots: dict[int, CheckpointSlot | None],
        saved: dict[int, dict[str, Any] | None],
    ):
        assert role.train is not None
        self.role, self.cfg, self.seeds, self.data = role, role.train, seeds, data
        self.device, self.evaluate_test, self.slots = device, evaluate_test, slots
        self.loss = get_loss(role.loss)
        # The registry's function with its parameters resolved once (what LossSpec.__call__
        # does on every call: K seeds x every step adds up on a small network).
        self.loss_params = resolve_loss_params(role.loss, role.loss_params)
        if TUNED in self.loss_params.values():
            raise ValueError(f"role {role.key}: a parameter of loss '{role.loss}' is still tuned")
        self.k = len(seeds)
        models = []
        for s in seeds:
            model = init_model(role, s, data)
            if saved[s] is not None:
                model.load_state_dict(saved[s]["model"])
            models.append(model)
        self.pack = to_device(SeedPack(models), device)
        self.teacher: nn.Module | None = None
        if teachers is not None and role.teacher:  # also for the agreement metrics
            frozen = frozen_pack([teachers[s] for s in seeds])
            self.teacher = to_device(frozen, device).eval().requires_grad_(False)
        # Without augmentation a step's teacher outputs are rows of one table per seed,
        # filled by one shared pass over the training set (see engine.TeacherCache).
        self.teacher_cache: TeacherCache | None = None
        if self.teacher is not None and self.loss.needs_teacher:
            with deterministic_mode(self.cfg.deterministic, device):  # as the loop's
                self.teacher_cache = TeacherCache.build(
                    self.teacher,
                    data,
                    batch_size=shared_batch_size(self.cfg.eval_batch_size, self.k, device),
                    precision=self.cfg.precision,
                    device=device,
                    table_forward=self.teacher.forward_shared,
                    batch_dim=1,
                )
        self.opt = make_optimizer(self.pack, self.cfg)
        self.sched = make_scheduler(self.opt, self.cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # fp16 never packs

        self.streams = [SeedStreams.of(s, role.generation, device) for s in seeds]
        self.results = [SeedResult(seed=s, state_dict={}) for s in seeds]
        self.batches = train_batches(role, data)  # the loop's, remainder folded alike
        self.start = 0
        if saved[seeds[0]] is not None:
            states = [saved[s] for s in seeds]
            self.start = int(states[0]["epoch"])
            self.opt.load_state_dict(packed_optimizer_state([st["optimizer"] for st in states]))
            self.sched.load_state_dict(states[0]["scheduler"])
            for j, st in enumerate(states):
                restore_streams(st, self.streams[j], self.device)
                self.results[j].history = list(st["history"])
                self.results[j].resumed_from = self.start
        self.pack.set_dropout_generators([st.dropout for st in self.streams])

    def run(self, on_epoch: EpochCallback | None) -> list[SeedResult]:
        # Deterministic mode (where on) covers the teachers' predictions and the final
        # evaluation as well as the epochs, as in the loop.
        with deterministic_mode(self.cfg.deterministic, self.device):
            return self._run(on_epoch)

    def _run(self, on_epoch: EpochCallback | None) -> list[SeedResult]:
        cfg, data, device, k = self.cfg, self.data, self.device, self.k
        cuda = [device] if device.type == "cuda" else []
        teacher_val = teacher_test = None
        if self.teacher is not None:
            teacher_val = self._predict(self.teacher, data.val_x)
            if self.evaluate_test:
                teacher_test = self._predict(self.teacher, data.test_x)
        train_x, train_y = data.train_x.to(device), data.train_y.to(device)
        n = len(train_x)
        alive = [True] * k
        with torch.random.fork_rng(devices=cuda):
            for epoch in range(self.start + 1, cfg.epochs + 1):
                if not any(alive):
                    break
                # [diagnostics] one accumulator per epoch, every seed of the pack
                diag = EpochDiagnostics.start(self.role.loss, self.loss_params, device, k)
                losses, accuracy = self._train_epoch(train_x, train_y, n, alive, diag)
                lr = self.opt.param_groups[0]["lr"]
                self.sched.step()
                evaluation = self._evaluate_epoch()
                for j, seed in enumerate(self.seeds):
                    if not alive[j]:
                        continue
                    if not math.isfinite(losses[j]):
                        alive[j] = False
                        error = TrainingDiverged(seed, epoch, losses[j])
                        self.results[j] = SeedResult(seed=seed, state_dict={}, failure=str(error))
                        continue
                    metrics = {"train_loss": losses[j], "train_acc": accuracy[j], "lr": lr}
                    metrics.update(diag.result(j))  # [diagnostics]
                    metrics.update(evaluation[j])
                    self.results[j].history.append(metrics)
                self._save(epoch, alive)
                if on_epoch is not None:
                    for j, seed in enumerate(self.seeds):
                        if alive[j]:
                            on_epoch(seed, epoch, self.results[j].history[-1])
        self._finish(alive, teacher_val, teacher_test)
        return self.results

    def _train_epoch(
        self,
        train_x: Tensor,
        train_y: Tensor,
        n: int,
        alive: list[bool],
        diag: EpochDiagnostics | None = None,
    ) -> tuple[list[float], list[float]]:
        """One epoch of every seed; each seed's mean training loss and accuracy."""
        cfg, device, data, k = self.cfg, self.device, self.data, self.k
        self.pack.train()
        perms = torch.stack([torch.randperm(n, generator=st.order) for st in self.streams])
        perms = perms.to(device)
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device)
        # Diverged seeds leave the computation: their losses would turn the sum into NaN
        # and their generators must not draw. Indexed once per step, and only when one died.
        live_seeds = [j for j in range(k) if alive[j]]
        live = None if all(alive) else torch.tensor(live_seeds, device=device)
        generators = [self.streams[j].loss for j in live_seeds]
        seed_rows = torch.arange(k, device=device)[:, None]
        for start, stop in self.batches:
            idx = perms[:, start:stop]  # [K, b]: each seed its own examples
            xb = augment_pack(train_x[idx], data.augmentation, [st.augment for st in self.streams])
            xb = normalize(xb.flatten(0, 1), data.mean, data.std).view(xb.shape)
            yb = train_y[idx]
            t_logits = None
            if self.teacher is not None and self.loss.needs_teacher:
                t_logits = teacher_outputs(
                    self.teacher_cache, (seed_rows, idx), xb, self.teacher, device, cfg.precision
                )
            with autocast(device, cfg.precision):
                logits = self.pack(xb)
            student, targets, teacher = logits, yb, t_logits
            if live is not None:
                student, targets = logits[live], yb[live]
                teacher = None if t_logits is None else t_logits[live]
            loss_generators = generators
            if diag is not None:  # [diagnostics] for DKPP a Watched stream
                loss_generators = diag.update(
                    student, teacher, targets, generator=generators, rows=live
                )
            # One call for all seeds: the loss of [K, B, C] logits is each seed's loss [K],
            # bit for bit what seed k's [B, C] slice alone gives (see study/losses.py).
            seed_losses = self.loss.fn(
                student, targets, teacher, generator=loss_generators, **self.loss_params
            )
            if hooks.seed_losses:
                seed_losses = hooks.losses_of([self.seeds[j] for j in live_seeds], seed_losses)
            # The sum's gradient for seed j's weights is the gradient of seed j's loss alone.
            self.opt.zero_grad(set_to_none=True)
            seed_losses.sum().backward()
            self.opt.step()
            batch_loss = seed_losses.detach() * idx.shape[1]
            if live is None:
                loss_sum += batch_loss
            else:
                loss_sum.index_add_(0, live, batch_loss)
            correct += (logits.detach().argmax(-1) == yb).sum(1)
            if hooks.after_step:
                hooks.step_taken()
        sums = loss_sum.tolist()
        return [s / n for s in sums], [c / n for c in correct.tolist()]

    def _predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return predict_pack_probs(
            model, x, self.data, batch_size=self.cfg.eval_batch_size, precision="fp32"
        )

    def _evaluate_epoch(self) -> list[dict[str, float]]:
        """Each seed's accuracy and NLL on validation (and test, unless tuning)."""
        out: list[dict[str, float]] = [{} for _ in range(self.k)]
        splits = [(self.data.val_x, self.data.val_y, "val")]
        if self.evaluate_test:
            splits.append((self.data.test_x, self.data.test_y, "test"))
        for x, y, prefix in splits:
            if len(y) == 0:
                continue
            probs = self._predict(self.pack, x)
            for j in range(self.k):
                out[j].update(evaluate_probs(probs[j], y, prefix, ece=False))
        return out

    def _save(self, epoch: int, alive: list[bool]) -> None:
        """Every live seed's state, as one commit: a seed's state counts only once every
        seed's is written (``checkpoint.commit_pack``), so that a crash between two writes
        resumes the whole pack at the epoch before, together, as the same computation."""
        if not any(self.slots.get(s) is not None for s in self.seeds):
            return
        live_slots = [self.slots.get(s) for j, s in enumerate(self.seeds) if alive[j]]
        # Saving costs time: skip the states when no live slot is due. When one is, every
        # live seed saves, so that the pack resumes together at one epoch.
        if not any(slot.due() for slot in live_slots if slot is not None):
            return
        optimizer = self.opt.state_dict()
        key = pack_key(s for s in self.slots.values() if s is not None)
        written: list[CheckpointSlot] = []
        with held():  # Ctrl-C and SIGTERM wait for the commit (a crash cannot)
            for j, seed in enumerate(self.seeds):
                slot = self.slots.get(seed)
                if slot is None or not alive[j]:
                    continue
                state = checkpoint_state(
                    epoch,
                    self.device,
                    self.results[j].history,
                    self.pack.seed_state(j),
                    seed_optimizer_state(optimizer, j, self.k),
                    self.sched,
                    self.scaler,
                    self.streams[j],
                    packed=self.k,
                    pack=key,
                )
                written.append(slot)
                slot.save(state)
                if len(written) == 1 and hooks.between_pack_writes:
                    hooks.pack_write_done(epoch)
            commit_pack(key, epoch, written)

    def _finish(
        self, alive: list[bool], teacher_val: Tensor | None, teacher_test: Tensor | None
    ) -> None:
        if not any(alive):
            return
        val = self._predict(self.pack, self.data.val_x)
        test = self._predict(self.pack, self.data.test_x) if self.evaluate_test else None
        for j in range(self.k):
            if not alive[j]:
                continue
            result = self.results[j]
            result.final = final_scores(
                val[j],
                test[j] if test is not None else None,
                self.data,
                teacher_val[j] if teacher_val is not None else None,
                teacher_test[j] if teacher_test is not None else None,
            )
            result.state_dict = {
                key: v.cpu().contiguous() for key, v in self.pack.seed_state(j).items()
            }
            if self.teacher is not None and self.loss.needs_teacher:
                record_teacher_outputs(result, self.teacher_cache)


# --- how many seeds per pack --------------------------------------------------------------


def auto_pack_size(
    role: Role, n_seeds: int, device: torch.device | str, data: DataSplits | None = None
) -> int:
    """What ``[execution] pack = "auto"`` means for ``role``: seeds per pack.

    1 when the role cannot pack. On the CPU a pack pays only where a step is dominated by
    per-operation overhead, not arithmetic: the digits MLP (0.6M multiply-adds per seed and
    step) trains 3.6x faster in a pack of 20 (``study bench``, one thread), while small_cnn
    on digits (20M), WRN-16-1 on CIFAR shapes and the 1200-1200 MNIST MLP ran at 0.9-1.0x
    (docs/benchmarks.md). So on the CPU: a pack when one seed's forward step costs at most
    ``CPU_PACK_MAX_MACS`` (without ``data`` to measure it: for MLPs only). On a GPU: every
    packable role.

    The size is as many seeds as fit, up to ``MAX_PACK_CPU`` / ``MAX_PACK_GPU``, within a
    quarter of the free memory for an estimate of one seed's training memory (weights,
    gradients, two optimizer slots, and twice every layer's output for one batch, counted
    on meta tensors), then spread evenly: 20 seeds with room for 16 give packs of 10. On a
    GPU the free memory is net of the pack's copy of the training set. Not estimated: the K
    teachers a student pack keeps on the device (another role's architecture, not known
    here) and their output table (K x training images x classes floats); the other three
    quarters are the room for them.
    """
    if n_seeds <= 1 or not packable(role):
        return 1
    device = torch.device(device)
    limit = MAX_PACK_GPU if device.type == "cuda" else MAX_PACK_CPU
    if data is not None:
        cost = seed_step_cost(role, data)
        if device.type != "cuda" and cost.macs > CPU_PACK_MAX_MACS:
            return 1
        free = _free_memory(device)
        if device.type == "cuda":
            free -= data.train_x.nbytes + data.train_y.nbytes
        limit = min(limit, max(1, int(free // (4 * cost.bytes))))
    elif device.type != "cuda" and role.arch != "mlp":
        return 1
    size = min(n_seeds, limit)
    return math.ceil(n_seeds / math.ceil(n_seeds / size))


@dataclass(frozen=True)
class StepCost:
    """One seed's training step, estimated: multiply-adds of the forward pass and bytes."""

    macs: int
    bytes: int


def seed_step_cost(role: Role, data: DataSplits) -> StepCost:
    """Run the role's model on meta tensors (no memory, no arithmetic) and count: the
    multiply-adds of its linear and convolution layers for one batch, and 4 float32 copies
    of the weights (weights, gradients, two optimizer slots) plus twice the outputs of every
    layer (what autograd keeps, roughly)."""
    assert role.train is not None
    batch = role.train.batch_size
    macs, outputs = [0], [0]

    def count(module: nn.Module, args: Any, out: Any) -> None:
        if not isinstance(out, Tensor) or list(module.children()):
            return
        outputs[0] += out.numel()
        if isinstance(module, nn.Linear):
            macs[0] += out.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs[0] += out.numel() * per_output

    with torch.device("meta"):
        model = build_model(role, data)
        hooks = [m.register_forward_hook(count) for m in model.modules()]
        model(torch.empty(batch, data.in_channels, data.image_size, data.image_size))
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return StepCost(macs=macs[0], bytes=4 * (4 * params + 2 * outputs[0]))


def _free_memory(device: torch.device) -> float:
    """Bytes a pack can still take. On a GPU the driver counts what PyTorch's caching
    allocator holds for this process as used, even when no tensor is in it: that part is
    free to a pack, or packs planned later in a process would come out smaller."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        return float(
            free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        )
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
