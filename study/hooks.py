"""Points in the training engine and the tracker where a test installs a fault; empty in
production.

The crash, resume and failure tests need a training to die at an exact step, right after an
exact call to the tracker, between two seeds' checkpoint writes, or a seed to diverge.
Rather than reading test settings, the loop, the pack and the tracker call whatever
callables are registered here, and nothing is registered unless a test
(``tests/faults.py``) does it. Each list is checked with one
truth test per step, so an empty one costs nothing measurable.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

after_step: list[Callable[[], None]] = []
"""Called after every optimizer step: of one seed in the loop, of every seed in a pack."""

seed_losses: list[Callable[[list[int], Tensor], Tensor]] = []
"""Called with a step's seeds and their losses (a scalar in the loop; in a pack one per
seed still training, in that order) before the backward pass; returns the losses to train
on."""

after_tracker_call: list[Callable[[], None]] = []
"""Called after every call to the tracker returns (or raises): the moment a run may exist in
the store before the invocation has recorded it."""

between_pack_writes: list[Callable[[int], None]] = []
"""Called with the epoch in a seed pack's checkpoint commit, after its first seed's state
is written and before the others'."""


def step_taken() -> None:
    for hook in after_step:
        hook()


def tracker_called() -> None:
    for hook in after_tracker_call:
        hook()


def losses_of(seeds: list[int], losses: Tensor) -> Tensor:
    for hook in seed_losses:
        losses = hook(seeds, losses)
    return losses


def pack_write_done(epoch: int) -> None:
    for hook in between_pack_writes:
        hook(epoch)
