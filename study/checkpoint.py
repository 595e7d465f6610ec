"""Per-epoch training checkpoints that survive a crash and detect their own corruption.

One directory per (role, seed) fingerprint. Each epoch's state is written to a temporary
file and renamed into place (a reader never sees half a file), then its sha256 in a
sidecar file (so there is never a checksum without its file); the two newest epochs are
kept, so a checkpoint that is corrupt, truncated or refused falls back to the one before
it, and the caller is told in one line naming the file.

A checkpoint is untrusted input: anyone who can write the folder can plant one (the
fingerprints are printed in the run tags). It is read with ``torch.load(weights_only=True)``,
which builds tensors and plain containers and runs nothing, so everything a training must
restore is stored as tensors and plain numbers (``training_state``: the random states of
Python and NumPy too). A file that does not load that way, or whose checksum fails, or that
lacks what a training restores, is refused; with none left the seed starts over. And only a
seed that resumes reads its slot (``CheckpointSlot.resume``): a new run clears it unread.

A seed pack saves its seeds one after another, so a crash between two writes would leave
them at different epochs. The pack's states are therefore members of one commit: each
records the pack's key, and after the last one a marker ``<root>/_packs/<key>/epoch-E.json``
lists the members. A member state counts only with its marker, so a pack resumes at the
last epoch all its seeds saved: the same computation as an uninterrupted one. (Ctrl-C and
SIGTERM wait for the commit: ``study.interrupts.held``.)

Writing costs time (serialising, fsyncs), so a slot saves on a time cadence: ``due()``
says whether ``interval_s`` has passed since the slot's last save (or since it was opened).
With ``interval_s = 0`` every epoch is saved. A crash loses at most the epochs since the
last save, and those are trained again, with the same result.

A checkpoint's random streams belong to the device type it trained on (``"device_type"``):
a CUDA generator's state (16 bytes) cannot be set on a CPU generator (5056 bytes) nor the
other way round, and the device is no part of the fingerprint, so a GPU run and a CPU run
of one (role, seed) share a slot. ``resumable`` sets a checkpoint of another device type
aside: that training starts over from epoch 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from study.errors import NO_SPACE, DiskFull

KEEP = 2
_UNREAD = object()
PACKS = "_packs"  # beside the slots: the commit markers of seed packs
_NAME = re.compile(r"^epoch-(\d{5})\.pt$")
_CPU_GENERATOR_STATE = torch.Generator().get_state().numel()  # bytes (5056)
TRAINING_KEYS = frozenset(
    {"epoch", "history", "model", "optimizer", "scheduler", "scaler", "generators"}
)
"""What a training restores from a checkpoint: a state without one of them is refused."""


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


# --- the state of a training, as tensors and plain numbers -------------------------------


def training_state(
    *,
    epoch: int,
    device: torch.device,
    history: list[dict[str, float]],
    model: dict[str, Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    scaler: dict[str, Any],
    generators: dict[str, torch.Generator],
    dropout: torch.Generator,
    device_rng: Tensor | None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to continue after ``epoch`` exactly as if never interrupted: the
    one schema of the loop's and the packs' checkpoints (a seed saved by either resumes in
    either). ``device_rng`` is the training GPU's global generator (None on the CPU, which
    must not initialise CUDA to read one); the CPU's, Python's and NumPy's are read here."""
    return {
        "epoch": epoch,
        "device_type": device.type,
        "history": history,
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "generators": {name: g.get_state() for name, g in generators.items()},
        "dropout_rng": dropout.get_state(),
        "torch_rng": torch.get_rng_state(),
        "device_rng": device_rng,
        "python_rng": _python_rng(),
        "numpy_rng": _numpy_rng(),
        **extra,
    }


