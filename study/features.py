"""A feature-distilling seed's part of the training step: taps, the teacher's features,
the connectors and the feature term (``study.feature_losses``), for the loop (``train.py``).

What it does, and why:

- **One teacher pass per step.** The teacher runs in eval mode under
  ``torch.inference_mode`` with its taps recorded, so its features and its logits come
  from the same forward pass. The teacher-output cache (``engine.TeacherCache``) holds
  logits only: a table of feature maps for every training image would cost their size
  (WRN-40-2's three stages on CIFAR are 57k floats an image, 11 GB for 50k images), so a
  feature role runs the teacher in every step instead, and says so
  (``SeedResult.teacher_cached`` False).
- **Connectors belong to the student's training.** They are initialised from the seed's
  own stream (``derive_seed(seed, generation, "connectors")``), trained by the student's
  optimizer (their parameters after the model's), saved in its checkpoint under
  ``connectors`` and restored from it; they are not part of the evaluated model, whose
  state dict stays the network's alone.
- **Seed packs.** A feature role trains in the loop, one seed after the other
  (``pack.packable`` refuses it, and the result says why, ``LOOP_NOTE``): a pack would
  need its connectors, taps and losses fused per seed as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from study.data import DataSplits
from study.engine import autocast, to_device
from study.feature_losses import FeatureTerm
from study.models.taps import TapRecorder, tap_shapes
from study.plan import Role, derive_seed

LOOP_NOTE = (
    "trained in the loop, one seed at a time, not as a seed pack: feature distillation "
    "({method}) has connectors and taps that are not packed"
)


def shapes_of(arch: str, kwargs: dict[str, Any], data: DataSplits) -> dict[str, tuple[int, ...]]:
    """The taps' shapes of ``arch`` on ``data``'s images."""
    return tap_shapes(
        arch,
        kwargs,
        in_channels=data.in_channels,
        image_size=data.image_size,
        num_classes=data.num_classes,
    )


def build_feature_term(role: Role, seed: int, data: DataSplits) -> FeatureTerm:
    """The role's feature term for ``seed``, its connectors freshly initialised from the
    seed's own stream (the same for every run of (role, seed))."""
    assert role.features is not None and role.arch is not None
    f = role.features
    student = shapes_of(role.arch, role.arch_kwargs, data)
    teacher = shapes_of(f["teacher_arch"], f["teacher_kwargs"], data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, role.generation, "connectors"))
        return FeatureTerm(f, student, teacher)


def connector_parameter_count(role: Role, data_shape: dict[str, int]) -> int:
    """Trainable parameters of a feature role's connectors (what the student trains on
    top of its network)."""
    assert role.features is not None and role.arch is not None
    f = role.features
    student = tap_shapes(role.arch, role.arch_kwargs, **data_shape)
    teacher = tap_shapes(f["teacher_arch"], f["teacher_kwargs"], **data_shape)
    with torch.random.fork_rng(devices=[]):
        term = FeatureTerm(f, student, teacher)
    return sum(p.numel() for p in term.parameters() if p.requires_grad)


class SeedFeatures:
    """One seed's feature distillation in the loop: the student's and the teacher's tap
    recorders, the feature term (connectors) and the teacher's taps of the current step."""

    def __init__(
        self,
        role: Role,
        seed: int,
        data: DataSplits,
        model: nn.Module,
        teacher: nn.Module,
        device: torch.device,
    ):
        assert role.features is not None and role.arch is not None
        self.term = to_device(build_feature_term(role, seed, data), device)
        self.teacher = teacher
        self.device = device
        self.student_taps = TapRecorder(role.arch, model, self.term.student_taps)
        self.teacher_taps = TapRecorder(
            role.features["teacher_arch"], teacher, self.term.teacher_taps
        )
        self.teacher_values: list[Tensor] = []

    def run_teacher(self, xb: Tensor, precision: str) -> Tensor:
        """The teacher's logits for a batch, its taps kept for ``add_to``: one forward
        pass in eval mode under inference mode, both leaving it as float32 constants."""
        with torch.inference_mode(), autocast(self.device, precision), self.teacher_taps:
            logits = self.teacher(xb)
        self.teacher_values = [v.float().clone() for v in self.teacher_taps.ordered()]
        return logits.float().clone()

    @contextmanager
    def tapping(self) -> Iterator[None]:
        """Record the student's taps in the forward pass of the block."""
        with self.student_taps:
            yield

    def add_to(self, loss: Tensor, epoch: int) -> Tensor:
        """The step's training loss: ``loss`` (the logit loss) plus the weighted feature
        term; in FitNets' hint stage (``epoch <= hint_epochs``) the hint loss alone, so
        that only the student up to its guided layer and the connector train."""
        student = self.student_taps.ordered()
        if epoch <= self.term.hint_epochs:
            return self.term.loss(student, self.teacher_values)
        return loss + self.term(student, self.teacher_values)
