"""The training engine: what the loop (``train.py``) and a seed pack (``pack.py``) share.

A training of one role holds, per seed: a model built and initialised one way
(``init_model``), an optimizer and a schedule (``make_optimizer``, ``make_scheduler``), its
random streams (``SeedStreams``: data order, augmentation, dropout and the loss's own
randomness, each derived from (seed, generation, stream name)), the teacher's outputs for
each batch (``TeacherCache`` where they can be looked up, ``teacher_outputs`` otherwise),
a checkpoint of one schema (``checkpoint_state`` writes it, ``restore_streams`` and the
model's, optimizer's and scheduler's own ``load_state_dict`` read it back) and final
metrics (``metrics.final_scores``). The loop and the pack keep only what differs: the model
(one network, or K seeds fused) and the step. Whatever either of them does with a seed's
state, the other can resume it.

The teacher is put in eval mode and runs under ``torch.inference_mode``: a teacher left in
train mode (dropout on, BatchNorm statistics drifting) is one of the classic silent bugs of
KD code. The final model is the last epoch's: the test split is evaluated and logged,
never used to choose anything.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from study.checkpoint import training_state
from study.data import DataSplits, normalize
from study.device import cuda_index
from study.metrics import final_metrics
from study.models import create_model
from study.models.dropout import SeedDropout
from study.plan import Role, derive_seed
from study.protocol import TrainSection
from study.switch import Switch

EpochCallback = Callable[[int, int, dict[str, float]], None]  # (seed, epoch, metrics)
# (seed, history): a seed resumed from a checkpoint, with the epochs the checkpoint restored,
# before its training goes on (the executor logs those MLflow lacks at once).
ResumeCallback = Callable[[int, list[dict[str, float]]], None]


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


def make_optimizer(model: nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
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


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainSection
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def autocast(device: torch.device, precision: str):
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
        with autocast(device, precision):
            logits = model(xb)
        out.append(torch.softmax(logits.float(), dim=1))
    model.train(was_training)
    if not out:
        return torch.empty(0, data.num_classes, device=device)
    return torch.cat(out)


teacher_cache = Switch(
    """Turn the teacher-output cache on or off within a block (``study bench`` measures
    the teacher's forward pass with it off; results are the same either way)."""
)
channels_last = Switch(
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
                with autocast(device, precision):
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
            with torch.inference_mode(), autocast(self.table.device, self.precision):
                fresh = self.forward(xb).float()
            if not torch.equal(fresh, cached):
                self.refused.add(shape)
                return None
        return cached


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


# --- one seed's random streams, and the checkpoint that carries them --------------------


@dataclass
class SeedStreams:
    """The random streams of one seed of a role, each its own generator seeded from (seed,
    generation, name): data order (on the CPU), augmentation, the loss's randomness (DKPP's
    permutations) and dropout (on the training device). The loop and a pack draw the same
    numbers from them for a seed, which is what lets either resume the other's checkpoint."""

    order: torch.Generator
    augment: torch.Generator
    loss: torch.Generator
    dropout: torch.Generator

    @classmethod
    def of(cls, seed: int, generation: int, device: torch.device) -> SeedStreams:
        def stream(name: str, where: torch.device | str = device) -> torch.Generator:
            return torch.Generator(device=where).manual_seed(derive_seed(seed, generation, name))

        return cls(
            order=stream("order", "cpu"),
            augment=stream("augment"),
            loss=stream("loss"),
            dropout=stream("dropout"),
        )

    def checkpointed(self) -> dict[str, torch.Generator]:
        """The streams a checkpoint holds under ``generators`` (dropout's is kept apart)."""
        return {"order": self.order, "augment": self.augment, "loss": self.loss}


def checkpoint_state(
    epoch: int,
    device: torch.device,
    history: list[dict[str, float]],
    model: dict[str, Tensor],
    optimizer: dict[str, Any],
    scheduler: Any,
    scaler: Any,
    streams: SeedStreams,
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to continue a seed after ``epoch`` exactly as if never interrupted
    (``checkpoint.training_state``), in the one schema the loop and a pack both write and
    read: the seed's plain model and optimizer state, the schedule, the scaler, its streams
    and, of the GPUs' global generators, only the training device's (``device_rng``). A
    pack adds ``packed`` and ``pack`` (``extra``)."""
    return training_state(
        epoch=epoch,
        device=device,
        history=history,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        generators=streams.checkpointed(),
        dropout=streams.dropout,
        device_rng=training_device_rng(device),
        **extra,
    )


def restore_streams(state: dict[str, Any], streams: SeedStreams, device: torch.device) -> None:
    """A seed's streams as a checkpoint (of the loop or of a pack) left them."""
    for name, g in streams.checkpointed().items():
        g.set_state(state["generators"][name])
    dropout_rng = saved_dropout_rng(state, device)
    if dropout_rng is not None:
        streams.dropout.set_state(dropout_rng)


# --- the teacher's outputs for a step ---------------------------------------------------


def teacher_outputs(
    cache: TeacherCache | None,
    index: Tensor | tuple[Tensor, ...],
    xb: Tensor,
    teacher: Callable[[Tensor], Tensor],
    device: torch.device,
    precision: str,
) -> Tensor:
    """The teacher's logits for a training batch ``xb`` (normalised): rows ``index`` of the
    cache where it serves this batch shape, else a forward pass of the frozen teacher
    (float32, out of inference mode so that the loss can use them under autograd)."""
    if cache is not None:
        cached = cache.lookup(index, xb)
        if cached is not None:
            return cached
    with torch.inference_mode(), autocast(device, precision):
        logits = teacher(xb)
    return logits.float().clone()  # leave inference mode


def training_device_rng(device: torch.device) -> Tensor | None:
    """The training GPU's global generator state; None on the CPU (no CUDA initialised)."""
    return torch.cuda.get_rng_state(cuda_index(device)) if device.type == "cuda" else None


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
