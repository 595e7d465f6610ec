"""Feature taps: named intermediate outputs of every registered architecture.

Feature-based distillation (``study.feature_losses``) reads a network's inner activations
in the same forward pass as its logits. A *tap* is one such activation, named the same way
in every family:

- ``stage1``, ``stage2``, ...: the output of each stage, in forward order (a WRN's,
  a CIFAR ResNet's or a DenseNet-BC's groups of blocks; a small_cnn's conv blocks after
  their pooling; an MLP's hidden layers after their activation and dropout; torchvision's
  ResNet-18 ``layer1..4``, DenseNet-121's dense blocks, MobileNetV2's resolution stages);
- ``embedding``: the penultimate features, the input of the final linear layer.

Pre-activation networks (WRN, DenseNet-BC) tap their last stage before the final
BN-ReLU, as the attention-transfer paper's own code reads its groups.

Taps are recorded with forward hooks (``TapRecorder``) on the model as it is: no family
changes its forward pass, so a tapped model computes exactly what an untapped one does.
``tap_shapes`` gives each tap's shape for a configuration without memory or arithmetic
(meta tensors), which is what protocol validation checks tap pairs against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from study.models.registry import create_model, model_names

EMBEDDING = "embedding"

# A tap point: the module whose output (or, for "input", whose first input) is the tap.
TapPoint = tuple[nn.Module, str]


def _stages_then_head(model: nn.Module) -> dict[str, TapPoint]:
    # wrn, resnet_cifar, densenet_bc: ``stages`` (a Sequential of groups) and ``head``;
    # DenseNet-BC's transitions sit between its dense blocks in ``stages``: a stage is a
    # dense block, at its own resolution
    groups = [m for m in model.stages if type(m).__name__ != "Transition"]
    points = {f"stage{i + 1}": (m, "output") for i, m in enumerate(groups)}
    points[EMBEDDING] = (model.head, "input")
    return points


def _small_cnn(model: nn.Module) -> dict[str, TapPoint]:
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    points = {f"stage{i + 1}": (m, "output") for i, m in enumerate(pools)}
    points[EMBEDDING] = (model.classifier[-1], "input")
    return points


def _mlp(model: nn.Module) -> dict[str, TapPoint]:
    # each hidden layer is Linear-ReLU(inplace)-Dropout, the Dropout (a SeedDropout once the
    # trainer seeds it) third: its output is the layer's
    drops = list(model.hidden)[2::3]
    points = {f"stage{i + 1}": (m, "output") for i, m in enumerate(drops)}
    points[EMBEDDING] = (model.head, "input")
    return points


def _resnet18(model: nn.Module) -> dict[str, TapPoint]:
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    points = {f"stage{i + 1}": (m, "output") for i, m in enumerate(layers)}
    points[EMBEDDING] = (model.fc, "input")
    return points


def _densenet121(model: nn.Module) -> dict[str, TapPoint]:
    blocks = [getattr(model.features, f"denseblock{i}") for i in range(1, 5)]
    points = {f"stage{i + 1}": (m, "output") for i, m in enumerate(blocks)}
    points[EMBEDDING] = (model.classifier, "input")
    return points


MOBILENET_V2_STAGE_ENDS = (1, 3, 6, 13, 18)
"""The ``features`` indices that end MobileNetV2's stages (16, 24, 32, 96 and 1280 channels
at width 1: the last block before each stride-2 block, and the final 1x1 convolution)."""


def _mobilenet_v2(model: nn.Module) -> dict[str, TapPoint]:
    points = {
        f"stage{i + 1}": (model.features[j], "output")
        for i, j in enumerate(MOBILENET_V2_STAGE_ENDS)
    }
    points[EMBEDDING] = (model.classifier[-1], "input")
    return points


_TAP_POINTS: dict[str, Callable[[nn.Module], dict[str, TapPoint]]] = {
    "wrn": _stages_then_head,
    "resnet_cifar": _stages_then_head,
    "densenet_bc": _stages_then_head,
    "small_cnn": _small_cnn,
    "mlp": _mlp,
    "resnet18": _resnet18,
    "densenet121": _densenet121,
    "mobilenet_v2": _mobilenet_v2,
}


def tap_points(arch: str, model: nn.Module) -> dict[str, TapPoint]:
    """The taps of ``model`` (an ``arch`` built by ``create_model``), forward order."""
    if arch not in _TAP_POINTS:
        raise KeyError(f"architecture {arch!r} declares no feature taps")
    return _TAP_POINTS[arch](model)


def tapped_archs() -> list[str]:
    """The architectures with taps (every registered one: a test pins it)."""
    return sorted(a for a in model_names() if a in _TAP_POINTS)


class TapRecorder:
    """Records the named taps of a model in each forward pass, while installed.

    ``with TapRecorder(arch, model, names) as taps: logits = model(x)`` leaves the taps'
    tensors in ``taps.values`` (a dict, in ``names`` order), from the very forward pass that
    produced the logits: part of the autograd graph in training, constants under inference
    mode.
    """

    def __init__(self, arch: str, model: nn.Module, names: Iterable[str]):
        points = tap_points(arch, model)
        self.names = list(names)
        missing = [n for n in self.names if n not in points]
        if missing:
            raise KeyError(f"{arch} has no tap {missing[0]!r}; it has {', '.join(points)}")
        self.points = {n: points[n] for n in self.names}
        self.values: dict[str, Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> TapRecorder:
        self.values = {}
        for name, (module, where) in self.points.items():
            if where == "input":

                def pre(_m: nn.Module, args: tuple, name: str = name) -> None:
                    self.values[name] = args[0]

                self.handles.append(module.register_forward_pre_hook(pre))
            else:

                def post(_m: nn.Module, _a: tuple, out: Tensor, name: str = name) -> None:
                    self.values[name] = out

                self.handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def ordered(self) -> list[Tensor]:
        """The recorded taps in ``names`` order."""
        return [self.values[n] for n in self.names]


def tap_shapes(
    arch: str,
    kwargs: dict[str, Any],
    *,
    in_channels: int,
    image_size: int,
    num_classes: int,
) -> dict[str, tuple[int, ...]]:
    """Each tap's shape for one example (no batch dimension), found on meta tensors."""
    with torch.device("meta"):
        model = create_model(
            arch,
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            **kwargs,
        ).eval()
        names = list(tap_points(arch, model))
        with TapRecorder(arch, model, names) as taps:
            model(torch.empty(2, in_channels, image_size, image_size))
    return {n: tuple(taps.values[n].shape[1:]) for n in names}
