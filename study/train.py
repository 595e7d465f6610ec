"""The trainer: one role, a pack of seeds, epochs of SGD, evaluation, final metrics.

Read it top to bottom: ``train_role`` trains every seed of a pack (today a loop over the
seeds; the interface takes the list so that a fused pack can replace the loop), and
``evaluate_probs`` turns predicted probabilities into the metrics we report.

Per seed, every random stream is its own and derived from (seed, generation, stream name):
initialisation, data order, augmentation, dropout and the loss's own randomness (DKPP's
permutations). The teacher is put in eval mode and runs under ``torch.inference_mode``:
a teacher left in train mode (dropout on, BatchNorm statistics drifting) is one of the
classic silent bugs of KD code. The final model is the last epoch's: the test split is
evaluated and logged, never used to choose anything.
"""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from study.checkpoint import CheckpointSlot, restore_global_rng, training_state
from study.data import DataSplits, augment_batch, normalize
from study.diagnostics import EpochDiagnostics  # [diagnostics]
from study.errors import UserInputError
from study.losses import get_loss
from study.models import create_model
from study.models.dropout import SeedDropout
from study.plan import Role, derive_seed
from study.protocol import TrainSection
from study.repro import configure_cuda_process, deterministic_mode

EpochCallback = Callable[[int, int, dict[str, float]], None]  # (seed, epoch, metrics)
# (seed, history): a seed resumed from a checkpoint, with the epochs the checkpoint restored,
# before its training goes on (the executor logs those MLflow lacks at once).
ResumeCallback = Callable[[int, list[dict[str, float]]], None]

# Fault injection for the crash tests: "N:KILL" or "N:INT" sends that signal to this process
# after N training steps in all (SIGKILL is a real crash: no cleanup, no flush).
_FAULT = os.environ.get("STUDY_TEST_SIGNAL_AFTER_STEPS", "")
_steps_taken = 0
# Fault injection for the failure tests: seeds listed here train with an absurd learning
# rate (x 1e12), so that their loss diverges while the others train normally.
_DIVERGE = {int(x) for x in os.environ.get("STUDY_TEST_DIVERGE_SEEDS", "").split(",") if x}


# Fault injection for the pack commit tests: "E:KILL" sends that signal to this process in
# epoch E of a seed pack, after its first seed's checkpoint is written and before the others.
_FAULT_PACK = os.environ.get("STUDY_TEST_SIGNAL_BETWEEN_PACK_WRITES", "")


def fault_between_pack_writes(epoch: int) -> None:
    """The pack's hook between two seeds' checkpoint writes (see ``_FAULT_PACK``)."""
    at, _, name = _FAULT_PACK.partition(":")
    if at and int(at) == epoch:
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def _maybe_fault() -> None:
    global _steps_taken
    _steps_taken += 1
    after, _, name = _FAULT.partition(":")
    if _steps_taken == int(after):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


class TrainingDiverged(RuntimeError):
    """The loss of a seed became NaN or infinite."""

    def __init__(self, seed: int, epoch: int, value: float):
        self.seed, self.epoch, self.value = seed, epoch, value
        super().__init__(f"seed {seed}: training loss is {value} in epoch {epoch}")


@dataclass
class SeedResult:
    """What one seed's training produced."""

    seed: int
    state_dict: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0  # the epoch a resumed run continued after (0: from scratch)
    failure: str | None = None  # why this seed failed (divergence), None when it trained
    # Where a distilling student's teacher outputs came from: True the cache (for some or
    # all batch shapes), False a forward pass in every step (augmented data, or the cache
    # refused every shape), None without a teacher to distil from (see
    # ``record_teacher_outputs``).
    teacher_cached: bool | None = None
    notes: list[str] = field(default_factory=list)  # for the user, e.g. the cache went off


