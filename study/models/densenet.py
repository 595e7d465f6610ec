"""DenseNet-BC (Huang et al., 2017) for small images: the BAN paper's DenseNet students.

Three dense blocks of (depth - 4) / 6 bottleneck layers each (BN-ReLU-conv1x1 to 4k
channels, BN-ReLU-conv3x3 to k = growth_rate channels, concatenated to the input), a 3x3
stem of 2k channels, and between blocks a transition that compresses the channels by
``reduction`` (BN-ReLU-conv1x1, 2x2 average pool). Dropout, when set, follows every
convolution as in the paper. DenseNet-BC-100-12 has 0.8M parameters; the BAN paper also
uses e.g. depth 112 with growth 33.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.errors import UserInputError
from study.models.registry import (
    check_dropout,
    check_float,
    check_int,
    init_standard,
    register_model,
)


class Bottleneck(nn.Module):
    """One BC layer: produces ``growth_rate`` new channels and appends them to its input."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float):
        super().__init__()
        inner = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth_rate, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.dropout(self.conv2(F.relu(self.bn2(out))))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv(F.relu(self.bn(x))))
        return F.avg_pool2d(out, 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC-depth-growth_rate with three dense blocks."""

    def __init__(
        self,
        *,
        depth: int,
        growth_rate: int,
        reduction: float,
        dropout: float,
        in_channels: int,
        num_classes: int,
    ):
        super().__init__()
        layers_per_block = (depth - 4) // 6
        channels = 2 * growth_rate
        self.stem = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for block in range(3):
            layers = []
            for _ in range(layers_per_block):
                layers.append(Bottleneck(channels, growth_rate, dropout))
                channels += growth_rate
            stages.append(nn.Sequential(*layers))
            if block < 2:
                compressed = max(1, math.floor(channels * reduction))
                stages.append(Transition(channels, compressed, dropout))
                channels = compressed
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = self.pool(F.relu(self.bn(x))).flatten(1)
        return self.head(x)


def _check_densenet_bc(kwargs: dict[str, Any]) -> dict[str, Any]:
    depth = check_int("depth", kwargs["depth"], minimum=10)
    if (depth - 4) % 6 != 0:
        raise UserInputError(
            f"depth={depth} is not allowed: DenseNet-BC depth must be 6n+4 with n >= 1 "
            "(n bottleneck layers per block; e.g. 40, 100, 112, 190, 250)"
        )
    return {
        "depth": depth,
        "growth_rate": check_int("growth_rate", kwargs["growth_rate"]),
        "reduction": check_float(
            "reduction", kwargs["reduction"], minimum=0.0, maximum=1.0, include_minimum=False
        ),
        "dropout": check_dropout("dropout", kwargs["dropout"]),
    }


@register_model("densenet_bc", check=_check_densenet_bc)
def densenet_bc(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    depth: int = 100,
    growth_rate: int = 12,
    reduction: float = 0.5,
    dropout: float = 0.0,
) -> nn.Module:
    """DenseNet-BC-depth-growth_rate with compression ``reduction`` (0.5 in the paper)."""
    del image_size  # global pooling makes the network size-agnostic
    return DenseNetBC(
        depth=depth,
        growth_rate=growth_rate,
        reduction=reduction,
        dropout=dropout,
        in_channels=in_channels,
        num_classes=num_classes,
    )
