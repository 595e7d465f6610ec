"""torchvision's ImageNet architectures adapted to 32x32 (CIFAR) and 28x28 (MNIST) inputs.

The ImageNet stems shrink the image 4x (ResNet, DenseNet) or 2x (MobileNetV2) before the
first block, which leaves a 32x32 image almost nothing to work with. ResNet-18 and
DenseNet-121 get the usual CIFAR adaptation: a 3x3 stride-1 stem convolution and no max
pool, which leaves a 4x4 map before global pooling at 32x32. MobileNetV2 gets only a
stride-1 first convolution; its later stages keep their strides, so the map before global
pooling is 2x2 at 32x32 and at 28x28. (The common CIFAR MobileNetV2, e.g.
kuangliu/pytorch-cifar, also sets the first 24-channel stage to stride 1 and reaches 4x4;
this adapter does not.) The stem follows ``in_channels`` (1 for MNIST). Weights are always
freshly initialised (``weights=None``): nothing is ever downloaded. The replaced stem is
initialised as its family initialises convolutions.

torchvision is imported inside the factories: protocol validation imports the registry and
should not pay for torchvision.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from study.errors import UserInputError
from study.models.registry import check_float, register_model

DENSENET121_MIN_IMAGE_SIZE = 8
"""DenseNet-121's three transitions each halve the map with a 2x2 average pool (no
padding) after the stride-1 stem: 8 -> 4 -> 2 -> 1; below 8 the last pool gets a 1x1 map."""


def _stem_conv(in_channels: int, out_channels: int, *, mode: str) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode=mode, nonlinearity="relu")
    return conv


@register_model("resnet18")
def resnet18(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max pool (11.2M params, 10 cls)."""
    from torchvision.models import resnet18 as tv_resnet18

    del image_size  # global pooling makes the network size-agnostic
    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = _stem_conv(in_channels, model.conv1.out_channels, mode="fan_out")
    model.maxpool = nn.Identity()
    return model


@register_model("densenet121")
def densenet121(*, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """torchvision DenseNet-121 with a 3x3 stride-1 stem and no pool (7.0M params, 10 cls).

    Global pooling makes it accept any image size from ``DENSENET121_MIN_IMAGE_SIZE`` (8)
    up; a smaller one is a ``UserInputError`` on ``image_size``.
    """
    from torchvision.models import densenet121 as tv_densenet121

    if image_size < DENSENET121_MIN_IMAGE_SIZE:
        raise UserInputError(
            f"model 'densenet121': image_size={image_size!r} is not allowed: must be an "
            f"integer >= {DENSENET121_MIN_IMAGE_SIZE} (its three stride-2 average-pool "
            "transitions leave nothing to pool below that); raise data.image_size or "
            "choose another model",
            field="image_size",
        )
    model = tv_densenet121(weights=None, num_classes=num_classes)
    features = model.features
    features.conv0 = _stem_conv(in_channels, features.conv0.out_channels, mode="fan_in")
    features.pool0 = nn.Identity()
    return model


def _check_mobilenet_v2(kwargs: dict[str, Any]) -> dict[str, Any]:
    width_mult = check_float("width_mult", kwargs["width_mult"], minimum=0.0, include_minimum=False)
    return {"width_mult": width_mult}


@register_model("mobilenet_v2", check=_check_mobilenet_v2)
def mobilenet_v2(
    *, in_channels: int, num_classes: int, image_size: int, width_mult: float = 1.0
) -> nn.Module:
    """torchvision MobileNetV2 with a stride-1 first convolution (2.2M params at width 1).

    Only the stem changes: the final map is 2x2 at 32x32 (see the module docstring).
    """
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    del image_size  # global pooling makes the network size-agnostic
    model = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)
    first = model.features[0]  # Conv2dNormActivation: conv, BN, ReLU6
    first[0] = _stem_conv(in_channels, first[0].out_channels, mode="fan_out")
    return model
