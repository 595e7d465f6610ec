"""Errors the user can act on.

Every error caused by the user's input (a protocol file, a table, a dataset that is not
where it should be) is a ``UserInputError``: it names where the problem is (a file), which
field, and what is allowed. The CLI prints it and exits with status 2; nothing is trained
and nothing is written to the tracker after one is raised.
"""

from __future__ import annotations


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
