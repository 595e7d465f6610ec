"""`study bench`: what a training step costs, measured side by side in one process.

The same architecture, batch size and data shape (synthetic images of a real dataset's
shape) trained in several ways:

- ``reference``: the loop users write today: a ``DataLoader`` over a ``TensorDataset`` (with
  torchvision's per-image RandomCrop + RandomHorizontalFlip where the dataset shape is
  augmented), fp32, one seed, SGD and cross-entropy;
- ``harness``: ``train.py``'s loop for one seed (``train_role`` with one seed: data on the
  device, augmentation on the device, the deterministic settings of a study);
- ``pack K``: ``train_role`` with K seeds, trained as one fused seed pack (``study.pack``);
- with ``kd``: the harness and the packs again as distillation students, so that the cost
  of the teacher's forward pass shows as the ratio between the two.

``diagnostics_cost`` times a distillation student's step with the dark-knowledge
diagnostics (``study.diagnostics``) off and on, alternately, for their share of a step.

Each variant trains a warm-up epoch and then ``repeats`` timed epochs of ``steps`` steps;
images per second count every seed's images. The harness variants time whole epochs
(``on_epoch`` timestamps), which include the per-epoch evaluation on a one-image validation
and test split: a few forward passes, next to nothing. Peak memory is the CUDA allocator's
``max_memory_allocated`` on a GPU; on the CPU it is the peak resident set size sampled
every 2 ms from /proc/self/statm during the variant, minus the size at its start (an
estimate: memory freed to the allocator earlier in the process is reused unseen).
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study import diagnostics
from study.data import DataSplits, normalize
from study.determinism import cpu_model, resolve_deterministic
from study.device import resolve_device
from study.engine import channels_last, has_convolutions, init_model, teacher_cache, to_device
from study.errors import UserInputError
from study.models import create_model, resolve_model_kwargs
from study.pack import packable
from study.plan import Role
from study.protocol import TrainSection
from study.train import train_role

SHAPES: dict[str, tuple[int, int, int, str]] = {
    # name: (channels, image size, classes, augmentation)
    "digits": (1, 8, 10, "none"),
    "mnist": (1, 28, 10, "none"),
    "cifar10": (3, 32, 10, "crop_flip"),
    "cifar100": (3, 32, 100, "crop_flip"),
}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. The defaults are the offline default study's teacher (digits MLP)."""

    arch: str = "mlp"
    arch_kwargs: dict[str, Any] = field(default_factory=lambda: {"hidden": [128], "dropout": 0.1})
    dataset_shape: str = "digits"
    batch: int = 64
    steps: int = 30
    repeats: int = 2
    packs: tuple[int, ...] = (1, 4, 16)
    device: str = "auto"
    kd: bool = False
    precision: str = "fp32"
    workers: int = 0
    teacher_cache: bool = True  # unaugmented shapes: KD students read cached teacher outputs
    deterministic: bool | None = None  # [train] deterministic: None is a study's default
    channels_last: bool = True  # convnets of the harness and packs (reference: NCHW)
    diagnostics: bool = True  # the KD students' dark-knowledge diagnostics (on in a study)

    def check(self) -> None:
        if self.dataset_shape not in SHAPES:
            raise UserInputError(
                f"unknown dataset shape {self.dataset_shape!r}; allowed: {', '.join(SHAPES)}"
            )
        resolve_model_kwargs(self.arch, self.arch_kwargs)
        for name in ("batch", "steps", "repeats"):
            if getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.packs or any(k < 1 for k in self.packs):
            raise UserInputError(f"--packs must be pack sizes >= 1, got {list(self.packs)}")
        if self.precision not in ("fp32", "bf16"):
            raise UserInputError(f"--precision must be fp32 or bf16, got {self.precision!r}")


@dataclass
class BenchResult:
    """One variant's measurement."""

    variant: str  # "reference", "harness", "pack"
    seeds: int
    kd: bool
    path: str  # "dataloader", "loop" (train.py) or "fused" (study.pack)
    steps: int  # timed steps (each step trains every seed of the pack)
    seconds: float
    images_per_s: float
    peak_memory_mb: float

    @property
    def name(self) -> str:
        base = self.variant if self.variant != "pack" else f"pack {self.seeds}"
        return base + (" + kd" if self.kd else "")