def record_teacher_outputs(result: SeedResult, cache: TeacherCache | None) -> None:
    """Say in ``result`` where a distilling student's teacher outputs came from, with a note
    for the user when the cache built for its training refused some batch shapes."""
    result.teacher_cached = cache is not None and cache.used
    if cache is not None and cache.refused:
        shapes = ", ".join("x".join(map(str, s)) for s in sorted(cache.refused))
        result.notes.append(
            f"teacher-output cache not used for batches of shape {shapes}: a forward pass "
            "rounded them differently from the table, so the teacher ran for "
            f"{'those batches' if cache.used else 'every batch'} (the results are unaffected)"
        )


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_device(spec: str) -> torch.device:
    """'auto' is the GPU when there is one, else the CPU. Also makes the process-wide
    settings a training needs (``repro.configure_cuda_process``: fp32 means IEEE fp32)."""
    configure_cuda_process()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", spec)
    if match is None:
        raise UserInputError(f"unknown device {spec!r}; allowed: auto, cpu, cuda, cuda:N")
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserInputError(
                f"device {spec!r} asked for, but this machine has no usable CUDA device; "
                "use auto or cpu"
            )
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise UserInputError(
                f"device {spec!r} asked for, but this machine has {count} CUDA device(s): "
                f"cuda:0 to cuda:{count - 1}"
            )
    return torch.device(spec)


def build_model(role: Role, data: DataSplits) -> nn.Module:
    """The role's architecture, shaped for the dataset."""
    return create_model(
        role.arch,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        **role.arch_kwargs,
    )


def init_model(role: Role, seed: int, data: DataSplits) -> nn.Module:
    """A freshly initialised model for (role, seed): distinct per seed and per generation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, role.generation, "init"))
        return build_model(role, data)


def _optimizer(model: nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainSection
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_probs(
    model: nn.Module, x: Tensor, data: DataSplits, *, batch_size: int, precision: str = "fp32"
) -> Tensor:
    """Softmax probabilities (float32) of a model on uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize(x[i : i + batch_size].to(device), data.mean, data.std)
        with _autocast(device, precision):
            logits = model(xb)
        out.append(torch.softmax(logits.float(), dim=1))
    model.train(was_training)
    if not out:
        return torch.empty(0, data.num_classes, device=device)
    return torch.cat(out)


class _Switch:
    """A process-wide on/off setting, changed for the length of a ``with`` block."""

    def __init__(self, doc: str):
        self.on = True
        self.__doc__ = doc

    @contextmanager
    def __call__(self, enabled: bool) -> Iterator[None]:
        before, self.on = self.on, enabled
        try:
            yield
        finally:
            self.on = before


