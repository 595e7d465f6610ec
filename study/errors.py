"""Errors the user can act on.

Every error caused by the user's input (a protocol file, a table, a dataset that is not
where it should be) is a ``UserInputError``: it names where the problem is (a file), which
field, and what is allowed. The CLI prints it and exits with status 2; nothing is trained
and nothing is written to the tracker after one is raised.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserInputError(Exception):
    """Bad input that the user must fix: names the source, the field and what is allowed."""

    def __init__(self, reason: str, *, source: str | None = None, field: str | None = None):
        self.reason = reason
        self.source = source
        self.field = field
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason

    def located(self, *, source: str | None = None, field: str | None = None) -> UserInputError:
        """The same error with a source and/or field filled in where they were missing."""
        return type(self)(self.reason, source=self.source or source, field=self.field or field)


class DataNotFoundError(UserInputError):
    """Dataset files are absent and the protocol does not allow downloading them."""


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errnos of a full disk (or a used-up quota)."""


class DiskFull(UserInputError):
    """A write failed for want of space: one message naming the folder, exit status 2.

    Raised where the write failed (a checkpoint, the tracking store, an artifact), after that
    writer removed its temporary files, so that the command stops with the folder named
    instead of failing seed after seed with tracebacks."""

    @classmethod
    def at(cls, folder: str | Path, what: str) -> DiskFull:
        return cls(
            f"no space left on the device: {what} could not be written; free some space "
            "there and run the command again (runs resume from their last checkpoints)",
            source=str(folder),
        )


class TrackerUnavailable(Exception):
    """The tracking store did not answer within its deadline (``track.TRACKER_TIMEOUT``).

    Not a ``UserInputError``: the input was fine and may have been half used (runs started
    and left RUNNING in the store, which cannot be told otherwise now). The CLI says so,
    names the URI, and exits with ``EXIT_STATUS``, which no other failure uses."""

    EXIT_STATUS = 3

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"{uri}: {reason}")