@dataclass
class BenchReport:
    """The measurements of one ``study bench`` and what they were taken on."""

    config: dict[str, Any]
    device: str
    device_name: str
    threads: int
    memory: str
    teacher_outputs: str
    deterministic: bool  # the harness and the packs in deterministic mode (reference: never)
    memory_format: str  # of a convnet's harness and packs ("" without convolutions)
    results: list[BenchResult]

    def to_json(self) -> str:
        rows = []
        for r in self.results:
            row = asdict(r)
            row["name"] = r.name
            row.update(self.ratios(r))
            rows.append(row)
        payload = {k: v for k, v in asdict(self).items() if k != "results"}
        return json.dumps({**payload, "results": rows}, indent=2)

    def _find(self, variant: str, seeds: int, kd: bool) -> BenchResult | None:
        for r in self.results:
            if (r.variant, r.seeds, r.kd) == (variant, seeds, kd):
                return r
        return None

    def ratios(self, r: BenchResult) -> dict[str, float | None]:
        """Throughput relative to the reference and to the harness's one seed; for a KD
        variant, its extra time per image over the same variant without a teacher."""
        ref = self._find("reference", 1, False)
        one = self._find("harness", 1, False)
        plain = self._find(r.variant, r.seeds, False) if r.kd else None
        return {
            "vs_reference": r.images_per_s / ref.images_per_s if ref else None,
            "vs_harness": r.images_per_s / one.images_per_s if one else None,
            "kd_overhead": plain.images_per_s / r.images_per_s - 1 if plain else None,
        }

    def table(self) -> list[list[str]]:
        """Rows for a text table: variant, path, images/s, memory, ratios."""
        rows = [["variant", "path", "images/s", "peak MB", "x reference", "x harness", "kd cost"]]
        for r in self.results:
            q = self.ratios(r)
            rows.append(
                [
                    r.name,
                    r.path,
                    f"{r.images_per_s:,.0f}",
                    f"{r.peak_memory_mb:,.1f}",
                    _ratio(q["vs_reference"]),
                    _ratio(q["vs_harness"]),
                    "" if q["kd_overhead"] is None else f"+{100 * q['kd_overhead']:.0f}%",
                ]
            )
        return rows


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> BenchReport:
    """Measure every variant of ``config`` in this process, one after another."""
    config.check()
    say = progress or (lambda text: None)
    device = resolve_device(config.device)
    data = synthetic_splits(config.dataset_shape, config.steps * config.batch, device)
    student, teacher = _roles(config)
    measure = _Measure(device, config.batch)
    results = []
    cached: list[bool] = []  # per KD seed timed: were its teacher outputs cached?
    say("reference: DataLoader loop, one seed")
    results.append(measure(lambda: _reference(config, data, device), "reference", 1, False))
    for kd in (False, True) if config.kd else (False,):
        role = student if kd else teacher
        for k in config.packs:
            variant = "harness" if k == 1 else "pack"
            path = "fused" if k > 1 and packable(role) else "loop"
            say(f"{variant} {k} seed(s){' + kd' if kd else ''}: {path}")
            teachers = _teachers(teacher, k, data, device) if kd else None

            def harness(role=role, k=k, teachers=teachers, kd=kd) -> tuple[float, int]:
                outcomes = cached if kd else None
                with (
                    teacher_cache(config.teacher_cache),
                    channels_last(config.channels_last),
                    diagnostics.switch(config.diagnostics),
                ):
                    return _harness(config, role, k, data, device, teachers, outcomes)

            results.append(
                measure(
                    harness,
                    variant,
                    k,
                    kd,
                    path,
                )
            )
    memory_format = ""
    if has_convolutions(init_model(teacher, 0, data)):
        memory_format = "channels-last (NHWC)" if config.channels_last else "NCHW"
    return BenchReport(
        teacher_outputs=_teacher_outputs(config, data, cached),
        deterministic=resolve_deterministic(config.deterministic, device),
        memory_format=memory_format,
        config={**asdict(config), "packs": list(config.packs)},
        device=str(device),
        device_name=_device_name(device),
        threads=torch.get_num_threads(),
        memory=(
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak RSS delta (sampled /proc/self/statm)"
        ),
        results=results,
    )


