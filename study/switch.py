"""A process-wide on/off setting, changed for the length of a ``with`` block.

The engine's teacher-output cache and channels-last format and the dark-knowledge
diagnostics each have one (``study bench`` and tests switch them off; a study's results
are the same either way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Switch:
    """On (the default) or off; ``with switch(False):`` turns it off for a block."""

    def __init__(self, doc: str):
        self.on = True
        self.__doc__ = doc

    @contextmanager
    def __call__(self, enabled: bool) -> Iterator[None]:
        before, self.on = self.on, enabled
        try:
            yield
        finally:
            self.on = before