teacher_cache = _Switch(
    """Turn the teacher-output cache on or off within a block (``study bench`` measures
    the teacher's forward pass with it off; results are the same either way)."""
)
channels_last = _Switch(
    """Convolutional networks train and evaluate in the channels-last memory format (on)
    or in PyTorch's default NCHW (off) within a block; ``[execution] channels_last``."""
)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``; a network with 2-d convolutions also in the channels-last
    memory format while ``channels_last`` is on: oneDNN on the CPU (and cuDNN's tensor-core
    kernels on a GPU) convolve NHWC faster than NCHW. The weights' memory format steers the
    convolutions' and so every activation's; the results differ from NCHW's only in float
    rounding (docs/benchmarks.md)."""
    model = model.to(device)
    if has_convolutions(model):
        # both ways: a model loaded while the switch was on may be trained with it off
        layout = torch.channels_last if channels_last.on else torch.contiguous_format
        model = model.to(memory_format=layout)
    return model


class TeacherCache:
    """The teacher's logits for every training image, computed once per training.

    Exact only where a training step's view of an image is the image itself (augmentation
    "none"): then a step's teacher outputs are rows of this table instead of a forward
    pass. Each row is computed by the same forward pass (the same precision, the same
    arithmetic per image) as in a step, but a backend may round a row differently in a
    batch of another size (its kernels block and vectorise by batch size: a small_cnn's
    partial last batch was seen 2e-8 off a table filled in batches of 1024). So ``lookup``
    checks the table against a real forward pass on the first batch of every batch shape it
    is given, which in the first epoch are the full batches and the last, partial one.
    Where the backend rounds a shape differently from the table (MKL on an AMD EPYC rounds
    small batches otherwise), batches of that shape get ``None`` from then on, so the step
    runs the teacher for them, and the other shapes keep the table; ``refused`` holds those
    shapes, ``checked`` the shapes verified. ``forward`` is anything mapping a normalised
    batch to logits (a model in eval mode, or a seed pack's shared forward pass).
    """

    def __init__(
        self, forward: Callable[[Tensor], Tensor], table: Tensor, *, precision: str = "fp32"
    ):
        self.forward, self.table, self.precision = forward, table, precision
        self.checked: set[tuple[int, ...]] = set()
        self.refused: set[tuple[int, ...]] = set()

    @property
    def used(self) -> bool:
        """Whether some batch shape was served from the table."""
        return bool(self.checked - self.refused)

    @classmethod
    def build(
        cls,
        forward: Callable[[Tensor], Tensor],
        data: DataSplits,
        *,
        batch_size: int,
        precision: str,
        device: torch.device,
        table_forward: Callable[[Tensor], Tensor] | None = None,
        batch_dim: int = 0,
    ) -> TeacherCache | None:
        """The cache, or None where it would not be exact (augmented views).

        ``table_forward`` fills the table (default: ``forward``; a seed pack's teachers fill
        it with their shared forward pass, every seed on every image, concatenated along
        ``batch_dim``) and ``forward`` is the step's own, which ``lookup`` checks.
        """
        if not teacher_cache.on or data.augmentation != "none" or len(data.train_x) == 0:
            return None
        fill = table_forward or forward
        out = []
        with torch.inference_mode():
            for i in range(0, len(data.train_x), batch_size):
                xb = normalize(data.train_x[i : i + batch_size].to(device), data.mean, data.std)
                with _autocast(device, precision):
                    out.append(fill(xb).float())
        return cls(forward, torch.cat(out, dim=batch_dim).clone(), precision=precision)

    def lookup(self, index: Tensor | tuple[Tensor, ...], xb: Tensor) -> Tensor | None:
        """The teacher's logits for a training batch ``xb`` (normalised): ``table[index]``
        (the batch's rows). None for a batch shape the table does not match. The first
        batch of each shape is checked against a real forward pass (see the class)."""
        shape = tuple(xb.shape)
        if shape in self.refused:
            return None
        cached = self.table[index]
        if shape not in self.checked:
            self.checked.add(shape)
            with torch.inference_mode(), _autocast(self.table.device, self.precision):
                fresh = self.forward(xb).float()
            if not torch.equal(fresh, cached):
                self.refused.add(shape)
                return None
        return cached


def expected_calibration_error(probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017), top-1 confidence."""
    conf, pred = probs.max(dim=1)
    correct = (pred == y).float()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64, device=probs.device)
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            gap = (conf[mask].double().mean() - correct[mask].double().mean()).abs()
            ece += mask.double().mean() * gap
    return float(ece)


def evaluate_probs(probs: Tensor, y: Tensor, prefix: str, *, ece: bool = True) -> dict[str, float]:
    """Accuracy, negative log-likelihood and (unless ``ece`` is False) ECE of predictions.

    Per-epoch metrics skip the ECE: its 15-bin loop is most of an epoch's evaluation cost.
    """
    if len(y) == 0:
        return {}
    y = y.to(probs.device)
    nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    out = {
        f"{prefix}_acc": float((probs.argmax(1) == y).float().mean()),
        f"{prefix}_nll": float(nll),
    }
    if ece:
        out[f"{prefix}_ece"] = expected_calibration_error(probs, y)
    return out


def agreement_metrics(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """Top-1 agreement and KL(teacher || student) (batchmean) between two predictions."""
    kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(1)
    return {
        "teacher_agreement": float((student.argmax(1) == teacher.argmax(1)).float().mean()),
        "teacher_kl": float(kl.mean()),
    }


def final_metrics(
    val_probs: Tensor, test_probs: Tensor, data: DataSplits, teacher_test: Tensor | None
) -> dict[str, float]:
    """The final metrics of a model (or an ensemble) given its predictions."""
    out = evaluate_probs(test_probs, data.test_y, "test")
    val = evaluate_probs(val_probs, data.val_y, "val")
    out.update({k: v for k, v in val.items() if k != "val_ece"})
    if teacher_test is not None:
        out.update(agreement_metrics(test_probs, teacher_test))
    return out


class _OneValuePerChannel(Exception):
    pass


def one_example_breaks_batchnorm(role: Role, data: DataSplits) -> bool:
    """Whether a training batch of one example leaves a BatchNorm layer of the role's model
    one value per channel (1x1 maps), where training-mode BatchNorm cannot normalise and
    PyTorch raises "Expected more than 1 value per channel". Found on meta tensors (no
    memory, no arithmetic)."""

    def pre_hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x.dim() >= 2 and x.numel() // x.shape[1] == 1:
            raise _OneValuePerChannel

    try:
        with torch.device("meta"):
            model = build_model(role, data).train()
            norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            if not norms:
                return False
            hooks = [m.register_forward_pre_hook(pre_hook) for m in norms]
            try:
                model(torch.empty(1, data.in_channels, data.image_size, data.image_size))
            finally:
                for h in hooks:
                    h.remove()
    except _OneValuePerChannel:
        return True
    except Exception:  # noqa: BLE001 - a model the meta device cannot run: train as given
        return False
    return False


def train_batches(role: Role, data: DataSplits) -> list[tuple[int, int]]:
    """The ``[start, stop)`` positions, in an epoch's permutation, of its training batches:
    ``batch_size`` examples each and the remainder last, as ``range(0, n, batch_size)``.

    A remainder of one example is folded into the batch before it (one batch of
    ``batch_size + 1``) where, and only where, a batch of one cannot train: where a
    BatchNorm layer would see one value per channel (``one_example_breaks_batchnorm``).
    Why this fix and not another: the example still trains in every epoch, every seed and
    the loop and the pack fold alike, and no configuration that trains today changes by a
    bit (an MLP without BatchNorm, or a BatchNorm over larger maps, trains its one-example
    batch as before). Dropping the remainder (``drop_last``) would change every run whose
    ``n_train % batch_size`` is not 0; folding whenever the remainder is one would change
    runs that work; refusing the protocol would turn away a batch size that has one
    obvious meaning.
    """
    assert role.train is not None
    n, size = len(data.train_x), role.train.batch_size
    bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
    if len(bounds) > 1 and n % size == 1 and one_example_breaks_batchnorm(role, data):
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


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
    from study.pack import packable, train_pack  # the fused pack imports this module

    if len(seeds) > 1 and packable(role):
        return train_pack(
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
            results.append(
                _train_seed(
                    role, seed, data, teacher, device, on_epoch, evaluate_test, slot, on_resume
                )
            )
        except TrainingDiverged as e:  # this seed fails alone; the pack goes on
            results.append(SeedResult(seed=seed, state_dict={}, failure=str(e)))
    return results


def _train_seed(
    role: Role,
    seed: int,
    data: DataSplits,
    teacher: nn.Module | None,
    device: torch.device,
    on_epoch: EpochCallback | None,
    evaluate_test: bool = True,
    slot: CheckpointSlot | None = None,
    on_resume: ResumeCallback | None = None,
) -> SeedResult:
    cfg = role.train
    assert cfg is not None
    loss_spec = get_loss(role.loss)
    if loss_spec.needs_teacher and teacher is None:
        raise ValueError(f"role {role.key}: loss '{role.loss}' needs a teacher")

    model = to_device(init_model(role, seed, data), device)
    if teacher is not None:
        teacher = to_device(teacher, device).eval().requires_grad_(False)
    opt = _optimizer(model, cfg)
    if seed in _DIVERGE:
        for group in opt.param_groups:
            group["lr"] *= 1e12
    sched = _scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def stream(name: str) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(derive_seed(seed, role.generation, name))

    order, augment, loss_rng = (
        torch.Generator().manual_seed(derive_seed(seed, role.generation, "order")),
        stream("augment"),
        stream("loss"),
    )
    # The model's dropout draws from a stream of its own, as a pack's seed does (SeedDropout).
    dropout = stream("dropout")
    seeded_dropout(model, dropout)

    # Deterministic mode (where on) covers every forward pass of the training, not only
    # its steps: the teacher's predictions, the teacher-output table and the final
    # evaluation too (on the CPU it changes no result; on a GPU it pins the kernels).
    with deterministic_mode(cfg.deterministic, device):
        train_x, train_y = data.train_x.to(device), data.train_y.to(device)
        teacher_val = teacher_test = None
        if teacher is not None:
            teacher_val = predict_probs(teacher, data.val_x, data, batch_size=cfg.eval_batch_size)
            if evaluate_test:
                teacher_test = predict_probs(
                    teacher, data.test_x, data, batch_size=cfg.eval_batch_size
                )

        distils = teacher is not None and loss_spec.needs_teacher  # else: agreement only
        cache = None
        if distils:
            cache = TeacherCache.build(
                teacher,
                data,
                batch_size=cfg.eval_batch_size,
                precision=cfg.precision,
                device=device,
            )

        result = SeedResult(seed=seed, state_dict={})
        n = len(train_x)
        cuda = [device] if device.type == "cuda" else []
        batches = train_batches(role, data)
        with torch.random.fork_rng(devices=cuda):
            # Torch's global generators, for random layers other than nn.Dropout
            # (torchvision's stochastic depth): seeded per seed and generation as well.
            torch.manual_seed(derive_seed(seed, role.generation, "dropout"))
            generators = {"order": order, "augment": augment, "loss": loss_rng}
            saved = slot.resume_state(device) if slot is not None else None
            if saved is not None:
                if on_resume is not None:
                    on_resume(seed, list(saved["history"]))
                _restore(saved, model, opt, sched, scaler, generators, dropout, device)
                result.history = list(saved["history"])
                result.resumed_from = int(saved["epoch"])
            for epoch in range(len(result.history) + 1, cfg.epochs + 1):
                model.train()
                perm = torch.randperm(n, generator=order).to(device)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device)
                diag = EpochDiagnostics.start(role.loss, role.loss_params, device)  # [diagnostics]
                for start, stop in batches:
                    idx = perm[start:stop]
                    xb = augment_batch(train_x[idx], data.augmentation, augment)
                    xb = normalize(xb, data.mean, data.std)
                    yb = train_y[idx]
                    t_logits = None
                    if cache is not None:
                        t_logits = cache.lookup(idx, xb)
                    if distils and t_logits is None:
                        with torch.inference_mode(), _autocast(device, cfg.precision):
                            t_logits = teacher(xb)
                        t_logits = t_logits.float().clone()  # leave inference mode
                    with _autocast(device, cfg.precision):
                        logits = model(xb)
                    diag.update(logits, t_logits, yb, generator=loss_rng)  # [diagnostics]
                    loss = loss_spec(logits, yb, t_logits, generator=loss_rng, **role.loss_params)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    loss_sum += loss.detach() * len(idx)
                    correct += (logits.detach().argmax(1) == yb).sum()
                    if _FAULT:
                        _maybe_fault()
                train_loss = float(loss_sum) / n
                if not math.isfinite(train_loss):
                    raise TrainingDiverged(seed, epoch, train_loss)
                metrics = {"train_loss": train_loss, "train_acc": float(correct) / n}
                metrics["lr"] = opt.param_groups[0]["lr"]
                metrics.update(diag.result())  # [diagnostics]
                sched.step()
                metrics.update(_evaluate(model, data, cfg, evaluate_test))
                result.history.append(metrics)
                if slot is not None and slot.due():
                    slot.save(
                        _capture(
                            epoch,
                            result.history,
                            model,
                            opt,
                            sched,
                            scaler,
                            generators,
                            dropout,
                            device,
                        )
                    )
                if on_epoch is not None:
                    on_epoch(seed, epoch, metrics)

        val_probs = predict_probs(model, data.val_x, data, batch_size=cfg.eval_batch_size)
        test_probs = None
        if evaluate_test:
            test_probs = predict_probs(model, data.test_x, data, batch_size=cfg.eval_batch_size)
        if evaluate_test:
            result.final = final_metrics(val_probs, test_probs, data, teacher_test)
        else:
            result.final = dict(evaluate_probs(val_probs, data.val_y, "val"))
        if teacher_val is not None and len(data.val_y):
            result.final["val_teacher_agreement"] = agreement_metrics(val_probs, teacher_val)[
                "teacher_agreement"
            ]
        if distils:
            record_teacher_outputs(result, cache)

    result.state_dict = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    return result


def _evaluate(model: nn.Module, data: DataSplits, cfg: TrainSection, test: bool) -> dict:
    """An epoch's evaluation: accuracy and NLL on validation (and test, unless tuning)."""
    out: dict[str, float] = {}
    splits = [(data.val_x, data.val_y, "val")] + ([(data.test_x, data.test_y, "test")] * test)
    for x, y, prefix in splits:
        probs = predict_probs(model, x, data, batch_size=cfg.eval_batch_size)
        out.update(evaluate_probs(probs, y, prefix, ece=False))
    return out


def _capture(epoch, history, model, opt, sched, scaler, generators, dropout, device) -> dict:
    """Everything needed to continue after ``epoch`` exactly as if never interrupted
    (``checkpoint.training_state``). Of the GPUs' global generators only the training
    device's (``device_rng``): the others are not the training's."""
    return training_state(
        epoch=epoch,
        device=device,
        history=history,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        scaler=scaler.state_dict(),
        generators=generators,
        dropout=dropout,
        device_rng=training_device_rng(device),
    )


def training_device_rng(device: torch.device) -> Tensor | None:
    """The training GPU's global generator state; None on the CPU (no CUDA initialised)."""
    return torch.cuda.get_rng_state(cuda_index(device)) if device.type == "cuda" else None


def _restore(state, model, opt, sched, scaler, generators, dropout, device) -> None:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    restore_global_rng(state)
    if device.type == "cuda":
        device_rng = saved_device_rng(state, device)
        if device_rng is not None:
            torch.cuda.set_rng_state(device_rng, cuda_index(device))
    dropout_rng = saved_dropout_rng(state, device)
    if dropout_rng is not None:
        dropout.set_state(dropout_rng)


def saved_dropout_rng(state: dict, device: torch.device) -> Tensor | None:
    """The dropout stream's state in a checkpoint of the loop or a pack (None: not saved).

    Checkpoints written before ``dropout_rng`` kept it where the loop's dropout then drew
    from: torch's global generator of the training device (``torch_rng`` on the CPU).
    """
    if "dropout_rng" in state:
        return state["dropout_rng"]
    return state["torch_rng"] if device.type == "cpu" else saved_device_rng(state, device)


def seeded_dropout(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """``model`` with every ``nn.Dropout`` replaced by a ``SeedDropout`` drawing from
    ``generator``: the masks a pack draws for this seed, on every device and memory format."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                replacement = SeedDropout(child.p, 1, layout="batch")
                replacement.generators = [generator]
                replacement.train(child.training)
                setattr(module, name, replacement)
    return model


def cuda_index(device: torch.device) -> int:
    """A CUDA device's index; a bare "cuda" is the current device, which need not be 0."""
    return device.index if device.index is not None else torch.cuda.current_device()


def saved_device_rng(state: dict, device: torch.device) -> Tensor | None:
    """The training GPU's global generator state in a checkpoint (None: not saved).

    Checkpoints written before ``device_rng`` hold every visible GPU's in ``cuda_rng``, by
    index; one resumed with fewer GPUs visible may lack the entry.
    """
    if "device_rng" in state:
        return state["device_rng"]
    every = state.get("cuda_rng") or []
    index = cuda_index(device)
    return every[index] if index < len(every) else None


def evaluate_ensemble(
    members: list[nn.Module], data: DataSplits, *, batch_size: int, teacher: nn.Module | None
) -> dict[str, float]:
    """Final metrics of the mean-softmax ensemble of already trained members."""
    val = torch.stack([predict_probs(m, data.val_x, data, batch_size=batch_size) for m in members])
    test = torch.stack(
        [predict_probs(m, data.test_x, data, batch_size=batch_size) for m in members]
    )
    teacher_test = (
        predict_probs(teacher, data.test_x, data, batch_size=batch_size) if teacher else None
    )
    return final_metrics(val.mean(0), test.mean(0), data, teacher_test)


def load_model(
    role: Role, data: DataSplits, state_dict: dict[str, Tensor], device: torch.device
) -> nn.Module:
    """A trained model of a role from its checkpoint, in eval mode."""
    model = build_model(role, data)
    model.load_state_dict(state_dict)
    return to_device(model, device).eval()