def _teacher_outputs(config: BenchConfig, data: DataSplits, cached: list[bool]) -> str:
    """How the KD variants got their teacher outputs: what happened, not what was asked."""
    if cached and all(cached):
        return "cached: one pass over the training set, then table lookups (unaugmented data)"
    off = "the cache switched itself off (a forward pass rounded a batch unlike the table)"
    if any(cached):
        return f"cached in some variants; in the others {off}"
    if config.kd and config.teacher_cache and data.augmentation == "none":
        return f"a forward pass of the teacher in every step: {off}"
    return "a forward pass of the teacher in every step"


def synthetic_splits(shape: str, n_train: int, device: torch.device) -> DataSplits:
    """Random uint8 images and labels of a dataset's shape; one image to validate and test."""
    channels, size, classes, augmentation = SHAPES[shape]
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, classes, (n,), generator=g)

    return DataSplits(
        name=f"synthetic-{shape}",
        train_x=images(n_train).to(device),
        train_y=labels(n_train).to(device),
        val_x=images(1),
        val_y=labels(1),
        test_x=images(1),
        test_y=labels(1),
        num_classes=classes,
        in_channels=channels,
        image_size=size,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        augmentation=augmentation,
        identity=f"bench-{shape}",
        classes=tuple(str(i) for i in range(classes)),
    )


def _recipe(config: BenchConfig) -> TrainSection:
    return TrainSection(
        epochs=1 + config.repeats,
        batch_size=config.batch,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="constant",
        precision=config.precision,  # type: ignore[arg-type]
        device=config.device,
        deterministic=config.deterministic,
    )


def _roles(config: BenchConfig) -> tuple[Role, Role]:
    """A born-again KD student and its teacher (also the plain, teacher-less variant)."""
    kwargs = resolve_model_kwargs(config.arch, config.arch_kwargs)
    common = {"arch": config.arch, "arch_kwargs": kwargs, "train": _recipe(config)}
    teacher = Role(key="teacher", kind="teacher", arm="teacher", generation=0, **common)
    student = Role(
        key="kd/gen1",
        kind="student",
        arm="kd",
        generation=1,
        loss="kd",
        loss_params={"temperature": 4.0, "alpha": 0.9},
        teacher="teacher",
        **common,
    )
    return student, teacher


def _teachers(role: Role, k: int, data: DataSplits, device: torch.device) -> dict[int, nn.Module]:
    """Untrained teachers (a trained one costs the same forward pass)."""
    return {s: to_device(init_model(role, s, data), device).eval() for s in range(k)}


def _harness(
    config: BenchConfig,
    role: Role,
    k: int,
    data: DataSplits,
    device: torch.device,
    teachers: dict[int, nn.Module] | None,
    cached: list[bool] | None = None,
) -> tuple[float, int]:
    """Seconds for the timed epochs of ``train_role`` with K seeds, and the steps timed.

    A fused pack reports every seed after each epoch; the loop trains seed after seed, so
    its time is the sum of each seed's timed epochs (each seed has its own warm-up).
    ``cached`` collects, per seed, whether its teacher outputs came from the cache.
    """
    stamps: dict[int, list[float]] = {s: [] for s in range(k)}

    def on_epoch(seed: int, epoch: int, metrics: dict[str, float]) -> None:
        _sync(device)
        stamps[seed].append(time.perf_counter())

    results = train_role(
        role, list(range(k)), data, teachers=teachers, device=device, on_epoch=on_epoch
    )
    if cached is not None:
        cached.extend(bool(r.teacher_cached) for r in results)
    fused = k > 1 and packable(role)
    timed = [stamps[0]] if fused else list(stamps.values())
    seconds = sum(seed_stamps[-1] - seed_stamps[0] for seed_stamps in timed)
    return seconds, config.repeats * config.steps


