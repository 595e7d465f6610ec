"""Fully connected networks on flattened pixels: the MNIST nets of Hinton et al. (2015).

Input dropout, then Linear-ReLU-Dropout for each hidden width, then a linear head. The
distillation paper's teacher is ``hidden=(1200, 1200)`` with dropout (input 0.2, hidden
0.5); its small student ``hidden=(800, 800)`` without. ``hidden=()`` is multinomial
logistic regression. PyTorch's default linear initialisation is kept.

The trainer standardises pixels per channel (the training split's mean and std) before the
network sees them, so input dropout zeroes standardised pixels: a dropped pixel becomes the
channel's mean, not black as in dropout on raw pixels (Srivastava et al., 2014). Results of
``input_dropout > 0`` can differ from the paper's for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from study.models.registry import check_dropout, check_int_sequence, register_model


class MLP(nn.Module):
    """Flatten, input dropout, hidden Linear-ReLU-Dropout layers, linear head."""

    def __init__(
        self,
        *,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float,
        input_dropout: float,
    ):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x.flatten(1))
        return self.head(self.hidden(x))


def _check_mlp(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "hidden": check_int_sequence("hidden", kwargs["hidden"], allow_empty=True),
        "dropout": check_dropout("dropout", kwargs["dropout"]),
        "input_dropout": check_dropout("input_dropout", kwargs["input_dropout"]),
    }


@register_model("mlp", check=_check_mlp)
def mlp(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    hidden: Sequence[int] = (1200, 1200),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Module:
    """An MLP over the ``in_channels * image_size**2`` flattened pixels."""
    return MLP(
        in_features=in_channels * image_size * image_size,
        hidden=hidden,
        num_classes=num_classes,
        dropout=dropout,
        input_dropout=input_dropout,
    )
