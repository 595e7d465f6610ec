"""Batch augmentation and normalisation on uint8 image tensors.

Everything here works on whole batches ``[B, C, H, W]`` with tensor operations only, on
whatever device the batch lives on, so the same code augments on the CPU in tests and on the
GPU in training. Random numbers come from the caller's ``torch.Generator`` (on the batch's
device): a seed determines the augmentation of every batch exactly, which is what lets a
seed pack give each seed its own augmentation stream.

The random choices of a batch are drawn first (``draw_augmentation``) and applied second
(``apply_augmentation``); ``augment_batch`` does both. The split exists so that a test, or
anyone auditing a run, can see which crop and flip each image received.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from study.errors import UserInputError

AUGMENTATIONS: tuple[str, ...] = ("crop_flip", "crop", "flip", "none")
"""Augmentation kinds: pad-and-crop with horizontal flip, pad-and-crop only (digits such as
SVHN must not be mirrored), horizontal flip only, and nothing."""

CROP_PADDING = 4
"""Zero padding on each side before the random crop: the CIFAR recipe of He et al. 2016."""


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices for one batch.

    ``top`` and ``left`` are int64 ``[B]`` offsets of each crop window inside the padded image
    (``0 .. 2 * pad``; ``pad`` means no shift), ``flip`` is a bool ``[B]`` saying which images
    are mirrored. ``crop`` says whether the offsets are used at all.
    """

    top: Tensor
    left: Tensor
    flip: Tensor
    crop: bool
    pad: int


def _check_kind(kind: str) -> None:
    if kind not in AUGMENTATIONS:
        raise UserInputError(
            f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}",
            field="augmentation",
        )


def draw_augmentation(
    batch_size: int,
    kind: str,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    *,
    pad: int = CROP_PADDING,
) -> AugmentDraw:
    """Draw the crop offsets and flips for ``batch_size`` images from ``generator``.

    The order of draws is fixed (offsets for rows, offsets for columns, then flips) and only
    the parts that ``kind`` uses are drawn, so a generator state determines the result.
    """
    _check_kind(kind)
    device = torch.device(device) if device is not None else generator.device
    crop = kind in ("crop_flip", "crop")
    flip = kind in ("crop_flip", "flip")
    if crop:
        top = torch.randint(0, 2 * pad + 1, (batch_size,), generator=generator, device=device)
        left = torch.randint(0, 2 * pad + 1, (batch_size,), generator=generator, device=device)
    else:
        top = torch.full((batch_size,), pad, dtype=torch.int64, device=device)
        left = top.clone()
    if flip:
        flips = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    else:
        flips = torch.zeros(batch_size, dtype=torch.bool, device=device)
    return AugmentDraw(top=top, left=left, flip=flips, crop=crop, pad=pad)


def apply_augmentation(x: Tensor, draw: AugmentDraw) -> Tensor:
    """Crop and/or flip every image of ``x`` (uint8 ``[B, C, H, W]``) as ``draw`` says.

    The crop is one gather over the zero-padded batch: per image a row index grid and a column
    index grid (reversed for flipped images), so there is no loop over images.
    """
    b, _, h, w = x.shape
    if not draw.crop:
        return torch.where(draw.flip.view(b, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (draw.pad, draw.pad, draw.pad, draw.pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = draw.top[:, None] + ar_h  # [B, H]
    cols = draw.left[:, None] + torch.where(draw.flip[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice: the result is laid out [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def augment_batch(
    x_uint8: Tensor, kind: str, generator: torch.Generator, *, pad: int = CROP_PADDING
) -> Tensor:
    """Augment a uint8 batch ``[B, C, H, W]``: ``'crop_flip'``, ``'crop'``, ``'flip'`` or
    ``'none'`` (returns the input itself). Random numbers come from ``generator``, which must
    live on the batch's device."""
    _check_kind(kind)
    if kind == "none":
        return x_uint8
    draw = draw_augmentation(x_uint8.shape[0], kind, generator, x_uint8.device, pad=pad)
    return apply_augmentation(x_uint8, draw)


@functools.lru_cache(maxsize=64)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``mean`` and ``std`` as ``[C, 1, 1]`` tensors on ``device``, built once per key.

    Building them on every call is a blocking host-to-device copy on a GPU, twice per step,
    which stalls the stream. Made outside inference mode, so a first call inside an evaluation
    does not hand inference tensors to later training steps. Read-only: shared by callers.
    """
    with torch.inference_mode(False):
        m = torch.as_tensor(mean, dtype=dtype, device=device).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=dtype, device=device).view(-1, 1, 1)
    return m, s


def normalize(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """float32 ``(x / 255 - mean) / std`` per channel; works for ``[B, C, H, W]`` and
    ``[C, H, W]``. ``mean`` and ``std`` are in [0, 1] pixel units; their tensors are made once
    per device and reused, so no call after the first copies anything from the host."""
    m, s = _channel_stats(tuple(mean), tuple(std), x_uint8.device, torch.float32)
    return (x_uint8.float().div_(255.0) - m) / s
