"""Several workers sharing one plan: the claims a worker takes on (role, seed)s, kept alive
by a heartbeat, and how a worker tells that another one is gone.

A claim is an atomic record in the tracking store (``Tracker.try_claim``); a claim whose
heartbeat is older than ``stale_after_s``, or whose worker ran on this machine (the same
host, boot and PID namespace) and whose process no longer exists, is taken over. The
heartbeat is also how a study notices a lost tracking server while it trains: an unanswered
heartbeat (``TrackerUnavailable``) interrupts the training at once.
"""

from __future__ import annotations

import _thread
import functools
import os
import signal
import socket
import threading
import time
from pathlib import Path

from study.errors import TrackerUnavailable
from study.track import Claim, Tracker


@functools.cache
def process_space() -> str:
    """Where a PID means one process: the host name, the kernel's boot id and the PID
    namespace (containers on one host share the boot id, not the namespace)."""
    parts = [socket.gethostname()]
    for path, read in (
        ("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()[:8]),
        ("/proc/self/ns/pid", os.readlink),
    ):
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return "/".join(parts).replace(":", "_")


def dead_here(worker: str) -> bool:
    """Whether ``worker`` (``space:pid:tag``) ran in this process space and its process no
    longer exists. Unknown spaces, and live or unreadable PIDs, count as alive."""
    space, _, rest = worker.partition(":")
    pid, _, _ = rest.partition(":")
    if space != process_space() or "?" in space.split("/") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        pass
    return False


def _interrupt_main() -> None:
    """Interrupt the main thread with a signal Python handles there: SIGINT, or where it is
    ignored (a background job, `nohup`, a CI script) SIGTERM, which `study` handles as
    Ctrl-C. An interrupt with an unhandled signal does nothing at all."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(signum)):
            _thread.interrupt_main(signum)
            return


class ClaimBoard:
    """This worker's claims: taking them, keeping their heartbeats fresh, releasing them."""

    def __init__(
        self, tracker: Tracker, study: str, heartbeat_s: float, stale_after_s: float, worker: str
    ):
        self.tracker, self.study = tracker, study
        self.stale_after_s = stale_after_s
        self.worker = worker  # space:pid:tag (see ``dead_here``)
        self.held: dict[str, str] = {}  # claim experiment id -> fingerprint
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                ids = list(self.held)
            try:
                self.tracker.heartbeat(ids)
            except TrackerUnavailable:
                # The tracker is lost: stop the training now (its checkpoints stay), not at
                # its next epoch's metrics, which a long epoch puts far off.
                _interrupt_main()
                return
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                pass

    def _fresh(self, claim: Claim | None) -> bool:
        """Held by a live worker: one whose heartbeat is recent, unless it ran in this
        process space (host, boot, PID namespace) and its process is gone (killed, OOM),
        which a rerun after a crash need not wait ``stale_after_s`` to see."""
        return (
            claim is not None
            and claim.active
            and time.time() - claim.heartbeat < self.stale_after_s
            and not dead_here(claim.worker)
        )

    def claim(
        self, items: list[tuple[int, str]], claims: dict[str, Claim]
    ) -> tuple[dict[int, str], bool]:
        """Claim (seed, fingerprint) items nobody alive holds: {seed: claim id} of those won,
        and whether one of them follows an earlier claim (taken over from a dead worker)."""
        won: dict[int, str] = {}
        took_over = False
        for seed, fp in items:
            current = claims.get(fp)
            if self._fresh(current):
                continue
            attempt = (current.attempt if current else 0) + 1
            claim_id = self.tracker.try_claim(self.study, fp, attempt, self.worker)
            if claim_id is not None:
                won[seed] = claim_id
                took_over |= attempt > 1
                with self._lock:
                    self.held[claim_id] = fp
        return won, took_over

    def release(self, claim_ids) -> None:
        for claim_id in list(claim_ids):
            with self._lock:
                self.held.pop(claim_id, None)
            self.tracker.release(claim_id)

    def others_active(self, claims: dict[str, Claim], fingerprints: list[str]) -> bool:
        return any(self._fresh(claims.get(fp)) for fp in fingerprints)

    def stop(self) -> None:
        """Stop the heartbeats; claims still held are released (their runs are KILLED)."""
        self._stop.set()
        for claim_id in list(self.held):
            try:
                self.release([claim_id])
            except Exception:  # noqa: BLE001 - a stale claim is taken over anyway
                pass
