"""Dropout with a generator of its own per seed (the loop's and the packs')."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class SeedDropout(nn.Module):
    """Dropout whose mask for seed k comes from seed k's own generator.

    Seed k's activations are block k of the batch dimension (``layout="batch"``) or of the
    channel dimension (``"channels"``; see ``study.pack.Layout``). Its mask is drawn as
    ``F.dropout`` draws it on the CPU for an NCHW tensor (``bernoulli_(1 - p)`` over a
    contiguous tensor of the seed's shape, scaled by ``1 / (1 - p)``): so a CPU generator
    seeded as the plain loop once seeded torch's global one gives the masks it gave. The loop
    itself uses this module with K = 1 (``train.seeded_dropout``) so that both draw the same
    masks on every device and in every memory format: on a GPU ``F.dropout`` is a fused
    kernel with masks of its own, and on a channels-last tensor it draws in memory order.
    """

    def __init__(self, p: float, k: int, *, layout: Literal["channels", "batch"] = "channels"):
        super().__init__()
        self.p, self.k, self.layout = p, k, layout
        self.generators: list[torch.Generator | None] = [None] * k

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        if self.layout == "batch":  # seed k's block is contiguous: draw into it in place
            noise = torch.empty_like(x, memory_format=torch.contiguous_format)
            for block, g in zip(noise.chunk(self.k), self.generators, strict=True):
                block.bernoulli_(keep, generator=g)
        else:
            shape = (x.shape[0], x.shape[1] // self.k, *x.shape[2:])
            masks = [
                torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep, generator=g)
                for g in self.generators
            ]
            noise = torch.stack(masks, dim=1).view_as(x)
        return x * noise.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, k={self.k}, layout={self.layout}"
