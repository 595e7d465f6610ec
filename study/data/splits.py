"""The in-memory splits of a dataset, how they are carved, and what identifies them.

A dataset is read once into uint8 tensors; the validation part is carved from the official
training set by a stratified draw seeded with ``data_seed``. That seed is the same for every
training seed and every role of a study, so all of them see the same validation images and
tuning never looks at the test split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.errors import UserInputError


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test tensors of one dataset, with the facts a model needs.

    Images are uint8 ``[N, C, H, W]``, labels int64 ``[N]``. ``mean`` and ``std`` are per
    channel in [0, 1] pixel units, computed on ``train_x`` (after the validation part is
    removed), for every dataset alike rather than the published CIFAR/MNIST constants: those
    are wrong for subsets and synthetic data, and on the full sets they agree with these to
    about three decimals. ``identity`` is a sha256 hex over the dataset name,
    the tensors read from the files, the class names, the image size and the indices of
    the validation images in the official training set (the split's result, not the
    ``val_size`` and ``data_seed`` that produced it).
    """

    name: str
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    val_x: Tensor = field(repr=False)
    val_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    identity: str
    classes: tuple[str, ...]

    def to(self, device: torch.device | str) -> DataSplits:
        """The same splits with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def check_val_size(val_size: Any) -> int | float:
    """``val_size`` as given, if it is a fraction in [0, 1) or a non-negative integer count."""
    allowed = "a fraction in [0, 1) or a non-negative integer count"
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise UserInputError(f"{val_size!r} is not {allowed}", field="val_size")
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise UserInputError(f"{val_size!r} is not {allowed}", field="val_size")
    if isinstance(val_size, int) and val_size < 0:
        raise UserInputError(f"{val_size!r} is not {allowed}", field="val_size")
    return val_size


def stratified_split(labels: Tensor, size: int | float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices of ``labels`` into (kept, held out), stratified by class.

    ``size`` is a fraction of all examples or a count. Each class gives its share of the
    held-out total by largest remainders (ties to the lower class index), and which of its
    examples are held out is a ``torch.randperm`` per class, in class order, from a CPU
    generator seeded with ``seed``. Both index tensors are sorted.
    """
    n = len(labels)
    check_val_size(size)
    total = round(size * n) if isinstance(size, float) else int(size)
    if total >= n and n > 0:
        raise UserInputError(
            f"{size!r} would leave no training examples (the training set has {n})",
            field="val_size",
        )
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * total / max(n, 1)
    share = quota.floor().long()
    remainder = total - int(share.sum())
    if remainder > 0:
        # stable sort on descending fractional part: ties go to the lower class index
        order = torch.sort(-(quota - share.double()), stable=True).indices
        share[order[:remainder]] += 1
    generator = torch.Generator().manual_seed(seed)
    held = []
    for cls, k in zip(classes.tolist(), share.tolist(), strict=True):
        members = torch.nonzero(labels == cls, as_tuple=True)[0]
        perm = torch.randperm(len(members), generator=generator)
        held.append(members[perm[:k]])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask, as_tuple=True)[0], held_idx


def channel_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``[N, C, H, W]`` in [0, 1] units.

    Accumulated in float64 over chunks of images so that 50 000 CIFAR images need no
    float64 copy of the whole set. A constant channel gets std 1 (nothing to scale).
    """
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def data_identity(
    name: str,
    tensors: dict[str, Tensor],
    classes: tuple[str, ...],
    settings: dict[str, Any],
) -> str:
    """sha256 hex over what determines the splits: name, settings, classes and tensors.

    Tensors are hashed with their dtype and shape, so a reshape is a different identity.
    ``load_data`` passes the official train and test tensors and the held-out (validation)
    indices, so settings that select the same split give the same identity.
    """
    h = hashlib.sha256()
    h.update(b"study.data identity v1\0")
    header = {"name": name, "settings": settings, "classes": list(classes)}
    h.update(json.dumps(header, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"\0{key}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(np.ascontiguousarray(t.numpy()).data)
    return h.hexdigest()
