"""Progress of `study run`: a live bar on a terminal; in a pipe or a log file, one line
per finished run and one every ``PROGRESS_EVERY_S``, each a single line however long
(never wrapped at the console's 80 columns)."""

from __future__ import annotations

import sys
import threading
import time

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from study.cli.terminal import console, err_console

PROGRESS_EVERY_S = 60.0
"""Without a terminal, a progress line this often while the study runs."""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class ProgressView:
    """Runs, epochs and an ETA, drawn with rich."""

    def __enter__(self) -> ProgressView:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=not sys.stdout.isatty(),
            disable=not console.is_terminal,
        )
        self.progress.__enter__()
        self.runs = self.progress.add_task("runs", total=None)
        self.epochs = self.progress.add_task("epochs", total=None)
        self.done = 0
        # without a terminal (a log file: DVC, Slurm, CI) progress is a line now and then
        self.total_epochs, self.epochs_done, self.epochs_timed = 0, 0, 0
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.ticker = None
        if not console.is_terminal:
            self.ticker = threading.Thread(target=self._tick, daemon=True)
            self.ticker.start()
        return self

    def _tick(self) -> None:
        """Without a terminal: a progress line every PROGRESS_EVERY_S, epochs or not (a
        CIFAR epoch on a CPU, a teacher cache being filled, can take longer)."""
        while not self.stop.wait(PROGRESS_EVERY_S):
            if self.total_epochs:
                console.print(f"progress: {self._eta()}", highlight=False)

    def _eta(self) -> str:
        """Epochs done and the time left, from this process's pace (resumed epochs are
        done but took no time here)."""
        elapsed = time.monotonic() - self.started
        left = max(self.total_epochs - self.epochs_done, 0)
        eta = elapsed / self.epochs_timed * left if self.epochs_timed else None
        clock = "unknown" if eta is None else _clock(eta)
        done = f"epochs {self.epochs_done}/{self.total_epochs}"
        return f"{done}, {_clock(elapsed)} elapsed, ETA {clock}"

    def update(self, event) -> None:
        if event.kind == "start":
            self.progress.update(self.runs, total=event.total_runs)
            self.progress.update(self.epochs, total=event.total_epochs)
            self.total_epochs = event.total_epochs or 0
            if not console.is_terminal:
                console.print(
                    f"{event.total_runs} runs to train, {event.total_epochs} epochs in total"
                )
        elif event.kind == "epoch":
            self.progress.advance(self.epochs)
            self.epochs_done += 1
            self.epochs_timed += 1
        elif event.kind == "resumed":
            self.progress.advance(self.epochs, event.epoch or 0)
            self.epochs_done += event.epoch or 0
            console.print(f"{event.role} seed {event.seed}: resumed after epoch {event.epoch}")
        elif event.kind == "note":
            err_console.print(f"[yellow]{event.role} seed {event.seed}:[/] {escape(event.message)}")
        elif event.kind in ("done", "fail", "skip"):
            self.progress.advance(self.runs)
            self.done += 1
            desc = f"runs ({event.role} seed {event.seed})"
            self.progress.update(self.runs, description=desc)
            if not console.is_terminal and event.kind == "done":
                acc = event.metrics.get("test_acc")
                result = f": test_acc {acc:.4f}" if acc is not None else ""
                console.print(
                    f"[{self.done}] {event.role} seed {event.seed}{result} ({self._eta()})",
                    highlight=False,
                )

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join()
        self.progress.__exit__(*exc)
