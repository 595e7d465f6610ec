"""The command line: parses arguments, calls the library, draws progress. Nothing else.

The commands live by what they touch (``training``: validate, run, status, server, tune;
``reporting``: export, report; ``tables``: compare, plan-seeds; ``machine``: reproduce,
env, bench) and are registered here, in the order `study --help` lists them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from study.cli.machine import bench, env, reproduce
from study.cli.reporting import export, report_cmd
from study.cli.tables import compare, plan_seeds
from study.cli.terminal import Command, app, check_can_write, process_settings, user_errors
from study.cli.training import run, server, status, tune, validate


def summary(command: Callable) -> str:
    """A command's first paragraph, whole: `study --help` lists it in full (click would
    cut it at the terminal's width with "...")."""
    first = inspect.cleandoc(command.__doc__ or "").split("\n\n")[0]
    return " ".join(first.split())


COMMANDS: dict[str, Callable] = {
    "validate": validate,
    "run": run,
    "status": status,
    "server": server,
    "tune": tune,
    "export": export,
    "report": report_cmd,
    "compare": compare,
    "plan-seeds": plan_seeds,
    "reproduce": reproduce,
    "env": env,
    "bench": bench,
}
for name, command in COMMANDS.items():
    app.command(name, cls=Command, short_help=summary(command))(command)

__all__ = ["COMMANDS", "app", "check_can_write", "process_settings", "summary", "user_errors"]
