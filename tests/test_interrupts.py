"""Ctrl-C and SIGTERM held back for a block (``study.interrupts.held``).

The signals are sent to the process with `kill`, as a terminal or a scheduler sends them,
while another thread runs: the kernel then may hand them to that thread, which is how a
mask on the main thread (``pthread_sigmask``, used before) let Ctrl-C through anyway.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from study.interrupts import held


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Python's own Ctrl-C handler for the test: a background job (CI's) inherits SIGINT
    ignored, which ``held`` leaves ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def other_thread() -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _kill(signum: int) -> None:
    """The signal sent to this process from outside, and a moment for Python to run it."""
    subprocess.run(["kill", f"-{signum}", str(os.getpid())], check=True)
    for _ in range(20):
        time.sleep(0.01)


def test_a_ctrl_c_sent_to_the_process_waits_for_the_block(ctrl_c, other_thread) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            _kill(signal.SIGINT)
            reached.append("the block's end")
    assert reached == ["the block's end"]


def test_the_interrupt_is_raised_where_the_block_ends(ctrl_c) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            _kill(signal.SIGINT)
            steps.append("inside")
        steps.append("after")  # never: the interrupt is raised as the block ends
    assert steps == ["inside"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_an_interrupt_from_another_thread_waits_for_the_block(ctrl_c) -> None:
    """The claims' heartbeat interrupts the main thread this way (``interrupt_main``)."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            thread = threading.Thread(target=_thread.interrupt_main)
            thread.start()
            thread.join()
            for _ in range(20):
                time.sleep(0.01)
            done.append(True)
    assert done == [True]


def test_sigterm_is_held_and_delivered_to_its_own_handler(other_thread) -> None:
    seen = []

    def on_term(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with held():
            _kill(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_nested_blocks_are_one_block(ctrl_c) -> None:
    order = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            with held():
                _kill(signal.SIGINT)
            order.append("outer block goes on")
    assert order == ["outer block goes on"]


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _kill(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # and nothing raised
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_the_main_thread_a_block_changes_no_handler(ctrl_c) -> None:
    seen = []

    def look() -> None:
        with held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


class _Stopped(Exception):
    pass


def test_the_heartbeat_interrupts_the_main_thread_even_where_ctrl_c_is_ignored() -> None:
    """A lost tracker found by the claims' heartbeat stops the training through an interrupt
    of the main thread. Where SIGINT is ignored (a background job, `nohup`, CI), Python's
    ``interrupt_main`` did nothing and the study trained on: SIGTERM is used there."""
    from study.claims import _interrupt_main

    def on_term(signum, frame):
        raise _Stopped(signum)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(_Stopped) as stopped:
            thread = threading.Thread(target=_interrupt_main)
            thread.start()
            thread.join()
            for _ in range(100):
                time.sleep(0.01)
        assert stopped.value.args == (signal.SIGTERM,)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def test_the_heartbeat_interrupts_with_ctrl_c_where_it_is_handled(ctrl_c) -> None:
    from study.claims import _interrupt_main

    with pytest.raises(KeyboardInterrupt):
        thread = threading.Thread(target=_interrupt_main)
        thread.start()
        thread.join()
        for _ in range(100):
            time.sleep(0.01)
