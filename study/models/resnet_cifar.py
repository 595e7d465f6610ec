"""CIFAR ResNet-n (He et al., 2016, section 4.2): ResNet-20/32/44/56/110, depth = 6n + 2.

A 3x3 stem of 16 channels, three stages of n basic blocks (16, 32, 64 channels; strides
1, 2, 2), global average pooling and a linear head. Shortcuts use **option B**: identity
where the shape is unchanged, a 1x1 convolution + BN projection where it changes. The paper's
CIFAR numbers use option A (zero-padded identity), which has no parameters; option B adds
2,752 parameters to any depth (ResNet-20: 0.272M instead of 0.270M; ResNet-110: 1.731M
instead of 1.728M) and is the more common choice in KD code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.errors import UserInputError
from study.models.registry import check_int, init_standard, register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU (post-activation)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-depth for small square images (option-B shortcuts)."""

    def __init__(self, *, depth: int, in_channels: int, num_classes: int):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if index == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.pool(x).flatten(1))


def _check_resnet_cifar(kwargs: dict[str, Any]) -> dict[str, Any]:
    depth = check_int("depth", kwargs["depth"], minimum=8)
    if (depth - 2) % 6 != 0:
        raise UserInputError(
            f"depth={depth} is not allowed: CIFAR ResNet depth must be 6n+2 with n >= 1 "
            "(8, 14, 20, 32, 44, 56, 110, ...)"
        )
    return {"depth": depth}


@register_model("resnet_cifar", check=_check_resnet_cifar)
def resnet_cifar(
    *, in_channels: int, num_classes: int, image_size: int, depth: int = 20
) -> nn.Module:
    """CIFAR ResNet-depth (He et al. 2016) with option-B (1x1 conv + BN) projection shortcuts."""
    del image_size  # global pooling makes the network size-agnostic
    return CifarResNet(depth=depth, in_channels=in_channels, num_classes=num_classes)