def _reference(config: BenchConfig, data: DataSplits, device: torch.device) -> tuple[float, int]:
    """The plain PyTorch loop: DataLoader, per-image transforms, fp32, one seed."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    torch.manual_seed(0)
    model = create_model(
        config.arch,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        **config.arch_kwargs,
    ).to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    x, y = data.train_x.cpu(), data.train_y.cpu()
    dataset: Dataset = TensorDataset(x, y)
    if data.augmentation == "crop_flip":
        dataset = _TransformedImages(x, y)
    loader = DataLoader(
        dataset,
        batch_size=config.batch,
        shuffle=True,
        drop_last=True,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )
    model.train()
    stamps = []
    for _ in range(1 + config.repeats):
        for xb, yb in loader:
            xb = normalize(xb.to(device, non_blocking=True), data.mean, data.std)
            loss = F.cross_entropy(model(xb), yb.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        stamps.append(time.perf_counter())
    return stamps[-1] - stamps[0], config.repeats * config.steps


class _TransformedImages(torch.utils.data.Dataset):
    """Per-image torchvision transforms, the usual CIFAR recipe (pad-4 crop, flip)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision.transforms import v2

        self.x, self.y = x, y
        size = x.shape[-1]
        self.transform = v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


class _Measure:
    """Runs a variant and records its throughput and peak memory."""

    def __init__(self, device: torch.device, batch: int):
        self.device, self.batch = device, batch

    def __call__(
        self,
        fn: Callable[[], tuple[float, int]],
        variant: str,
        seeds: int,
        kd: bool,
        path: str = "dataloader",
    ) -> BenchResult:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            seconds, steps = fn()
            peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            with _RssPeak() as rss:
                seconds, steps = fn()
            peak = rss.peak
        images = steps * seeds * self.batch
        return BenchResult(
            variant=variant,
            seeds=seeds,
            kd=kd,
            path=path,
            steps=steps,
            seconds=seconds,
            images_per_s=images / seconds if seconds > 0 else float("nan"),
            peak_memory_mb=peak / 2**20,
        )


class _RssPeak:
    """Peak resident set size above the size at entry, sampled in a background thread."""

    def __enter__(self) -> _RssPeak:
        self.page = _page_size()
        self.start = self._rss()
        self.peak_rss = self.start
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self.page
        except OSError:
            return 0

    def _sample(self) -> None:
        while not self.stop.wait(0.002):
            self.peak_rss = max(self.peak_rss, self._rss())

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())

    @property
    def peak(self) -> int:
        return self.peak_rss - self.start


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def parse_packs(text: str) -> tuple[int, ...]:
    """``"1,4,16"`` -> ``(1, 4, 16)``."""
    try:
        packs = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserInputError(f"--packs must be comma-separated integers, got {text!r}") from None
    return packs


def parse_arch_kwargs(text: str | None) -> dict[str, Any] | None:
    """The ``--arch-kwargs`` JSON object, or None when not given."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"--arch-kwargs is not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserInputError(f"--arch-kwargs must be a JSON object, got {text!r}")
    return value


def format_report(report: BenchReport) -> Sequence[str]:
    """The report as plain text lines (a table with aligned columns)."""
    c = report.config
    lines = [
        f"{c['arch']} {json.dumps(c['arch_kwargs'])} on {c['dataset_shape']}-shaped data, "
        f"batch {c['batch']} per seed, {c['precision']} (harness and packs; reference: fp32), "
        f"{c['steps']} steps x {c['repeats']} timed epochs",
        f"device: {report.device} ({report.device_name}), torch threads: {report.threads}, "
        f"memory: {report.memory}",
        "deterministic mode (harness and packs): "
        + ("on" if report.deterministic else "off")
        + ("" if c["deterministic"] is not None else " (the study default for this device)"),
    ]
    if report.memory_format:
        lines.append(f"memory format (harness and packs): {report.memory_format}; reference: NCHW")
    if c["kd"]:
        lines.append(f"kd teacher outputs: {report.teacher_outputs}")
        lines.append(
            "kd dark-knowledge diagnostics: " + ("on" if c.get("diagnostics", True) else "off")
        )
    rows = report.table()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(w) if j < 2 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


@dataclass
class DiagnosticsCost:
    """A distillation student's step with the dark-knowledge diagnostics off and on: per
    pair of adjacent epochs of one training (off, then on), seconds per step."""

    loss: str
    seeds: int  # 1: train.py's loop; more: a pack
    off_s: list[float]  # seconds per step, one per pair of epochs (trainings not timed inside)
    on_s: list[float]
    off_cpu: list[float] = field(default_factory=list)  # CPU seconds per step, per pair
    on_cpu: list[float] = field(default_factory=list)
    # the trainings whose diagnostics' calls were timed: per pair, CPU seconds per step in
    # those calls, and the step's CPU seconds with the diagnostics off
    inside_cpu: list[float] = field(default_factory=list)
    timed_off_cpu: list[float] = field(default_factory=list)

    @property
    def shares(self) -> list[float]:
        """Each pair's extra time with the diagnostics on, as a share of the step off."""
        return [on / off - 1 for on, off in zip(self.on_s, self.off_s, strict=True)]

    @property
    def share(self) -> float:
        """The median of the pairs' shares (wall clock)."""
        return float(statistics.median(self.shares))

    @property
    def cpu_shares(self) -> list[float]:
        """The pairs' shares in CPU time of the training thread: less sensitive to other
        processes' load than the wall clock, on one thread."""
        return [on / off - 1 for on, off in zip(self.on_cpu, self.off_cpu, strict=True)]

    @property
    def cpu_share(self) -> float:
        """The median of the pairs' CPU shares."""
        return float(statistics.median(self.cpu_shares))

    @property
    def fastest_share(self) -> float:
        """The fastest epoch with the diagnostics on against the fastest with them off
        (CPU time): where other processes' load only ever adds time, the least disturbed
        estimate."""
        return min(self.on_cpu) / min(self.off_cpu) - 1

    @property
    def inside_share(self) -> float:
        """CPU time spent in the diagnostics' own calls (``update``, ``result``) per step,
        as a share of the step with them off (medians): the direct account, which other
        processes' load disturbs least."""
        return statistics.median(self.inside_cpu) / statistics.median(self.timed_off_cpu)


