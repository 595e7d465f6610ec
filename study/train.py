"""The trainer: one role, a pack of seeds, epochs of SGD, evaluation, final metrics.

``train_role`` is the one place that chooses how a role's seeds train: as one fused seed
pack (``pack.py``) where the role packs and there are several seeds, else one after the
other in this module's loop (``_SeedRun``). Read the loop top to bottom for what one step
does: the seed's batch in its own order and augmentation, the teacher's outputs for it,
the loss, the optimizer step; then the epoch's evaluation and checkpoint. Everything the
loop shares with the pack (the model's construction, the random streams, the checkpoint
schema, the teacher-output cache and the final metrics) is in ``engine.py`` and
``metrics.py``, so the two trainings agree by construction rather than by repetition.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from study import hooks, pack
from study.checkpoint import CheckpointSlot, restore_global_rng
from study.data import DataSplits, augment_batch, normalize
from study.determinism import configure_cuda_process, deterministic_mode
from study.device import cuda_index, resolve_device
from study.diagnostics import EpochDiagnostics  # [diagnostics]
from study.engine import (
    EpochCallback,
    ResumeCallback,
    SeedResult,
    SeedStreams,
    TeacherCache,
    TrainingDiverged,
    autocast,
    checkpoint_state,
    init_model,
    make_optimizer,
    make_scheduler,
    predict_probs,
    record_teacher_outputs,
    restore_streams,
    saved_device_rng,
    seeded_dropout,
    teacher_outputs,
    to_device,
    train_batches,
)
from study.features import LOOP_NOTE, SeedFeatures
from study.losses import get_loss
from study.metrics import evaluate_probs, final_scores
from study.plan import Role, derive_seed


def train_role(
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
    """Train one role for a pack of seeds; seed s distils from ``teachers[s]``.

    A seed whose loss becomes NaN or infinite comes back with ``failure`` set, and the
    other seeds of the pack are unaffected.

    ``on_epoch`` may raise to stop a seed (a tuning pruner does). With ``evaluate_test``
    False the test split is never touched: what tuning trials use. With ``checkpoints``,
    each seed saves its complete state at the end of an epoch into its slot whenever the
    slot says a save is due (``CheckpointSlot.due``: every epoch, or on a time cadence) and,
    if the slot already holds a state, resumes from it instead of starting over; a seed
    that resumes is first handed to ``on_resume(seed, history)`` with the epochs its
    checkpoint restored, before its training goes on.
    """
    if role.kind == "ensemble" or role.train is None:
        raise ValueError(f"role {role.key} is not trained")
    configure_cuda_process()  # also for a device given: fp32 means IEEE fp32
    device = device or resolve_device(role.train.device)
    if len(seeds) > 1 and pack.packable(role):
        return pack.train_pack(
            role,
            seeds,
            data,
            teachers=teachers,
            device=device,
            on_epoch=on_epoch,
            evaluate_test=evaluate_test,
            checkpoints=checkpoints,
            on_resume=on_resume,
        )
    results = []
    for seed in seeds:
        teacher = teachers[seed] if teachers is not None and role.teacher else None
        slot = checkpoints.get(seed) if checkpoints else None
        try:
            run = _SeedRun(role, seed, data, teacher, device, evaluate_test, slot)
            results.append(run.run(on_epoch, on_resume))
        except TrainingDiverged as e:  # this seed fails alone; the pack goes on
            results.append(SeedResult(seed=seed, state_dict={}, failure=str(e)))
    if role.features is not None and len(seeds) > 1:  # feature KD: why not a pack
        for result in results:
            result.notes.append(LOOP_NOTE.format(method=role.features["method"]))
    return results


class _SeedRun:
    """One seed of a role trained alone: the plain model, and its step.

    Method for method beside ``pack._PackRun`` (set up, run, resume, epochs, one epoch,
    evaluate); what they share is in ``engine.py``."""

    def __init__(
        self,
        role: Role,
        seed: int,
        data: DataSplits,
        teacher: nn.Module | None,
        device: torch.device,
        evaluate_test: bool,
        slot: CheckpointSlot | None,
    ):
        assert role.train is not None
        self.role, self.cfg, self.seed, self.data = role, role.train, seed, data
        self.device, self.evaluate_test, self.slot = device, evaluate_test, slot
        self.loss = get_loss(role.loss)
        if self.loss.needs_teacher and teacher is None:
            raise ValueError(f"role {role.key}: loss '{role.loss}' needs a teacher")
        self.model = to_device(init_model(role, seed, data), device)
        if teacher is not None:
            teacher = to_device(teacher, device).eval().requires_grad_(False)
        self.teacher = teacher
        self.distils = teacher is not None and self.loss.needs_teacher  # else: agreement only
        # Feature distillation (study/features.py): taps, connectors, the teacher each step;
        # the connectors train in the student's optimizer, after the model's parameters.
        self.features: SeedFeatures | None = None
        trained: nn.Module = self.model
        if role.features is not None:
            if teacher is None:
                raise ValueError(f"role {role.key}: feature distillation needs a teacher")
            self.features = SeedFeatures(role, seed, data, self.model, teacher, device)
            trained = nn.ModuleList([self.model, self.features.term])
        self.epoch = 0
        self.opt = make_optimizer(trained, self.cfg)
        self.sched = make_scheduler(self.opt, self.cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.cfg.precision == "fp16")
        self.streams = SeedStreams.of(seed, role.generation, device)
        # The model's dropout draws from a stream of its own, as a pack's seed does.
        seeded_dropout(self.model, self.streams.dropout)
        self.batches = train_batches(role, data)
        self.result = SeedResult(seed=seed, state_dict={})
        self.cache: TeacherCache | None = None

    def run(self, on_epoch: EpochCallback | None, on_resume: ResumeCallback | None) -> SeedResult:
        """Train the seed (resuming from its slot's checkpoint if it holds one) and evaluate
        it. Deterministic mode (where on) covers every forward pass of the training, not
        only its steps: the teacher's predictions, the teacher-output table and the final
        evaluation too (on the CPU it changes no result; on a GPU it pins the kernels)."""
        cfg, data, device = self.cfg, self.data, self.device
        with deterministic_mode(cfg.deterministic, device):
            teacher_val = teacher_test = None
            if self.teacher is not None:
                teacher_val = self._predict(self.teacher, data.val_x)
                if self.evaluate_test:
                    teacher_test = self._predict(self.teacher, data.test_x)
            if self.distils and self.features is None:  # the cache holds no features
                self.cache = TeacherCache.build(
                    self.teacher,
                    data,
                    batch_size=cfg.eval_batch_size,
                    precision=cfg.precision,
                    device=device,
                )
            cuda = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                # Torch's global generators, for random layers other than nn.Dropout
                # (torchvision's stochastic depth): seeded per seed and generation as well.
                torch.manual_seed(derive_seed(self.seed, self.role.generation, "dropout"))
                self._resume(on_resume)
                self._epochs(on_epoch)
            val = self._predict(self.model, data.val_x)
            test = self._predict(self.model, data.test_x) if self.evaluate_test else None
            self.result.final = final_scores(val, test, data, teacher_val, teacher_test)
            if self.distils or self.features is not None:
                record_teacher_outputs(self.result, self.cache)
        self.result.state_dict = {
            k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, v in self.model.state_dict().items()
        }
        return self.result

    def _resume(self, on_resume: ResumeCallback | None) -> None:
        """Continue from the slot's checkpoint, if it holds one, as if never interrupted."""
        saved = self.slot.resume_state(self.device) if self.slot is not None else None
        if saved is None:
            return
        if on_resume is not None:
            on_resume(self.seed, list(saved["history"]))
        self.model.load_state_dict(saved["model"])
        if self.features is not None:
            self.features.term.load_state_dict(saved["connectors"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        restore_streams(saved, self.streams, self.device)
        restore_global_rng(saved)
        if self.device.type == "cuda":
            device_rng = saved_device_rng(saved, self.device)
            if device_rng is not None:
                torch.cuda.set_rng_state(device_rng, cuda_index(self.device))
        self.result.history = list(saved["history"])
        self.result.resumed_from = int(saved["epoch"])

    def _epochs(self, on_epoch: EpochCallback | None) -> None:
        """The remaining epochs: train, evaluate, checkpoint when the slot says it is due."""
        train_x, train_y = self.data.train_x.to(self.device), self.data.train_y.to(self.device)
        for epoch in range(len(self.result.history) + 1, self.cfg.epochs + 1):
            self.epoch = epoch
            diag = EpochDiagnostics.start(  # [diagnostics]
                self.role.loss, self.role.loss_params, self.device
            )
            train_loss, train_acc = self._train_epoch(train_x, train_y, diag)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(self.seed, epoch, train_loss)
            metrics = {"train_loss": train_loss, "train_acc": train_acc}
            metrics["lr"] = self.opt.param_groups[0]["lr"]
            metrics.update(diag.result())  # [diagnostics]
            self.sched.step()
            metrics.update(self._evaluate())
            self.result.history.append(metrics)
            if self.slot is not None and self.slot.due():
                self.slot.save(
                    checkpoint_state(
                        epoch,
                        self.device,
                        self.result.history,
                        self.model.state_dict(),
                        self.opt.state_dict(),
                        self.sched,
                        self.scaler,
                        self.streams,
                        **self._connectors(),
                    )
                )
            if on_epoch is not None:
                on_epoch(self.seed, epoch, metrics)

    def _train_epoch(
        self, train_x: Tensor, train_y: Tensor, diag: EpochDiagnostics
    ) -> tuple[float, float]:
        """One epoch of steps; the mean training loss and accuracy. ``diag`` measures the
        dark-knowledge diagnostics from the step's own tensors, before the loss draws from
        the loss stream (for DKPP it hands the loss its stream ``Watched``: the loss leaves
        there the permuted targets it trains on)."""
        cfg, data, device, streams = self.cfg, self.data, self.device, self.streams
        self.model.train()
        if self.features is not None:
            self.features.term.train()
        n = len(train_x)
        perm = torch.randperm(n, generator=streams.order).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for start, stop in self.batches:
            idx = perm[start:stop]
            xb = augment_batch(train_x[idx], data.augmentation, streams.augment)
            xb = normalize(xb, data.mean, data.std)
            yb = train_y[idx]
            t_logits = None
            if self.features is not None:  # one teacher pass: its taps and its logits
                t_logits = self.features.run_teacher(xb, cfg.precision)
            elif self.distils:
                t_logits = teacher_outputs(self.cache, idx, xb, self.teacher, device, cfg.precision)
            taps = self.features.tapping() if self.features is not None else nullcontext()
            with autocast(device, cfg.precision), taps:
                logits = self.model(xb)
            # [diagnostics] for DKPP a Watched stream
            generator = diag.update(logits, t_logits, yb, generator=streams.loss)
            loss = self.loss(logits, yb, t_logits, generator=generator, **self.role.loss_params)
            if self.features is not None:
                loss = self.features.add_to(loss, self.epoch)
            if hooks.seed_losses:
                loss = hooks.losses_of([self.seed], loss)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == yb).sum()
            if hooks.after_step:
                hooks.step_taken()
        return float(loss_sum) / n, float(correct) / n

    def _connectors(self) -> dict[str, dict[str, Tensor]]:
        """The connectors' state for the checkpoint (feature roles only)."""
        return {} if self.features is None else {"connectors": self.features.term.state_dict()}

    def _predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return predict_probs(model, x, self.data, batch_size=self.cfg.eval_batch_size)

    def _evaluate(self) -> dict[str, float]:
        """An epoch's evaluation: accuracy and NLL on validation (and test, unless tuning)."""
        data, out = self.data, {}
        splits = [(data.val_x, data.val_y, "val")]
        if self.evaluate_test:
            splits.append((data.test_x, data.test_y, "test"))
        for x, y, prefix in splits:
            out.update(evaluate_probs(self._predict(self.model, x), y, prefix, ece=False))
        return out
