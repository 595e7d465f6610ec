"""A small CNN: a cheap student, and a fast network for tests and smoke runs.

One conv3x3-BN-ReLU-maxpool block per entry of ``channels``, global average pooling, a
hidden Linear-ReLU-Dropout layer and a linear head. The max pools round up (ceil mode), so
a 1x1 map stays 1x1: four blocks on 8x8 digits give 4, 2, 1, 1 instead of collapsing to
nothing, and the adaptive pool makes the head independent of the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from study.models.registry import (
    check_dropout,
    check_int,
    check_int_sequence,
    init_standard,
    register_model,
)


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU-maxpool blocks, global average pool, one hidden layer, linear head."""

    def __init__(
        self,
        *,
        in_channels: int,
        channels: Sequence[int],
        hidden: int,
        dropout: float,
        num_classes: int,
    ):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for size in channels:
            blocks += [
                nn.Conv2d(width, size, 3, 1, 1, bias=False),
                nn.BatchNorm2d(size),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            width = size
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(x)


def _check_small_cnn(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "channels": check_int_sequence("channels", kwargs["channels"]),
        "hidden": check_int("hidden", kwargs["hidden"]),
        "dropout": check_dropout("dropout", kwargs["dropout"]),
    }


@register_model("small_cnn", check=_check_small_cnn)
def small_cnn(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """A small CNN with one conv block per entry of ``channels`` (any image size >= 1)."""
    del image_size  # ceil-mode pooling and global pooling make the network size-agnostic
    return SmallCNN(
        in_channels=in_channels,
        channels=channels,
        hidden=hidden,
        dropout=dropout,
        num_classes=num_classes,
    )