def diagnostics_cost(
    config: BenchConfig,
    losses: Sequence[str] = ("kd", "dkpp"),
    rounds: int = 4,
    pairs: int = 30,
    progress: Callable[[str], None] | None = None,
    control: bool = False,
) -> list[DiagnosticsCost]:
    """Per loss and pack size of ``config``: ``rounds`` trainings of the student, each a
    warm-up epoch and then ``pairs`` pairs of epochs of ``config.steps`` steps, the
    diagnostics off in the first epoch of a pair and on in the second (training is the
    same either way): adjacent epochs, so that a machine whose load drifts slows both
    alike. Every second training times the diagnostics' own calls (two clock reads a
    call, in the epochs with them on) and gives the share inside them; the others, not
    disturbed by that timing, give the epochs' wall and CPU times. ``control``: both
    epochs of every pair off, the same measurement's noise floor (its shares should
    scatter around 0)."""
    config.check()
    if rounds < 2 or pairs < 1:
        raise UserInputError(f"rounds must be >= 2 and pairs >= 1, got {rounds} and {pairs}")
    say = progress or (lambda text: None)
    device = resolve_device(config.device)
    data = synthetic_splits(config.dataset_shape, config.steps * config.batch, device)
    student, teacher = _roles(config)
    recipe = student.train.model_copy(update={"epochs": 1 + 2 * pairs})
    out = []
    for loss in losses:
        params = {"temperature": 4.0, "alpha": 0.9} if loss == "kd" else {}
        role = replace(student, loss=loss, loss_params=params, train=recipe)
        for k in config.packs:
            teachers = _teachers(teacher, k, data, device)
            cost = DiagnosticsCost(loss, k, [], [])
            for r in range(rounds):
                timed = r % 2 == 1
                say(
                    f"{loss}, {k} seed(s), round {r + 1} of {rounds}: {pairs} pairs of epochs"
                    + (" (timing the diagnostics' calls)" if timed else "")
                )
                with (
                    teacher_cache(config.teacher_cache),
                    channels_last(config.channels_last),
                    diagnostics.switch(True),
                    _time_inside_diagnostics() if timed else nullcontext([0.0]) as inside,
                ):
                    epochs = _alternating(role, k, data, device, teachers, inside, control)
                steps = config.steps * (1 if k > 1 and packable(role) else k)
                for off, on in _pairs(epochs):
                    if timed:
                        cost.inside_cpu.append(on[2] / steps)
                        cost.timed_off_cpu.append(off[1] / steps)
                        continue
                    cost.off_s.append(off[0] / steps)
                    cost.on_s.append(on[0] / steps)
                    cost.off_cpu.append(off[1] / steps)
                    cost.on_cpu.append(on[1] / steps)
            out.append(cost)
    return out


_Epoch = tuple[float, float, float]  # wall seconds, CPU seconds, of them in the diagnostics


