"""Per-epoch training checkpoints that survive a crash and detect their own corruption.

One directory per (role, seed) fingerprint. Each epoch's state is written to a temporary
file and renamed into place (a reader never sees half a file), with its sha256 in a
sidecar file; the two newest epochs are kept, so a checkpoint that is corrupt or truncated
(checksum mismatch) falls back to the one before it, and the caller is told.

Writing costs time (serialising, two fsyncs), so a slot saves on a time cadence:
``due()`` says whether ``interval_s`` has passed since the slot's last save (or since it was
opened). With ``interval_s = 0`` every epoch is saved. A crash loses at most the epochs
since the last save, and those are trained again, with the same result.

A checkpoint's random streams belong to the device type it trained on (``"device_type"``):
a CUDA generator's state (16 bytes) cannot be set on a CPU generator (5056 bytes) nor the
other way round, and the device is no part of the fingerprint, so a GPU run and a CPU run
of one (role, seed) share a slot. ``resumable`` sets a checkpoint of another device type
aside: that training starts over from epoch 1.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

KEEP = 2
_NAME = re.compile(r"^epoch-(\d{5})\.pt$")
_CPU_GENERATOR_STATE = torch.Generator().get_state().numel()  # bytes (5056)


def device_type_of(state: dict[str, Any]) -> str:
    """The device type whose random streams ``state`` holds.

    Checkpoints written before the type was recorded say it by their training-device
    generators ("augment" on the training device; "order" is always a CPU one): a CPU
    generator's state is 5056 bytes, anything else was CUDA's.
    """
    recorded = state.get("device_type")
    if recorded is not None:
        return str(recorded)
    augment = state.get("generators", {}).get("augment")
    return "cpu" if augment is None or augment.numel() == _CPU_GENERATOR_STATE else "cuda"


@dataclass
class CheckpointSlot:
    """The checkpoints of one (role, seed), identified by its fingerprint."""

    directory: Path
    interval_s: float = 0.0  # seconds between saves (0: every epoch)
    notes: list[str] = field(default_factory=list)  # what loading had to say (corruption, device)
    _last_save: float = field(default_factory=time.monotonic, repr=False)

    def due(self) -> bool:
        """Whether the next completed epoch should be saved (see the module docstring)."""
        return time.monotonic() - self._last_save >= self.interval_s

    def _epochs(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def _path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:05d}.pt"

    def save(self, state: dict[str, Any]) -> None:
        """Write the state of a completed epoch (``state['epoch']``) atomically."""
        epoch = int(state["epoch"])
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        blob = buffer.getvalue()
        path = self._path(epoch)
        for target, content in (
            (path.with_suffix(".sha256"), hashlib.sha256(blob).hexdigest().encode()),
            (path, blob),
        ):
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        for old in self._epochs()[:-KEEP]:
            self._path(old).unlink(missing_ok=True)
            self._path(old).with_suffix(".sha256").unlink(missing_ok=True)
        self._last_save = time.monotonic()

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint whose checksum holds, or None (then training starts over)."""
        for epoch in reversed(self._epochs()):
            path = self._path(epoch)
            try:
                blob = path.read_bytes()
                expected = path.with_suffix(".sha256").read_text().strip()
            except OSError as e:
                self.notes.append(f"checkpoint {path} is unreadable ({e}); trying an older one")
                continue
            if hashlib.sha256(blob).hexdigest() != expected:
                self.notes.append(
                    f"checkpoint {path} is corrupt (checksum mismatch); trying an older one"
                )
                continue
            return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
        if self._epochs():
            self.notes.append(f"no intact checkpoint in {self.directory}: training starts over")
        return None

    def resumable(
        self, state: dict[str, Any] | None, device: torch.device
    ) -> dict[str, Any] | None:
        """``state`` if a training on ``device`` can continue it, else None with a note.

        A checkpoint of another device type cannot: its generator states do not fit this
        device's generators. The slot is then cleared, not kept: only the ``KEEP`` newest
        epochs stay, so the stale checkpoint's higher epochs would otherwise outlive, and on
        a crash be found before, the new training's own saves.
        """
        if state is None:
            return None
        theirs = device_type_of(state)
        if theirs == device.type:
            return state
        self.notes.append(
            f"checkpoint of epoch {state['epoch']} in {self.directory} is from {theirs} and "
            f"cannot resume on {device.type}: random streams differ; training from epoch 1"
        )
        self.clear()
        return None

    def clear(self) -> None:
        """Remove the checkpoints once the run is finished (its final model is tracked)."""
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class CheckpointStore:
    """Where the per-epoch checkpoints of a tracking store live."""

    root: Path
    interval_s: float = 0.0

    def slot(self, fingerprint: str) -> CheckpointSlot:
        return CheckpointSlot(self.root / fingerprint, self.interval_s)
