"""Ctrl-C and SIGTERM held back for the length of a block, then delivered where it ends.

For what an interrupt must not split: a write to MLflow's sqlite store (a KeyboardInterrupt
raised inside one leaves its transaction open on a connection that nothing closes while the
traceback lives, and every later write of the process then waits out sqlite's busy timeout
and fails with "database is locked": `study run` interrupted while it created 40 runs
was still ending them after CI's 300 s), a pack's checkpoint commit, a trial's end.

Held by replacing Python's handlers, not by blocking the signals (``pthread_sigmask``):
a mask is per thread, and a signal sent to the process (Ctrl-C, `kill`) is then taken by
another thread (the progress display, the claims' heartbeat), whose C handler has Python
raise the KeyboardInterrupt in the main thread all the same, inside the block. A handler
sees every signal whichever thread takes it, and ``_thread.interrupt_main`` too.

Python runs signal handlers in the main thread only, so elsewhere a block holds nothing
and needs nothing. Nested blocks are one block.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)  # SIGTERM: `study` stops on it as on Ctrl-C

_state = threading.local()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """SIGINT and SIGTERM received inside the block are delivered when it ends (see the
    module). A signal that is ignored (SIG_IGN: a shell's background job) stays ignored."""
    if getattr(_state, "on", False) or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {}
    _state.on = True
    try:
        for s in HELD:
            handler = signal.getsignal(s)
            if handler is not signal.SIG_IGN:
                previous[s] = signal.signal(s, record)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _state.on = False
        for s in dict.fromkeys(received):
            signal.raise_signal(s)