def _on(i: int) -> bool:
    """Whether the diagnostics are on in the i-th epoch after the warm-up: off, on, on,
    off, and again (pairs in the order off-on, then on-off: a drift over the epochs of a
    training, as a heap or a cache filling up, slows the epochs on and off alike)."""
    return i % 4 in (1, 2)


def _pairs(epochs: list[_Epoch]) -> list[tuple[_Epoch, _Epoch]]:
    """The adjacent epochs (0, 1), (2, 3), ... after the warm-up, each as (off, on)."""
    pairs = []
    for i in range(0, len(epochs) - 1, 2):
        first, second = epochs[i], epochs[i + 1]
        pairs.append((second, first) if _on(i) else (first, second))
    return pairs


def _alternating(
    role: Role,
    k: int,
    data: DataSplits,
    device: torch.device,
    teachers: dict[int, nn.Module],
    inside: list[float],
    control: bool = False,
) -> list[_Epoch]:
    """Train ``role`` with K seeds, the diagnostics on in the warm-up epoch and then as
    ``_on`` says; per epoch after the warm-up (a loop's seeds summed): wall seconds, CPU
    seconds of this thread, and of them those in the diagnostics' calls (``inside[0]``
    accumulates them)."""
    fused = k > 1 and packable(role)
    last: dict[int, tuple[float, float, float]] = {}
    totals = [[0.0, 0.0, 0.0] for _ in range(role.train.epochs - 1)]

    def on_epoch(seed: int, epoch: int, metrics: dict[str, float]) -> None:
        if fused and seed != 0:
            return
        _sync(device)
        now = (time.perf_counter(), time.thread_time(), inside[0])
        if epoch > 1:  # after the warm-up (epochs count from 1)
            for j, (a, b) in enumerate(zip(now, last[seed], strict=True)):
                totals[epoch - 2][j] += a - b
        last[seed] = now
        diagnostics.switch.on = _on(epoch - 1) and not control  # the next epoch's

    train_role(role, list(range(k)), data, teachers=teachers, device=device, on_epoch=on_epoch)
    return [(wall, cpu, spent) for wall, cpu, spent in totals]  # as tuples


@contextmanager
def _time_inside_diagnostics() -> Iterator[list[float]]:
    """The CPU seconds of this thread spent in ``EpochDiagnostics.update`` and ``result``
    within the block, in ``[0]`` (the methods wrapped for the block's length)."""
    spent = [0.0]
    cls = diagnostics.EpochDiagnostics
    originals = {name: cls.__dict__[name] for name in ("update", "result")}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.thread_time() - start

        return call

    try:
        for name, fn in originals.items():
            setattr(cls, name, timed(fn))
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(cls, name, fn)


def _quartiles(shares: Sequence[float]) -> str:
    """ "quartiles +a% to +b%" of a list of shares (its one value, if one)."""
    if len(shares) < 2:
        return f"one pair: {100 * shares[0]:+.1f}%"
    q1, _, q3 = statistics.quantiles(shares, n=4)
    return f"quartiles {100 * q1:+.1f}% to {100 * q3:+.1f}%"


def format_diagnostics_cost(costs: Sequence[DiagnosticsCost]) -> list[str]:
    """One line per loss and pack size: ms per step off and on (medians), the shares (the
    median of the pairs of epochs, and its quartiles), the share inside the calls."""
    lines = []
    for c in costs:
        off, on = statistics.median(c.off_s), statistics.median(c.on_s)
        lines.append(
            f"{c.loss}, {c.seeds} seed(s): {1e3 * off:.3f} ms/step off, {1e3 * on:.3f} on: "
            f"{100 * c.share:+.1f}% (median of {len(c.shares)} pairs of epochs, "
            f"{_quartiles(c.shares)}); CPU time "
            f"{1e3 * statistics.median(c.off_cpu):.3f} ms/step off, "
            f"{1e3 * statistics.median(c.on_cpu):.3f} on: {100 * c.cpu_share:+.1f}% "
            f"({_quartiles(c.cpu_shares)}), fastest epochs {100 * c.fastest_share:+.1f}%; "
            f"in the diagnostics' calls {1e6 * statistics.median(c.inside_cpu):.1f} us/step: "
            f"{100 * c.inside_share:.1f}% of the step ({len(c.inside_cpu)} pairs timed inside)"
        )
    return lines