def _python_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _numpy_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def restore_global_rng(state: dict[str, Any]) -> None:
    """Set the CPU's, Python's and NumPy's global generators as ``training_state`` saw them."""
    torch.set_rng_state(state["torch_rng"])
    py = state["python_rng"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy_rng"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))


# --- files -------------------------------------------------------------------------------


def _write(path: Path, content: bytes) -> None:
    """``content`` into ``path`` through a temporary file and a rename; on a failure the
    temporary file is removed, and a full disk is a ``DiskFull`` naming the folder."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in NO_SPACE:
            raise DiskFull.at(path.parent, f"the checkpoint {path.name}") from None
        raise


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass(eq=False)  # a slot is one folder's writer: compared (and hashed) by identity
class CheckpointSlot:
    """The checkpoints of one (role, seed), identified by its fingerprint."""

    directory: Path
    interval_s: float = 0.0  # seconds between saves (0: every epoch)
    # False for a seed that starts a new run: nothing in the slot is read (``load`` gives
    # None), whatever files are there. The executor clears such a slot before training.
    resume: bool = True
    notes: list[str] = field(default_factory=list)  # what loading had to say (refusals, device)
    _last_save: float = field(default_factory=time.monotonic, repr=False)
    _resume_state: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._resume_state = _UNREAD

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

    def _marker(self, key: str, epoch: int) -> Path:
        return self.directory.parent / PACKS / key / f"epoch-{epoch:05d}.json"

    def save(self, state: dict[str, Any]) -> None:
        """Write the state of a completed epoch (``state['epoch']``) atomically. A state
        with a ``"pack"`` key is a member of that pack's commit (``commit_pack`` makes it
        count, and prunes); without, it stands alone and older epochs are pruned."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):  # of a writer killed mid-write
            leftover.unlink(missing_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        blob = buffer.getvalue()
        path = self._path(int(state["epoch"]))
        checksum = path.with_suffix(".sha256")
        checksum.unlink(missing_ok=True)  # an old checksum never vouches for the new file
        _write(path, blob)
        try:
            _write(checksum, _sha256(blob).encode())
        except BaseException:
            path.unlink(missing_ok=True)  # a file without its checksum would only be refused
            raise
        if "pack" not in state:
            self.prune()
        self._last_save = time.monotonic()
        self._resume_state = _UNREAD

    def saved(self, epoch: int) -> bool:
        """Whether the files of ``epoch`` (state and checksum) are there."""
        path = self._path(epoch)
        return path.is_file() and path.with_suffix(".sha256").is_file()

    def prune(self) -> None:
        """Keep the ``KEEP`` newest epochs."""
        for old in self._epochs()[:-KEEP]:
            self._path(old).unlink(missing_ok=True)
            self._path(old).with_suffix(".sha256").unlink(missing_ok=True)

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint that holds (checksum, weights-only, committed), or None
        (then training starts over; also for a slot that does not ``resume``)."""
        return self._load(None)

    def resume_state(self, device: torch.device) -> dict[str, Any] | None:
        """``load`` for a training on ``device``: a checkpoint that lacks what a training
        restores is refused too, and one of another device type is set aside
        (``resumable``). Read once: the executor and the trainer ask the same slot."""
        if self._resume_state is _UNREAD:
            self._resume_state = self.resumable(self._load(_lacks_training_keys), device)
        return self._resume_state  # type: ignore[return-value]

    def _load(self, check: Callable[[dict[str, Any]], str | None] | None) -> dict | None:
        if not self.resume:
            return None
        epochs = self._epochs()
        for epoch in reversed(epochs):
            path = self._path(epoch)
            state, why = self._read(path, epoch, check)
            if state is not None:
                for newer in epochs[epochs.index(epoch) + 1 :]:  # refused: never of use
                    self._path(newer).unlink(missing_ok=True)
                    self._path(newer).with_suffix(".sha256").unlink(missing_ok=True)
                return state
            self.notes.append(f"checkpoint {path} {why}: refused, trying an older one")
        if epochs:
            self.notes.append(
                f"no checkpoint in {self.directory} can be resumed: training starts over"
            )
        return None

    def _read(
        self, path: Path, epoch: int, check: Callable[[dict[str, Any]], str | None] | None
    ) -> tuple[dict[str, Any] | None, str]:
        try:
            blob = path.read_bytes()
            expected = path.with_suffix(".sha256").read_text().strip()
        except OSError as e:
            return None, f"is unreadable ({e.strerror or e})"
        if _sha256(blob) != expected:
            return None, "is corrupt (checksum mismatch)"
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the unpickler says, nothing ran
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return None, f"does not load weights-only ({type(e).__name__}: {first[:200]})"
        if not isinstance(state, dict) or state.get("epoch") != epoch:
            return None, f"is not the checkpoint of epoch {epoch}"
        key = state.get("pack")
        if key is not None and not self._committed(str(key), epoch):
            return None, "is of a seed pack that stopped before all its seeds saved the epoch"
        why = check(state) if check is not None else None
        return (None, why) if why else (state, "")

    def _committed(self, key: str, epoch: int) -> bool:
        try:
            marker = json.loads(self._marker(key, epoch).read_text())
            return self.directory.name in marker["members"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

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
        """Remove the checkpoints (the run is finished, or starts over), and the markers of
        packs none of whose members is left."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self._resume_state = _UNREAD
        packs = self.directory.parent / PACKS
        for folder in packs.iterdir() if packs.is_dir() else []:
            members: set[str] = set()
            for marker in folder.glob("*.json"):
                try:
                    members.update(json.loads(marker.read_text())["members"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            if not any((self.directory.parent / m).is_dir() for m in members):
                shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            packs.rmdir()  # once empty


def _lacks_training_keys(state: dict[str, Any]) -> str | None:
    missing = sorted(TRAINING_KEYS - set(state))
    if missing:
        return f"is not a training checkpoint (it lacks {', '.join(missing)})"
    if not isinstance(state["history"], list) or len(state["history"]) != state["epoch"]:
        return "does not hold one history entry per epoch"
    return None


def pack_key(slots: Iterable[CheckpointSlot]) -> str:
    """The key of a pack's commits: its members' slot names (fingerprints), in order."""
    names = "/".join(slot.directory.name for slot in slots)
    return hashlib.sha256(names.encode()).hexdigest()[:32]


def commit_pack(key: str, epoch: int, members: list[CheckpointSlot]) -> None:
    """Make the member states of ``epoch`` count, once every member has saved them (the
    commit marker lists the members, and is written last), and prune older epochs."""
    if not members or not all(slot.saved(epoch) for slot in members):
        return
    marker = members[0]._marker(key, epoch)
    marker.parent.mkdir(parents=True, exist_ok=True)
    content = {"epoch": epoch, "members": sorted(s.directory.name for s in members)}
    _write(marker, json.dumps(content).encode())
    for slot in members:
        slot.prune()
    kept = {e for slot in members for e in slot._epochs()}
    for old in marker.parent.glob("epoch-*.json"):
        number = re.fullmatch(r"epoch-(\d{5})\.json", old.name)
        if number and int(number.group(1)) not in kept:
            old.unlink(missing_ok=True)


@dataclass(frozen=True)
class CheckpointStore:
    """Where the per-epoch checkpoints of a tracking store live."""

    root: Path
    interval_s: float = 0.0

    def slot(self, fingerprint: str, *, resume: bool = True) -> CheckpointSlot:
        if not re.fullmatch(r"[0-9a-f]+", fingerprint):  # a folder name, never a path
            raise ValueError(f"not a fingerprint: {fingerprint!r}")
        return CheckpointSlot(self.root / fingerprint, self.interval_s, resume=resume)
