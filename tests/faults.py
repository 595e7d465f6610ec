"""Faults for the crash, resume and failure tests, installed in ``study/hooks.py``.

Production code reads no test setting: the engine calls the hooks in ``study.hooks``, which
are empty unless a test registers a fault here. In-process tests use ``installed(...)``
(or ``monkeypatch`` on the hook lists); a test that runs `study` in a subprocess runs this
file instead of ``-m study.cli`` (``command``): it installs the faults it is given on its
command line in the child process, then hands the rest of the command line to the CLI
unchanged, so the child is the real `study` with one fault registered, and nothing reaches
it through the environment.

The faults:

- ``signal_after_steps="N:KILL"`` (or ``"N:INT"``): that signal to the process after N
  optimizer steps in all (SIGKILL is a real crash: no cleanup, no flush);
- ``signal_after_tracker_calls="N:KILL"`` (or ``"N:INT"``): that signal right after the
  N-th call to the tracker returns;
- ``signal_inside_commits="N:INT"``: that signal inside the N-th transaction the process
  commits to a database (SQLAlchemy's ``commit`` event: the writes are made, the commit
  is not), the moment a KeyboardInterrupt would leave the sqlite store locked;
- ``signal_between_pack_writes="E:KILL"``: that signal in epoch E of a seed pack's
  checkpoint commit, after its first seed's state is written and before the others';
- ``diverge_seeds=[s, ...]``: those seeds train on their loss x 1e12 (the gradient of an
  absurd learning rate), so that their loss diverges while the others train normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from study import hooks

SCRIPT = str(Path(__file__).resolve())


def _send(name: str) -> None:
    os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def signal_after_steps(spec: str) -> Callable[[], None]:
    after, _, name = spec.partition(":")
    taken = [0]

    def hook() -> None:
        taken[0] += 1
        if taken[0] == int(after):
            _send(name)

    return hook


class _EngineCommits:
    """SQLAlchemy's ``commit`` event on every engine, used as a hook list is (its events,
    not a hook of ours): ``append`` listens, ``remove`` stops."""

    @staticmethod
    def append(hook: Callable[[], None]) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "commit", hook)

    @staticmethod
    def remove(hook: Callable[[], None]) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "commit", hook)


def signal_inside_commits(spec: str) -> Callable[..., None]:
    hook = signal_after_steps(spec)  # counts its calls
    return lambda conn: hook()


def signal_between_pack_writes(spec: str) -> Callable[[int], None]:
    at, _, name = spec.partition(":")

    def hook(epoch: int) -> None:
        if int(at) == epoch:
            _send(name)

    return hook


def diverge_seeds(seeds: list[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
    faulty = {int(s) for s in seeds}

    def hook(step_seeds: list[int], losses: torch.Tensor) -> torch.Tensor:
        if not faulty.intersection(step_seeds):
            return losses
        if losses.dim() == 0:
            return losses * 1e12
        scale = torch.tensor([1e12 if s in faulty else 1.0 for s in step_seeds])
        return losses * scale.to(losses.device, losses.dtype)

    return hook


def install(faults: dict[str, Any]) -> list[tuple[list, Any]]:
    """Register the faults named in ``faults``; returns (hook list, hook) pairs to remove."""
    added = []
    if faults.get("signal_after_steps"):
        added.append((hooks.after_step, signal_after_steps(faults["signal_after_steps"])))
    if faults.get("signal_after_tracker_calls"):
        hook = signal_after_steps(faults["signal_after_tracker_calls"])  # counts its calls
        added.append((hooks.after_tracker_call, hook))
    if faults.get("signal_inside_commits"):
        added.append((_EngineCommits, signal_inside_commits(faults["signal_inside_commits"])))
    if faults.get("signal_between_pack_writes"):
        hook = signal_between_pack_writes(faults["signal_between_pack_writes"])
        added.append((hooks.between_pack_writes, hook))
    if faults.get("diverge_seeds"):
        added.append((hooks.seed_losses, diverge_seeds(faults["diverge_seeds"])))
    for where, hook in added:
        where.append(hook)
    return added


@contextlib.contextmanager
def installed(**faults: Any) -> Iterator[None]:
    """The faults registered for the length of a ``with`` block."""
    added = install(faults)
    try:
        yield
    finally:
        for where, hook in added:
            where.remove(hook)


def command(*args: str, **faults: Any) -> list[str]:
    """The command line of `study *args` with ``faults`` installed in the child process."""
    return [sys.executable, SCRIPT, json.dumps(faults), *args]


if __name__ == "__main__":
    install(json.loads(sys.argv[1]))
    from study.cli import app

    app(sys.argv[2:], prog_name="study")
