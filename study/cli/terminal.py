"""The command line's terminal: the Typer app, the two consoles, how errors end a command
(a message and exit status 2), and how tables and numbers are printed."""

from __future__ import annotations

import errno
import functools
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from study.errors import TrackerUnavailable, UserInputError


class Command(TyperCommand):
    """A command whose usage line names its arguments plainly (``PROTOCOL``), where
    Typer would print a required one in braces (``{protocol}``), which reads as a
    placeholder for a set of choices."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            for piece in param.get_usage_pieces(ctx):
                braced = piece.startswith("{") and piece.endswith("}")
                pieces.append(piece[1:-1] if braced else piece)
        return pieces


app = typer.Typer(
    help="A statistical study harness for knowledge distillation and Born-Again Networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts name "[train] device": text, not rich markup
)
console = Console()
err_console = Console(stderr=True)
# Into a pipe or a log file (DVC, Slurm, CI, `| tee`), a line is one line however long:
# rich would wrap it at its default 80 columns ("... ETA" / "0:00:35)" on two lines).
for _console in (console, err_console):
    _console.soft_wrap = not _console.is_terminal

TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
    ),
]
ProtocolArg = Annotated[
    Path, typer.Argument(metavar="PROTOCOL", help="The study's protocol file (TOML).")
]


@app.callback()
def process_settings() -> None:
    """Before any command touches CUDA: cuBLAS reads its workspace setting once, at the
    first GEMM (``determinism.configure_cuda_process``, which resolving a training device also
    calls, sets the rest; importing torch here would slow every command by a second)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # A scheduler's timeout or preemption (Slurm), `kill`, a CI runner: the same clean stop
    # as Ctrl-C (runs KILLED, metrics flushed, the last checkpoint kept), exit status 143.
    if threading.current_thread() is threading.main_thread():  # (not so in a library call)
        signal.signal(signal.SIGTERM, _terminated)


PIPED_WIDTH = 200
"""Columns of a table printed into a pipe or a file: rich's 80 cut p-values to '5.0e…'."""


def print_table(table: Table) -> None:
    """A table on stdout: the terminal's width, or at least ``PIPED_WIDTH`` when piped."""
    if console.is_terminal:
        console.print(table)
    else:  # print's own width can only narrow the console's
        Console(width=max(console.width, PIPED_WIDTH)).print(table)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, and handled as Ctrl-C is."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def interrupted_status(e: KeyboardInterrupt) -> int:
    return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130


def check_device(spec: str | None, p=None) -> None:
    """The training device (``--device``, else the protocol's) exists on this machine:
    refused before the tracker is touched (``study.device.check_device``, imported here
    when a command needs it: it imports torch, a second at start)."""
    from study.device import check_device as check

    check(spec, p)


_REFUSED_BY_THE_SYSTEM = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
"""A file the system will not let us read or write (permissions, a read-only or full
disk): said plainly with the path, exit 2, no traceback."""


def check_can_write(directory: Path, what: str) -> None:
    """Fail before any work when ``directory`` cannot take files: a read-only working
    directory used to stop `study run` after the training, with a traceback, when the run
    index or the report was written. The nearest existing folder on the way is probed
    (nothing is created)."""
    import tempfile

    probe = directory.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder must go")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".study-write-check-"):
            pass
    except OSError as e:
        raise UserInputError(
            f"cannot write {what} to {directory.absolute()} ({probe}: "
            f"{e.strerror or e}); run from a writable directory",
            source=str(directory),
        ) from None


def user_errors(fn):
    """Bad input: a clear message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as e:
            message = escape(e.message)  # "[tune]" in a message is text, not rich markup
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in _REFUSED_BY_THE_SYSTEM:
                raise
            where = f": {e.filename}" if e.filename else ""
            err_console.print(
                f"[bold red]error:[/] {escape((e.strerror or str(e)) + where)}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except TrackerUnavailable as e:
            err_console.print(
                f"[bold red]error:[/] the tracking store {escape(e.uri)} is lost: "
                f"{escape(e.reason)}. Stopped (exit {TrackerUnavailable.EXIT_STATUS}); local "
                "checkpoints are kept, and runs may be left RUNNING in the store. Run the "
                "command again once the store answers: runs resume from their checkpoints",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(TrackerUnavailable.EXIT_STATUS) from None
        except Terminated:  # `run` and `tune` say more; any other command just stops
            err_console.print("[yellow]terminated[/] (SIGTERM)", highlight=False)
            raise typer.Exit(interrupted_status(Terminated())) from None

    return wrapper


def fmt_number(x, digits: int = 4) -> str:
    """A number in a table: ``digits`` decimals, or ``digits`` significant digits in
    scientific notation where decimals would hide it (|x| below 10^-digits would print as
    0.0000) or drown it (|x| of 10^6 and more: 2.8e200 as 201 digits)."""
    if x is None or x != x:
        return "-"
    x = float(x)
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if x != 0 and not 10.0**-digits <= abs(x) < 1e6:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}f}"
