"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis, 2016), the usual KD/BAN teacher and student.

Pre-activation basic blocks in three stages of 16k, 32k and 64k channels (strides 1, 2, 2),
(d - 4) / 6 blocks per stage, dropout between the two convolutions of a block, then
BN-ReLU, global average pooling and a linear head. The pooling is adaptive, so the same
network runs on 32x32 CIFAR images and on 8x8 digits. WRN-28-10 has 36.5M parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.errors import UserInputError
from study.models.registry import (
    check_dropout,
    check_int,
    init_standard,
    register_model,
)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus a shortcut (1x1 conv if shapes change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        # Where the shape changes the projection reads the pre-activated input, as in the
        # authors' code; otherwise the identity carries the raw input.
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for square images of any size >= 4 pixels."""

    def __init__(
        self, *, depth: int, widen_factor: int, dropout: float, in_channels: int, num_classes: int
    ):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        channels = 16
        for width, stride in (
            (16 * widen_factor, 1),
            (32 * widen_factor, 2),
            (64 * widen_factor, 2),
        ):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(PreActBlock(channels, width, stride if index == 0 else 1, dropout))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.pool(F.relu(self.bn(x))).flatten(1)
        return self.head(x)


def _check_wrn(kwargs: dict[str, Any]) -> dict[str, Any]:
    depth = check_int("depth", kwargs["depth"], minimum=10)
    if (depth - 4) % 6 != 0:
        raise UserInputError(
            f"depth={depth} is not allowed: WRN depth must be 6n+4 with n >= 1 "
            "(10, 16, 22, 28, 34, 40, ...)"
        )
    return {
        "depth": depth,
        "widen_factor": check_int("widen_factor", kwargs["widen_factor"]),
        "dropout": check_dropout("dropout", kwargs["dropout"]),
    }


@register_model("wrn", check=_check_wrn)
def wrn(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    depth: int = 28,
    widen_factor: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """Wide ResNet WRN-depth-widen_factor (e.g. WRN-28-10, WRN-16-4, WRN-28-1)."""
    del image_size  # global pooling makes the network size-agnostic
    return WideResNet(
        depth=depth,
        widen_factor=widen_factor,
        dropout=dropout,
        in_channels=in_channels,
        num_classes=num_classes,
    )
